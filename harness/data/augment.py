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
    """Random crop of the original size after padding, then an optional horizontal flip.

    ``padding_mode`` "zeros" pads with 0 (torchvision's default), "edge"
    repeats the border pixel (the v2 code's choice).
    """

    crop_padding: int = 0
    padding_mode: Literal["zeros", "edge"] = "zeros"
    flip: bool = False

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.padding_mode not in ("zeros", "edge"):
            raise ValueError(f"padding_mode must be 'zeros' or 'edge', got {self.padding_mode!r}")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a float batch ``N×C×H×W``; each image gets its own random offset and flip."""
        n, _, h, w = images.shape
        device = images.device
        if self.crop_padding > 0:
            pad = self.crop_padding
            mode = "constant" if self.padding_mode == "zeros" else "replicate"
            padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
            dy = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator)
            dx = torch.randint(0, 2 * pad + 1, (n,), device=device, generator=generator)
            rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # N×1×H×1
            cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]  # N×1×1×W
            batch = torch.arange(n, device=device)[:, None, None, None]
            chans = torch.arange(images.shape[1], device=device)[None, :, None, None]
            images = padded[batch, chans, rows, cols]
        if self.flip:
            flip = torch.rand(n, device=device, generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images
