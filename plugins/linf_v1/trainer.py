"""Training of the l_inf-dist net (Zhang et al., ICML 2021) with its code's hinge loss.

Loss (``main.py``, ``Loss`` wrapping ``hinge(mix)``): with
``worse_j = z_j − z_y + θ`` (0 at the label) and θ = 2·eps_train in the
network's normalised units,
``kappa·hinge(worse) + (1 − kappa)·hinge(z − z_y)``, where
``hinge(v) = mix·mean_b max_j relu(v) + (1 − mix)·mean_{b,j} relu(v)``
(every command uses kappa = 1; mix 0.75 on MNIST and CIFAR-10, 1.0 on
Fashion-MNIST). The schedules and the l_p weight decay are in
:mod:`.training`. Random crop pads with zeros (torchvision's default), plus a
horizontal flip on CIFAR-10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from harness import Trainer
from harness.data import Augmentation
from harness.options import doc_field, epochs_field
from harness.train import TrainContext, TrainData
from harness_plugins.linf_v1.training import (
    V1Schedule,
    decoupled_weight_decay_,
    hinge_mix,
    margins_to_label,
)
from harness_plugins.lpdist import set_p
from harness_plugins.lpdist.models import SOURCE  # the ICML 2021 paper and its code


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
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.p_start_epoch <= self.p_end_epoch <= self.epochs:
            raise ValueError(
                f"need 0 <= p_start_epoch <= p_end_epoch <= epochs, got {self.p_start_epoch}, {self.p_end_epoch}, {self.epochs}"
            )
        if not 0 <= self.eps_warmup_epochs <= self.epochs:
            raise ValueError(f"need 0 <= eps_warmup_epochs <= epochs, got {self.eps_warmup_epochs}")
        if not 1 <= self.p_start <= self.p_end < math.inf:
            raise ValueError(f"need 1 <= p_start <= p_end < inf, got {self.p_start}, {self.p_end}")
        for name, value in (("eps_train_ratio", self.eps_train_ratio), ("lr", self.lr), ("adam_eps", self.adam_eps)):
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa must be in [0, 1], got {self.kappa}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay}")
        for name, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= value < 1:
                raise ValueError(f"Adam {name} must be in [0, 1), got {value}")
        if self.batch_size < 1 or self.crop_padding < 0 or self.crop_size < 0:
            raise ValueError(
                f"need batch_size >= 1, crop_padding >= 0, crop_size >= 0; got {self.batch_size}, {self.crop_padding}, {self.crop_size}"
            )


@dataclass(frozen=True)
class LinfV1Options(V1Options):
    hinge_mix: float = doc_field(0.75, "hinge = mix·(max over classes) + (1 − mix)·(mean over classes)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.hinge_mix <= 1:
            raise ValueError(f"hinge_mix must be in [0, 1], got {self.hinge_mix}")


class V1Recipe(Trainer):
    """The training loop of the ICML 2021 code; subclasses define the loss."""

    norms = ("inf",)

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Adam parameter groups, each with an ``lr_scale`` relative to the scheduled lr."""
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, eps_train: float, t: float) -> tuple[Tensor, Tensor, dict[str, float]]:
        """``(loss, clean logits, extra metrics)`` of one mini-batch; ``eps_train`` in normalised units."""
        raise NotImplementedError

    def fit(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> None:
        o: V1Options = self.options
        schedule = V1Schedule(o.epochs, o.p_start_epoch, o.p_end_epoch, o.p_start, o.p_end, o.lr, o.eps_warmup_epochs)
        eps_train = o.eps_train_ratio * ctx.threat.eps / data.info.std  # in the net's normalised units
        groups = self.parameter_groups(model)
        optimizer = torch.optim.Adam(
            [{"params": g["params"], "lr": o.lr * g["lr_scale"]} for g in groups],
            betas=(o.beta1, o.beta2),
            eps=o.adam_eps,
        )
        augmentation = Augmentation(o.crop_padding, o.padding_mode, o.flip, o.crop_size)
        steps = data.steps_per_epoch(o.batch_size)
        model.train()
        for epoch in range(o.epochs):
            sums: dict[str, float] = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
            with ctx.progress.task(f"epoch {epoch + 1}/{o.epochs}", total=steps) as task:
                for step, (images, labels) in enumerate(data.batches(o.batch_size, ctx.generator, augmentation)):
                    t = epoch + step / steps
                    p, lr = schedule.p(t), schedule.learning_rate(t)
                    set_p(model, p)
                    for group, spec in zip(optimizer.param_groups, groups):
                        group["lr"] = lr * spec["lr_scale"]
                    loss, logits, extra = self.loss(model, images, labels, eps_train * schedule.eps_fraction(t), t)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    decoupled_weight_decay_(model, lr, o.weight_decay)
                    optimizer.step()
                    n = labels.shape[0]
                    sums["loss"] += loss.item() * n
                    sums["correct"] += (logits.argmax(1) == labels).sum().item()
                    sums["seen"] += n
                    for key, value in extra.items():
                        sums[key] = sums.get(key, 0.0) + value * n
                    shown = {k: v / sums["seen"] for k, v in sums.items() if k not in ("correct", "seen")}
                    task.advance(1, p=f"{p:.4g}", **shown, acc=f"{sums['correct'] / sums['seen']:.2%}", lr=f"{lr:.3g}")
        set_p(model, math.inf)
        model.eval()


class LinfV1Trainer(V1Recipe):
    name = "linf_v1"
    description = "l_inf-dist net (ICML 2021): hinge loss, l_p relaxation 8 → ∞, l_p weight decay"
    source = SOURCE
    model = "linf_dist_net"
    Options = LinfV1Options

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, eps_train: float, t: float) -> tuple[Tensor, Tensor, dict[str, float]]:
        o: LinfV1Options = self.options
        logits = model(images)
        clean = margins_to_label(logits, labels)
        worse = (clean + 2 * eps_train).scatter(1, labels[:, None], 0.0)  # θ = 2·eps_train
        loss = o.kappa * hinge_mix(worse, o.hinge_mix)
        if o.kappa < 1:
            loss = loss + (1 - o.kappa) * hinge_mix(clean, o.hinge_mix)
        return loss, logits, {}
