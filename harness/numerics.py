"""When float32 training has diverged, and when logits are past evaluating: the bounds, in one place.

Two rules, both from float32's format (24 significant bits, largest value ≈ 3.4e38 ≈ 2^128):

* **Overflow** (:data:`OVERFLOW_BOUND`, 2^64 ≈ 1.8e19): a quantity at or beyond
  it overflows when squared or multiplied by another of its size. Training
  squares (Adam's second moment, l2 norms, weight decay) and multiplies (every
  layer) what it holds, so a loss, gradient or parameter past the bound is one
  step from ``inf``/``NaN``; certificates take differences, products and norms
  of logits, and logits past it overflow into ``inf`` margins or norms, which
  a certifier can read as "certified". The scaffold stops training when a loss,
  a gradient or a parameter passes it, and the evaluation refuses a model whose
  logits do.
* **Growth** (:data:`GROWTH_BOUND`, 2^24 ≈ 1.7e7): training stops when the
  loss reaches 2^24 times its first value (or 2^24, if the first was below 1).
  At that size float32's rounding of the loss exceeds the whole loss the run
  started from: the scale the method was tuned for is gone, and a minimised
  loss never grows seven orders of magnitude while it learns. It catches runs
  that blow up without reaching the overflow bound: CRM's quick preset at an
  Adam lr of 1 to 10 reaches losses of 2e10 to 2e17 at its second step, and
  without this rule finished as an 8 %-accurate model with logits near 1e16,
  evaluated and put on the leaderboard.

Below both bounds a model is evaluated like any other: floating point is
scale-invariant (the relative rounding is the same at 1e3 and at 1e16), so its
certificates are as sound as at any scale, and its accuracies are what the
model does. No built-in method comes near either bound: losses start at
``ln K`` (cross-entropy) or below 1 (hinges) and stay within a few hundred;
trained weights and logits stay within a few thousand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: 2^64: every float32 of smaller magnitude has a finite square (2^128 is just past float32's largest value).
OVERFLOW_BOUND = 2.0**64

#: 2^24: float32's significand; a loss this many times its first value (or 1) has lost that value in its rounding.
GROWTH_BOUND = 2.0**24


def beyond_bound(value: float) -> bool:
    """Whether ``value`` is non-finite or at least :data:`OVERFLOW_BOUND` in magnitude."""
    return not abs(value) < OVERFLOW_BOUND  # NaN compares false, so it is beyond too


def grew_too_much(loss: float, first: float) -> bool:
    """Whether ``|loss|`` reached :data:`GROWTH_BOUND` times ``max(1, |first|)``, ``first`` being the run's first loss."""
    return abs(loss) >= GROWTH_BOUND * max(1.0, abs(first))


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
    """``value`` as a diagnosis: ``nan``, ``inf`` or ``3.2e+20 (beyond 2^64 ≈ 1.8e19, where float32 squares overflow)``."""
    if not math.isfinite(value):
        return f"{value}"
    return f"{value:.3g} (beyond 2^64 ≈ 1.8e19, where float32 squares overflow)"


def describe_growth(loss: float, first: float) -> str:
    """``loss`` as a diagnosis of growth past :data:`GROWTH_BOUND`."""
    return f"{loss:.3g} (at least 2^24 times the run's first loss, {first:.4g}: a blow-up)"
