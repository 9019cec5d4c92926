"""The plugin manager: built in a function, fresh for each caller that asks."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from harness import hookspecs

ENTRY_POINT_GROUP = "harness"

#: Environment variable: comma-separated plugin names not to load.
DISABLE_ENV = "HARNESS_DISABLE_PLUGINS"


def make_plugin_manager(*, entry_points: bool = True, extra: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A plugin manager with the harness hooks and every installed plugin.

    :param entry_points: load plugins from the ``harness`` entry-point group
        (built-in and third-party plugins alike).
    :param extra: further plugin objects to register (tests use this).
    """
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    for name in filter(None, (n.strip() for n in os.environ.get(DISABLE_ENV, "").split(","))):
        pm.set_blocked(name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
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
    components: dict[str, list[str]] = field(default_factory=dict)


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Name, distribution version and implemented hooks of each registered plugin."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # blocked
            continue
        dist = dists.get(id(plugin))
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        infos.append(
            PluginInfo(
                name=name,
                version=dist.version if dist else None,
                distribution=dist.project_name if dist else None,
                hooks=hooks,
            )
        )
    return infos
