"""Per-sample certified radii by bisection over eps, for certifiers whose certificate has no closed-form radius.

A certifier that says only "certified at eps" (interval bounds, IBP, CROWN)
still certifies a largest radius per sample; :class:`Bisection` brackets it with
:meth:`~harness.Certifier.certify_at`: a sample certified at the run's eps is
searched in ``[eps, hi]`` (``hi`` the radius at which the ball covers the
whole ``[0,1]`` box: 1 for l_inf, ``sqrt(d)`` for l_2 in ``d`` dimensions), one
that is not in ``[0, eps]``. Each step is one ``certify_at`` over the samples
still open, each at the middle of its bracket; a sample's bracket halves per
step until it is narrower than the tolerance. The radius is the largest
radius certified (the bracket's lower end: ``eps`` for a sample certified at
eps and nowhere above, 0 for one certified nowhere), so it is always one the
certifier proved. Steps only ever ask inside a bracket, so a certifier whose
verdicts are not monotone in the radius can never raise a radius above one it
refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from harness.evaluation_checks import check_verdicts
from harness.threat import ThreatModel


def ball_covers_box(threat: ThreatModel, dimensions: int) -> float:
    """The radius from which every ball around a point of ``[0,1]^d`` covers the whole box (the box's diameter in the norm)."""
    return 1.0 if threat.norm == "inf" else math.sqrt(dimensions)


def steps_needed(width: float, tolerance: float) -> int:
    """How many halvings bring a bracket of ``width`` below ``tolerance``."""
    if width < tolerance:
        return 0
    return max(0, math.floor(math.log2(width / tolerance)) + 1)


class Bisection:
    """One batch's bisection. :attr:`radius` (float64, on the CPU) always holds the radii proven so far, so a step
    interrupted by an exception (the time budget) leaves it as it was before that step; :attr:`steps` counts the
    steps run and :attr:`finished` says whether every bracket got below the tolerance.

    :param certified: the verdicts at the run's eps (bool, one per sample of the batch).
    :param open_rows: which samples to bisect (bool); the others keep radius 0 (a misclassified sample).
    :param dimensions: the number of input values (``C·H·W``), for the l_2 box's diameter.
    """

    def __init__(self, certified: torch.Tensor, open_rows: torch.Tensor, threat: ThreatModel, dimensions: int, tolerance: float) -> None:
        n = len(certified)
        eps = float(threat.eps)
        top = max(ball_covers_box(threat, dimensions), eps)
        zeros = torch.zeros(n, dtype=torch.float64)
        self.tolerance = tolerance
        self.lo = torch.where(certified, zeros + eps, zeros)
        self.hi = torch.where(certified, zeros + top, zeros + eps)
        self.open_rows = open_rows.clone()
        self.radius = torch.where(open_rows, self.lo, zeros)
        self.steps = 0
        self.finished = False

    def run(self, certify_at: Callable[[torch.Tensor, torch.Tensor], object], *, stop: Callable[[], bool] = lambda: False) -> None:
        """Bisect until every bracket is below the tolerance, or ``stop()`` (asked before each step) is true.

        :param certify_at: ``certify_at(rows, eps)``: the certifier's verdicts on the batch's ``rows`` (an index tensor) at
            per-sample radii ``eps`` (float32, on the CPU); checked as a certificate's verdicts are
            (:class:`~harness.evaluation_checks.ComponentFailed` if malformed).
        """
        active = self.open_rows.clone()
        while True:
            active &= (self.hi - self.lo) >= self.tolerance
            if not bool(active.any()):
                self.finished = True
                return
            if stop():
                return
            rows = torch.nonzero(active).flatten()
            lo, hi = self.lo[rows], self.hi[rows]
            # The radii asked are float32 (the images' precision), and what is recorded is exactly the radius asked.
            mid = ((lo + hi) / 2).float().double()
            inside = (mid > lo) & (mid < hi)
            if not bool(inside.all()):  # float32 cannot split these brackets further
                active[rows[~inside]] = False
                continue
            verdicts = check_verdicts(certify_at(rows, mid.float()), len(rows), "certify_at()")
            self.lo[rows] = torch.where(verdicts, mid, lo)
            self.hi[rows] = torch.where(verdicts, hi, mid)
            self.radius = torch.where(self.open_rows, self.lo, self.radius)
            self.steps += 1
