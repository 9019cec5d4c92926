"""Built-in plugin: CRM with LipLT (Fazlyab, Entesari, Roy, Chellappa, NeurIPS 2023).

Registers the ``crm_net`` model (4C3F / 6C2F / 8C2F ReLU networks), the
``crm`` trainer (cross-entropy + λ·soft-min certified radius with pairwise
LipLT constants, l2 as the paper and l_inf as an extension), its presets
(``registry/presets/crm.toml``) and the paper's numbers
(``registry/reported/crm.toml``). Its networks are certified by the
``liplt`` and ``lipschitz-naive`` certifiers of the ``liplt`` plugin and by
auto_LiRPA's ``crown`` (``lirpa`` plugin).
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
    from harness_plugins.crm.model import CRMNetModel

    return [CRMNetModel]


@hookimpl
def register_trainers() -> list[type[Trainer]]:
    from harness_plugins.crm.trainer import CRMTrainer

    return [CRMTrainer]


@hookimpl
def register_presets() -> list[Traversable]:
    return [path("presets", "crm.toml")]


@hookimpl
def register_reported_results() -> list[Traversable]:
    return [path("reported", "crm.toml")]
