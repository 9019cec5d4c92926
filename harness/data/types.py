"""What a dataset is to the rest of the harness."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    ``mean`` is per channel; ``std`` is one scalar for the whole dataset, as in
    the l_inf-dist net code: with a shared std an l_inf ball stays a cube after
    normalisation, and a radius divides by that one number.
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]  # channels, height, width
    mean: tuple[float, ...]
    std: float

    @property
    def input_size(self) -> int:
        c, h, w = self.shape
        return c * h * w


@dataclass
class Splits:
    """A dataset in memory: uint8 images ``N×C×H×W`` and int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            images = getattr(self, f"{name}_images")
            labels = getattr(self, f"{name}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{name} images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
            if labels.shape != (images.shape[0],):
                raise ValueError(f"{name} labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
