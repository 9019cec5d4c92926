"""torchvision's ``RandomAffine(degrees, translate)`` for a batch, as the CRM code's loaders use it.

Per image: an angle uniform in ``[−degrees, degrees]`` and a translation by a
whole number of pixels, uniform in ``±translate·size`` (rounded), nearest-
neighbour sampling (torchvision's default), and ``fill`` outside the image.
The code's CIFAR-10 loader applies it after ``Normalize(0.5, 0.5)``, so its
fill 0 is grey: ``fill = 0.5`` in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomAffine:
    degrees: float = 0.0
    translate: float = 0.0
    flip: bool = False
    fill: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.degrees <= 180 or not 0 <= self.translate <= 1:
            raise ValueError(f"need 0 <= degrees <= 180 and 0 <= translate <= 1, got {self.degrees}, {self.translate}")

    @property
    def active(self) -> bool:
        return self.degrees > 0 or self.translate > 0 or self.flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = images.shape
        device = images.device
        if self.flip:  # the code flips before the affine map
            flip = torch.rand(n, device=device, generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.degrees == 0 and self.translate == 0:
            return images
        angle = (torch.rand(n, device=device, generator=generator) * 2 - 1) * math.radians(self.degrees)
        tx = ((torch.rand(n, device=device, generator=generator) * 2 - 1) * self.translate * w).round()
        ty = ((torch.rand(n, device=device, generator=generator) * 2 - 1) * self.translate * h).round()
        cos, sin = angle.cos(), angle.sin()
        # Output pixel p samples the input at R⁻¹(p − t), in normalised [−1, 1] coordinates.
        theta = torch.zeros(n, 2, 3, device=device, dtype=images.dtype)
        theta[:, 0, 0], theta[:, 0, 1] = cos, sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = -sin * w / h, cos
        shift_x, shift_y = -2 * tx / w, -2 * ty / h
        theta[:, 0, 2] = theta[:, 0, 0] * shift_x + theta[:, 0, 1] * shift_y
        theta[:, 1, 2] = theta[:, 1, 0] * shift_x + theta[:, 1, 1] * shift_y
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # Sample the image minus the fill with zero padding, then add the fill back.
        out = F.grid_sample(images - self.fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return out + self.fill
