"""Certified Radius Maximisation with LipLT (Fazlyab et al., NeurIPS 2023), as its code trains.

Every step (``train.py``, ``NetworkModels.py``): the pairwise constants
``L_pq`` of the current weights by LipLT (:mod:`harness_plugins.lib.liplt.power`:
warm-started power iteration under l2, with gradients through the
iterations; exact pair row norms), then ``CE + λ·R`` (:mod:`.loss`), where
``R`` is active from ``robust_start_epoch`` on. Adam (0.9, 0.999, eps 1e-7,
no weight decay); the lr is constant until ``lr_decay_epoch``, then multiplied
every epoch by ``(lr_min/lr)^(1/(epochs − lr_decay_epoch))`` so that it reaches
``lr_min`` at the last epoch (``ExponentialLRWithStopping``). The code trains on 90 %
of the training split (``random_split`` after ``manual_seed(1)``; the rest is
its validation set): ``train_fraction``.

Under l2 the power-iteration vectors of the last step are kept in the model
(:class:`~harness_plugins.lib.liplt.estimate.PowerVectorsSequential`), as the
code saves them, for the ``liplt-estimate`` certifier (the code's protocol).

Under ``--norm inf`` (not in the code, which is l2 only) the same loss runs
with LipLT in induced l_inf norms, estimated from the largest rows
(:class:`~harness_plugins.lib.liplt.power.RowSumEstimate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import UsageError
from harness.options import doc_field, epochs_field
from harness.scaffold import BatchLoss, EpochTrainer, Step
from harness.schedules import SchedulePhase, exponential_lr_with_stopping, phases_in_epochs
from harness.train import TrainContext, TrainData
from harness_plugins.crm.augment import RandomAffine
from harness_plugins.crm.loss import robust_term
from harness_plugins.lib import citations
from harness_plugins.lib.liplt.chain import Chain
from harness_plugins.lib.liplt.estimate import PowerVectorsSequential
from harness_plugins.lib.liplt.power import PowerIteration, RowSumEstimate, pairwise


@dataclass(frozen=True)
class CRMOptions:
    epochs: int = doc_field(400, "total epochs T")
    lr: float = doc_field(1e-3, "Adam learning rate")
    lr_decay_epoch: float = epochs_field(25, "constant lr until this epoch, then exponential decay to lr_min at T")
    lr_min: float = doc_field(1e-6, "the lr at the last epoch")
    batch_size: int = doc_field(512, "mini-batch size")
    lam: float = doc_field(30.0, "λ, weight of the certified-radius term")
    r0: float = doc_field(2.2, "penalise samples whose smallest radius is below r0 (radius units, see radius_units)")
    temperature: float = doc_field(5.0, "t of the soft-min over radii (the code's 'alpha')")
    robust_kind: Literal["softmax", "max"] = doc_field("softmax", "g(d): minus the soft-min radius (softmax, every command) or exp(-t·min d)/t")
    robust_start_epoch: float = epochs_field(10, "cross-entropy only before this epoch")
    regularize_misclassified: bool = doc_field(False, "also penalise misclassified samples (code flag, off)")
    radius_units: Literal["pixel", "model-input"] = doc_field(
        "pixel", "radii for r0 and t in raw pixels, or in the model's input space (the code's CIFAR-10: [-1,1], twice the pixel radius)"
    )
    power_iterations: int = doc_field(10, "power iterations per step (MNIST 10, CIFAR-10/TinyImageNet 5)")
    pairwise_class_limit: int = doc_field(101, "above this many classes the last layer is bounded naively, as the code (0: never)")
    linf_rows: int = doc_field(8, "l_inf training: rows per product kept between exact sweeps")
    linf_refresh: int = doc_field(200, "l_inf training: steps between exact sweeps over all rows")
    train_fraction: float = doc_field(0.9, "train on this seeded fraction of the training split (the code holds out 10%)")
    degrees: float = doc_field(0.0, "RandomAffine rotation (CIFAR-10 10, TinyImageNet 20; the code ignores it on MNIST)")
    translate: float = doc_field(0.0, "RandomAffine translation fraction (CIFAR-10 0.1, TinyImageNet 0.2)")
    flip: bool = doc_field(False, "random horizontal flip (CIFAR-10, TinyImageNet)")
    fill: float = doc_field(0.5, "RandomAffine fill in pixels (the code fills 0 after normalising to [-1,1]: grey)")
    adam_eps: float = doc_field(1e-7, "Adam ε")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.power_iterations < 1:
            raise ValueError("epochs, batch_size and power_iterations must be >= 1")
        if not 0 <= self.lr_decay_epoch <= self.epochs or not 0 <= self.robust_start_epoch <= self.epochs:
            raise ValueError(f"lr_decay_epoch and robust_start_epoch must be in [0, epochs], got {self.lr_decay_epoch}, {self.robust_start_epoch}")
        for name in ("lr", "lr_min", "r0", "temperature", "adam_eps"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not 0 <= self.lam < math.inf or not 0 < self.train_fraction <= 1:
            raise ValueError(f"need lam >= 0 and 0 < train_fraction <= 1, got {self.lam}, {self.train_fraction}")
        if self.linf_rows < 1 or self.linf_refresh < 1 or self.pairwise_class_limit < 0:
            raise ValueError("linf_rows and linf_refresh must be >= 1, pairwise_class_limit >= 0")


@dataclass
class CRMState:
    """What one run of :class:`CRMTrainer` owns besides the model and the optimiser."""

    chain: Chain  # the model read as a chain of linear maps and activations
    estimator: PowerIteration | RowSumEstimate  # warm-started across steps
    norm: str  # the threat's norm, "2" or "inf"
    radius_scale: float  # pixel radii to the radius units of r0 and t
    full_pairs: bool  # pairwise LipLT up to the logits (else the last layer naively)


def holdout_split(n: int, fraction: float) -> torch.Tensor:
    """Indices kept for training: ``random_split`` with ``manual_seed(1)``, as the code."""
    if fraction >= 1:
        return torch.arange(n)
    keep = math.floor(n * fraction)
    return torch.randperm(n, generator=torch.Generator().manual_seed(1))[:keep].sort().values


class CRMTrainer(EpochTrainer):
    name = "crm"
    description = "CRM (NeurIPS 2023): cross-entropy + λ·soft-min certified radius from LipLT pairwise constants"
    source = citations.CRM_LIPLT
    model = "crm_net"
    norms = ("2", "inf")
    Options = CRMOptions

    state: CRMState

    def training_data(self, data: TrainData, ctx: TrainContext) -> TrainData:
        """The code's 90 % of the training split (``train_fraction``); refused if that leaves no sample."""
        fraction = self.options.train_fraction
        keep = holdout_split(len(data), fraction).to(data.images.device)
        if len(keep) == 0:
            enough = math.ceil(1 / fraction)
            enough += math.floor(enough * fraction) < 1  # float rounding
            raise UsageError(
                f"trainer 'crm' trains on train_fraction={fraction:g} of the training samples, which leaves none of {len(data)}; "
                f"give --train-samples {enough} or more (or --set trainer.train_fraction=1)"
            )
        return TrainData(data.info, data.images[keep], data.labels[keep])

    def start(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> CRMState:
        o: CRMOptions = self.options
        example = data.images[:64].float().div(255)  # checks the chain against the model on real images
        model.eval()
        chain = Chain.from_module(model, example)
        estimator: PowerIteration | RowSumEstimate
        if ctx.threat.norm == "2":
            estimator = PowerIteration(chain, torch.Generator(device=ctx.generator.device).manual_seed(ctx.seed))
        else:
            estimator = RowSumEstimate(chain, rows=o.linf_rows, refresh=o.linf_refresh)
        return CRMState(
            chain=chain,
            estimator=estimator,
            norm=ctx.threat.norm,
            radius_scale=getattr(model, "input_scale", 1.0) if o.radius_units == "model-input" else 1.0,
            full_pairs=o.pairwise_class_limit == 0 or data.info.num_classes <= o.pairwise_class_limit,
        )

    def checkpoint_state(self) -> dict[str, Any]:
        """The estimator's warm start: the power-iteration vectors (l2), or the step count and kept rows (l_inf).

        The chain is the model's own layers, and the rest of :class:`CRMState` follows from the options,
        the data and the threat: :meth:`start` rebuilds them.
        """
        return {"estimator": self.state.estimator.state_dict()}

    def restore_state(self, saved: dict[str, Any]) -> None:
        self.state.estimator.load_state_dict(saved["estimator"])

    def finish(self, model: nn.Module) -> None:
        """Evaluated form, with the l2 power-iteration vectors kept in the model as the code saves them (its test.py starts from them)."""
        super().finish(model)
        state = getattr(self, "state", None)  # None when finish() runs without a training (a model's evaluated form)
        estimator = state.estimator if state is not None else None
        if isinstance(model, PowerVectorsSequential) and isinstance(estimator, PowerIteration):
            method = "liplt" if self.state.full_pairs else "liplt-last-naive"
            model.keep_power_vectors(estimator.state_dict()["vectors"], self.options.power_iterations, method)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.options.lr, betas=(0.9, 0.999), eps=self.options.adam_eps)

    def augmentation(self, data: TrainData) -> RandomAffine:
        o: CRMOptions = self.options
        return RandomAffine(o.degrees, o.translate, o.flip, o.fill)

    def schedule(self, step: Step) -> dict[str, float]:
        """The lr per whole epoch (``ExponentialLRWithStopping``); ``robust`` 1 from ``robust_start_epoch`` on, else 0."""
        o: CRMOptions = self.options
        return {
            "lr": exponential_lr_with_stopping(step.epoch, o.lr, o.lr_min, o.lr_decay_epoch, o.epochs),
            "robust": 1.0 if step.epoch >= o.robust_start_epoch else 0.0,
        }

    def schedule_phases(self) -> list[SchedulePhase]:
        """Cross-entropy alone (its constants computed, without gradients), then with the certified-radius term."""
        o: CRMOptions = self.options
        start = math.ceil(o.robust_start_epoch)  # the schedule switches at a whole epoch
        return phases_in_epochs(o.epochs, ("warm-up (CE)", 0, start), ("robust (CE + λ·R)", start, o.epochs))

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        o: CRMOptions = self.options
        state = self.state
        robust = values["robust"] > 0
        with self.timer("forward"):
            logits = model(images)
        ce = F.cross_entropy(logits, labels)
        with torch.set_grad_enabled(robust):
            norms = state.estimator.norms(o.power_iterations) if state.norm == "2" else state.estimator.norms()
            constants = pairwise(state.chain, state.norm, norms, "liplt" if state.full_pairs else "liplt-last-naive")
        loss = ce
        metrics = {"ce": ce.item()}
        if robust:
            term, penalised = robust_term(
                logits, labels, constants, r0=o.r0, temperature=o.temperature, kind=o.robust_kind,
                misclassified=o.regularize_misclassified, radius_scale=state.radius_scale,
            )
            loss = ce + o.lam * term
            metrics["R"] = term.item()
            metrics["pen"] = penalised.float().mean().item()
        k = constants.shape[0]
        metrics["L"] = constants.detach().sum().item() / (k * (k - 1))
        return BatchLoss(loss, logits, metrics)
