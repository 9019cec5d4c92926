"""What a trainer gets: its data on the device, and the run's context."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.data.augment import Augmentation
from harness.data.types import DatasetInfo
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

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        augmentation: Augmentation | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled ``(images, labels)`` batches."""
        n = len(self)
        order = torch.randperm(n, generator=generator, device=generator.device).to(self.images.device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            images = self.images[index].float().div_(255)
            if augmentation is not None and augmentation.active:
                images = augmentation(images, generator if generator.device == images.device else None)
            yield images, self.labels[index]


@dataclass
class TrainContext:
    """The run as a trainer sees it."""

    threat: ThreatModel
    device: torch.device
    seed: int
    generator: torch.Generator
    progress: Progress = field(default_factory=SilentProgress)


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
