"""Built-in plugin: the l_inf-dist net v2 (Zhang et al., ICLR 2022).

Registers the ``linf_v2`` trainer (for the ``linf_dist_net`` model that the
``lpdist`` plugin registers), the paper's presets (``registry/presets/linf_v2.toml``) and its reported numbers
(``registry/reported/linf_v2.toml``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl
from harness_registry import path

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from harness import Trainer


@hookimpl
def register_trainers() -> list[type[Trainer]]:
    from harness_plugins.linf_v2.trainer import LinfV2Trainer

    return [LinfV2Trainer]


@hookimpl
def register_presets() -> list[Traversable]:
    return [path("presets", "linf_v2.toml")]


@hookimpl
def register_reported_results() -> list[Traversable]:
    return [path("reported", "linf_v2.toml")]
