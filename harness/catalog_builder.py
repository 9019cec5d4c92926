"""Building the catalog: call every ``register_*`` hook and check everything the plugins register.

Resolved and checked here, once, when the harness starts: every component's
class (metadata, required methods, options that build from their defaults);
each trainer's model; each preset's trainer, dataset, model, norm and every
option key and value (parsed against the components' ``Options``); each
reported row's fields, dataset and trainer. What does not check out is left
out and recorded as a :class:`~harness.catalog.Problem` naming the plugin, the
component or file, what is wrong and the fix; everything else stays usable.

Two rules keep the problems few and true:

* a name nothing registers is **one** problem, whatever refers to it (with
  HARNESS_DISABLE_PLUGINS=lpdist: "model 'linf_dist_net': no loaded plugin
  registers it, but trainers 'linf_v1' and 'linf_v2' name it"); what depended
  on it is left out with that problem, not a problem of its own;
* a name several plugins register means, where a plugin refers to it, the one
  that plugin (then the trainer's plugin) registers itself, else the built-in
  one; a third party's component, preset or default never displaces a
  built-in's, and the message names both.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from harness.catalog import LABEL, Catalog, Entry, Problem
from harness.components import KINDS, Component
from harness.datafile import DataFile
from harness.errors import HarnessError, PluginError, UsageError, closest, one_line
from harness.options import parse_options
from harness.plugins import BUILTIN_DISTRIBUTION, DISABLE_ENV, LoadedPlugins
from harness.presets import Preset, read_presets
from harness.reported import ReportedResult, read_reported

HOOK_OF_KIND = {
    "dataset": "register_datasets",
    "model": "register_models",
    "trainer": "register_trainers",
    "certifier": "register_certifiers",
    "attacker": "register_attackers",
}

T = TypeVar("T")

#: A name nothing registers, (kind, name): its one problem is made once every reference to it is known.
Missing = tuple[str, str]


@dataclass
class _Ref:
    """A name resolved: the entry, or why not (a problem, a missing name, or a message for a new problem)."""

    entry: Entry | None = None
    cause: Problem | Missing | None = None
    error: str | None = None


def build_catalog(plugins: LoadedPlugins) -> Catalog:
    """Collect and check everything the loaded plugins register; plugin load failures become problems too."""
    builder = _Builder(plugins)
    builder.components()
    builder.trainers()
    builder.presets()
    builder.reported()
    builder.finish()
    return builder.catalog


class _Builder:
    def __init__(self, plugins: LoadedPlugins) -> None:
        self.plugins = plugins
        self.catalog = Catalog(disabled=list(plugins.disabled), not_selected=list(plugins.not_selected))
        self.builtin = {name for name, (dist, _) in plugins.distributions.items() if dist == BUILTIN_DISTRIBUTION}
        #: Why each left-out component is unavailable, by (kind, name) and (kind, plugin:name).
        self.causes: dict[tuple[str, str], Problem | Missing] = {}
        #: Who names each missing name: (plugin, subject).
        self.missing: dict[Missing, list[tuple[str | None, str]]] = defaultdict(list)
        self.rejected: list[tuple[Preset, Problem | Missing]] = []
        for failure in plugins.failures:
            self.catalog.problems.append(
                Problem(failure.plugin, f"plugin {failure.plugin!r}", failure.reason,
                        f"fix or uninstall it, or disable it with {DISABLE_ENV}={failure.plugin}", load_failure=True)
            )

    def problem(self, plugin: str | None, subject: str, message: str, fix: str) -> Problem:
        problem = Problem(plugin, subject, message, fix)
        self.catalog.problems.append(problem)
        return problem

    # -- components ----------------------------------------------------------------------------------------

    def components(self) -> None:
        found: list[tuple[str, str, type[Component]]] = []
        for kind, hook in HOOK_OF_KIND.items():
            for plugin, result in self.call_each(hook):
                for component in self.as_list(result, plugin, hook):
                    if self.valid_component(kind, component, plugin):
                        found.append((kind, plugin, component))
        owners: dict[tuple[str, str], list[str]] = defaultdict(list)
        unique: list[tuple[str, str, type[Component]]] = []
        for kind, plugin, component in found:
            if plugin in owners[(kind, component.name)]:
                self.problem(plugin, f"{kind} {component.name!r}", "is registered twice by the same plugin",
                             "give each component of a kind its own name")
                continue
            owners[(kind, component.name)].append(plugin)
            unique.append((kind, plugin, component))
        for kind, plugin, component in unique:
            sharing = owners[(kind, component.name)]
            builtins = [p for p in sharing if p in self.builtin]
            plain = len(sharing) == 1 or (len(builtins) == 1 and plugin == builtins[0])
            key = component.name if plain else f"{plugin}:{component.name}"
            self.catalog.entries[kind].append(Entry(kind, component.name, plugin, component, key))
        for entries in self.catalog.entries.values():
            entries.sort(key=lambda e: (e.name, e.plugin))

    def valid_component(self, kind: str, component: Any, plugin: str) -> bool:
        hook = HOOK_OF_KIND[kind]
        if not (isinstance(component, type) and issubclass(component, Component)):
            self.problem(plugin, f"{hook} result {component!r}", "is not a harness component class",
                         f"return subclasses of harness.{kind.capitalize()} from {hook}")
            return False
        name = getattr(component, "name", None)
        where = f"{kind} {name if isinstance(name, str) else component.__qualname__!r}"
        problem: Problem | None = None
        wrong = component.class_problem()
        if wrong is not None:
            problem = self.problem(plugin, where, *wrong)
        elif component.kind != kind:
            problem = self.problem(plugin, where, f"{component.__qualname__} is a {component.kind}, returned by {hook}",
                                   f"return it from {HOOK_OF_KIND[component.kind]}")
        else:
            try:
                if not dataclasses.is_dataclass(component.Options):
                    raise TypeError(f"Options {component.Options!r} is not a dataclass")
                component.Options()
            except Exception as exc:  # the defaults must build: every run starts from them  # noqa: BLE001
                problem = self.problem(plugin, where, f"its Options cannot be built from their defaults ({one_line(exc)})",
                                       "make Options a frozen dataclass whose every field has a valid default")
        if problem is not None and isinstance(name, str) and name:
            self.causes.setdefault((kind, name), problem)
            self.causes[(kind, f"{plugin}:{name}")] = problem
        return problem is None

    def trainers(self) -> None:
        for entry in list(self.catalog.entries["trainer"]):
            trainer: Any = entry.component
            subject = f"trainer {entry.key!r}"
            model = getattr(trainer, "model", None)
            if not isinstance(model, str) or not model:
                self.drop(entry, self.problem(entry.plugin, subject, "sets no default model",
                                              "set the class attribute model = 'NAME' of a registered model"))
                continue
            ref = self.ref("model", model, (entry.plugin,), entry.plugin, subject)
            if ref.entry is None:
                cause = ref.cause or self.problem(entry.plugin, subject, f"trains model {model!r}: {ref.error}", "name one model")
                self.drop(entry, cause)
                continue
            for name in trainer.models or ():
                listed = self.ref("model", name, (entry.plugin,), entry.plugin, f"{subject} (its models)")
                if listed.error:
                    self.problem(entry.plugin, subject, f"lists model {name!r}: {listed.error}", "name one model")

    def drop(self, entry: Entry, cause: Problem | Missing) -> None:
        self.catalog.entries[entry.kind].remove(entry)
        for name in (entry.key, entry.qualified):
            self.causes[(entry.kind, name)] = cause

    def ref(self, kind: str, name: str, near: tuple[str, ...], plugin: str | None, subject: str) -> _Ref:
        """Resolve a reference of ``subject`` (registered by ``plugin``) to a component; record a missing name."""
        try:
            return _Ref(entry=self.catalog.resolve(kind, name, near=near))
        except HarnessError as exc:
            cause = self.causes.get((kind, name))
            if cause is not None:
                return _Ref(cause=cause)
            if ":" in name or any(e.name == name for e in self.catalog.entries[kind]):
                return _Ref(error=one_line(exc))
            self.missing[(kind, name)].append((plugin, subject))
            return _Ref(cause=(kind, name))

    # -- presets -------------------------------------------------------------------------------------------

    def read_files(self, hook: str, what: str, row: str, reader: Callable[[Any, str], DataFile[T]]) -> Iterator[T]:
        """Every well-formed row of every file the plugins return from ``hook``; the others become problems."""
        for plugin, paths in self.call_each(hook):
            for path in self.as_list(paths, plugin, hook):
                if self.not_installed(path, plugin, what, hook):
                    continue
                try:
                    found = reader(path, plugin)
                except PluginError as exc:
                    self.problem(plugin, f"{what} {getattr(path, 'name', path)}", str(exc), "correct the file")
                    continue
                for name, message in found.problems:
                    self.problem(plugin, f"{row} {name!r} in {found.file}", message, f"correct {found.file}")
                yield from found.rows

    def presets(self) -> None:
        candidates = [checked for preset in self.read_files("register_presets", "presets", "preset", read_presets)
                      if (checked := self.check_preset(preset)) is not None]
        self.keep_one_of_each(candidates)

    def check_preset(self, preset: Preset) -> tuple[Preset, Entry] | None:
        """``(preset with names resolved to keys, its trainer)``, or None with the reason recorded."""
        subject = f"preset {preset.name!r} of {preset.trainer!r} for {preset.dataset!r} in {preset.file}"

        def reject(message: str, ref: _Ref | None = None) -> None:
            """Leave the preset out: because of what it names (its cause is a problem already), or with a problem of its own."""
            cause = ref.cause if ref is not None and ref.cause is not None else None
            self.rejected.append((preset, cause or self.problem(preset.plugin, subject, message, f"correct {preset.file}")))

        trainer = self.ref("trainer", preset.trainer, (preset.plugin,), preset.plugin, subject)
        if trainer.entry is None:
            reject(f"names trainer {preset.trainer!r}: {trainer.error}", trainer)
            return None
        near = (preset.plugin, trainer.entry.plugin)
        dataset = self.ref("dataset", preset.dataset, near, preset.plugin, subject)
        if dataset.entry is None:
            reject(f"names dataset {preset.dataset!r}: {dataset.error}", dataset)
            return None
        trainer_cls: Any = trainer.entry.component
        model = self.ref("model", preset.model, near, preset.plugin, subject) if preset.model else _Ref(
            entry=self.catalog.model_entry(trainer.entry))
        if model.entry is None:
            reject(f"names model {preset.model!r}: {model.error}", model)
            return None
        if not self.catalog.compatible(trainer_cls, model.entry):
            reject(f"names model {model.entry.key!r}, which trainer {trainer.entry.key!r} cannot train "
                           f"(it trains: {', '.join(trainer_cls.models)})")
            return None
        if preset.norm not in trainer_cls.norms:
            reject(f"is for l_{preset.norm}, but trainer {trainer.entry.key!r} trains for {', '.join(trainer_cls.norms)}")
            return None
        for options_cls, values, what in (
            (model.entry.component.Options, preset.model_options, f"model {model.entry.key!r}"),
            (trainer_cls.Options, preset.trainer_options, f"trainer {trainer.entry.key!r}"),
        ):
            try:
                parse_options(options_cls, values, what)
            except UsageError as exc:
                reject(str(exc))
                return None
        resolved = dataclasses.replace(
            preset, trainer=trainer.entry.key, dataset=dataset.entry.key, model=model.entry.key if preset.model else None
        )
        return resolved, trainer.entry

    def keep_one_of_each(self, candidates: list[tuple[Preset, Entry]]) -> None:
        """One preset per (trainer, dataset, name) and one default per (trainer, dataset): the trainer's own plugin's wins."""

        def owner_first(item: tuple[Preset, Entry]) -> bool:
            return item[0].plugin != item[1].plugin  # False (the trainer's own plugin) sorts first

        kept: dict[tuple[str, str, str], Preset] = {}
        defaults: dict[tuple[str, str], Preset] = {}
        for preset, _ in sorted(candidates, key=owner_first):
            key = (preset.trainer, preset.dataset, preset.name)
            subject = f"preset {preset.name!r} of {preset.trainer!r} for {preset.dataset!r} in {preset.file}"
            if key in kept:
                other = kept[key]
                self.rejected.append((preset, self.problem(
                    preset.plugin, subject, f"is defined twice: also in {other.file} (plugin {other.plugin!r}), which is kept",
                    f"rename it in {preset.file}")))
                continue
            if preset.default and key[:2] in defaults:
                other = defaults[key[:2]]
                self.rejected.append((preset, self.problem(
                    preset.plugin, subject, f"is a second default for {preset.dataset!r}: {other.name!r} in {other.file} "
                    f"(plugin {other.plugin!r}) is kept", f"drop 'default = true' in {preset.file}")))
                continue
            kept[key] = preset
            if preset.default:
                defaults[key[:2]] = preset
        order = {id(p): i for i, (p, _) in enumerate(candidates)}
        self.catalog.presets = sorted(kept.values(), key=lambda p: order.get(id(p), 0))

    # -- reported results ---------------------------------------------------------------------------------

    def reported(self) -> None:
        results = self.read_files("register_reported_results", "reported results", "reported result", read_reported)
        self.catalog.reported = [checked for result in results if (checked := self.check_reported(result)) is not None]

    def check_reported(self, result: ReportedResult) -> ReportedResult | None:
        subject = f"reported result {result.label!r} ({result.dataset}) in {result.file}"
        dataset = self.ref("dataset", result.dataset, (result.plugin,), result.plugin, subject)
        if dataset.entry is None:
            if dataset.error:
                self.problem(result.plugin, subject, f"names dataset {result.dataset!r}: {dataset.error}", f"correct {result.file}")
            return None
        trainer_key = result.trainer
        if result.trainer:
            trainer = self.ref("trainer", result.trainer, (result.plugin,), result.plugin, subject)
            if trainer.entry is not None:
                trainer_key = trainer.entry.key
            elif trainer.error:
                self.problem(result.plugin, subject, f"names trainer {result.trainer!r}: {trainer.error}", f"correct {result.file}")
                return None
            elif isinstance(trainer.cause, tuple):
                return None  # a trainer nothing registers: one problem for every reference to it
            # A trainer that is registered but unavailable: the paper's numbers still stand.
        return dataclasses.replace(result, dataset=dataset.entry.key, trainer=trainer_key)

    # -- the end -------------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Make one problem per missing name, and point everything that depended on it there."""
        made: dict[Missing, Problem] = {}
        for (kind, name), referrers in self.missing.items():
            subjects = list(dict.fromkeys(subject for _, subject in referrers))
            shown = " and ".join(subjects) if len(subjects) <= 2 else f"{subjects[0]}, {subjects[1]} and {len(subjects) - 2} more"
            plugins = {plugin for plugin, _ in referrers}
            left_out = self.catalog.left_out_hint()
            # A close name is a likely typo, unless a plugin that is not loaded may be what registers it.
            hint = None if left_out else closest(name, [e.name for e in self.catalog.entries[kind]])
            correct = f"correct the name (did you mean {hint!r}?)" if hint else "correct the name"
            fix = f"{correct}, or install or enable the plugin that registers it" + (f" ({left_out})" if left_out else "")
            made[(kind, name)] = self.problem(
                plugins.pop() if len(plugins) == 1 else None,
                f"{LABEL[kind]} {name!r}",
                f"no loaded plugin registers it, but {shown} name{'s' if len(subjects) == 1 else ''} it",
                fix,
            )

        def final(cause: Problem | Missing) -> Problem:
            return cause if isinstance(cause, Problem) else made[cause]

        self.catalog.unavailable = {key: final(cause) for key, cause in self.causes.items()}
        self.catalog.rejected_presets = [(preset, final(cause)) for preset, cause in self.rejected]

    # -- helpers -------------------------------------------------------------------------------------------

    def call_each(self, hook_name: str) -> list[tuple[str, object]]:
        """Call every implementation of a hook separately, so results can be attributed.

        The ``register_*`` hooks are plain collectors: wrappers and call ordering
        (``tryfirst``) have no meaning for them, so calling each implementation
        directly loses nothing. One that raises is that plugin's problem.
        """
        results = []
        for impl in getattr(self.plugins.manager.hook, hook_name).get_hookimpls():
            try:
                results.append((impl.plugin_name, impl.function()))
            except Exception as exc:  # a plugin's hook raising must not stop the others  # noqa: BLE001
                self.problem(impl.plugin_name, f"hook {hook_name}", f"raised {type(exc).__name__}: {one_line(exc)}",
                             f"fix the plugin, or disable it with {DISABLE_ENV}={impl.plugin_name}")
        return results

    def as_list(self, result: object, plugin: str, hook: str) -> Iterable[Any]:
        if result is None:
            return []
        if isinstance(result, list | tuple):
            return result
        self.problem(plugin, f"hook {hook}", f"returned {type(result).__name__}, not a list", "return a list")
        return []

    def not_installed(self, path: Any, plugin: str, what: str, hook: str) -> bool:
        """Record a data file the plugin names but did not install (package data left out of its wheel, say)."""
        try:
            present = bool(path.is_file())
        except (OSError, AttributeError, TypeError):
            present = False
        if not present:
            self.problem(plugin, f"{what} {getattr(path, 'name', path)}", f"{hook} returned {path}, which is not a file",
                         "ship it with the package (setuptools: [tool.setuptools.package-data]) or correct the path")
        return not present


__all__ = ["HOOK_OF_KIND", "KINDS", "build_catalog"]
