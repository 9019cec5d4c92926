"""The training recipe of the ICML 2021 l_inf-dist net code, shared by the ``linf_v1`` and ``linf_mlp`` plugins.

:class:`V1Recipe` is the recipe on the training scaffold (a
:class:`harness.scaffold.EpochTrainer` that registers nothing: each plugin
subclasses it with its :meth:`~harness.scaffold.EpochTrainer.loss`) and
:class:`V1Options` its options.

Faithful to the paper (Section 7.1, Appendix D, Table 6) and its code
(github.com/zbh2047/L_inf-dist-net, ``main.py``, ``adamw.py``); see
shared/notes/original-implementations.md §2:

* ``--epochs e0,e1,e2,e3,T`` updated per mini-batch: p = 8 until e1, then
  exponential 8 → 1000 until e3, then ∞ until T; lr constant until e1, then
  cosine to 0 at T; eps_train linear from 0 at e0 to its value at e0 + e2
  (e2 = 0: constant from the first step, as every pure-net command). The
  options name them ``p_start_epoch`` (e1), ``p_end_epoch`` (e3),
  ``eps_warmup_epochs`` (e2); e0 is 0 in every command. With e1 = e3 p is ∞
  from the first step (the code divides by zero there; see
  :func:`harness.schedules.p_relaxation`).
* Adam(β 0.9, 0.99, eps 1e-10) with *decoupled* weight decay 5e-3 applied
  before each Adam step and scaled by the current lr: every row of a dist
  layer is decayed by the gradient of ½‖w‖_p² at the layer's current p (only
  its largest entry at p = ∞); every other parameter (biases, an MLP head)
  by plain decoupled decay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from harness.data import Augmentation
from harness.options import doc_field, epochs_field
from harness.scaffold import EpochTrainer, Step
from harness.schedules import SchedulePhase, cosine_annealing, p_relaxation, phases_in_epochs, ramp
from harness.train import TrainContext, TrainData
from harness_plugins.lib.lpdist import backend_name, lp_layers, set_p
from harness_plugins.lib.relaxation_options import check_adam_and_batches, check_positive, check_relaxation, relaxation_spans


def lp_decay_direction(rows: Tensor, p: float) -> Tensor:
    """The gradient of ½‖w‖_p² for each row of ``rows`` (O×I), computed without overflow.

    ∇ ½‖w‖_p² = (|w|/‖w‖_p)^(p−2) · w: the ratio is at most 1, so the power
    is safe for any p; it is formed from |w|/max|w| first, as the original
    ``adamw.py`` normalises by the row max. At p = ∞ only each row's largest
    entry (the first one on ties) is decayed.
    """
    if math.isinf(p):
        index = rows.abs().argmax(1, keepdim=True)
        return torch.zeros_like(rows).scatter_(1, index, rows.gather(1, index))
    scaled = rows.abs() / rows.abs().amax(1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
    norm = scaled.pow(p).sum(1, keepdim=True).pow(1 / p)  # in [1, I^(1/p)]: the max entry is 1
    ratio = scaled / norm
    return torch.where(ratio > 0, ratio.pow(p - 2), torch.zeros_like(ratio)) * rows


@torch.no_grad()
def decoupled_weight_decay_(model: nn.Module, lr: float, weight_decay: float) -> None:
    """Apply one step of the v1 weight decay to ``model`` in place (call before ``optimizer.step()``)."""
    if weight_decay == 0:
        return
    decayed: set[int] = set()
    for layer in lp_layers(model):
        rows = layer.weight.view(layer.weight.shape[0], -1)
        rows.sub_(lp_decay_direction(rows, layer.p), alpha=lr * weight_decay)
        decayed.add(id(layer.weight))
    for param in model.parameters():
        if id(param) not in decayed:
            param.mul_(1 - lr * weight_decay)


def hinge_mix(worse: Tensor, mix: float) -> Tensor:
    """The v1 code's ``hinge(mix)``: ``mix·mean_b max_j relu(worse) + (1 − mix)·mean_{b,j} relu(worse)``.

    ``worse`` is B×K with 0 at the label (so the mean over j counts it as 0).
    """
    hinge = worse.clamp_min(0)
    return mix * hinge.amax(1).mean() + (1 - mix) * hinge.mean()


def margins_to_label(logits: Tensor, labels: Tensor) -> Tensor:
    """``z_j − z_y`` for every class j (0 at the label), B×K."""
    return logits - logits.gather(1, labels[:, None])


@dataclass(frozen=True)
class V1Options:
    """Options common to the ICML 2021 recipes (pure net and hybrid)."""

    epochs: int = doc_field(400, "total epochs T")
    p_start_epoch: float = epochs_field(50, "p = p_start and constant lr until this epoch (e1)")
    p_end_epoch: float = epochs_field(350, "p reaches p_end here (e3), then p = ∞ until T")
    eps_warmup_epochs: float = epochs_field(0, "eps_train grows linearly from 0 over these epochs (e2; 0: constant)")
    p_start: float = doc_field(8.0, "initial p of the l_p relaxation")
    p_end: float = doc_field(1000.0, "p at the end of the relaxation, before switching to ∞")
    eps_train_ratio: float = doc_field(1.5, "eps_train = ratio × eps")
    kappa: float = doc_field(1.0, "weight of the robust loss; 1 − kappa goes to the clean loss")
    lr: float = doc_field(0.02, "Adam learning rate: constant until e1, then cosine to 0")
    weight_decay: float = doc_field(5e-3, "decoupled l_p weight decay (dist layers) / plain decay (others)")
    batch_size: int = doc_field(512, "mini-batch size")
    beta1: float = doc_field(0.9, "Adam β1")
    beta2: float = doc_field(0.99, "Adam β2")
    adam_eps: float = doc_field(1e-10, "Adam ε")
    crop_padding: int = doc_field(1, "random-crop padding (MNIST 1, CIFAR-10 4; 0 with crop_size)")
    crop_size: int = doc_field(0, "random crop size (0: the image size; TinyImageNet 56)")
    padding_mode: Literal["zeros", "edge"] = doc_field("zeros", "padding of the random crop (the v1 code pads zeros)")
    flip: bool = doc_field(False, "random horizontal flip (CIFAR-10, TinyImageNet)")

    def __post_init__(self) -> None:
        check_relaxation(self)
        if not 0 <= self.eps_warmup_epochs <= self.epochs:
            raise ValueError(f"need 0 <= eps_warmup_epochs <= epochs, got {self.eps_warmup_epochs}")
        check_positive(self, "eps_train_ratio", "lr", "adam_eps")
        if not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa must be in [0, 1], got {self.kappa}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay}")
        check_adam_and_batches(self)


@dataclass
class V1State:
    """What one run of a :class:`V1Recipe` owns besides the model and the optimiser."""

    eps_train: float  # eps_train at the end of its warm-up, in the net's normalised units


class V1Recipe(EpochTrainer):
    """The training recipe of the ICML 2021 code on the scaffold; subclasses define the loss.

    The scheduled values are ``lr``, ``p`` and ``eps_train`` (in the net's
    normalised units, warmed up); a subclass may add its own by extending
    :meth:`schedule`.
    """

    norms = ("inf",)
    state: V1State

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Adam parameter groups, each with an ``lr_scale`` relative to the scheduled lr."""
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]

    def start(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> V1State:
        return V1State(eps_train=self.options.eps_train_ratio * ctx.threat.eps / data.info.std)

    def checkpoint_state(self) -> dict[str, Any]:
        """Nothing: :meth:`start` rebuilds eps_train from the options and the threat, and the weight
        decay keeps no state (it reads each layer's p, which the schedule sets every step)."""
        return {}

    def restore_state(self, saved: dict[str, Any]) -> None:
        """Nothing to put back (see :meth:`checkpoint_state`)."""

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        o: V1Options = self.options
        groups = [{**g, "lr": o.lr * g["lr_scale"]} for g in self.parameter_groups(model)]
        return torch.optim.Adam(groups, betas=(o.beta1, o.beta2), eps=o.adam_eps)

    def augmentation(self, data: TrainData) -> Augmentation:
        o: V1Options = self.options
        return Augmentation(o.crop_padding, o.padding_mode, o.flip, o.crop_size)

    def schedule(self, step: Step) -> dict[str, float]:
        """lr constant while p = p_start, then cosine; p relaxed, then always ∞; eps_train warmed up from 0."""
        o: V1Options = self.options
        t = step.t
        return {
            "lr": cosine_annealing(t, o.lr, o.epochs, start=o.p_start_epoch),
            "p": p_relaxation(t, o.p_start_epoch, o.p_end_epoch, o.p_start, o.p_end, inf_threshold=0.0),
            "eps_train": self.state.eps_train * ramp(t, 0.0, o.eps_warmup_epochs),
        }

    def schedule_phases(self) -> list[SchedulePhase]:
        """p = p_start, the relaxation, p = ∞ (the v1 code always ends at ∞)."""
        o: V1Options = self.options
        return phases_in_epochs(o.epochs, *relaxation_spans(o, inf_threshold=0.0))

    def apply_schedule(self, model: nn.Module, values: Mapping[str, float]) -> None:
        set_p(model, values["p"])

    def describe_kernels(self, model: nn.Module, images: Tensor) -> dict[str, str]:
        return {"l_p-dist backend": backend_name(images)}

    def before_optimizer_step(self, model: nn.Module, values: Mapping[str, float]) -> None:
        decoupled_weight_decay_(model, values["lr"], self.options.weight_decay)

    def finish(self, model: nn.Module) -> None:
        set_p(model, math.inf)
        model.eval()
