"""One certifier's part of the evaluation: per-sample outcomes, radii, time budget and cost.

Each sample it is given ends with one of :data:`harness.results.OUTCOMES`:

* ``certified`` / ``not-certified``: its verdict at the run's eps;
* ``timeout``: its budget (:mod:`harness.budget`) ran out before the sample's
  batch was certified, or while it was (the call interrupted where possible);
* ``error``: the ``certify()`` call on its batch raised. The certifier goes on
  with the next batch and keeps the first message; only when every sample it
  was given is an error does it fail as a whole.

A contract violation (malformed verdicts or radii, radii for some batches
only) fails the whole certifier: its verdicts cannot be trusted anywhere.

Radii: a certifier's own (``closed-form``), or, when it gives none and has a
bisection tolerance (:meth:`~harness.Certifier.radius_tolerance`), per-sample
radii by bisection (:mod:`harness.radius`), run once every batch has its
verdict at eps (those are the certified accuracy; the budget goes to them
first), and stopping at the budget with the radii proven so far. A ``certify_at()`` that raises ends that batch's
bisection the same way, its message kept as ``sample_error``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.batches import SUBSET_SEED, batches, eval_indices, gather, merge
from harness.budget import BudgetExceeded, Deadline
from harness.components import Certifier
from harness.cost import measure
from harness.distributed import World
from harness.env import synchronize
from harness.evaluation_checks import ComponentFailed, check_certificate, fail_message
from harness.progress import Progress
from harness.radius import Bisection
from harness.results import OUTCOMES, Cost
from harness.threat import ThreatModel

CERTIFIED, NOT_CERTIFIED, TIMEOUT, ERROR = (OUTCOMES.index(o) for o in ("certified", "not-certified", "timeout", "error"))
NOT_ATTEMPTED = -1
CLOSED_FORM, BISECTION = "closed-form", "bisection"
#: Seed of a costly certifier's subset of the evaluated samples: fixed per number of samples, as the evaluation's.
CERTIFIER_SUBSET_SEED = SUBSET_SEED + 1


@dataclass
class Certified:
    """What one certifier did; ``codes`` holds each sample's outcome (an index into OUTCOMES; -1: not given to it)."""

    certifier: Certifier
    name: str
    sound: bool = True
    codes: torch.Tensor | None = None
    radius: torch.Tensor | None = None
    radius_method: str | None = None
    radius_tolerance: float | None = None
    sample_error: str | None = None
    cost: Cost = field(default_factory=Cost)
    error: str | None = None

    @property
    def verdicts(self) -> torch.Tensor | None:
        return None if self.codes is None else self.codes == CERTIFIED

    @property
    def attempted(self) -> torch.Tensor | None:
        return None if self.codes is None else self.codes != NOT_ATTEMPTED

    def count(self, code: int) -> int:
        return 0 if self.codes is None else int((self.codes == code).sum())

    def discard(self, error: str) -> None:
        """Fail the certifier as a whole: none of its verdicts count."""
        self.error, self.codes, self.radius = error, None, None


def is_sound(certifier: Certifier) -> bool:
    """A certifier is sound unless its class says ``sound = False`` (an estimate)."""
    return getattr(type(certifier), "sound", True) is not False


def _tolerance(certifier: Certifier, threat: ThreatModel) -> float | None:
    value = certifier.radius_tolerance(threat)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ComponentFailed(f"radius_tolerance() returned {value!r}; expected None (no bisection) or a positive number")
    return float(value)


def certify(
    certifier: Certifier,
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    correct: torch.Tensor,
    threat: ThreatModel,
    *,
    batch_size: int,
    device: torch.device,
    progress: Progress,
    budget: float | None = None,
    world: World | None = None,
) -> Certified:
    """Run ``certifier`` on the evaluated ``images`` (uint8) within ``budget`` seconds (``None``: no limit)."""
    n = images.shape[0]
    out = Certified(certifier, name, sound=is_sound(certifier))
    codes = torch.full((n,), NOT_ATTEMPTED, dtype=torch.int8)
    radius = torch.zeros(n, dtype=torch.float64)
    kind: str | None = None  # how its radii come: CLOSED_FORM, BISECTION or "none"; decided by its first batch that ran
    deadline = Deadline(budget)
    with measure(device) as meter:
        try:
            limit = certifier.sample_limit(model, threat)
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise ComponentFailed(f"sample_limit() returned {limit!r}; expected None (all samples) or a positive integer")
            rows = eval_indices(n, limit, seed=CERTIFIER_SUBSET_SEED)
            label = f"certify: {name}" + (f" ({len(rows)} of {n})" if len(rows) < n else "")
            mine = batches(len(rows), batch_size, world)
            dimensions = math.prod(images.shape[1:])
            # Every batch's verdicts at eps first, then the radii: a bisection never spends the budget that later batches'
            # verdicts need (those are the certified accuracy; a radius above or below eps only refines it).
            searches: list[tuple[torch.Tensor, Bisection]] = []
            with progress.task(label, total=sum(s.stop - s.start for s in mine)) as task:
                for s in mine:
                    part = rows[s]
                    kind = _certify_batch(out, certifier, model, images, labels, correct, threat, part, codes, radius, kind, deadline,
                                          device, dimensions, searches)
                    done = codes[rows[: s.stop]]
                    task.advance(len(part), certified=f"{(done == CERTIFIED).float().mean().item():.2%}")
            if searches:
                with progress.task(f"radius: {name}", total=sum(len(part) for part, _ in searches)) as task:
                    for part, bisection in searches:
                        _bisect(out, certifier, model, images, labels, threat, part, bisection, radius, deadline, device)
                        task.advance(len(part))
            synchronize(device)
        except ComponentFailed as exc:
            out.error = str(exc)
        except Exception as exc:  # isolated: recorded against this certifier  # noqa: BLE001
            out.error = fail_message(exc)
        # Samples per second over the samples it ran on: a time-out never ran (or was cut short), so it does not count.
        meter.samples = int(((codes != NOT_ATTEMPTED) & (codes != TIMEOUT)).sum())
    out.cost = meter.cost()
    _conclude(out, codes, radius, kind, world, meter.samples)
    if out.error is not None:
        progress.log(f"certifier {name!r} failed: {out.error}")
    elif out.count(TIMEOUT) or out.count(ERROR):
        progress.log(f"certifier {name!r}: {out.count(TIMEOUT)} time-outs, {out.count(ERROR)} errors" +
                     (f" (first: {out.sample_error})" if out.sample_error else ""))
    return out


def _certify_batch(
    out: Certified, certifier: Certifier, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor,
    threat: ThreatModel, part: torch.Tensor, codes: torch.Tensor, radius: torch.Tensor, kind: str | None, deadline: Deadline,
    device: torch.device, dimensions: int, searches: list[tuple[torch.Tensor, Bisection]],
) -> str | None:
    """Certify one batch (rows ``part``) into ``codes`` and ``radius``; return how the certifier's radii come.

    A batch whose radii come by bisection gets the radii its verdicts prove (eps or 0) and joins ``searches``.
    """
    if deadline.passed():
        codes[part] = TIMEOUT
        return kind
    x, y = images[part].to(device).float().div_(255), labels[part].to(device)
    try:
        with deadline.interrupting():
            given = certifier.certify(model, x, y, threat)
    except BudgetExceeded:
        codes[part] = TIMEOUT
        return kind
    except Exception as exc:  # this batch's samples are errors; the certifier goes on  # noqa: BLE001
        codes[part] = ERROR
        out.sample_error = out.sample_error or fail_message(exc)
        return kind
    verdicts, radii = check_certificate(given, len(part), threat)
    codes[part] = torch.where(verdicts, CERTIFIED, NOT_CERTIFIED).to(torch.int8)
    tolerance = _tolerance(certifier, threat) if radii is None else None
    this = CLOSED_FORM if radii is not None else (BISECTION if tolerance is not None else "none")
    if kind is not None and this != kind and CLOSED_FORM in (kind, this):
        raise ComponentFailed("certify() returned radii for some batches only")
    if radii is not None:
        radius[part] = radii
    elif tolerance is not None:
        bisection = Bisection(verdicts, verdicts | correct[part], threat, dimensions, tolerance)
        radius[part] = bisection.radius
        searches.append((part, bisection))
        out.radius_tolerance = tolerance
    return this


def _bisect(
    out: Certified, certifier: Certifier, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel,
    part: torch.Tensor, bisection: Bisection, radius: torch.Tensor, deadline: Deadline, device: torch.device,
) -> None:
    """Run one batch's bisection (rows ``part``) within what is left of the budget; its radii proven so far into ``radius``."""
    # The batch afresh from the uint8 images: whatever certify() did to its own copy, the bisection certifies these points.
    x, y = images[part].to(device).float().div_(255), labels[part].to(device)

    def certify_at(rows: torch.Tensor, eps: torch.Tensor) -> object:
        with deadline.interrupting():
            return certifier.certify_at(model, x[rows.to(device)], y[rows.to(device)], threat, eps.to(device))

    try:
        bisection.run(certify_at, stop=deadline.passed)
    except BudgetExceeded:
        pass  # the radii proven so far stand
    except ComponentFailed:
        raise
    except Exception as exc:  # the radii proven so far stand  # noqa: BLE001
        out.sample_error = out.sample_error or f"certify_at() {fail_message(exc)}"
    radius[part] = bisection.radius


def _conclude(out: Certified, codes: torch.Tensor, radius: torch.Tensor, kind: str | None, world: World | None, samples: int) -> None:
    """Merge over the processes (any rank's failure is the certifier's) and decide what stands."""
    told = gather((out.error, kind, out.sample_error, out.cost, samples, out.radius_tolerance), world)
    error = next((e for e, *_ in told if e is not None), None)
    kinds = {k for _, k, *_ in told if k is not None}
    if error is None and CLOSED_FORM in kinds and len(kinds) > 1:
        error = "certify() returned radii for some batches only"
    costs = [c for _, _, _, c, _, _ in told]
    seconds = max((c.seconds for c in costs if c.seconds is not None), default=None)
    peaks = [c.peak_memory_bytes for c in costs if c.peak_memory_bytes is not None]
    total = sum(k for *_, k, _ in told)
    out.cost = Cost(seconds=seconds, samples_per_second=total / seconds if seconds and total else None,
                    peak_memory_bytes=max(peaks) if peaks else None, memory_kind=costs[0].memory_kind)
    out.sample_error = next((e for _, _, e, *_ in told if e is not None), None)
    out.radius_tolerance = next((t for *_, t in told if t is not None), None)
    if error is not None:
        out.discard(error)
        return
    codes = merge(codes.to(torch.int32) + 1, world) - 1 if world is not None else codes
    attempted = codes != NOT_ATTEMPTED
    if bool(attempted.any()) and bool((codes[attempted] == ERROR).all()):
        out.discard(out.sample_error or "certify() raised on every batch")  # nothing it did stands: its error says why
        out.sample_error = None
        return
    out.codes = codes.to(torch.int8)
    if kinds & {CLOSED_FORM, BISECTION}:
        out.radius = merge(radius, world)
        out.radius_method = CLOSED_FORM if CLOSED_FORM in kinds else BISECTION
    if out.radius_method != BISECTION:
        out.radius_tolerance = None
