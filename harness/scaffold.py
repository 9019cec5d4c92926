"""The training scaffold: one loop for every method.

:class:`EpochTrainer` is a :class:`harness.Trainer` whose ``fit`` is the loop
every built-in method shares, written once: epochs of shuffled mini-batches
from :meth:`harness.train.TrainData.batches` (with the run's generator, so the
data order is the seed's), batches on ``ctx.device``, schedules stepped per
mini-batch, one progress task per epoch (running means of the loss, accuracy
and the method's metrics, beside the scheduled values) and a stop at the first
non-finite loss (:class:`TrainingDiverged`, before that loss touches the
weights).

The contract. A method subclasses :class:`EpochTrainer`; its ``Options`` has
``epochs`` and ``batch_size``. It supplies three things:

* :meth:`~EpochTrainer.optimizer`: its torch optimiser over the model (and its
  own parameters). A parameter group may carry ``lr_scale``: before every step
  the scaffold sets each group's lr to the scheduled lr times that scale (1 when
  absent);
* :meth:`~EpochTrainer.schedule`: the scheduled values at a :class:`Step`, a dict
  of floats with at least ``"lr"`` (use :mod:`harness.schedules`);
* :meth:`~EpochTrainer.loss`: the :class:`BatchLoss` of one mini-batch given those
  values.

Optional hooks, each a no-op (or the obvious default) unless overridden:
:meth:`~EpochTrainer.training_data` (train on a subset, e.g. CRM's 90 % split),
:meth:`~EpochTrainer.start` (make the per-run state),
:meth:`~EpochTrainer.augmentation`, :meth:`~EpochTrainer.apply_schedule` (apply
the values other than the lr, e.g. the l_inf-dist nets' p),
:meth:`~EpochTrainer.before_optimizer_step` (e.g. the v1 code's decoupled weight
decay) and :meth:`~EpochTrainer.finish` (leave the model in its evaluated form;
``model.eval()`` by default).

The order, per run: ``training_data``, ``start``, ``optimizer``,
``augmentation``, ``model.train()``; per mini-batch: ``schedule``, the lr of every
group, ``apply_schedule``, ``loss``, the non-finite check, ``zero_grad``,
``backward``, ``before_optimizer_step``, ``optimizer.step()``; then ``finish``.

Per-run state. Whatever one ``fit`` creates besides the model and the optimiser
(v2's learnable logit scale, CRM's warm-started power iteration) is returned by
:meth:`~EpochTrainer.start` and lives in ``self.state``, and nowhere else: a
run is the model, the optimiser, the generator, the current :class:`Step` and
``self.state``. (Checkpoints, a later addition to this loop, will save those,
with each trainer declaring the part of its state that :meth:`~EpochTrainer.start`
cannot rebuild, such as the scale or the power-iteration vectors.)

A minimal trainer (a third party's, in its own package)::

    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F

    from harness.scaffold import BatchLoss, EpochTrainer, Step
    from harness.schedules import cosine_annealing


    @dataclass(frozen=True)
    class CEOptions:
        epochs: int = 10
        batch_size: int = 128
        lr: float = 0.1


    class CETrainer(EpochTrainer):
        name = "ce"
        description = "plain cross-entropy, SGD with a cosine lr"
        model = "toy_linear"
        Options = CEOptions

        def optimizer(self, model):
            return torch.optim.SGD(model.parameters(), lr=self.options.lr)

        def schedule(self, step: Step) -> dict[str, float]:
            return {"lr": cosine_annealing(step.t, self.options.lr, self.options.epochs)}

        def loss(self, model, images, labels, values):
            logits = model(images)
            return BatchLoss(F.cross_entropy(logits, labels), logits)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from harness.components import Trainer, required
from harness.data.augment import Augmentation
from harness.errors import PluginError, TrainingDiverged, UsageError
from harness.train import TrainContext, TrainData


@dataclass(frozen=True)
class Step:
    """Where training is: mini-batch ``index`` (0-based) of ``steps`` in epoch ``epoch`` (0-based) of ``epochs``."""

    epoch: int
    index: int
    steps: int
    epochs: int

    @property
    def t(self) -> float:
        """Progress in epochs, fractional: ``epoch + index / steps`` (what :mod:`harness.schedules` takes)."""
        return self.epoch + self.index / self.steps


@dataclass
class BatchLoss:
    """What a method's loss returns for one mini-batch.

    ``loss`` is minimised; ``logits`` are the clean logits (the scaffold reports
    the accuracy from them); ``metrics`` are batch means the progress shows as
    running means beside the loss.
    """

    loss: Tensor
    logits: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def _show(values: Mapping[str, float]) -> str:
    return ", ".join(f"{key} {value:.4g}" for key, value in values.items())


class EpochTrainer(Trainer):
    """A trainer built on the scaffold: see the module docstring for the contract."""

    #: The per-run state made by :meth:`start` (``None`` before the first run).
    state: Any = None

    @classmethod
    def class_problem(cls) -> tuple[str, str] | None:
        """Besides a trainer's checks: the loop needs integer ``epochs`` and ``batch_size`` options."""
        problem = super().class_problem()
        if problem is not None:
            return problem
        names = {f.name: f.type for f in dataclasses.fields(cls.Options)} if dataclasses.is_dataclass(cls.Options) else {}
        missing = [name for name in ("epochs", "batch_size") if name not in names]
        if missing:
            where = f"{cls.__module__}.{cls.__qualname__}"
            return (f"{where}'s Options has no {' or '.join(repr(m) for m in missing)}",
                    "add integer fields epochs and batch_size: the scaffold's loop reads them")
        return None

    # -- what every method supplies ---------------------------------------------------------

    @required
    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Called once per run, after :meth:`start`: the optimiser (groups may set ``lr_scale``)."""
        raise NotImplementedError(f"trainer {self.name!r} does not implement optimizer()")

    @required
    def schedule(self, step: Step) -> dict[str, float]:
        """Called before every mini-batch: the scheduled values at ``step``, with at least ``"lr"``."""
        raise NotImplementedError(f"trainer {self.name!r} does not implement schedule()")

    @required
    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        """Called for every mini-batch (the model in training mode): its loss, clean logits and metrics.

        :param images: the augmented batch in ``[0, 1]``, on ``ctx.device``.
        :param labels: its labels.
        :param values: what :meth:`schedule` returned for this step.
        """
        raise NotImplementedError(f"trainer {self.name!r} does not implement loss()")

    # -- optional hooks ----------------------------------------------------------------------

    def training_data(self, data: TrainData, ctx: TrainContext) -> TrainData:
        """Called first: the data actually trained on (all of it by default); if it is empty, training is refused."""
        return data

    def start(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> Any:
        """Called once per run before the optimiser is made: the per-run state, kept in ``self.state``."""
        return None

    def augmentation(self, data: TrainData) -> Augmentation | None:
        """The batch augmentation (anything with ``active`` and ``__call__(images, generator)``), or none."""
        return None

    def apply_schedule(self, model: nn.Module, values: Mapping[str, float]) -> None:
        """Called before every mini-batch, after the lr is set: apply the other scheduled values."""

    def before_optimizer_step(self, model: nn.Module, values: Mapping[str, float]) -> None:
        """Called after ``backward()`` and before ``optimizer.step()``."""

    def finish(self, model: nn.Module) -> None:
        """Called after the last epoch: leave the model in its evaluated form."""
        model.eval()

    # -- the loop ----------------------------------------------------------------------------

    def fit(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> None:
        """Train ``model`` in place; raises :class:`TrainingDiverged` at the first non-finite loss."""
        epochs: int = self.options.epochs
        batch_size: int = self.options.batch_size
        given = len(data)
        data = self.training_data(data, ctx)
        if len(data) == 0:
            raise UsageError(f"trainer {self.name!r} has no sample left to train on (of the {given} it was given); give more (--train-samples)")
        self.state = self.start(model, data, ctx)
        optimizer = self.optimizer(model)
        augmentation = self.augmentation(data)
        steps = data.steps_per_epoch(batch_size)
        model.train()
        for epoch in range(epochs):
            sums: dict[str, float] = {}
            correct = seen = 0
            with ctx.progress.task(f"epoch {epoch + 1}/{epochs}", total=steps) as task:
                for index, (images, labels) in enumerate(data.batches(batch_size, ctx.generator, augmentation)):
                    images, labels = images.to(ctx.device), labels.to(ctx.device)
                    step = Step(epoch, index, steps, epochs)
                    values = self.schedule(step)
                    lr = values.get("lr") if isinstance(values, Mapping) else None
                    if not isinstance(lr, int | float) or isinstance(lr, bool) or not math.isfinite(lr):
                        raise PluginError(f"trainer {self.name!r}: schedule() returned {values!r}; it must be a dict with a finite 'lr'")
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)
                    self.apply_schedule(model, values)
                    out = self.loss(model, images, labels, values)
                    loss = out.loss.item()
                    if not math.isfinite(loss):
                        raise TrainingDiverged(
                            f"training diverged: loss {loss} at epoch {epoch + 1}/{epochs}, step {index + 1}/{steps} "
                            f"({_show(values)})",
                            step=step,
                            values=values,
                        )
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    self.before_optimizer_step(model, values)
                    optimizer.step()
                    n = labels.shape[0]
                    seen += n
                    correct += int((out.logits.argmax(1) == labels).sum().item())
                    for key, value in {"loss": loss, **out.metrics}.items():
                        sums[key] = sums.get(key, 0.0) + value * n
                    shown: dict[str, float | str] = {key: total / seen for key, total in sums.items()}
                    shown["acc"] = f"{correct / seen:.2%}"
                    task.advance(1, **shown, **{key: value for key, value in values.items() if key not in shown})
        self.finish(model)


__all__ = ["BatchLoss", "EpochTrainer", "Step", "TrainingDiverged"]
