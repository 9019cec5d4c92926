"""Certified accuracy at any radius, from the per-sample outcomes and radii an evaluation stored.

The one definition that every table and figure uses (the leaderboard's
``--at-eps``, ``harness plot radius``, the HTML board, ``harness show``): a
sample is *certified at radius r* when it is classified correctly and some
counted certifier (:func:`counted`: sound, and standing, i.e. it ran without
error) either

* stored a radius above ``r`` for it (a certifier's radius is the largest it
  proves, so every smaller one is certified), or
* certified it at the run's eps, and ``r <= eps`` (a certificate at eps holds
  at every smaller radius, whether or not the certifier gives radii).

A time-out or an error counts at no radius, whatever radius it carries. So at
the run's eps the curve equals the stored certified accuracy; a certifier
without radii counts up to eps only. Runs recorded before per-sample outcomes
were stored derive them from ``certified``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harness.results import EvaluationResult, SampleResult

#: The outcomes whose verdict and radius stand (a time-out or an error proves nothing, even a radius found before it).
_DECIDED = ("certified", "not-certified")


def counted(result: EvaluationResult) -> tuple[str, ...]:
    """The certifiers whose verdicts are certificates: sound (not a paper's estimate) and standing (no error)."""
    return tuple(c.name for c in result.certifiers if c.sound and c.error is None)


def outcome(sample: SampleResult, certifier: str) -> str | None:
    """The sample's outcome with ``certifier`` (one of :data:`harness.results.OUTCOMES`); ``None`` if it did not run on it.

    Derived from ``certified`` for a run stored before outcomes were (then every verdict was certified or not).
    """
    if certifier in sample.outcomes:
        return sample.outcomes[certifier]
    if certifier not in sample.certificates:
        return None
    return "certified" if sample.certificates[certifier][0] else "not-certified"


@dataclass(frozen=True)
class Reach:
    """How far a sample is certified: at every radius below ``radius``, and at every radius up to eps if ``to_eps``."""

    radius: float = 0.0
    to_eps: bool = False

    def certifies(self, r: float, eps: float) -> bool:
        return r < self.radius or (self.to_eps and r <= eps)


def reach(sample: SampleResult, certifiers: Iterable[str]) -> Reach:
    """The union of what ``certifiers`` (the counted ones, :func:`counted`) prove for ``sample``."""
    if sample.prediction != sample.label:
        return Reach()
    radius, to_eps = 0.0, False
    for name in certifiers:
        if outcome(sample, name) not in _DECIDED:
            continue
        certified, stored = sample.certificates[name]
        to_eps = to_eps or certified
        if stored is not None and not math.isnan(stored):
            radius = max(radius, stored)
    return Reach(radius, to_eps)


def certified_at(sample: SampleResult, r: float, *, eps: float, certifiers: Iterable[str]) -> bool:
    """Whether ``sample`` is certified at radius ``r`` (the module's definition); ``eps`` is the run's."""
    return reach(sample, certifiers).certifies(r, eps)


def accuracy_at(samples: Sequence[SampleResult], r: float, *, eps: float, certifiers: Iterable[str]) -> float | None:
    """Certified accuracy at radius ``r`` over every evaluated sample; ``None`` without samples."""
    if r < 0 or math.isnan(r):
        raise ValueError(f"radius must be >= 0, got {r}")
    names = tuple(certifiers)
    if not samples:
        return None
    return sum(certified_at(s, r, eps=eps, certifiers=names) for s in samples) / len(samples)


def has_radii(samples: Iterable[SampleResult], certifiers: Iterable[str]) -> bool:
    """Whether any of ``certifiers`` stored a radius for any sample (else it says nothing beyond the run's eps)."""
    names = tuple(certifiers)
    return any(s.certificates.get(n, (False, None))[1] is not None for s in samples for n in names)


@dataclass(frozen=True)
class Curve:
    """Certified accuracy against the radius: a decreasing step function of ``r >= 0``.

    ``radii`` are its break points, ascending (0, the run's eps, and every
    stored radius); ``at[i]`` is the accuracy at ``radii[i]`` itself and
    ``after[i]`` on the open interval up to the next break point (and beyond
    the last). The two differ only at eps, where certificates at eps stop.
    """

    radii: tuple[float, ...]
    at: tuple[float, ...]
    after: tuple[float, ...]
    eps: float
    samples: int

    def accuracy(self, r: float) -> float:
        """The curve's value at ``r`` (what :func:`accuracy_at` gives, without going through the samples again)."""
        if r < 0:
            raise ValueError(f"radius must be >= 0, got {r}")
        i = bisect.bisect_right(self.radii, r) - 1
        return self.at[i] if self.radii[i] == r else self.after[i]

    def steps(self) -> tuple[list[float], list[float]]:
        """``(x, y)`` to draw with ``drawstyle="steps-post"``: each break point, repeated where the value drops at it."""
        xs: list[float] = []
        ys: list[float] = []
        for r, at, after in zip(self.radii, self.at, self.after, strict=True):
            xs.append(r)
            ys.append(at)
            if after != at:
                xs.append(r)
                ys.append(after)
        return xs, ys


def certified_curve(samples: Sequence[SampleResult], eps: float, certifiers: Iterable[str]) -> Curve:
    """The curve of certified accuracy against the radius over ``samples`` (every evaluated sample of one run).

    ``eps`` is the run's; ``certifiers`` the counted ones (:func:`counted`), or one of them for its own curve.
    """
    names = tuple(certifiers)
    reaches = [reach(s, names) for s in samples]
    n = len(samples)
    # A sample certified up to eps and by no radius beyond it counts on [0, eps]; any other on [0, radius).
    closed = sum(1 for x in reaches if x.to_eps and x.radius <= eps)
    open_ = sorted(x.radius for x in reaches if not (x.to_eps and x.radius <= eps) and x.radius > 0)
    radii = sorted({0.0, eps, *(r for r in open_ if math.isfinite(r))})

    def beyond(r: float) -> int:
        return len(open_) - bisect.bisect_right(open_, r)

    share = (lambda k: k / n) if n else (lambda k: 0.0)
    at = tuple(share(beyond(r) + (closed if r <= eps else 0)) for r in radii)
    after = tuple(share(beyond(r) + (closed if r < eps else 0)) for r in radii)
    return Curve(radii=tuple(radii), at=at, after=after, eps=eps, samples=n)


def run_curve(result: EvaluationResult, samples: Sequence[SampleResult], eps: float) -> Curve:
    """A run's curve: over its counted certifiers."""
    return certified_curve(samples, eps, counted(result))
