"""Helpers for certifiers whose verdict rests on a logit margin computed in a forward pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: Relative slack on the margin for float32 rounding in the forward pass (TF32 off: see full_float32).
MARGIN_SLACK = 1e-5


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Forward passes whose margins a certificate trusts run in full float32 precision.

    On NVIDIA GPUs cuDNN convolutions default to TF32 (10-bit mantissas): on an H100 a
    6C2F's margins then err by up to ~100× MARGIN_SLACK (measured), which would make
    radii too large. This turns TF32 off for convolutions and matrix products.
    """
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def runner_up(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The largest logit other than the label's, per row."""
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return others.amax(1)
