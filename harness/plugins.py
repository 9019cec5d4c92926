"""Loading plugins: the plugin manager, built in a function, fresh for each caller that asks.

A plugin that cannot be loaded — it fails to import, implements a hook that
does not exist (``register_trainer``), declares a hook with the wrong
arguments, or shares its entry-point name with another — is left out and
recorded as a :class:`PluginFailure`: one line naming the plugin, what is
wrong and how to switch it off, so one broken package never stops every
command. ``harness plugins --check`` lists the failures and exits non-zero.

Two environment variables choose what loads: ``HARNESS_DISABLE_PLUGINS``
(comma-separated names never to load) and ``HARNESS_ONLY_PLUGINS`` (if set,
load only these).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import closest, one_line

ENTRY_POINT_GROUP = "harness"

#: Environment variable: comma-separated plugin names not to load.
DISABLE_ENV = "HARNESS_DISABLE_PLUGINS"
#: Environment variable: if set, the comma-separated plugin names to load, and no others.
ONLY_ENV = "HARNESS_ONLY_PLUGINS"

#: The distribution that ships the built-in plugins.
BUILTIN_DISTRIBUTION = "harness-bench"

HOOKS = tuple(sorted(name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "harness_spec")))


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was not loaded, and why (one line)."""

    plugin: str
    reason: str
    distribution: str | None = None

    def __str__(self) -> str:
        origin = f" (from {self.distribution})" if self.distribution else ""
        return (
            f"plugin {self.plugin!r}{origin} was not loaded: {self.reason}; "
            f"fix or uninstall it, or disable it with {DISABLE_ENV}={self.plugin}"
        )


@dataclass
class LoadedPlugins:
    """The plugin manager with every plugin that loaded, and what did not load."""

    manager: pluggy.PluginManager
    failures: list[PluginFailure] = field(default_factory=list)
    #: Installed plugins disabled by name (HARNESS_DISABLE_PLUGINS).
    disabled: list[str] = field(default_factory=list)
    #: Installed plugins left out because a selection did not name them (HARNESS_ONLY_PLUGINS, ``only=``).
    not_selected: list[str] = field(default_factory=list)
    #: What the environment variables name that is not installed, one line each (a typo, usually).
    unknown_names: list[str] = field(default_factory=list)
    #: Entry-point plugins by name: their distribution and its version.
    distributions: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(name for name, plugin in self.manager.list_name_plugin() if plugin is not None)

    def versions(self) -> dict[str, str | None]:
        return {name: self.distributions.get(name, (None, None))[1] for name in self.names()}


def _names(variable: str) -> set[str] | None:
    """The comma-separated names in ``variable``; ``None`` when it is unset or empty."""
    value = os.environ.get(variable, "")
    names = {n.strip() for n in value.split(",") if n.strip()}
    return names or None


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def hook_problems(plugin: object) -> list[str]:
    """What is wrong with a plugin's hook implementations, one message each (empty if nothing).

    Marked functions whose names are not hooks (say ``register_trainer``) and
    hook-named functions without the ``@harness.hookimpl`` mark would both be
    ignored silently by pluggy.
    """
    problems = []
    for attr in sorted(dir(plugin)):
        try:
            value = getattr(plugin, attr)
        except Exception:  # a property that raises is not a hook  # noqa: BLE001
            continue
        if not callable(value):
            continue
        marked = hasattr(value, "harness_impl")
        if marked and attr not in HOOKS:
            hint = closest(attr, HOOKS)
            did_you_mean = f"did you mean {hint!r}? " if hint else ""
            problems.append(f"it implements {attr!r}, which is not a harness hook ({did_you_mean}hooks: {', '.join(HOOKS)})")
        elif not marked and attr in HOOKS and (inspect.isfunction(value) or inspect.ismethod(value)):
            problems.append(f"its function {attr!r} lacks the @harness.hookimpl mark, so it would never be called")
        elif not marked and attr.startswith("register_") and (inspect.isfunction(value) or inspect.ismethod(value)):
            hint = closest(attr, HOOKS)
            own = getattr(value, "__module__", None) == getattr(plugin, "__name__", getattr(type(plugin), "__module__", None))
            if hint and own:
                problems.append(f"its function {attr!r} looks like the hook {hint!r} misspelt, and lacks the @harness.hookimpl mark")
    return problems


def _plugin_name(plugin: object, taken: set[str]) -> str:
    base = getattr(plugin, "__name__", None) if inspect.ismodule(plugin) else type(plugin).__name__
    name, n = str(base), 2
    while name in taken:
        name, n = f"{base}#{n}", n + 1
    return name


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> str | None:
    """Register ``plugin``; the reason it cannot be, or None."""
    problems = hook_problems(plugin)
    if problems:
        return "; ".join(problems)
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        return one_line(exc)
    except ValueError as exc:  # pluggy: the same object or name twice
        return one_line(exc)
    return None


def load_plugins(
    *,
    entry_points: bool = True,
    extra: Iterable[Any] = (),
    only: Iterable[str] | None = None,
    environment: bool = True,
) -> LoadedPlugins:
    """A plugin manager with the harness hooks and every plugin that loads.

    :param entry_points: load plugins from the ``harness`` entry-point group
        (built-in and third-party plugins alike).
    :param extra: further plugin objects (modules, or objects with hook
        methods) to register, named after the module or class.
    :param only: load only the entry-point plugins of these names (as
        ``HARNESS_ONLY_PLUGINS``, which also applies).
    :param environment: obey ``HARNESS_DISABLE_PLUGINS`` and ``HARNESS_ONLY_PLUGINS``
        (tests that must see a fixed set of plugins pass False).
    """
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    loaded = LoadedPlugins(pm)
    blocked = (_names(DISABLE_ENV) if environment else None) or set()
    wanted = _names(ONLY_ENV) if environment else None
    allowed = wanted
    if only is not None:
        allowed = set(only) if allowed is None else allowed & set(only)
    if entry_points:
        eps = _entry_points()
        installed = [ep.name for ep in eps]
        for variable, names in ((DISABLE_ENV, blocked), (ONLY_ENV, wanted or set())):
            for name in sorted(set(names) - set(installed)):
                hint = closest(name, installed)
                did_you_mean = f"did you mean {hint!r}? " if hint else ""
                loaded.unknown_names.append(f"{variable} names {name!r}, which is not an installed plugin; {did_you_mean}"
                                            f"installed: {', '.join(installed)}")
        for ep in eps:
            dist = ep.dist.name if ep.dist else None
            if ep.name in blocked:
                loaded.disabled.append(ep.name)
                continue
            if allowed is not None and ep.name not in allowed:
                loaded.not_selected.append(ep.name)
                continue
            if ep.name in loaded.distributions:
                first = loaded.distributions[ep.name][0]
                loaded.failures.append(PluginFailure(ep.name, f"the name is taken by a plugin from {first}", dist))
                continue
            loaded.distributions[ep.name] = (dist, ep.dist.version if ep.dist else None)
            try:
                plugin = ep.load()
            except Exception as exc:  # whatever a broken plugin raises on import  # noqa: BLE001
                loaded.failures.append(PluginFailure(ep.name, f"importing {ep.value} raised {type(exc).__name__}: {one_line(exc)}", dist))
                continue
            reason = _register(pm, plugin, ep.name)
            if reason:
                loaded.failures.append(PluginFailure(ep.name, reason, dist))
    taken = set(loaded.distributions)
    for plugin in extra:
        name = _plugin_name(plugin, taken)
        taken.add(name)
        reason = _register(pm, plugin, name)
        if reason:
            loaded.failures.append(PluginFailure(name, reason))
    pm.check_pending()  # nothing can be pending: every hook name was checked above
    return loaded


@dataclass
class PluginInfo:
    """What ``harness plugins`` shows about one plugin."""

    name: str
    version: str | None
    distribution: str | None
    hooks: list[str]


def plugin_infos(loaded: LoadedPlugins) -> list[PluginInfo]:
    """Name, distribution, version and implemented hooks of each loaded plugin."""
    infos = []
    for name in loaded.names():
        plugin = loaded.manager.get_plugin(name)
        dist, version = loaded.distributions.get(name, (None, None))
        hooks = sorted(caller.name for caller in loaded.manager.get_hookcallers(plugin) or [])
        infos.append(PluginInfo(name=name, version=version, distribution=dist, hooks=hooks))
    return infos
