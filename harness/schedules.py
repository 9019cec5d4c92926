"""Schedules: hyper-parameters as functions of training progress.

``t`` is the progress in epochs, fractional: ``epoch + batch / batches_per_epoch``
(:attr:`harness.scaffold.Step.t`), so every schedule here is stepped per
mini-batch, as the original code of every built-in method steps it. Boundaries
(``start``, ``end``) are in epochs too.

Each function names the method and the original code that uses it. They are
written with the floating-point operations of the code they replaced, in the same
order, so that porting a trainer to them changes no weight by a single bit; keep
it that way (``tests/test_schedules.py`` pins the formulas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: After its relaxation the v2 code switches p to ∞ only if p_end is at least this
#: (``main.py``: ``if ratio >= 1 and args.p_end >= 100``).
V2_INF_THRESHOLD = 100.0


def ramp(t: float, start: float, end: float) -> float:
    """Linear progress from 0 at ``start`` to 1 at ``end``, clamped to ``[0, 1]``.

    An empty ramp (``end <= start``) is 1 from the first step, as the v2 code's
    ``cal_ratio`` returns 1 when ``epoch_end <= epoch_start``.

    Used for the progress of the l_p relaxation (:func:`p_relaxation`; v2's λ
    through :func:`geometric`) and for warm-ups from epoch 0: the v1 code's eps_train
    warm-up (``main.py`` ``create_schedule``, ``ratio`` over ``epoch2``; linf_v1,
    linf_mlp) and linf_mlp's CROWN-IBP β (:func:`linear`), where a warm-up of 0
    epochs means eps_train from the first step, as in every pure-net command.

    :param t: progress in epochs.
    :param start: epoch where the ramp leaves 0.
    :param end: epoch where it reaches 1.
    :returns: ``min(max((t − start)/(end − start), 0), 1)``, or 1 if ``end <= start``.
    """
    if end <= start:
        return 1.0
    return min(max((t - start) / (end - start), 0.0), 1.0)


def geometric(first: float, last: float, r: float) -> float:
    """Geometric interpolation ``first·(last/first)^r`` between two positive values.

    v2 (ICLR 2022, ``main.py`` ``create_schedule``, ``loss.update(ratio)``) decays
    the cross-entropy weight as ``λ0·(λ_end/λ0)^r`` with ``r`` the progress of the p
    schedule, ``ramp(t, p_start_epoch, p_end_epoch)``; :func:`p_relaxation` grows p
    the same way. At ``r = 0`` it is ``first`` exactly (``x**0.0 == 1.0``).

    :param first: the value at ``r = 0``.
    :param last: the value at ``r = 1``.
    :param r: progress in ``[0, 1]``.
    """
    return first * (last / first) ** r


def linear(first: float, last: float, r: float) -> float:
    """Linear interpolation ``first + (last − first)·r``.

    linf_mlp's CROWN-IBP weight β goes from ``crown_beta_start`` to ``crown_beta_end``
    over the eps warm-up, ``r = ramp(t, 0, eps_warmup_epochs)`` (CROWN-IBP, Zhang et
    al., ICLR 2020; not in the ICML 2021 code, which trains with IBP only).

    :param first: the value at ``r = 0``.
    :param last: the value at ``r = 1``.
    :param r: progress in ``[0, 1]``.
    """
    return first + (last - first) * r


def p_relaxation(
    t: float,
    start: float,
    end: float,
    p_start: float,
    p_end: float,
    *,
    inf_threshold: float = V2_INF_THRESHOLD,
) -> float:
    """The l_p relaxation of the l_inf-dist nets: p_start, then exponential to p_end, then ∞.

    p is ``p_start`` until ``start``, grows as ``p_start·(p_end/p_start)^r`` with
    ``r = ramp(t, start, end)``, and from ``end`` on is ∞ if ``p_end >=
    inf_threshold``, else stays ``p_end``.

    * v2 (ICLR 2022, ``main.py`` ``create_schedule``): ``inf_threshold`` 100, the
      code's ``args.p_end >= 100``; used by linf_v2.
    * v1 (ICML 2021, ``main.py`` ``create_schedule``): always ∞ after the relaxation,
      ``inf_threshold=0``; used by linf_v1 and linf_mlp.

    An empty relaxation (``end <= start``) is at its end from the first step: p = ∞
    (and v2's λ = λ_end) from epoch 0, as v2's ``cal_ratio`` makes it. The v1 code
    divides by zero there (``num_batches(epoch3 − epoch1)`` is 0); the harness gives
    it v2's meaning.

    :param t: progress in epochs.
    :param start: epoch where the relaxation starts (the codes' e1 / ``epoch_p_start``).
    :param end: epoch where it ends (v1's e3, v2's ``epoch_p_end``).
    :param p_start: p until ``start`` (8 in every command).
    :param p_end: p reached at ``end`` (1000 in every command).
    :param inf_threshold: switch to ∞ after ``end`` only if ``p_end`` is at least this.
    """
    if end <= start or t >= end:
        return math.inf if p_end >= inf_threshold else p_end
    return geometric(p_start, p_end, ramp(t, start, end))


def cosine_annealing(t: float, base: float, end: float, *, start: float = 0.0) -> float:
    """``base`` until ``start``, then cosine annealing from ``base`` to 0 at ``end``.

    * v2 (ICLR 2022, ``main.py`` ``create_schedule``, no ``--decays``): cosine from
      epoch 0 over all epochs, ``start`` 0; used by linf_v2.
    * v1 (ICML 2021, ``main.py`` ``create_schedule``): constant while p = 8, then
      cosine to 0 at the last epoch, ``start = e1``; used by linf_v1 and linf_mlp.

    Past ``end`` the lr stays 0; with ``end <= start`` it is 0 from ``start`` on.

    :param t: progress in epochs.
    :param base: the initial learning rate.
    :param end: epoch where it reaches 0 (the total number of epochs).
    :param start: epoch where the annealing starts.
    """
    if t < start:
        return base
    span = end - start
    progress = (t - start) / span if span > 0 else 1.0
    return base * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def exponential_lr_with_stopping(t: float, base: float, final: float, start: float, end: int) -> float:
    """CRM's ``ExponentialLRWithStopping`` (``Utilities/Schedulers.py``): geometric decay per whole epoch.

    The lr is ``base`` before epoch ``ceil(start)``, then ``base·γ^(e − ceil(start) + 1)``
    in epoch ``e = floor(t)`` with ``γ = (final/base)^(1/(end − ceil(start)))``, which
    reaches ``final`` in the last epoch ``end − 1`` and stays there. It changes once an
    epoch, as the code steps it after each epoch. Used by crm.

    :param t: progress in epochs (only its whole epoch counts).
    :param base: the initial learning rate.
    :param final: the learning rate of the last epoch (the code's ``lr_min``).
    :param start: the decay epoch (the code's ``learningRateDecayEpoch``); rounded up.
    :param end: the number of epochs.
    """
    epoch = math.floor(t)
    decay = math.ceil(start)
    if epoch < decay or end <= decay:
        return base
    gamma = (final / base) ** (1 / (end - decay))
    return base * gamma ** (min(epoch, end - 1) - decay + 1)


@dataclass(frozen=True)
class SchedulePhase:
    """A stretch of training in which a method's schedule does one kind of work (the l_inf-dist nets: p = 8,
    the relaxation, p = ∞).

    ``start`` and ``end`` are fractions of training in ``[0, 1]``; ``harness bench step`` times a step at
    the :attr:`middle` of each phase a trainer lists (:meth:`harness.Trainer.schedule_phases`).
    """

    name: str
    start: float
    end: float

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


def phases_in_epochs(epochs: float, *spans: tuple[str, float, float]) -> list[SchedulePhase]:
    """The phases of ``(name, start epoch, end epoch)`` spans out of ``epochs``, the empty ones left out."""
    return [SchedulePhase(name, start / epochs, end / epochs) for name, start, end in spans if end > start]


__all__ = [
    "V2_INF_THRESHOLD",
    "SchedulePhase",
    "cosine_annealing",
    "exponential_lr_with_stopping",
    "geometric",
    "linear",
    "p_relaxation",
    "phases_in_epochs",
    "ramp",
]
