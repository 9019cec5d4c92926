"""Built-in plugin: the l_inf-dist net + MLP head (Zhang et al., ICML 2021, Section 6 and Appendix F).

Registers the ``linf_dist_net_mlp`` model (fully connected or convolutional
dist backbone, FC-tanh-FC head), the ``linf_mlp`` trainer (Lipschitz box on
the features, IBP or CROWN-IBP through auto_LiRPA on the head), the paper's
presets (``registry/presets/linf_mlp.toml``) and reported numbers
(``registry/reported/linf_mlp.toml``). Certified by the ``ibp``,
``crown-ibp`` and ``crown`` certifiers of the ``lirpa`` plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl
from harness_registry import path

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from harness import Model, Trainer


@hookimpl
def register_models() -> list[type[Model]]:
    from harness_plugins.linf_mlp.model import LinfDistNetMLPModel

    return [LinfDistNetMLPModel]


@hookimpl
def register_trainers() -> list[type[Trainer]]:
    from harness_plugins.linf_mlp.trainer import LinfMLPTrainer

    return [LinfMLPTrainer]


@hookimpl
def register_presets() -> list[Traversable]:
    return [path("presets", "linf_mlp.toml")]


@hookimpl
def register_reported_results() -> list[Traversable]:
    return [path("reported", "linf_mlp.toml")]
