"""harness-example-plugin: a complete third-party plugin for harness, to copy from.

The entry point ``example`` (group ``harness``, in ``pyproject.toml``) names this
module; its ``@hookimpl`` functions register

* the model ``relu_mlp`` (:mod:`.models`): a plain ``nn.Sequential`` of Flatten,
  Linear and ReLU layers, so the built-in ``liplt``, ``lipschitz-naive``, ``ibp``,
  ``crown-ibp`` and ``crown`` certifiers apply to it too;
* the trainer ``lmt`` (:mod:`.trainer`): Lipschitz-margin training on the
  :class:`harness.scaffold.EpochTrainer` loop;
* the attacker ``fgsm`` (:mod:`.attacks`): one gradient step under l_inf or l2;
* the certifier ``global-lipschitz`` (:mod:`.certifiers`): certified iff the
  logit margin exceeds ``c·eps·L``, with ``L`` the product of the layers' norms;
* presets (``presets.toml``) and one reported row (``reported.toml``).

The trainer and the certifier share the bound through :mod:`.bounds`, a module
that registers nothing. The hooks import the components when they are called,
so loading the plugin (every ``harness`` command does, ``--help`` included)
imports no torch.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

from harness import hookimpl

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from harness import Attacker, Certifier, Model, Trainer


@hookimpl
def register_models() -> list[type[Model]]:
    from harness_example.models import ReluMLP

    return [ReluMLP]


@hookimpl
def register_trainers() -> list[type[Trainer]]:
    from harness_example.trainer import LMTTrainer

    return [LMTTrainer]


@hookimpl
def register_attackers() -> list[type[Attacker]]:
    from harness_example.attacks import FGSM

    return [FGSM]


@hookimpl
def register_certifiers() -> list[type[Certifier]]:
    from harness_example.certifiers import GlobalLipschitz

    return [GlobalLipschitz]


@hookimpl
def register_presets() -> list[Traversable]:
    return [files(__name__) / "presets.toml"]


@hookimpl
def register_reported_results() -> list[Traversable]:
    return [files(__name__) / "reported.toml"]
