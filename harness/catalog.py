"""The registry: every component, preset and reported result, built once from the plugins."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pluggy

from harness.components import KINDS, Component
from harness.errors import PluginError, unknown_name
from harness.presets import Preset, load_presets
from harness.reported import ReportedResult, load_reported

_HOOK_OF_KIND = {
    "dataset": "register_datasets",
    "model": "register_models",
    "trainer": "register_trainers",
    "certifier": "register_certifiers",
    "attacker": "register_attackers",
}


@dataclass(frozen=True)
class Entry:
    """A registered component and the plugin that registered it."""

    component: type[Component]
    plugin: str


class Catalog:
    """Components by kind and name, presets and reported results.

    Built once from a plugin manager; rejects duplicate names, naming both
    plugins, and components of the wrong kind.
    """

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.presets: list[Preset] = []
        self.reported: list[ReportedResult] = []
        self.plugin_components: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Catalog:
        registry = cls()
        for kind, hook_name in _HOOK_OF_KIND.items():
            for plugin_name, result in _call_each(pm, hook_name):
                for component in result or []:
                    registry.add(kind, component, plugin_name)
        for plugin_name, paths in _call_each(pm, "register_presets"):
            for path in paths or []:
                registry.presets.extend(load_presets(path, plugin_name))
        for plugin_name, paths in _call_each(pm, "register_reported_results"):
            for path in paths or []:
                registry.reported.extend(load_reported(path, plugin_name))
        registry._check_presets()
        return registry

    def add(self, kind: str, component: type[Component], plugin: str) -> None:
        if not (isinstance(component, type) and issubclass(component, Component)):
            raise PluginError(f"plugin {plugin!r} registered {component!r} as a {kind}, which is not a harness component class")
        component.validate_class()
        if component.kind != kind:
            raise PluginError(f"plugin {plugin!r} registered {component.__qualname__} (a {component.kind}) through the {kind} hook")
        existing = self._entries[kind].get(component.name)
        if existing is not None:
            raise PluginError(
                f"{kind} name {component.name!r} is registered twice: by plugin {existing.plugin!r} "
                f"({existing.component.__module__}) and by plugin {plugin!r} ({component.__module__})"
            )
        self._entries[kind][component.name] = Entry(component, plugin)
        self.plugin_components[plugin][kind].append(component.name)

    def get(self, kind: str, name: str) -> type[Component]:
        """The component of ``kind`` called ``name``; a UsageError with suggestions if none."""
        try:
            return self._entries[kind][name].component
        except KeyError:
            label = "plugin" if kind == "trainer" else kind
            raise unknown_name(label, name, self._entries[kind]) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def components(self, kind: str) -> list[type[Component]]:
        return [self._entries[kind][name].component for name in self.names(kind)]

    def presets_for(self, trainer: str, dataset: str | None = None) -> list[Preset]:
        return [p for p in self.presets if p.trainer == trainer and (dataset is None or p.dataset == dataset)]

    def _check_presets(self) -> None:
        seen: dict[tuple[str, str, str], Preset] = {}
        defaults: dict[tuple[str, str], Preset] = {}
        for preset in self.presets:
            key = (preset.trainer, preset.dataset, preset.name)
            if key in seen:
                raise PluginError(f"preset {preset.name!r} of {preset.trainer!r} for {preset.dataset!r} is defined twice: in {seen[key].origin} and {preset.origin}")
            seen[key] = preset
            if preset.default:
                dkey = (preset.trainer, preset.dataset)
                if dkey in defaults:
                    raise PluginError(f"two default presets of {preset.trainer!r} for {preset.dataset!r}: {defaults[dkey].name!r} and {preset.name!r}")
                defaults[dkey] = preset


def _call_each(pm: pluggy.PluginManager, hook_name: str) -> list[tuple[str, object]]:
    """Call every implementation of a hook separately, so results can be attributed.

    The ``register_*`` hooks are plain collectors: wrappers and call ordering
    (``tryfirst``) have no meaning for them, so calling each implementation
    directly loses nothing.
    """
    caller = getattr(pm.hook, hook_name)
    results = []
    for impl in caller.get_hookimpls():
        results.append((impl.plugin_name, impl.function()))
    return results
