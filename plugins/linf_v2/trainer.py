"""Training of the l_inf-dist net v2 (Zhang et al., ICLR 2022).

Faithful to the paper (Appendix B, Table 3) and its code (``main.py``):

* loss = clipped hinge + λ·CE(s·z, y), where the hinge is
  ``min(max(0, max_{j≠y} (z_j − z_y)/θ + 1), 1)`` with θ = 2·eps_train in the
  network's normalised units, and ``s`` is a learnable logit scale (init 1)
  trained at lr/5;
* p = 8 until ``p_start_epoch``, then exponential to ``p_end`` at
  ``p_end_epoch``, then ∞ (if p_end ≥ 100, as in the code); everything is
  updated per mini-batch; the model is evaluated at p = ∞ in any case; with
  ``p_start_epoch == p_end_epoch`` p = ∞ and λ = λ_end from the first step, as
  the code's ``cal_ratio`` makes it;
* λ = λ0·(λ_end/λ0)^r, r the progress of the p schedule (0 before, 1 after):
  λ0 during p = 8, decaying while p grows, λ_end once p = ∞ (the code keeps
  λ_end; the paper's text says λ vanishes);
* Adam(β 0.9, 0.99, eps 1e-10), no weight decay, cosine lr from epoch 0;
* eps_train constant from the first step (no eps warm-up in the pure-net commands);
* random crop with padding (edge mode), and horizontal flip on CIFAR-10.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.data import Augmentation
from harness.options import doc_field, epochs_field
from harness.scaffold import BatchLoss, EpochTrainer, Step
from harness.schedules import V2_INF_THRESHOLD, SchedulePhase, cosine_annealing, geometric, p_relaxation, phases_in_epochs, ramp
from harness.train import TrainContext, TrainData
from harness_plugins.lib import citations
from harness_plugins.lib.lpdist import backend_name, set_p
from harness_plugins.lib.relaxation_options import check_adam_and_batches, check_positive, check_relaxation, relaxation_spans


@dataclass(frozen=True)
class LinfV2Options:
    epochs: int = doc_field(450, "total epochs T")
    p_start_epoch: float = epochs_field(25, "p = p_start until this epoch (e1)")
    p_end_epoch: float = epochs_field(400, "p reaches p_end here (e1 + e2), then p = ∞")
    p_start: float = doc_field(8.0, "initial p of the l_p relaxation")
    p_end: float = doc_field(1000.0, "p at the end of the relaxation, before switching to ∞")
    eps_train_ratio: float = doc_field(1.5, "eps_train = ratio × eps; hinge threshold θ = 2·eps_train")
    lam0: float = doc_field(0.05, "CE mixing coefficient λ0 while p = p_start")
    lam_end: float = doc_field(2e-4, "λ at the end of the p schedule")
    lr: float = doc_field(0.03, "Adam learning rate (cosine-annealed to 0)")
    scale_lr_ratio: float = doc_field(0.2, "the logit scale's lr as a fraction of lr (paper: one fifth)")
    batch_size: int = doc_field(512, "mini-batch size")
    beta1: float = doc_field(0.9, "Adam β1")
    beta2: float = doc_field(0.99, "Adam β2")
    adam_eps: float = doc_field(1e-10, "Adam ε")
    crop_padding: int = doc_field(1, "random-crop padding (MNIST 1, CIFAR-10 3)")
    padding_mode: Literal["zeros", "edge"] = doc_field("edge", "padding of the random crop (the v2 code pads the edge)")
    flip: bool = doc_field(False, "random horizontal flip (CIFAR-10)")

    def __post_init__(self) -> None:
        check_relaxation(self)
        check_positive(self, "eps_train_ratio", "lam0", "lam_end", "lr", "scale_lr_ratio", "adam_eps")
        check_adam_and_batches(self)


def clipped_hinge(logits: torch.Tensor, labels: torch.Tensor, theta: float) -> torch.Tensor:
    """mean over the batch of min(max(0, max_{j≠y}(z_j − z_y)/θ + 1), 1)."""
    target = logits.gather(1, labels[:, None])
    worst = (logits - target) / theta + 1
    worst = worst.scatter(1, labels[:, None], float("-inf"))
    return worst.amax(1).clamp(0, 1).mean()


@dataclass
class LinfV2State:
    """What one run of :class:`LinfV2Trainer` owns besides the model and the optimiser."""

    scale: nn.Parameter  # the learnable logit scale s (init 1), for the CE term only
    theta: float  # the hinge threshold 2·eps_train, in the net's normalised units


class LinfV2Trainer(EpochTrainer):
    name = "linf_v2"
    description = "l_inf-dist net v2: clipped hinge + scaled cross-entropy, λ decaying with the p schedule"
    source = citations.LINF_DIST_NET_V2
    model = "linf_dist_net"
    norms = ("inf",)
    Options = LinfV2Options
    state: LinfV2State

    def start(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> LinfV2State:
        eps_train = self.options.eps_train_ratio * ctx.threat.eps / data.info.std  # in the net's normalised units
        return LinfV2State(scale=nn.Parameter(torch.ones((), device=ctx.device)), theta=2 * eps_train)

    def checkpoint_state(self) -> dict[str, Any]:
        """The logit scale (θ comes back from the options and the threat)."""
        return {"scale": self.state.scale.detach()}

    def restore_state(self, saved: dict[str, Any]) -> None:
        with torch.no_grad():  # in place: the optimiser holds this parameter
            self.state.scale.copy_(saved["scale"])

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        o: LinfV2Options = self.options
        return torch.optim.Adam(
            [
                {"params": list(model.parameters()), "lr": o.lr},
                {"params": [self.state.scale], "lr": o.lr * o.scale_lr_ratio, "lr_scale": o.scale_lr_ratio},
            ],
            betas=(o.beta1, o.beta2),
            eps=o.adam_eps,
        )

    def augmentation(self, data: TrainData) -> Augmentation:
        o: LinfV2Options = self.options
        return Augmentation(o.crop_padding, o.padding_mode, o.flip)

    def schedule(self, step: Step) -> dict[str, float]:
        """p and λ follow the relaxation's progress r (λ0·(λ_end/λ0)^r); the lr is cosine from epoch 0."""
        o: LinfV2Options = self.options
        t = step.t
        return {
            "lr": cosine_annealing(t, o.lr, o.epochs),
            "p": p_relaxation(t, o.p_start_epoch, o.p_end_epoch, o.p_start, o.p_end),
            "lam": geometric(o.lam0, o.lam_end, ramp(t, o.p_start_epoch, o.p_end_epoch)),
        }

    def schedule_phases(self) -> list[SchedulePhase]:
        """p = p_start (λ0), the relaxation (λ decaying), p = ∞ (λ_end; p_end if below 100, as the code)."""
        o: LinfV2Options = self.options
        return phases_in_epochs(o.epochs, *relaxation_spans(o, inf_threshold=V2_INF_THRESHOLD))

    def apply_schedule(self, model: nn.Module, values: Mapping[str, float]) -> None:
        set_p(model, values["p"])

    def describe_kernels(self, model: nn.Module, images: Tensor) -> dict[str, str]:
        return {"l_p-dist backend": backend_name(images)}

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        with self.timer("forward"):
            logits = model(images)
        hinge = clipped_hinge(logits, labels, self.state.theta)
        ce = F.cross_entropy(self.state.scale * logits, labels)
        loss = hinge + values["lam"] * ce
        return BatchLoss(loss, logits, {"hinge": hinge.item(), "ce": ce.item()})

    def finish(self, model: nn.Module) -> None:
        set_p(model, math.inf)
        model.eval()
