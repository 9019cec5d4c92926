"""The catalog: every component, preset and reported result the loaded plugins register, checked once.

(Not to be confused with ``registry/``, the folder of the built-in plugins'
data files: presets and reported results.)

:meth:`Catalog.build` calls every ``register_*`` hook and resolves every
cross-reference: a trainer's model, a preset's trainer, dataset and model and
each of its option keys and values (parsed against the components'
``Options``), a reported row's dataset, norm and trainer. What does not check
out is left out and recorded as a :class:`Problem`, one line that names the
plugin, the component or file, what is wrong and the fix; ``harness plugins
--check`` prints them all. So a broken preset fails when the catalog is built,
as the plugin's bug, not at ``harness run`` as the user's, and one plugin's
mistake leaves every other plugin usable.

Names are unique per kind within a plugin. Two plugins may register the same
name (two third parties may both ship an ``fgsm``): each component is also
addressable as ``plugin:name``, and a short name works wherever it is unique.
A component's :attr:`Entry.key` — its short name if unique, else the qualified
one — is how runs record it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.components import KINDS, Component, Trainer
from harness.errors import HarnessError, PluginError, UsageError, one_line, unknown_name
from harness.options import parse_options
from harness.plugins import DISABLE_ENV, ONLY_ENV, LoadedPlugins
from harness.presets import Preset, load_presets
from harness.reported import ReportedResult, load_reported

HOOK_OF_KIND = {
    "dataset": "register_datasets",
    "model": "register_models",
    "trainer": "register_trainers",
    "certifier": "register_certifiers",
    "attacker": "register_attackers",
}

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


@dataclass
class Catalog:
    """Components by kind, valid presets and reported results, and the problems found building them."""

    entries: dict[str, list[Entry]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    presets: list[Preset] = field(default_factory=list)
    reported: list[ReportedResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Components left out, by (kind, name): why (a lookup of them says so).
    unavailable: dict[tuple[str, str], Problem] = field(default_factory=dict)
    #: Presets left out, with why (``--preset`` of one of them says so).
    rejected_presets: list[tuple[Preset, Problem]] = field(default_factory=list)
    #: Plugins left out on purpose (for hints in messages).
    disabled: list[str] = field(default_factory=list)

    # -- building ------------------------------------------------------------------------------------------

    @classmethod
    def build(cls, plugins: LoadedPlugins) -> Catalog:
        """Collect and check everything the loaded plugins register (plugin failures become problems too)."""
        catalog = cls(disabled=list(plugins.disabled))
        for failure in plugins.failures:
            catalog.problems.append(Problem(failure.plugin, f"plugin {failure.plugin!r}", failure.reason,
                                            f"fix or uninstall it, or disable it with {DISABLE_ENV}={failure.plugin}", load_failure=True))
        pm = plugins.manager
        found: list[tuple[str, str, type[Component]]] = []
        for kind, hook in HOOK_OF_KIND.items():
            for plugin, result in _call_each(pm, hook, catalog):
                for component in _as_list(result, plugin, hook, catalog):
                    if catalog._valid_component(kind, component, plugin):
                        found.append((kind, plugin, component))
        catalog._add_all(found)
        catalog._check_trainers()
        for plugin, paths in _call_each(pm, "register_presets", catalog):
            for path in _as_list(paths, plugin, "register_presets", catalog):
                catalog._add_presets(path, plugin)
        for plugin, paths in _call_each(pm, "register_reported_results", catalog):
            for path in _as_list(paths, plugin, "register_reported_results", catalog):
                catalog._add_reported(path, plugin)
        return catalog

    def _problem(self, plugin: str | None, subject: str, message: str, fix: str) -> Problem:
        problem = Problem(plugin, subject, message, fix)
        self.problems.append(problem)
        return problem

    def _valid_component(self, kind: str, component: Any, plugin: str) -> bool:
        hook = HOOK_OF_KIND[kind]
        if not (isinstance(component, type) and issubclass(component, Component)):
            self._problem(plugin, f"{hook} result {component!r}", "is not a harness component class",
                          f"return subclasses of harness.{kind.capitalize()} from {hook}")
            return False
        where = f"{kind} {getattr(component, 'name', component.__qualname__)!r}"
        wrong = component.class_problem()
        if wrong is not None:
            self._problem(plugin, where, *wrong)
            return False
        if component.kind != kind:
            self._problem(plugin, where, f"{component.__qualname__} is a {component.kind}, returned by {hook}",
                          f"return it from {HOOK_OF_KIND[component.kind]}")
            return False
        options = component.Options
        try:
            if not dataclasses.is_dataclass(options):
                raise TypeError(f"Options {options!r} is not a dataclass")
            options()
        except Exception as exc:  # the defaults must build: every run starts from them  # noqa: BLE001
            self._problem(plugin, where, f"its Options cannot be built from their defaults ({one_line(exc)})",
                          "make Options a frozen dataclass whose every field has a valid default")
            return False
        return True

    def _add_all(self, found: list[tuple[str, str, type[Component]]]) -> None:
        owners: dict[tuple[str, str], list[str]] = defaultdict(list)
        unique: list[tuple[str, str, type[Component]]] = []
        for kind, plugin, component in found:
            if plugin in owners[(kind, component.name)]:
                self._problem(plugin, f"{kind} {component.name!r}", "is registered twice by the same plugin",
                              "give each component of a kind its own name")
                continue
            owners[(kind, component.name)].append(plugin)
            unique.append((kind, plugin, component))
        for kind, plugin, component in unique:
            shared = len(owners[(kind, component.name)]) > 1
            key = f"{plugin}:{component.name}" if shared else component.name
            self.entries[kind].append(Entry(kind, component.name, plugin, component, key))
        for entries in self.entries.values():
            entries.sort(key=lambda e: (e.name, e.plugin))

    def _check_trainers(self) -> None:
        for entry in list(self.entries["trainer"]):
            trainer: Any = entry.component
            subject = f"trainer {entry.key!r}"
            model = getattr(trainer, "model", None)
            if not isinstance(model, str) or not model:
                self._drop(entry, self._problem(entry.plugin, subject, "sets no default model",
                                                "set the class attribute model = 'NAME' of a registered model"))
                continue
            try:
                self.entry("model", model)
            except HarnessError as exc:
                self._drop(entry, self._problem(entry.plugin, subject, f"trains model {model!r}, which {self._why_missing('model', model, exc)}",
                                                self._enable_hint()))
                continue
            for name in trainer.models or ():
                try:
                    self.entry("model", name)
                except HarnessError as exc:
                    self._problem(entry.plugin, subject, f"lists model {name!r} in its models, which {self._why_missing('model', name, exc)}",
                                  self._enable_hint())

    def _why_missing(self, kind: str, name: str, exc: HarnessError) -> str:
        """The end of "trains model 'x', which ...": missing, or ambiguous between plugins."""
        if len([e for e in self.entries[kind] if e.name == name]) > 1:
            return f"is ambiguous: {one_line(exc)}"
        return "no loaded plugin registers"

    def _enable_hint(self) -> str:
        if self.disabled:
            return f"install or enable the plugin that registers it (left out now: {', '.join(self.disabled)}; see {DISABLE_ENV} and {ONLY_ENV})"
        return "install the plugin that registers it, or correct the name"

    def _drop(self, entry: Entry, problem: Problem) -> None:
        self.entries[entry.kind].remove(entry)
        self.unavailable[(entry.kind, entry.key)] = problem
        self.unavailable[(entry.kind, entry.qualified)] = problem

    def _not_installed(self, path: Any, plugin: str, what: str, hook: str) -> bool:
        """Record a data file the plugin names but did not install (package data left out of its wheel, say)."""
        try:
            present = bool(path.is_file())
        except OSError:
            present = False
        if not present:
            self._problem(plugin, f"{what} {getattr(path, 'name', path)}", f"{hook} returned {path}, which is not a file",
                          "ship it with the package (setuptools: [tool.setuptools.package-data]) or correct the path")
        return not present

    def _add_presets(self, path: Any, plugin: str) -> None:
        if self._not_installed(path, plugin, "presets", "register_presets"):
            return
        try:
            presets = load_presets(path, plugin)
        except PluginError as exc:
            self._problem(plugin, f"presets {getattr(path, 'name', path)}", str(exc), "correct the file")
            return
        seen = {(p.trainer, p.dataset, p.name) for p in self.presets}
        defaults = {(p.trainer, p.dataset) for p in self.presets if p.default}
        for preset in presets:
            subject = f"preset {preset.name!r} of {preset.trainer!r} for {preset.dataset!r} in {preset.file}"
            resolved = self._resolve_preset(preset)
            if isinstance(resolved, str):
                message: str | None = resolved
            else:
                key = (resolved.trainer, resolved.dataset, resolved.name)
                message = None
                if key in seen:
                    message = "is defined twice"
                elif resolved.default and key[:2] in defaults:
                    message = f"is a second default preset of {resolved.trainer!r} for {resolved.dataset!r}"
            if message is not None or isinstance(resolved, str):
                problem = self._problem(plugin, subject, str(message), f"correct {preset.file}")
                self.rejected_presets.append((preset, problem))
                continue
            seen.add((resolved.trainer, resolved.dataset, resolved.name))
            if resolved.default:
                defaults.add((resolved.trainer, resolved.dataset))
            self.presets.append(resolved)

    def _resolve_preset(self, preset: Preset) -> Preset | str:
        """``preset`` with its names resolved to keys, or what is wrong with it."""
        try:
            trainer = self.entry("trainer", preset.trainer)
        except HarnessError as exc:
            return f"names trainer {preset.trainer!r}: {one_line(exc)}"
        try:
            dataset = self.entry("dataset", preset.dataset)
        except HarnessError as exc:
            return f"names dataset {preset.dataset!r}: {one_line(exc)}"
        trainer_cls: Any = trainer.component
        model_name = preset.model or trainer_cls.model
        try:
            model = self.entry("model", model_name)
        except HarnessError as exc:
            return f"names model {model_name!r}: {one_line(exc)}"
        if not self.compatible(trainer_cls, model):
            return f"names model {model.key!r}, which trainer {trainer.key!r} cannot train (it trains: {', '.join(trainer_cls.models)})"
        if preset.norm not in trainer_cls.norms:
            return f"is for l_{preset.norm}, but trainer {trainer.key!r} trains for {', '.join(trainer_cls.norms)}"
        for options_cls, values, what in (
            (model.component.Options, preset.model_options, f"model {model.key!r}"),
            (trainer_cls.Options, preset.trainer_options, f"trainer {trainer.key!r}"),
        ):
            try:
                parse_options(options_cls, values, what)
            except UsageError as exc:
                return str(exc)
        return dataclasses.replace(
            preset, trainer=trainer.key, dataset=dataset.key, model=model.key if preset.model is not None else None
        )

    def _allowed_model(self, trainer_cls: Any, model: Entry) -> bool:
        return any(name in (model.name, model.key, model.qualified) for name in trainer_cls.models)

    def _add_reported(self, path: Any, plugin: str) -> None:
        if self._not_installed(path, plugin, "reported results", "register_reported_results"):
            return
        try:
            results = load_reported(path, plugin)
        except PluginError as exc:
            self._problem(plugin, f"reported results {getattr(path, 'name', path)}", str(exc), "correct the file")
            return
        for result in results:
            subject = f"reported result {result.label!r} ({result.dataset}) in {result.file}"
            try:
                dataset = self.entry("dataset", result.dataset)
                trainer = self.entry("trainer", result.trainer) if result.trainer else None
            except HarnessError as exc:
                self._problem(plugin, subject, one_line(exc), f"correct {result.file}")
                continue
            self.reported.append(dataclasses.replace(result, dataset=dataset.key, trainer=trainer.key if trainer else None))

    # -- lookups -------------------------------------------------------------------------------------------

    def entry(self, kind: str, name: str) -> Entry:
        """The entry of ``kind`` called ``name`` (short or ``plugin:name``).

        :raises UsageError: unknown (with the closest names) or ambiguous (with the qualified choices).
        :raises PluginError: a component that was left out because of a plugin problem (with it).
        """
        entries = self.entries[kind]
        if ":" in name:
            matches = [e for e in entries if e.qualified == name]
        else:
            matches = [e for e in entries if e.name == name]
        if len(matches) == 1:
            return matches[0]
        label = LABEL[kind]
        if len(matches) > 1:
            choices = ", ".join(e.qualified for e in matches)
            raise UsageError(f"{label} name {name!r} is ambiguous: {len(matches)} plugins register it; choose one of {choices}")
        problem = self.unavailable.get((kind, name))
        if problem is not None:
            raise PluginError(f"{label} {name!r} is unavailable: {problem}")
        error = unknown_name(label, name, self.names(kind))
        if self.disabled:
            error = UsageError(f"{error} (plugins left out: {', '.join(self.disabled)})")
        failed = sorted({p.plugin for p in self.problems if p.load_failure and p.plugin})
        if failed:
            error = UsageError(f"{error} (plugins that failed to load: {', '.join(failed)}; harness plugins --check)")
        raise error

    def get(self, kind: str, name: str) -> type[Component]:
        """The component class of ``kind`` called ``name``; see :meth:`entry`."""
        return self.entry(kind, name).component

    def names(self, kind: str) -> list[str]:
        """The keys of every component of ``kind``, sorted."""
        return sorted(e.key for e in self.entries[kind])

    def components(self, kind: str) -> list[type[Component]]:
        return [e.component for e in sorted(self.entries[kind], key=lambda e: e.key)]

    def sorted_entries(self, kind: str) -> list[Entry]:
        return sorted(self.entries[kind], key=lambda e: e.key)

    def key_of(self, component: type[Component] | Component) -> str:
        """The key a component class (or instance) is recorded under."""
        cls = component if isinstance(component, type) else type(component)
        for entry in self.entries[cls.kind]:
            if entry.component is cls:
                return entry.key
        return cls.name

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
        return trainer.models is None or self._allowed_model(trainer, model)

    def model_entry(self, trainer: Entry) -> Entry:
        """The entry of ``trainer``'s default model."""
        cls: Any = trainer.component
        return self.entry("model", cls.model)


def _call_each(pm: Any, hook_name: str, catalog: Catalog) -> list[tuple[str, object]]:
    """Call every implementation of a hook separately, so results can be attributed.

    The ``register_*`` hooks are plain collectors: wrappers and call ordering
    (``tryfirst``) have no meaning for them, so calling each implementation
    directly loses nothing. One that raises is that plugin's problem.
    """
    results = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            results.append((impl.plugin_name, impl.function()))
        except Exception as exc:  # a plugin's hook raising must not stop the others  # noqa: BLE001
            catalog._problem(impl.plugin_name, f"hook {hook_name}", f"raised {type(exc).__name__}: {one_line(exc)}",
                             f"fix the plugin, or disable it with {DISABLE_ENV}={impl.plugin_name}")
    return results


def _as_list(result: object, plugin: str, hook: str, catalog: Catalog) -> Iterable[Any]:
    if result is None:
        return []
    if isinstance(result, list | tuple):
        return result
    catalog._problem(plugin, f"hook {hook}", f"returned {type(result).__name__}, not a list", "return a list")
    return []


__all__ = ["Catalog", "Entry", "Problem"]
