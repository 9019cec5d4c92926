"""The plugin manager: built in a function, fresh for each caller that asks."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import PluginError

ENTRY_POINT_GROUP = "harness"

#: Environment variable: comma-separated plugin names not to load.
DISABLE_ENV = "HARNESS_DISABLE_PLUGINS"


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def make_plugin_manager(*, entry_points: bool = True, extra: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A plugin manager with the harness hooks and every installed plugin.

    :param entry_points: load plugins from the ``harness`` entry-point group
        (built-in and third-party plugins alike).
    :param extra: further plugin objects to register (tests use this).
    :raises PluginError: a plugin fails to import, or two distributions
        declare plugins of the same name.
    """
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    for name in filter(None, (n.strip() for n in os.environ.get(DISABLE_ENV, "").split(","))):
        pm.set_blocked(name)
    if entry_points:
        for ep in _entry_points():
            if pm.is_blocked(ep.name):
                continue
            where = f"{ep.value} from {ep.dist.name if ep.dist else 'an unknown distribution'}"
            if pm.has_plugin(ep.name):
                raise PluginError(f"two plugins are named {ep.name!r}; the second is {where}")
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must say which one it is
                raise PluginError(f"cannot load plugin {ep.name!r} ({where}): {type(exc).__name__}: {exc}") from exc
            pm.register(plugin, name=ep.name)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


@dataclass
class PluginInfo:
    """What ``harness plugins`` shows about one plugin."""

    name: str
    version: str | None
    distribution: str | None
    hooks: list[str]


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Name, distribution, version and implemented hooks of each registered plugin."""
    dists = {ep.name: ep.dist for ep in _entry_points()}
    infos = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # blocked
            continue
        dist = dists.get(name)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        infos.append(PluginInfo(name=name, version=dist.version if dist else None, distribution=dist.name if dist else None, hooks=hooks))
    return infos
