"""Batched data augmentation on the training device.

The l_inf-dist net papers use torchvision's RandomCrop (with padding) and
RandomHorizontalFlip per image on the CPU; here the same transforms run on a
whole batch at once, wherever the batch lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Random crop after padding, then an optional horizontal flip.

    The crop has the original size, or ``crop_size × crop_size`` when
    ``crop_size`` is set (TinyImageNet's 56×56 crops of 64×64 images in the
    ICML 2021 paper). ``padding_mode`` "zeros" pads with 0 (torchvision's
    default), "edge" repeats the border pixel (the v2 code's choice).
    """

    crop_padding: int = 0
    padding_mode: Literal["zeros", "edge"] = "zeros"
    flip: bool = False
    crop_size: int = 0

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.crop_size < 0:
            raise ValueError(f"crop_padding and crop_size must be >= 0, got {self.crop_padding}, {self.crop_size}")
        if self.padding_mode not in ("zeros", "edge"):
            raise ValueError(f"padding_mode must be 'zeros' or 'edge', got {self.padding_mode!r}")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.crop_size > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a float batch ``N×C×H×W``; each image gets its own random offset and flip."""
        n, _, h, w = images.shape
        device = images.device
        size_h, size_w = (self.crop_size, self.crop_size) if self.crop_size else (h, w)
        if size_h > h + 2 * self.crop_padding or size_w > w + 2 * self.crop_padding:
            raise ValueError(f"crop_size {self.crop_size} is larger than the padded {h}×{w} images")
        if self.crop_padding > 0 or (size_h, size_w) != (h, w):
            pad = self.crop_padding
            mode = "constant" if self.padding_mode == "zeros" else "replicate"
            padded = F.pad(images, (pad, pad, pad, pad), mode=mode) if pad else images
            dy = torch.randint(0, h + 2 * pad - size_h + 1, (n,), device=device, generator=generator)
            dx = torch.randint(0, w + 2 * pad - size_w + 1, (n,), device=device, generator=generator)
            h, w = size_h, size_w
            rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # N×1×H×1
            cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]  # N×1×1×W
            batch = torch.arange(n, device=device)[:, None, None, None]
            chans = torch.arange(images.shape[1], device=device)[None, :, None, None]
            images = padded[batch, chans, rows, cols]
        if self.flip:
            flip = torch.rand(n, device=device, generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images
