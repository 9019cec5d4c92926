"""What certifiers that get a radius by the harness's bisection share: the option's help and per-sample radii."""

from __future__ import annotations

import torch

#: The help of every certifier's ``radius_tolerance`` option: what it does and what it costs.
RADIUS_TOLERANCE_DOC = (
    "per-sample certified radius by bisection over eps to this tolerance (0: off, verdicts at eps only); "
    "each halving of the bracket is one more certification of the open samples: about log2(range/tolerance) certifications"
)


def check_tolerance(tolerance: float) -> None:
    """A tolerance is a finite number >= 0 (0: no bisection)."""
    if not 0 <= tolerance < float("inf"):
        raise ValueError(f"radius_tolerance must be a finite number >= 0 (0: off), got {tolerance}")


def per_sample(eps: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``eps`` (one radius per sample) shaped to broadcast over ``images`` (N×C×H×W), in their dtype and device."""
    return eps.to(images.device, images.dtype).view(-1, *[1] * (images.dim() - 1))
