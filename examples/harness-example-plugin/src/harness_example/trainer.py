"""The ``lmt`` trainer: Lipschitz-margin training (Tsuzuku, Sato, Sugiyama, NeurIPS 2018) on the scaffold.

LMT trains the certificate it will be checked by: every logit but the label's is
raised by ``c·eps_train·L`` before the cross-entropy, with ``L`` the same bound on
the network's Lipschitz constant that ``global-lipschitz`` certifies with
(:func:`harness_example.bounds.lipschitz_bound`, differentiable). Once the raised
label logit wins, the sample is certified at ``eps_train``. The paper bounds the l2
constant by power iteration on each layer; here the l2 bound is the product of
Frobenius norms (looser, but an upper bound without iterations) and the l_inf bound
the product of induced l_inf norms. eps_train grows linearly from 0 over the first
``warmup_epochs``; Adam with a cosine learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import UsageError
from harness.options import doc_field, epochs_field
from harness.scaffold import BatchLoss, EpochTrainer, Step
from harness.schedules import cosine_annealing, ramp
from harness.train import TrainContext, TrainData
from harness_example import bounds, sources


@dataclass(frozen=True)
class LMTOptions:
    epochs: int = doc_field(10, "training epochs")
    batch_size: int = doc_field(128, "mini-batch size")
    lr: float = doc_field(5e-3, "Adam's learning rate, cosine-annealed to 0")
    eps_train_ratio: float = doc_field(1.0, "train at eps_train = this × the threat model's eps")
    warmup_epochs: float = epochs_field(3.0, "eps_train grows linearly from 0 over these epochs")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.eps_train_ratio < 0 or self.warmup_epochs < 0:
            raise ValueError("epochs, batch_size and lr must be positive, eps_train_ratio and warmup_epochs non-negative")


@dataclass(frozen=True)
class LMTState:
    """What one run needs besides the model and the optimiser: the threat it trains for."""

    norm: str
    eps_train: float


class LMTTrainer(EpochTrainer):
    name = "lmt"
    description = "Lipschitz-margin training: cross-entropy with the other logits raised by c·eps·L (global product bound)"
    source = sources.LMT
    model = "relu_mlp"
    models = ("relu_mlp",)
    norms = ("inf", "2")
    Options = LMTOptions

    def start(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> LMTState:
        refusal = bounds.refusal(model)
        if refusal is not None:
            raise UsageError(f"trainer 'lmt' needs a ReLU MLP: {refusal}; train --model relu_mlp")
        return LMTState(norm=ctx.threat.norm, eps_train=self.options.eps_train_ratio * ctx.threat.eps)

    def checkpoint_state(self) -> dict[str, Any]:
        return {}  # start() rebuilds the state from the threat: nothing to keep, and the run can resume

    def restore_state(self, saved: dict[str, Any]) -> None:
        pass

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.options.lr)

    def schedule(self, step: Step) -> dict[str, float]:
        o = self.options
        return {
            "lr": cosine_annealing(step.t, o.lr, o.epochs),
            "eps": self.state.eps_train * ramp(step.t, 0.0, o.warmup_epochs),
        }

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        logits = model(images)
        lipschitz = bounds.lipschitz_bound(model, self.state.norm)
        others = 1.0 - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        raised = logits + bounds.margin_factor(self.state.norm) * values["eps"] * lipschitz * others
        return BatchLoss(F.cross_entropy(raised, labels), logits, {"L": lipschitz.item()})
