"""Where float32 training and evaluation stop meaning anything: one bound, used by both.

:data:`OVERFLOW_BOUND` is 2^64 ≈ 1.8e19, the square root of float32's largest
value (≈ 3.4e38): a quantity at or beyond it overflows when squared or multiplied by
another one of its size. Training squares (Adam's second moment, l2 norms,
weight decay) and multiplies (every layer) what it holds, so a loss, gradient
or parameter past the bound is one step from ``inf``/``NaN``; certificates
compare differences and norms of logits, and logits past it can overflow into
``inf`` margins, which a certifier would read as "certified". The scaffold
stops training when a loss, gradient or parameter passes the bound
(:class:`harness.errors.TrainingDiverged`), and the evaluation refuses a model
whose logits do: neither is a number to put on a leaderboard.

No built-in method comes near it: losses start at ``ln K`` (cross-entropy) or
below 1 (hinges), and trained weights and logits stay within a few thousand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: 2^64: every float32 of smaller magnitude has a finite square (2^128 is just past float32's largest value).
OVERFLOW_BOUND = 2.0**64


def beyond_bound(value: float) -> bool:
    """Whether ``value`` is non-finite or at least :data:`OVERFLOW_BOUND` in magnitude."""
    return not abs(value) < OVERFLOW_BOUND  # NaN compares false, so it is beyond too


def largest_magnitude(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The largest ``|x|`` over every element of ``tensors`` (NaN if any is NaN), as a float32 0-d tensor.

    One fused reduction per device (``torch._foreach_norm`` with ``ord=inf``),
    no host synchronisation: the caller reads it together with other values.
    An empty sequence gives 0.
    """
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm(list(tensors), math.inf)
    device = norms[0].device
    return torch.stack([n.to(device=device, dtype=torch.float32) for n in norms]).amax()


def describe(value: float) -> str:
    """``value`` as a diagnosis: ``nan``, ``inf`` or ``3.2e+20 (beyond 2^64)``."""
    if not math.isfinite(value):
        return f"{value}"
    return f"{value:.3g} (beyond 2^64 ≈ 1.8e19, where float32 squares overflow)"
