"""The hooks through which plugins extend the harness.

A plugin is a module (or object) with functions marked ``@harness.hookimpl``
whose names are the hooks below. Built-in plugins and third-party packages
reach the host the same way: through the ``harness`` entry-point group.

Every ``register_*`` hook is called once, when the catalog is built
(:mod:`harness.catalog`), and returns a list; the results of all plugins are
merged and checked. Names are unique per kind within a plugin; two plugins may
share one, each then addressed as ``plugin:name``. A hook that raises, or
returns something that is not a component, is that plugin's problem
(``harness plugins --check``), never the other plugins'.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import click

    from harness.components import Attacker, Certifier, Dataset, Model, Trainer

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_datasets() -> list[type[Dataset]]:
    """Called when the catalog is built, to collect dataset components.

    :returns: the :class:`harness.Dataset` subclasses this plugin provides.
    """


@hookspec
def register_models() -> list[type[Model]]:
    """Called when the catalog is built, to collect model components.

    :returns: the :class:`harness.Model` subclasses this plugin provides.
    """


@hookspec
def register_trainers() -> list[type[Trainer]]:
    """Called when the catalog is built, to collect trainers (training methods).

    A trainer is what ``harness run --plugin NAME`` selects.

    :returns: the :class:`harness.Trainer` subclasses this plugin provides.
    """


@hookspec
def register_certifiers() -> list[type[Certifier]]:
    """Called when the catalog is built, to collect certifiers.

    The uniform evaluation runs every registered certifier that applies to the
    model and threat model.

    :returns: the :class:`harness.Certifier` subclasses this plugin provides.
    """


@hookspec
def register_attackers() -> list[type[Attacker]]:
    """Called when the catalog is built, to collect attacks.

    :returns: the :class:`harness.Attacker` subclasses this plugin provides.
    """


@hookspec
def register_presets() -> list[Path | Traversable]:
    """Called when the catalog is built, to collect training presets.

    :returns: paths of TOML files, each with a top-level ``trainer`` name and
        ``[[presets]]`` tables (see ``registry/presets/`` for the format).
    """


@hookspec
def register_reported_results() -> list[Path | Traversable]:
    """Called when the catalog is built, to collect numbers reported in papers.

    They are shown on the leaderboard beside measured runs, marked as reported.

    :returns: paths of TOML files with ``[[results]]`` tables (see
        ``registry/reported/`` for the format).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Called when the command-line interface is built.

    :param cli: the ``harness`` click group; add commands with ``cli.command()``
        or ``cli.add_command``.
    """
