"""The training scaffold: one loop for every method.

:class:`EpochTrainer` is a :class:`harness.Trainer` whose ``fit`` is the loop
every built-in method shares, written once: epochs of shuffled mini-batches
from :meth:`harness.train.TrainData.batches` (with the run's generator, so the
data order is the seed's), batches on ``ctx.device``, schedules stepped per
mini-batch, one progress task per epoch (running means of the loss, accuracy
and the method's metrics, beside the scheduled values), checkpoints and resume
(``ctx.checkpoints``), the per-epoch means in ``ctx.history``, and a stop at
the first diverged step (:class:`TrainingDiverged`, below).

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
``augmentation``, (when resuming: the checkpoint's model, optimiser,
``restore_state``, RNGs and generator), ``model.train()``; per mini-batch:
``schedule``, the lr of every group, ``apply_schedule``, ``loss``, the loss
check, ``zero_grad``, ``backward``, ``before_optimizer_step``,
``optimizer.step()``, the gradient and parameter check, then a checkpoint when
one is due; at the end a last checkpoint, then ``finish``.

One step at a time. :meth:`~EpochTrainer.steps` prepares a run as ``fit``
does and takes its steps one by one, each scheduled at a fraction of training,
with its parts timed (``harness bench step``): ``"loss"`` (all of
:meth:`~EpochTrainer.loss`), ``"backward"`` and ``"optimiser"``, through the
same hooks in the same order as the loop. A method marks its forward pass inside
its loss, ``with self.timer("forward"): logits = model(images)`` (in training
``self.timer`` times nothing), lists the phases of its schedule in
:meth:`~harness.Trainer.schedule_phases` and may name the kernels that compute
it in :meth:`~EpochTrainer.describe_kernels`.

Per-run state. Whatever one ``fit`` creates besides the model and the optimiser
(v2's learnable logit scale, CRM's warm-started power iteration) is returned by
:meth:`~EpochTrainer.start` and lives in ``self.state``, and nowhere else: a
run is the model, the optimiser, the generator, the current :class:`Step` and
``self.state``.

Checkpoints and resume. With ``ctx.checkpoints`` (a
:class:`harness.checkpoint.Checkpointing`) the loop saves the run after every
``every_epochs`` epochs, when ``every_seconds`` passed since the last save
(checked after every step), when a stop is requested (then it raises
:class:`~harness.errors.TrainingInterrupted`) and at the end, before
``finish``. A checkpoint holds the model's and the optimiser's state dicts,
the position (epoch, next mini-batch, optimiser steps), the trainer's
:meth:`~harness.Trainer.checkpoint_state`, the RNG states, the run generator's
state now and when the epoch began (to rebuild the epoch's data order), the
epoch's running sums, ``ctx.history`` and the training time. Resuming
(``ctx.checkpoints.resume``) runs ``training_data``, ``start``, ``optimizer``
and ``augmentation`` afresh, then puts all of that back, so that on the CPU
the resumed run's weights equal an uninterrupted run's bit for bit, from an
epoch boundary or from the middle of an epoch. What ``start`` makes anew is
therefore only what it can rebuild; the rest a trainer returns from
:meth:`~harness.Trainer.checkpoint_state` and puts back in
:meth:`~harness.Trainer.restore_state` (v2's logit scale, CRM's power-iteration
vectors). A trainer is :meth:`resumable` when it does not override ``start``
or overrides both of those methods; the loop does not save checkpoints for one
that is not. A checkpoint that cannot be written (a full disk) is a warning,
and training goes on.

Divergence. Every step is checked, with one fused reduction and no extra
device synchronisation: the loss before ``backward`` (it never reaches the
weights), then the largest gradient and the largest parameter or buffer after
``optimizer.step()``. Any of them non-finite or at least 2^64 in magnitude
(:data:`harness.numerics.OVERFLOW_BOUND`: past it float32 squares overflow,
so training is one step from ``inf``), or a loss 2^24 times the run's first
loss (:data:`harness.numerics.GROWTH_BOUND`: a blow-up that stays finite),
stops training at once with :class:`TrainingDiverged`, one line naming what,
where and the scheduled values; nothing is saved after it, so the last
checkpoint is the last good state. :mod:`harness.numerics` explains both bounds.

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
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from harness import distributed
from harness.checkpoint import FORMAT, VERSION, Checkpointing, CheckpointNotSaved, restore_rng, rng_state, utc_now
from harness.components import Trainer, required
from harness.data.augment import Augmentation
from harness.distributed import World
from harness.errors import HarnessError, PluginError, TrainingDiverged, TrainingInterrupted, UsageError
from harness.numerics import beyond_bound, describe, describe_growth, grew_too_much, largest_magnitude
from harness.options import options_dict
from harness.progress import Progress
from harness.train import StepTimer, TrainContext, TrainData, TrainingSteps


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

    @classmethod
    def at(cls, fraction: float, steps: int, epochs: int) -> Step:
        """The mini-batch at ``fraction`` of training (0: the first, 1: the last), of ``epochs`` epochs of ``steps``."""
        t = min(max(fraction, 0.0), 1.0) * epochs
        epoch = min(int(t), epochs - 1)
        return cls(epoch, min(int((t - epoch) * steps), steps - 1), steps, epochs)


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


@dataclass
class _Sums:
    """One epoch's running sums: the loss and metrics weighted by batch size, correct and seen samples."""

    metrics: dict[str, float] = field(default_factory=dict)
    correct: int = 0
    seen: int = 0

    def add(self, n: int, correct: int, metrics: Mapping[str, float]) -> None:
        self.seen += n
        self.correct += correct
        for key, value in metrics.items():
            self.metrics[key] = self.metrics.get(key, 0.0) + value * n

    def means(self) -> dict[str, float]:
        return {key: total / self.seen for key, total in self.metrics.items()}


@dataclass
class _Position:
    """Where a run is: the next mini-batch (``epoch``, ``index``), the optimiser steps taken, the epoch's sums."""

    epoch: int = 0
    index: int = 0
    step: int = 0
    sums: _Sums = field(default_factory=_Sums)
    epoch_generator: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))  # the generator's state when the epoch began
    seconds: float = 0.0  # training time of earlier processes of the run
    first_loss: float | None = None  # the run's first loss (the divergence check's growth bound)


class _Saver:
    """Saves checkpoints when due and remembers the last one (``checkpoints`` None: saves nothing).

    ``contents(seconds)`` assembles a checkpoint of the run as it is now,
    ``seconds`` being its training time so far; ``at`` is the live position.
    """

    def __init__(
        self, checkpoints: Checkpointing | None, contents: Callable[[float], dict[str, Any]], progress: Progress, at: _Position
    ) -> None:
        self.checkpoints = checkpoints
        self.contents = contents
        self.progress = progress
        self.at = at
        self.began = time.perf_counter()
        self.last_time = time.monotonic()
        self.saved_step = at.step  # a resumed run's position is saved already

    def due(self) -> bool:
        """After a step: a whole multiple of ``every_epochs`` just ended, or ``every_seconds`` passed."""
        c, at = self.checkpoints, self.at
        if c is None:
            return False
        return (at.index == 0 and at.epoch % c.every_epochs == 0) or time.monotonic() - self.last_time >= c.every_seconds

    def save(self) -> dict[str, Any] | None:
        """Save the run now unless this position is saved already; the info of the position's checkpoint, or None.

        A checkpoint that cannot be written is a warning (the run is worth more than one save).
        """
        c = self.checkpoints
        if c is None:
            return None
        if self.saved_step != self.at.step:
            self.last_time, self.saved_step = time.monotonic(), self.at.step
            try:
                c.save(self.contents(self.at.seconds + time.perf_counter() - self.began))
            except CheckpointNotSaved as exc:
                self.progress.log(f"warning: {exc}; training goes on")
        return c.last if c.last is not None and c.last["step"] == self.at.step else None


def _check_shards(n: int, batch_size: int, world: World) -> None:
    """Every global batch (the last one too) must give each of the ``world.size`` processes a sample at least."""
    last = n % batch_size or batch_size
    if min(batch_size, last, n) < world.size:
        raise UsageError(
            f"{world.size} processes need at least {world.size} samples in every batch, but with {n} training samples and "
            f"batch size {batch_size} the {'last ' if last < batch_size else ''}batch has {min(batch_size, last, n)}; "
            "change --train-samples or --set trainer.batch_size, or use fewer processes"
        )


def _watched(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """What the divergence check watches: every trained parameter and every floating buffer (mean shifts)."""
    watched = [p for group in optimizer.param_groups for p in group["params"]]
    return watched + [b for b in model.buffers() if b.is_floating_point()]


def _step_checks(out: BatchLoss, labels: Tensor, watched: list[Tensor]) -> Tensor:
    """After a step, in one tensor (one synchronisation): the correct predictions, the largest |gradient| and |parameter|."""
    grads = [p.grad for p in watched if p.grad is not None]
    hits = (out.logits.detach().argmax(1) == labels).sum().to(torch.float32)
    return torch.stack([hits, largest_magnitude(grads).to(hits.device), largest_magnitude(watched).to(hits.device)])


def _global_means(loss: float, metrics: Mapping[str, float], n: int, n_batch: int) -> tuple[float, dict[str, float]]:
    """The global batch's mean loss and metrics from every rank's means over its ``n`` rows (one all-reduce)."""
    keys = list(metrics)
    packed = torch.tensor([loss * n, *(float(metrics[k]) * n for k in keys)], dtype=torch.float64)
    total = distributed.all_reduce(packed).tolist()
    return total[0] / n_batch, {k: total[i + 1] / n_batch for i, k in enumerate(keys)}


_SCALARS = (str, int, float, bool, type(None))


def _not_weights_only(value: Any, where: str) -> str | None:
    """Where in ``value`` something sits that ``torch.load(weights_only=True)`` would refuse, or None.

    Exact types: a numpy float is a ``float`` subclass, and the loader refuses it.
    """
    if type(value) in _SCALARS or isinstance(value, Tensor):
        return None
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            bad = _not_weights_only(key, f"{where} key {key!r}") or _not_weights_only(item, f"{where}[{key!r}]")
            if bad:
                return bad
        return None
    if type(value) in (list, tuple):
        return next((bad for i, item in enumerate(value) if (bad := _not_weights_only(item, f"{where}[{i}]"))), None)
    return f"{where} is a {type(value).__name__}"


class EpochTrainer(Trainer):
    """A trainer built on the scaffold: see the module docstring for the contract."""

    #: The per-run state made by :meth:`start` (``None`` before the first run).
    state: Any = None
    #: Where :meth:`loss` reports its parts (``with self.timer("forward"): ...``): a timer that times nothing,
    #: except in the steps of ``harness bench step`` (:meth:`steps`).
    timer: StepTimer = StepTimer()

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
        """Called once per run before the optimiser is made: the per-run state, kept in ``self.state``.

        Also called when a run resumes, before the checkpoint is put back: what
        it returns must not depend on training so far, except through what
        :meth:`~harness.Trainer.restore_state` then restores.
        """
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

    def describe_kernels(self, model: nn.Module, images: Tensor) -> dict[str, str]:
        """Called by ``harness bench step`` after a step on ``images``: which kernels computed it, for its header
        (e.g. ``{"l_p-dist backend": "native"}``); nothing by default."""
        return {}

    # -- resume --------------------------------------------------------------------------------

    @classmethod
    def resumable(cls) -> bool:
        """True when :meth:`start` is not overridden (all per-run state comes back from the model, the
        optimiser and the RNGs), or when :meth:`checkpoint_state` and :meth:`restore_state` both are
        (the trainer says what ``start`` cannot rebuild; ``{}`` and a no-op when that is nothing)."""
        if cls.start is EpochTrainer.start:
            return True
        return cls.checkpoint_state is not Trainer.checkpoint_state and cls.restore_state is not Trainer.restore_state

    # -- the loop ----------------------------------------------------------------------------

    def fit(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> None:
        """Train ``model`` in place (resuming from ``ctx.checkpoints.resume`` if set); see the module docstring.

        :raises TrainingDiverged: a loss, gradient or parameter went non-finite or past 2^64, or the loss grew 2^24-fold.
        :raises TrainingInterrupted: ``ctx.checkpoints.request_stop()`` was called (after saving).
        """
        epochs: int = self.options.epochs
        batch_size: int = self.options.batch_size
        data, optimizer = self._prepare(model, data, ctx)
        augmentation = self.augmentation(data)
        steps = data.steps_per_epoch(batch_size)
        at = _Position()
        checkpoints = ctx.checkpoints
        if checkpoints is not None and checkpoints.resume is not None:
            at = self._resume(checkpoints, model, optimizer, ctx, steps, epochs)
            where = f"at epoch {at.epoch + 1}/{epochs}, step {at.index + 1}/{steps}" if at.epoch < epochs else "after the last epoch"
            ctx.progress.log(f"resuming from {checkpoints.path} {where}")
        if checkpoints is not None and not self.resumable():
            ctx.progress.log(f"trainer {self.name!r} cannot resume (see Trainer.resumable): no checkpoints are saved")
        world = ctx.world if ctx.world is not None and ctx.world.size > 1 else None
        if world is not None:
            _check_shards(len(data), batch_size, world)
        saver = _Saver(
            checkpoints if self.resumable() and (world is None or world.main) else None,
            lambda seconds: self._checkpoint(model, optimizer, ctx, at, steps, epochs, seconds),
            ctx.progress,
            at,
        )
        watched = _watched(model, optimizer)
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        buffers = list(model.buffers())
        if world is not None:  # every rank starts from rank 0's weights, as DDP does
            distributed.broadcast_([*trained, *buffers])
        with distributed.training(world):
            self._epochs(model, data, ctx, optimizer, augmentation, at, saver, watched, trained, buffers, world, steps, epochs)
        saver.save()
        self.finish(model)

    def _epochs(
        self, model: nn.Module, data: TrainData, ctx: TrainContext, optimizer: torch.optim.Optimizer, augmentation: Augmentation | None,
        at: _Position, saver: _Saver, watched: list[Tensor], trained: list[Tensor], buffers: list[Tensor], world: World | None,
        steps: int, epochs: int,
    ) -> None:
        """The epochs of :meth:`fit`, from ``at`` on. With ``world``: this rank's slice of every global batch,
        the loss weighted by the slice's share, gradients summed and buffers broadcast from rank 0, the loss,
        metrics and accuracy reduced over the ranks, and one rank's stop (a signal) or rank 0's due checkpoint
        decided for all."""
        batch_size: int = self.options.batch_size
        checkpoints = ctx.checkpoints
        model.train()
        for epoch in range(at.epoch, epochs):
            order = None
            if at.index == 0:
                at.epoch_generator, at.sums = ctx.generator.get_state(), _Sums()
            else:  # a resumed epoch: its order as it was drawn, then on from where the generator was
                now = ctx.generator.get_state()
                ctx.generator.set_state(at.epoch_generator)
                order = data.order(ctx.generator)
                ctx.generator.set_state(now)
            with ctx.progress.task(f"epoch {epoch + 1}/{epochs}", total=steps) as task:
                if at.index:
                    task.advance(at.index)
                batches = data.batches(batch_size, ctx.generator, augmentation, order=order, start=at.index)
                for index, (images, labels) in enumerate(batches, start=at.index):
                    images, labels = images.to(ctx.device), labels.to(ctx.device)
                    n_batch = labels.shape[0]
                    if world is not None:  # the global batch was drawn (and augmented) as one process draws it
                        rows = distributed.shard(n_batch, world)
                        images, labels = images[rows], labels[rows]
                    step = Step(epoch, index, steps, epochs)
                    values = self._begin_step(model, optimizer, step)
                    out = self.loss(model, images, labels, values)
                    loss = out.loss.item()
                    metrics = out.metrics
                    if world is not None:  # the global batch's loss and metrics (every rank checks the same loss)
                        loss, metrics = _global_means(loss, metrics, labels.shape[0], n_batch)
                    if beyond_bound(loss):
                        raise self._diverged("loss", describe(loss), step, values)
                    at.first_loss = loss if at.first_loss is None else at.first_loss
                    if grew_too_much(loss, at.first_loss):
                        raise self._diverged("loss", describe_growth(loss, at.first_loss), step, values)
                    optimizer.zero_grad(set_to_none=True)
                    if world is None:
                        out.loss.backward()
                    else:  # summed over the ranks: the global batch's mean gradient
                        (out.loss * (labels.shape[0] / n_batch)).backward()
                        distributed.sum_gradients_(trained)
                    self.before_optimizer_step(model, values)
                    optimizer.step()
                    if world is not None:  # buffers (running means) follow rank 0's, as DDP's broadcast_buffers
                        distributed.broadcast_(buffers)
                    checks = _step_checks(out, labels, watched)
                    stop = False
                    if world is not None:  # one reduction: every rank's hits, rank 0's checks, any rank's stop (a signal)
                        ours = torch.where(torch.tensor([True, world.main, world.main], device=checks.device), checks,
                                           torch.zeros_like(checks))
                        stopping = checks.new_tensor([float(checkpoints is not None and checkpoints.stop_requested)])
                        total = distributed.all_reduce(torch.cat([ours, stopping]))
                        stop, checks = bool(total[3] > 0), total[:3]
                    correct, gradient, parameter = checks.tolist()
                    self._check_update(gradient, parameter, step, values)
                    at.sums.add(n_batch, int(correct), {"loss": loss, **metrics})
                    at.index, at.step = index + 1, at.step + 1
                    shown: dict[str, float | str] = dict(at.sums.means())
                    shown["acc"] = f"{at.sums.correct / at.sums.seen:.2%}"
                    task.advance(1, **shown, **{key: value for key, value in values.items() if key not in shown})
                    if at.index == steps:  # the epoch is done
                        ctx.history.append({"epoch": epoch + 1, **at.sums.means(), "acc": at.sums.correct / at.sums.seen})
                        at.epoch, at.index = epoch + 1, 0
                    if saver.due():  # rank 0's alone (the others have no saver), no collective in it
                        saver.save()
                    if world is None:
                        stop = checkpoints is not None and checkpoints.stop_requested
                    if stop and checkpoints is None:  # another rank was stopped, and this run saves nothing
                        raise KeyboardInterrupt("another process of the run was stopped")
                    if stop and checkpoints is not None:
                        raise self._interrupted(checkpoints, at, steps, epochs, saver.save())

    # -- one step at a time (harness bench step) ------------------------------------------------

    def steps(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> TrainingSteps:
        """The run prepared as :meth:`fit` prepares it (``training_data``, ``start``, ``optimizer``,
        ``model.train()``), taken one step at a time: see :class:`harness.train.TrainingSteps`.

        A step is the loop's, from the batch on the device on (neither drawn nor
        augmented): the scheduled values, ``loss`` (timed as ``"loss"``),
        the loss check, ``zero_grad`` and ``backward`` (``"backward"``),
        ``before_optimizer_step`` and ``optimizer.step()`` (``"optimiser"``), the
        gradient and parameter check. Its position in the schedule is the
        mini-batch at the fraction asked of ``epochs`` epochs of ``data``'s batches.
        """
        return _Steps(self, model, data, ctx)

    # -- the loop's parts ----------------------------------------------------------------------

    def _prepare(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> tuple[TrainData, torch.optim.Optimizer]:
        """A run's start: the data trained on (refused if empty), ``self.state`` and the optimiser."""
        given = len(data)
        data = self.training_data(data, ctx)
        if len(data) == 0:
            raise UsageError(f"trainer {self.name!r} has no sample left to train on (of the {given} it was given); give more (--train-samples)")
        self.state = self.start(model, data, ctx)
        return data, self.optimizer(model)

    def _begin_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: Step) -> dict[str, float]:
        """The scheduled values of ``step``, set: the lr of every group, then :meth:`apply_schedule`."""
        values = self._schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = values["lr"] * group.get("lr_scale", 1.0)
        self.apply_schedule(model, values)
        return values

    def _check_update(self, gradient: float, parameter: float, step: Step, values: Mapping[str, float]) -> None:
        """Stop at a diverged step: the largest |gradient| or, after the step, |parameter| past the bound."""
        if beyond_bound(gradient):
            raise self._diverged("largest |gradient|", describe(gradient), step, values)
        if beyond_bound(parameter):
            raise self._diverged("largest |parameter| after the step", describe(parameter), step, values)

    def _schedule(self, step: Step) -> dict[str, float]:
        values = self.schedule(step)
        lr = values.get("lr") if isinstance(values, Mapping) else None
        if not isinstance(lr, int | float) or isinstance(lr, bool) or not math.isfinite(lr):
            raise PluginError(f"trainer {self.name!r}: schedule() returned {values!r}; it must be a dict with a finite 'lr'")
        return values

    def _diverged(self, what: str, value: str, step: Step, values: Mapping[str, float]) -> TrainingDiverged:
        kind = "loss" if what == "loss" else "gradient" if "gradient" in what else "parameter"
        return TrainingDiverged(
            f"training diverged: {what} {value} at epoch {step.epoch + 1}/{step.epochs}, step {step.index + 1}/{step.steps} "
            f"({_show(values)})",
            step=step,
            values=values,
            what=kind,
        )

    def _interrupted(
        self, checkpoints: Checkpointing, at: _Position, steps: int, epochs: int, saved: dict[str, Any] | None
    ) -> TrainingInterrupted:
        where = f"it resumes at epoch {at.epoch + 1}/{epochs}, step {at.index + 1}/{steps}" if at.epoch < epochs else "every epoch ran"
        if saved is not None:
            outcome = f"checkpoint {saved['path']!r} ({saved['bytes']:,} bytes)"
        elif not self.resumable():
            outcome = f"no checkpoint: trainer {self.name!r} cannot resume"
        else:
            last = checkpoints.last
            outcome = "the checkpoint could not be saved" + (f"; the last one is from step {last['step']}" if last else "")
        return TrainingInterrupted(
            f"training interrupted ({checkpoints.stop_reason}) after {at.step} steps; {where}; {outcome}",
            step=Step(at.epoch, at.index, steps, epochs),
            steps_done=at.step,
            checkpoint=saved,
        )

    def _checkpoint(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext, at: _Position, steps: int, epochs: int, seconds: float
    ) -> dict[str, Any]:
        """Everything a resumed run needs (:data:`harness.checkpoint.CHECKPOINT_KEYS`), weights-only."""
        trainer_state = self.checkpoint_state()
        contents = {
            "format": FORMAT,
            "version": VERSION,
            "trainer": self.name,
            "options": options_dict(self.options),
            "position": {"epoch": at.epoch, "index": at.index, "steps": steps, "epochs": epochs, "step": at.step},
            "first_loss": at.first_loss,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "trainer_state": trainer_state,
            "rng": rng_state(),
            "device": ctx.generator.device.type,
            "generator": ctx.generator.get_state(),
            "epoch_generator": at.epoch_generator if at.index else ctx.generator.get_state(),
            "sums": {"metrics": dict(at.sums.metrics), "correct": at.sums.correct, "seen": at.sums.seen},
            "history": [dict(entry) for entry in ctx.history],
            "seconds": seconds,
            "saved_at": utc_now(),
        }
        parts = {"checkpoint_state()": trainer_state, "the model's state_dict()": contents["model"]}
        parts["the optimizer's state_dict()"] = contents["optimizer"]
        for part, value in parts.items():
            bad = _not_weights_only(value, part)
            if bad:
                raise PluginError(
                    f"trainer {self.name!r}: {bad}; a checkpoint holds only tensors, dicts, lists, str, int, float, bool and None"
                )
        return contents

    def _resume(
        self, checkpoints: Checkpointing, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: TrainContext, steps: int, epochs: int
    ) -> _Position:
        """Put the checkpoint back: model, optimiser, trainer state, RNGs, generator, history; return the position."""
        saved: dict[str, Any] = checkpoints.resume or {}
        where = f"checkpoint {str(checkpoints.path)!r}"
        if not self.resumable():
            raise UsageError(
                f"trainer {self.name!r} cannot resume a run: it keeps per-run state from start() and does not implement "
                "checkpoint_state() and restore_state()"
            )
        if saved["trainer"] != self.name:
            raise HarnessError(f"{where} was written by trainer {saved['trainer']!r}, not {self.name!r}")
        options = options_dict(self.options)
        changed = [key for key in sorted(set(options) | set(saved["options"])) if options.get(key) != saved["options"].get(key)]
        if changed:
            key = changed[0]
            raise HarnessError(
                f"{where} was written with {self.name} option {key}={saved['options'].get(key)!r}; this run has {options.get(key)!r}"
            )
        position = saved["position"]
        if (position["steps"], position["epochs"]) != (steps, epochs):
            raise HarnessError(
                f"{where} has {position['steps']} steps per epoch and {position['epochs']} epochs; this run has {steps} and {epochs} "
                "(other training data?)"
            )
        device = ctx.generator.device.type
        if saved["device"] != device:
            raise HarnessError(f"{where} was written by a run on {saved['device']}; resume it on {saved['device']}, not {device}")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        self.restore_state(saved["trainer_state"])
        restore_rng(saved["rng"])
        ctx.generator.set_state(saved["generator"])
        ctx.history[:] = [dict(entry) for entry in saved["history"]]
        sums = saved["sums"]
        return _Position(
            epoch=position["epoch"],
            index=position["index"],
            step=position["step"],
            sums=_Sums(dict(sums["metrics"]), sums["correct"], sums["seen"]),
            epoch_generator=saved["epoch_generator"],
            seconds=saved["seconds"],
            first_loss=saved["first_loss"],
        )


class _Steps:
    """An :class:`EpochTrainer`'s run taken one step at a time (:meth:`EpochTrainer.steps`)."""

    def __init__(self, trainer: EpochTrainer, model: nn.Module, data: TrainData, ctx: TrainContext) -> None:
        self.trainer, self.model = trainer, model
        data, self.optimizer = trainer._prepare(model, data, ctx)
        self.steps = data.steps_per_epoch(trainer.options.batch_size)
        self.epochs: int = trainer.options.epochs
        self.watched = _watched(model, self.optimizer)
        self.images: Tensor | None = None
        model.train()

    def step(self, images: Tensor, labels: Tensor, at: float, timer: StepTimer) -> dict[str, float]:
        trainer, model, optimizer = self.trainer, self.model, self.optimizer
        step = Step.at(at, self.steps, self.epochs)
        trainer.timer = timer
        try:
            values = trainer._begin_step(model, optimizer, step)
            with timer("loss"):
                out = trainer.loss(model, images, labels, values)
            loss = out.loss.item()
            if beyond_bound(loss):
                raise trainer._diverged("loss", describe(loss), step, values)
            with timer("backward"):
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
            with timer("optimiser"):
                trainer.before_optimizer_step(model, values)
                optimizer.step()
            _, gradient, parameter = _step_checks(out, labels, self.watched).tolist()
            trainer._check_update(gradient, parameter, step, values)
        finally:
            del trainer.timer  # back to the class's timer, which times nothing
        self.images = images
        return dict(values)

    def kernels(self) -> dict[str, str]:
        return self.trainer.describe_kernels(self.model, self.images) if self.images is not None else {}


__all__ = ["BatchLoss", "EpochTrainer", "Step", "TrainingDiverged", "TrainingInterrupted"]
