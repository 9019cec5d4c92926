"""Built-in plugin: the l_inf-dist net (Zhang et al., ICML 2021), trained as in its paper and code.

Registers the ``linf_v1`` trainer (hinge loss, l_p weight decay, lr constant
while p = 8 then cosine) for the ``linf_dist_net`` model, the paper's presets
(``registry/presets/linf_v1.toml``) and its reported numbers
(``registry/reported/linf_v1.toml``). :mod:`harness_plugins.lib.v1_recipe`
holds the recipe that the hybrid (``linf_mlp``) shares.
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
    from harness_plugins.linf_v1.trainer import LinfV1Trainer

    return [LinfV1Trainer]


@hookimpl
def register_presets() -> list[Traversable]:
    return [path("presets", "linf_v1.toml")]


@hookimpl
def register_reported_results() -> list[Traversable]:
    return [path("reported", "linf_v1.toml")]
