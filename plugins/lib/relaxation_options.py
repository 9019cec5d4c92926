"""Checks shared by the options of the l_inf-dist trainers (``linf_v1``, ``linf_mlp``, ``linf_v2``), and
the phases of their p schedule.

Their options declare the same schedule and optimiser fields with each
paper's defaults and wording; the constraints on them are one set, here.
Each raises ``ValueError`` (the options parser turns it into a one-line
usage error naming the option).
"""

from __future__ import annotations

import math
from typing import Any


def check_relaxation(o: Any) -> None:
    """``epochs`` ≥ 1, ``0 ≤ p_start_epoch ≤ p_end_epoch ≤ epochs`` and ``1 ≤ p_start ≤ p_end < ∞``."""
    if o.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {o.epochs}")
    if not 0 <= o.p_start_epoch <= o.p_end_epoch <= o.epochs:
        raise ValueError(f"need 0 <= p_start_epoch <= p_end_epoch <= epochs, got {o.p_start_epoch}, {o.p_end_epoch}, {o.epochs}")
    if not 1 <= o.p_start <= o.p_end < math.inf:
        raise ValueError(f"need 1 <= p_start <= p_end < inf, got {o.p_start}, {o.p_end}")


def relaxation_spans(o: Any, inf_threshold: float) -> list[tuple[str, float, float]]:
    """The phases of the p schedule (:func:`harness.schedules.p_relaxation`) as ``(name, start epoch, end epoch)``:
    p = p_start, the relaxation ("general p"), then p = ∞ (p_end if below ``inf_threshold``); an empty
    relaxation is p = ∞ from the first step."""
    last = "p = ∞" if o.p_end >= inf_threshold else f"p = {o.p_end:g}"
    if o.p_end_epoch <= o.p_start_epoch:
        return [(last, 0.0, o.epochs)]
    relaxed = "general p" if o.p_end > o.p_start else f"p = {o.p_start:g}"
    return [(f"p = {o.p_start:g}", 0.0, o.p_start_epoch), (relaxed, o.p_start_epoch, o.p_end_epoch), (last, o.p_end_epoch, o.epochs)]


def check_positive(o: Any, *names: str) -> None:
    """Each named option is a positive, finite number."""
    for name in names:
        value = getattr(o, name)
        if not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive number, got {value}")


def check_adam_and_batches(o: Any) -> None:
    """Adam's betas in [0, 1), ``batch_size`` ≥ 1, ``crop_padding`` ≥ 0 (and ``crop_size`` ≥ 0 where there is one)."""
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(o, name) < 1:
            raise ValueError(f"Adam {name} must be in [0, 1), got {getattr(o, name)}")
    if o.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {o.batch_size}")
    for name in ("crop_padding", "crop_size"):
        if getattr(o, name, 0) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(o, name)}")
