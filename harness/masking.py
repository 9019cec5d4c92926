"""The gradient-masking check of an evaluation (:class:`harness.results.GradientMasking`).

Two signs that gradient attacks understate what an attacker can do:

* the fraction of evaluated samples whose input gradient of the
  cross-entropy loss is exactly zero (model in eval mode, float32): a
  gradient attack starting there does not move;
* samples that a gradient-free attack or stage (Square) broke while they
  survived every gradient-based one. AutoAttack flags its own evaluation as
  unreliable when Square lowers the robust accuracy by more than
  ``alpha = 0.2 %`` of the samples (``checks.check_square_sr``); RobustBench
  marks such a model. :data:`UNRELIABLE_FRACTION` is that alpha.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from harness.results import GradientMasking

#: More gradient-free breaks than this fraction of the samples makes an evaluation unreliable (AutoAttack's alpha).
UNRELIABLE_FRACTION = 0.002


def zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample (bool, on the CPU): whether the input gradient of its cross-entropy loss is exactly zero everywhere.

    One backward pass of the summed loss gives every sample's own gradient: in eval mode a sample's logits depend on
    that sample only. The model's parameters' ``.grad`` are left alone.
    """
    x = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:  # the logits do not depend on the input at all
        return torch.ones(len(x), dtype=torch.bool)
    return (grad.detach().flatten(1) == 0).all(1).cpu()


def gradient_free_breaks(
    correct: torch.Tensor, survived: Mapping[str, torch.Tensor], gradient_free: set[str]
) -> int | None:
    """Samples correct, broken by some gradient-free attack or stage, and surviving every gradient-based one.

    :param survived: per attack or stage (each stage's own survival, not after the earlier stages), bool per sample.
    :returns: ``None`` when no gradient-free attack or stage ran, or no gradient-based one (nothing to compare: every
        break would count, as AutoAttack's own check needs Square and another attack).
    """
    free = [s for name, s in survived.items() if name in gradient_free]
    gradient = [s for name, s in survived.items() if name not in gradient_free]
    if not free or not gradient:
        return None
    broken_free = ~torch.stack(free).all(0)
    return int((correct & broken_free & torch.stack(gradient).all(0)).sum())


def masking_check(zero_fraction: float | None, breaks: int | None, samples: int) -> GradientMasking:
    """The stored check: ``unreliable`` when the breaks exceed :data:`UNRELIABLE_FRACTION` of the samples."""
    unreliable = None if breaks is None else breaks > UNRELIABLE_FRACTION * samples
    return GradientMasking(zero_gradient_fraction=zero_fraction, gradient_free_breaks=breaks, unreliable=unreliable)


def zero_gradient_rows(
    model: nn.Module, batch: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], slices: list[slice], n: int,
    done: Callable[[int], None] = lambda rows: None,
) -> torch.Tensor:
    """:func:`zero_gradients` of the rows in ``slices`` (zero elsewhere, for merging over processes); ``done(rows)`` after each."""
    zero = torch.zeros(n, dtype=torch.bool)
    for s in slices:
        x, y = batch(s)
        zero[s] = zero_gradients(model, x, y)
        done(s.stop - s.start)
    return zero
