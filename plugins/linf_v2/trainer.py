"""Training of the l_inf-dist net v2 (Zhang et al., ICLR 2022).

Faithful to the paper (Appendix B, Table 3) and its code (``main.py``):

* loss = clipped hinge + λ·CE(s·z, y), where the hinge is
  ``min(max(0, max_{j≠y} (z_j − z_y)/θ + 1), 1)`` with θ = 2·eps_train in the
  network's normalised units, and ``s`` is a learnable logit scale (init 1)
  trained at lr/5;
* p = 8 until ``p_start_epoch``, then exponential to ``p_end`` at
  ``p_end_epoch``, then ∞ (if p_end ≥ 100, as in the code); everything is
  updated per mini-batch; the model is evaluated at p = ∞ in any case;
* λ = λ0·(λ_end/λ0)^r, r the progress of the p schedule (0 before, 1 after):
  λ0 during p = 8, decaying while p grows, λ_end once p = ∞ (the code keeps
  λ_end; the paper's text says λ vanishes);
* Adam(β 0.9, 0.99, eps 1e-10), no weight decay, cosine lr from epoch 0;
* eps_train constant from the first step (no eps warm-up in the pure-net commands);
* random crop with padding (edge mode), and horizontal flip on CIFAR-10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness import Trainer
from harness.data import Augmentation
from harness.options import doc_field, epochs_field
from harness.train import TrainContext, TrainData, cosine_lr
from harness_plugins.lib import citations
from harness_plugins.lib.lpdist import set_p


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
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.p_start_epoch <= self.p_end_epoch <= self.epochs:
            raise ValueError(
                f"need 0 <= p_start_epoch <= p_end_epoch <= epochs, got {self.p_start_epoch}, {self.p_end_epoch}, {self.epochs}"
            )
        if not 1 <= self.p_start <= self.p_end < math.inf:
            raise ValueError(f"need 1 <= p_start <= p_end < inf, got {self.p_start}, {self.p_end}")
        positive = {"eps_train_ratio": self.eps_train_ratio, "lam0": self.lam0, "lam_end": self.lam_end, "lr": self.lr,
                    "scale_lr_ratio": self.scale_lr_ratio, "adam_eps": self.adam_eps}
        for name, value in positive.items():
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= value < 1:
                raise ValueError(f"Adam {name} must be in [0, 1), got {value}")
        if self.batch_size < 1 or self.crop_padding < 0:
            raise ValueError(f"need batch_size >= 1 and crop_padding >= 0, got {self.batch_size}, {self.crop_padding}")


@dataclass(frozen=True)
class Schedule:
    """p, λ and lr as functions of training progress in epochs (fractional)."""

    o: LinfV2Options

    def relaxation(self, t: float) -> float:
        """Progress r ∈ [0, 1] of the p schedule."""
        span = self.o.p_end_epoch - self.o.p_start_epoch
        if span <= 0:
            return 0.0 if t < self.o.p_start_epoch else 1.0
        return min(max((t - self.o.p_start_epoch) / span, 0.0), 1.0)

    def p(self, t: float) -> float:
        if t >= self.o.p_end_epoch:
            # As the v2 code: the switch to ∞ happens only for a schedule that ends at a large p.
            return math.inf if self.o.p_end >= 100 else self.o.p_end
        return self.o.p_start * (self.o.p_end / self.o.p_start) ** self.relaxation(t)

    def lam(self, t: float) -> float:
        return self.o.lam0 * (self.o.lam_end / self.o.lam0) ** self.relaxation(t)

    def lr(self, t: float) -> float:
        return cosine_lr(self.o.lr, t / self.o.epochs)


def clipped_hinge(logits: torch.Tensor, labels: torch.Tensor, theta: float) -> torch.Tensor:
    """mean over the batch of min(max(0, max_{j≠y}(z_j − z_y)/θ + 1), 1)."""
    target = logits.gather(1, labels[:, None])
    worst = (logits - target) / theta + 1
    worst = worst.scatter(1, labels[:, None], float("-inf"))
    return worst.amax(1).clamp(0, 1).mean()


class LinfV2Trainer(Trainer):
    name = "linf_v2"
    description = "l_inf-dist net v2: clipped hinge + scaled cross-entropy, λ decaying with the p schedule"
    source = citations.LINF_DIST_NET_V2
    model = "linf_dist_net"
    norms = ("inf",)
    Options = LinfV2Options

    def fit(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> None:
        o: LinfV2Options = self.options
        schedule = Schedule(o)
        std = data.info.std
        eps_train = o.eps_train_ratio * ctx.threat.eps / std  # in the net's normalised units
        theta = 2 * eps_train
        scale = nn.Parameter(torch.ones((), device=ctx.device))  # learnable logit scale s, for CE only
        optimizer = torch.optim.Adam(
            [
                {"params": list(model.parameters()), "lr": o.lr},
                {"params": [scale], "lr": o.lr * o.scale_lr_ratio},
            ],
            betas=(o.beta1, o.beta2),
            eps=o.adam_eps,
        )
        augmentation = Augmentation(o.crop_padding, o.padding_mode, o.flip)
        steps = data.steps_per_epoch(o.batch_size)
        model.train()
        for epoch in range(o.epochs):
            sums = {"loss": 0.0, "hinge": 0.0, "ce": 0.0, "correct": 0.0, "seen": 0.0}
            with ctx.progress.task(f"epoch {epoch + 1}/{o.epochs}", total=steps) as task:
                for step, (images, labels) in enumerate(data.batches(o.batch_size, ctx.generator, augmentation)):
                    t = epoch + step / steps
                    p, lam, lr = schedule.p(t), schedule.lam(t), schedule.lr(t)
                    set_p(model, p)
                    optimizer.param_groups[0]["lr"] = lr
                    optimizer.param_groups[1]["lr"] = lr * o.scale_lr_ratio
                    logits = model(images)
                    hinge = clipped_hinge(logits, labels, theta)
                    ce = F.cross_entropy(scale * logits, labels)
                    loss = hinge + lam * ce
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    n = labels.shape[0]
                    sums["loss"] += loss.item() * n
                    sums["hinge"] += hinge.item() * n
                    sums["ce"] += ce.item() * n
                    sums["correct"] += (logits.argmax(1) == labels).sum().item()
                    sums["seen"] += n
                    task.advance(
                        1,
                        p=f"{p:.4g}",
                        loss=sums["loss"] / sums["seen"],
                        hinge=sums["hinge"] / sums["seen"],
                        acc=f"{sums['correct'] / sums['seen']:.2%}",
                        lr=f"{lr:.3g}",
                    )
        set_p(model, math.inf)
        model.eval()
