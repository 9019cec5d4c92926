"""What a trainer gets: its data on the device, the run's context, and the timer of a profiled step."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from harness.checkpoint import Checkpointing
from harness.data.augment import Augmentation
from harness.data.types import DatasetInfo
from harness.distributed import World
from harness.errors import HarnessDeprecationWarning
from harness.progress import Progress, SilentProgress
from harness.schedules import cosine_annealing
from harness.threat import ThreatModel


class TrainData:
    """The training split, kept as uint8 on the training device.

    Batches come out as float images in ``[0, 1]``, shuffled with the run's
    generator and augmented on the device.
    """

    def __init__(self, info: DatasetInfo, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.info = info
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def order(self, generator: torch.Generator) -> torch.Tensor:
        """One epoch's shuffled sample order (draws from ``generator``), on the data's device."""
        return torch.randperm(len(self), generator=generator, device=generator.device).to(self.images.device)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        augmentation: Augmentation | None = None,
        *,
        order: torch.Tensor | None = None,
        start: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled ``(images, labels)`` batches.

        The order is drawn from ``generator`` (:meth:`order`) unless given;
        ``start`` skips that many batches (a resumed epoch: its order rebuilt
        from the generator's state when the epoch began, and the generator
        then set to where the skipped batches left it).
        """
        n = len(self)
        order = self.order(generator) if order is None else order
        for first in range(start * batch_size, n, batch_size):
            index = order[first : first + batch_size]
            images = self.images[index].float().div_(255)
            if augmentation is not None and augmentation.active:
                images = augmentation(images, generator if generator.device == images.device else None)
            yield images, self.labels[index]


@dataclass
class TrainContext:
    """The run as a trainer sees it.

    ``checkpoints`` says where and how often to save, what to resume from and
    when to stop (:class:`harness.checkpoint.Checkpointing`; ``None``: no
    checkpoints; in a multi-process run only rank 0 saves). ``world`` is the
    process group of a multi-process run: the scaffold gives each rank its
    slice of every global batch and sums the gradients. ``history`` is filled by the training loop: one dict of
    metric means per finished epoch (``epoch`` 1-based, ``loss``, ``acc`` as a
    fraction, the method's metrics), the resumed epochs included.
    """

    threat: ThreatModel
    device: torch.device
    seed: int
    generator: torch.Generator
    progress: Progress = field(default_factory=SilentProgress)
    checkpoints: Checkpointing | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    #: The process group of a multi-process run (:mod:`harness.distributed`); ``None``: one process.
    world: World | None = None


class StepTimer:
    """What a training step reports its parts to: ``with timer("forward"): logits = model(images)``.

    This one times nothing: training runs with it, so that a method's code marks
    its parts once and only ``harness bench step`` pays for timing them (with a
    timer that synchronises the device around each part). A part entered inside
    another is counted in it alone: the scaffold times ``"loss"`` (all of
    ``loss()``), ``"backward"`` and ``"optimiser"``; a method marks its
    ``"forward"`` pass inside its loss, and the rest of the loss (its bounds,
    its certified loss) is ``"loss"``.
    """

    def __call__(self, part: str) -> AbstractContextManager[None]:
        return nullcontext()


class TrainingSteps(Protocol):
    """A run prepared as training prepares it, taken one step at a time (:meth:`harness.Trainer.steps`).

    ``harness bench step`` calls :meth:`step` repeatedly, at several points
    of the schedule, on one batch; every call is a real step (the weights change).
    """

    def step(self, images: torch.Tensor, labels: torch.Tensor, at: float, timer: StepTimer) -> dict[str, float]:
        """One training step on ``images`` (in ``[0, 1]``, on the run's device) and ``labels``, scheduled as
        at fraction ``at`` of training (0: the first step, 1: the last), its parts reported to ``timer``.

        :returns: the scheduled values of the step (at least ``"lr"``).
        """
        ...

    def kernels(self) -> dict[str, str]:
        """What computed the last step, for the benchmark's header (``{"l_p-dist backend": "native"}``); may be empty."""
        ...


def cosine_lr(base: float, progress: float) -> float:
    """Cosine annealing from ``base`` at progress 0 to 0 at progress 1.

    Deprecated: use :func:`harness.schedules.cosine_annealing` (``cosine_lr(base,
    t / epochs)`` is ``cosine_annealing(t, base, epochs)``, bit for bit).
    """
    warnings.warn(
        "harness.train.cosine_lr is deprecated; use harness.schedules.cosine_annealing(t, base, epochs)",
        HarnessDeprecationWarning,
        stacklevel=2,
    )
    return cosine_annealing(progress, base, 1.0)
