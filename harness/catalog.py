"""The catalog: every component, preset and reported result the loaded plugins register, checked once.

(Not to be confused with ``registry/``, the folder of the built-in plugins'
data files: presets and reported results.)

:func:`harness.catalog_builder.build_catalog` (also :meth:`Catalog.build`)
calls every ``register_*`` hook and resolves every cross-reference; what does
not check out is left out and recorded as a :class:`Problem`, one line that
names the plugin, the component or file, what is wrong and the fix. This
module holds what the rest of the host reads: the entries and the lookups.

Names are unique per kind within a plugin. Two plugins may register the same
name (two third parties may both ship an ``fgsm``): each component is
addressable as ``plugin:name``, and a short name works wherever it means one
component. A component's :attr:`Entry.key` is how runs record it: its short
name if no other plugin registers that name, or if it is the built-in one
(so the built-ins' keys never change with what else is installed); otherwise
``plugin:name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.components import KINDS, Component, Trainer
from harness.errors import PluginError, UsageError, unknown_name
from harness.plugins import DISABLE_ENV, ONLY_ENV
from harness.presets import Preset
from harness.reported import ReportedResult

if TYPE_CHECKING:
    from harness.plugins import LoadedPlugins

#: How messages and the CLI name a kind (the trainer is what ``--plugin`` selects).
LABEL = {"trainer": "trainer", "model": "model", "dataset": "dataset", "certifier": "certifier", "attacker": "attack"}


@dataclass(frozen=True)
class Entry:
    """A registered component, the plugin that registered it, and the key runs record it under."""

    kind: str
    name: str
    plugin: str
    component: type[Component]
    key: str

    @property
    def qualified(self) -> str:
        return f"{self.plugin}:{self.name}"


@dataclass(frozen=True)
class Problem:
    """Something a plugin got wrong, found when the catalog was built: one line with the fix."""

    plugin: str | None
    subject: str
    message: str
    fix: str
    #: The plugin itself could not be loaded (it registered nothing).
    load_failure: bool = False

    def __str__(self) -> str:
        where = f" (plugin {self.plugin!r})" if self.plugin and not self.load_failure else ""
        return f"{self.subject}{where}: {self.message}; {self.fix}"

    def as_json(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "subject": self.subject, "message": self.message, "fix": self.fix, "load_failure": self.load_failure}


@dataclass
class Catalog:
    """Components by kind, valid presets and reported results, and the problems found building them."""

    entries: dict[str, list[Entry]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    presets: list[Preset] = field(default_factory=list)
    reported: list[ReportedResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Components left out, by (kind, name as registered or qualified): why (a lookup of them says so).
    unavailable: dict[tuple[str, str], Problem] = field(default_factory=dict)
    #: Presets left out, with why (``--preset`` of one of them says so).
    rejected_presets: list[tuple[Preset, Problem]] = field(default_factory=list)
    #: Plugins disabled by HARNESS_DISABLE_PLUGINS, and those HARNESS_ONLY_PLUGINS left out (for hints).
    disabled: list[str] = field(default_factory=list)
    not_selected: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, plugins: LoadedPlugins) -> Catalog:
        """Collect and check everything the loaded plugins register (see :mod:`harness.catalog_builder`)."""
        from harness.catalog_builder import build_catalog

        return build_catalog(plugins)

    # -- lookups -------------------------------------------------------------------------------------------

    def entry(self, kind: str, name: str) -> Entry:
        """The entry of ``kind`` called ``name``: ``plugin:name``, or a short name that means one component.

        :raises UsageError: unknown (with the closest names) or ambiguous (with the qualified choices).
        :raises PluginError: a component that was left out because of a plugin problem (with it).
        """
        entries = self.entries[kind]
        label = LABEL[kind]
        if ":" in name:
            matches = [e for e in entries if e.qualified == name]
        else:
            matches = [e for e in entries if e.key == name] or [e for e in entries if e.name == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            choices = ", ".join(e.qualified for e in matches)
            raise UsageError(f"{label} name {name!r} is ambiguous: {len(matches)} plugins register it; choose one of {choices}")
        problem = self.unavailable.get((kind, name))
        if problem is not None:
            raise PluginError(f"{label} {name!r} is unavailable: {problem}")
        message = str(unknown_name(label, name, self.names(kind)))
        hint = self.left_out_hint()
        raise UsageError(f"{message} ({hint})" if hint else message)

    def left_out_hint(self) -> str:
        """Which plugins are not loaded, and why, for messages about something missing ('' if none)."""
        parts = []
        if self.disabled:
            parts.append(f"disabled by {DISABLE_ENV}: {', '.join(self.disabled)}")
        if self.not_selected:
            parts.append(f"{ONLY_ENV} leaves out {len(self.not_selected)} installed plugin(s)")
        failed = sorted({p.plugin for p in self.problems if p.load_failure and p.plugin})
        if failed:
            parts.append(f"failed to load: {', '.join(failed)} (harness plugins --check)")
        return "; ".join(parts)

    def get(self, kind: str, name: str) -> type[Component]:
        """The component class of ``kind`` called ``name``; see :meth:`entry`."""
        return self.entry(kind, name).component

    def names(self, kind: str) -> list[str]:
        """The keys of every component of ``kind``, sorted."""
        return sorted(e.key for e in self.entries[kind])

    def components(self, kind: str) -> list[type[Component]]:
        return [e.component for e in self.sorted_entries(kind)]

    def sorted_entries(self, kind: str) -> list[Entry]:
        return sorted(self.entries[kind], key=lambda e: e.key)

    def entries_of(self, plugin: str) -> list[Entry]:
        return [e for kind in KINDS for e in self.entries[kind] if e.plugin == plugin]

    def rejected_preset(self, trainer: Entry, dataset: Entry, name: str) -> Problem | None:
        """Why a preset of this name for ``trainer`` and ``dataset`` was left out, if one was."""
        for preset, problem in self.rejected_presets:
            if preset.name == name and preset.trainer in (trainer.name, trainer.key, trainer.qualified) and preset.dataset in (
                dataset.name, dataset.key, dataset.qualified
            ):
                return problem
        return None

    def presets_for(self, trainer: str, dataset: str | None = None) -> list[Preset]:
        """Presets of ``trainer`` (a key), for ``dataset`` (a key) if given."""
        return [p for p in self.presets if p.trainer == trainer and (dataset is None or p.dataset == dataset)]

    def compatible(self, trainer: type[Trainer], model: Entry) -> bool:
        """Whether ``trainer`` can train ``model`` (``Trainer.models``: None means any)."""
        return trainer.models is None or any(name in (model.name, model.key, model.qualified) for name in trainer.models)

    def model_entry(self, trainer: Entry) -> Entry:
        """The entry of ``trainer``'s default model (resolved as when the catalog was built)."""
        cls: Any = trainer.component
        return self.resolve("model", cls.model, near=(trainer.plugin,))

    def resolve(self, kind: str, name: str, *, near: tuple[str, ...] = ()) -> Entry:
        """A name one plugin uses for another's component: a short name shared by several plugins means the one
        registered by the first plugin of ``near`` that has it (the referring plugin itself first), else the
        one its key names (:meth:`entry`)."""
        if ":" not in name:
            for plugin in near:
                mine = [e for e in self.entries[kind] if e.name == name and e.plugin == plugin]
                if mine:
                    return mine[0]
        return self.entry(kind, name)


__all__ = ["LABEL", "Catalog", "Entry", "Problem"]
