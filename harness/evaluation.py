"""The uniform evaluation: the same for every method.

On the test split (or a fixed, seeded subset of it, the same for every run):

1. clean accuracy;
2. every certifier given that applies to the trained model (on all samples,
   or on a fixed, seeded subset of at most
   :meth:`~harness.Certifier.sample_limit` samples where a certifier is costly;
   its accuracy is then over that subset); the others are reported with the
   reason they do not apply;
3. every attack given, on every correctly classified sample (certified ones
   included: they are the soundness check).

A sample counts as certified if any certifier certifies it.

Each certifier and attack is isolated: one that raises, returns malformed
verdicts or adversarial points outside the threat model is recorded as an
error naming it, its partial outcome is discarded, and the evaluation goes on
with the others. A certificate is a promise: a certifier that certifies a
misclassified sample, or one an attack broke, is recorded as **unsound** (an
error) and none of its verdicts count.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
from torch import nn

from harness import distributed
from harness.components import Attacker, Certificate, Certifier
from harness.distributed import World
from harness.env import synchronize
from harness.errors import HarnessError, one_line
from harness.numerics import beyond_bound
from harness.options import options_dict
from harness.progress import Progress, SilentProgress
from harness.results import AttackResult, CertifierResult, EvaluationResult, RadiusStats, SampleResult
from harness.threat import ThreatModel

#: Seed of the evaluation subset: fixed, so every run sees the same samples.
SUBSET_SEED = 0


def eval_indices(n_test: int, samples: int | None, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Indices of the test samples to evaluate: all, or a fixed seeded subset, sorted."""
    if samples is None or samples >= n_test:
        return torch.arange(n_test)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_test, generator=generator)[:samples].sort().values


@dataclass
class Evaluation:
    """The typed result and the per-sample outcomes."""

    result: EvaluationResult
    samples: list[SampleResult]


class ComponentFailed(HarnessError):
    """A certifier or attack broke its contract; recorded against it, never raised out of :func:`evaluate`."""


def _batches(n: int, batch_size: int, world: World | None = None) -> list[slice]:
    """The batches of ``n`` rows; with ``world``, this rank's: batch k goes to rank k mod size (each batch is one
    process's batch, rows and size, so a deterministic component gives each row what one process gives it)."""
    slices = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return slices if world is None else slices[world.rank :: world.size]


def _merge(t: torch.Tensor, world: World | None) -> torch.Tensor:
    """Every rank's rows of ``t`` (zero elsewhere on each rank) on every rank: exact, as x + 0 = x."""
    if world is None:
        return t
    if t.dtype == torch.bool:
        return distributed.all_reduce(t.to(torch.int32)) > 0
    return distributed.all_reduce(t)


def _first_problem(problem: str | None, world: World | None) -> str | None:
    """The first rank's problem (in rank order), the same on every rank."""
    if world is None:
        return problem
    return next((p for p in distributed.gather_objects(problem) if p is not None), None)


def check_in_ball(adv: object, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """An attack must return points inside the threat model; anything else would inflate robustness gaps."""
    if not isinstance(adv, torch.Tensor) or adv.shape != x.shape:
        shape = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
        raise ComponentFailed(f"perturb() returned {shape}; expected a tensor of the images' shape {tuple(x.shape)}")
    adv = adv.detach()
    if not bool(torch.isfinite(adv).all()):
        raise ComponentFailed("perturb() returned non-finite images")
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if threat.norm == "inf" else delta.norm(dim=1)
    slack = 1e-5 * max(threat.eps, 1.0)
    if adv.min() < 0 or adv.max() > 1 or bool((size > threat.eps + slack).any()):
        raise ComponentFailed(f"perturb() returned points outside the {threat} ball or [0,1] (largest perturbation {size.max():.6g})")
    return adv


def check_certificate(result: object, n: int, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(certified, radius)`` of a batch of ``n`` on the CPU, or ComponentFailed saying what is malformed."""
    if not isinstance(result, Certificate):
        raise ComponentFailed(f"certify() returned {type(result).__name__}; expected a harness.Certificate")
    certified = result.certified
    if not isinstance(certified, torch.Tensor) or certified.shape != (n,):
        shape = tuple(certified.shape) if isinstance(certified, torch.Tensor) else type(certified).__name__
        raise ComponentFailed(f"certify() returned verdicts of shape {shape} for a batch of {n}; expected ({n},)")
    certified = certified.detach().cpu()
    if certified.dtype != torch.bool:
        if certified.dtype.is_floating_point or certified.dtype.is_complex or not bool(((certified == 0) | (certified == 1)).all()):
            raise ComponentFailed(f"certify() returned verdicts of dtype {certified.dtype}; expected bool")
        certified = certified.bool()
    radius = result.radius
    if radius is None:
        return certified, None
    if not isinstance(radius, torch.Tensor) or radius.shape != (n,):
        shape = tuple(radius.shape) if isinstance(radius, torch.Tensor) else type(radius).__name__
        raise ComponentFailed(f"certify() returned radii of shape {shape} for a batch of {n}; expected ({n},)")
    radius = radius.detach().cpu().double()
    if bool(torch.isnan(radius).any()) or bool((radius < 0).any()):
        raise ComponentFailed("certify() returned NaN or negative radii")
    if bool((certified & (radius < threat.eps)).any()):
        raise ComponentFailed(f"certify() certified samples at radii below eps {threat.eps:g}")
    if bool((~certified & (radius > threat.eps)).any()):
        raise ComponentFailed(f"certify() returned radii above eps {threat.eps:g} for samples it did not certify")
    return certified, radius


def attack_label(attacker: Attacker) -> str:
    """How tables name ``attacker``: its ``label()``; ComponentFailed if that raises or is not a string."""
    try:
        label = attacker.label()
    except Exception as exc:  # a third party's label() must not stop a run  # noqa: BLE001
        raise ComponentFailed(f"label() {_fail_message(exc)}") from exc
    if not isinstance(label, str) or not label:
        raise ComponentFailed(f"label() returned {label!r}; expected a non-empty string")
    return label


def _fail_message(exc: Exception) -> str:
    if isinstance(exc, ComponentFailed):
        return str(exc)
    return f"raised {type(exc).__name__}: {one_line(exc)}"


class _ModelGuard:
    """Notices a component that changed the model (weights, buffers, modes, attributes such as p) and undoes it.

    Certifiers and attacks get the evaluated model itself; one that leaves it
    in training mode, zeroes a weight or sets another p would corrupt every
    result after it. The guard keeps a copy of the state dict on the CPU and
    a fingerprint (sums per tensor, in float64; every module's plain
    attributes; ``requires_grad`` flags) and compares after each component.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # Extra states (an l_p-dist layer's p) are plain data: kept as they are, and the attributes check covers them.
        self.saved = {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
        self.attributes = self._attributes()
        self.grads = [p.requires_grad for p in model.parameters()]
        self.fingerprint = self._fingerprint()

    def _attributes(self) -> list[tuple[nn.Module, str, object]]:
        return [(m, k, v) for m in self.model.modules() for k, v in vars(m).items() if isinstance(v, bool | int | float | str)]

    def _fingerprint(self) -> list[tuple[float, float, float]]:
        out = []
        with torch.no_grad():
            for t in self.model.state_dict().values():
                if not isinstance(t, torch.Tensor):
                    continue
                d = t.detach().double() if t.is_floating_point() else t.detach().to(torch.float64)
                out.append((d.sum().item(), d.abs().sum().item(), (d * d).sum().item()))
        return out

    def changed(self) -> str | None:
        """What changed since the guard was made (then restored), or None."""
        what = []
        if self._attributes() != self.attributes or [p.requires_grad for p in self.model.parameters()] != self.grads:
            what.append("its modes or attributes")
        if self._fingerprint() != self.fingerprint:
            what.append("its weights")
        if not what:
            return None
        with torch.no_grad():
            self.model.load_state_dict(self.saved)
        for module, key, value in self.attributes:
            setattr(module, key, value)
        for p, flag in zip(self.model.parameters(), self.grads):
            p.requires_grad_(flag)
        return f"it changed the model ({' and '.join(what)}); the model was restored and this component's results discarded"


@dataclass
class _Certified:
    certifier: Certifier
    name: str
    verdicts: torch.Tensor | None = None
    radius: torch.Tensor | None = None
    attempted: torch.Tensor | None = None
    seconds: float | None = None
    error: str | None = None


@dataclass
class _Attacked:
    attacker: Attacker
    name: str
    label: str = ""
    survived: torch.Tensor | None = None
    seconds: float | None = None
    error: str | None = None


P = ParamSpec("P")
R = TypeVar("R")

#: Seed of the evaluation's random draws (an attack's random start): the same model, samples and components give the
#: same evaluation, whatever ran before it in the process (training, a resumed run's restored generators).
EVAL_SEED = 0


def _seeded(evaluate: Callable[P, R]) -> Callable[P, R]:
    """Run ``evaluate`` with the global RNG seeded with :data:`EVAL_SEED`, and the caller's RNG state restored afterwards."""

    @functools.wraps(evaluate)
    def seeded(*args: P.args, **kwargs: P.kwargs) -> R:
        device: torch.device = kwargs["device"]  # type: ignore[assignment]  # keyword-only in evaluate()
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(EVAL_SEED)
            return evaluate(*args, **kwargs)

    return seeded


@_seeded
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    threat: ThreatModel,
    *,
    attackers: Sequence[Attacker],
    certifiers: Sequence[Certifier],
    device: torch.device,
    indices: torch.Tensor | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
    names: Callable[[Attacker | Certifier], str] | None = None,
    world: World | None = None,
) -> Evaluation:
    """Evaluate ``model`` on uint8 ``images`` (``N×C×H×W``) and ``labels``, reproducibly (seeded, see :func:`_seeded`).

    ``indices`` are the dataset indices of the rows (stored per sample).
    ``certifiers`` that do not apply to the model are reported with their
    reason; ``attackers`` must all be for ``threat``'s norm. ``names`` gives
    the name a component is recorded under (its catalog key; default its name).

    ``world`` (a multi-process run; every rank calls this with the same
    arguments): each phase's batches are split over the ranks (batch k to
    rank k mod size), the per-sample outcomes merged on every rank, and the
    soundness check and aggregates computed from the merged samples exactly
    as one process computes them. A deterministic component gives the same
    per-sample results as one process; an attack's random start draws from
    each rank's own stream (seeded with :data:`EVAL_SEED` on every rank), so
    it differs per sample, not in distribution.

    :raises HarnessError: the model itself fails: logits of the wrong shape, non-finite, or at least
        2^64 in magnitude (:data:`harness.numerics.OVERFLOW_BOUND`: margins computed from them can
        overflow into ``inf``, which a certifier would read as certified).
    """
    progress = progress or SilentProgress()
    name_of = names or (lambda component: component.name)
    model.eval()
    n = images.shape[0]
    indices = torch.arange(n) if indices is None else indices
    labels = labels.to(torch.long)

    def batch(rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        return images[rows].to(device).float().div_(255), labels[rows].to(device)

    world = world if world is not None and world.size > 1 else None
    predictions = torch.empty(n, dtype=torch.long) if world is None else torch.zeros(n, dtype=torch.long)
    try:
        _predict(model, batch, _batches(n, batch_size, world), predictions, n if world is None else None, progress)
    except HarnessError as exc:
        if world is None:
            raise
        problem: str | None = str(exc)
    else:
        problem = None
    problem = _first_problem(problem, world)
    if problem is not None:
        raise HarnessError(problem)
    predictions = _merge(predictions, world)
    correct = predictions == labels

    guard = _ModelGuard(model)
    not_applicable: dict[str, str] = {}
    certified_runs: list[_Certified] = []
    for certifier in certifiers:
        name = name_of(certifier)
        reason = _applicability(certifier, model, threat)
        if reason is None:
            outcome = _certify(certifier, name, model, images, labels, threat, batch_size, device, progress, world)
            certified_runs.append(outcome)
        changed = _first_problem(guard.changed(), world)
        if changed is not None and reason is None:
            outcome.error, outcome.verdicts, outcome.radius, outcome.attempted = changed, None, None, None
        elif changed is not None:
            not_applicable[name] = f"deciding whether it applies {changed}"
        elif reason is not None:
            not_applicable[name] = reason

    attack_rows = torch.nonzero(correct).flatten()
    attacked_runs: list[_Attacked] = []
    for attacker in attackers:
        if threat.norm not in attacker.norms:
            continue
        attacked = _attack(attacker, name_of(attacker), model, images, labels, attack_rows, threat, batch_size, device, progress, world)
        changed = _first_problem(guard.changed(), world)
        if changed is not None:
            attacked.error, attacked.survived = changed, None
        attacked_runs.append(attacked)

    _check_soundness(indices, correct, certified_runs, attacked_runs)
    return _collect(n, indices, labels, predictions, correct, certified_runs, attacked_runs, not_applicable)


def _predict(
    model: nn.Module, batch: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], slices: list[slice], predictions: torch.Tensor,
    total: int | None, progress: Progress,
) -> None:
    """The clean predictions of the rows in ``slices`` into ``predictions``; HarnessError if the logits are unusable."""
    with progress.task("evaluate: clean", total=total if total is not None else sum(s.stop - s.start for s in slices)) as task, torch.no_grad():
        for s in slices:
            x, _ = batch(s)
            logits = model(x)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise HarnessError(f"the model returned logits of shape {tuple(logits.shape)}; expected (batch, classes)")
            if not bool(torch.isfinite(logits).all()):
                bad = int((~torch.isfinite(logits)).any(1).sum())
                raise HarnessError(f"the model gives non-finite logits on {bad} of {s.stop - s.start} test images (did training diverge?)")
            largest = logits.abs().amax().item()
            if beyond_bound(largest):
                raise HarnessError(
                    f"the model's logits reach {largest:.3g} on test images, beyond 2^64 ≈ 1.8e19 where float32 margins "
                    "and their squares overflow: no certificate or accuracy of it would mean anything (did training diverge?)"
                )
            predictions[s] = logits.argmax(1).cpu()
            task.advance(s.stop - s.start)


def _applicability(certifier: Certifier, model: nn.Module, threat: ThreatModel) -> str | None:
    """Why ``certifier`` does not apply, ``None`` if it does (a certifier that raises here does not apply, with the error)."""
    try:
        if certifier.applies_to(model, threat):
            return None
        reason = certifier.not_applicable_reason(model, threat)
    except Exception as exc:  # a third party's applicability test must not stop the evaluation  # noqa: BLE001
        return f"deciding whether it applies {_fail_message(exc)}"
    return reason or f"its applies_to() is false for {type(model).__name__} under {threat}"


def _certify(
    certifier: Certifier,
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    threat: ThreatModel,
    batch_size: int,
    device: torch.device,
    progress: Progress,
    world: World | None = None,
) -> _Certified:
    n = images.shape[0]
    outcome = _Certified(certifier, name)
    start = time.perf_counter()
    mine: list[slice] = []
    try:
        limit = certifier.sample_limit(model, threat)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ComponentFailed(f"sample_limit() returned {limit!r}; expected None (all samples) or a positive integer")
        rows = eval_indices(n, limit, seed=SUBSET_SEED + 1)  # a subset of the evaluated rows, fixed per n
        certified = torch.zeros(n, dtype=torch.bool)
        radius: torch.Tensor | None = None
        label = f"certify: {name}" + (f" ({len(rows)} of {n})" if len(rows) < n else "")
        mine = _batches(len(rows), batch_size, world)
        with progress.task(label, total=sum(s.stop - s.start for s in mine)) as task:
            for k, s in enumerate(mine):
                part = rows[s]
                x, y = images[part].to(device).float().div_(255), labels[part].to(device)
                verdicts, radii = check_certificate(certifier.certify(model, x, y, threat), len(part), threat)
                certified[part] = verdicts
                if radii is not None:
                    if radius is None:
                        if k > 0:
                            raise ComponentFailed("certify() returned radii for some batches only")
                        radius = torch.zeros(n, dtype=torch.float64)
                    radius[part] = radii
                elif radius is not None:
                    raise ComponentFailed("certify() returned radii for some batches only")
                task.advance(len(part), certified=f"{certified[rows[: s.stop]].float().mean().item():.2%}")
        synchronize(device)
    except Exception as exc:  # isolated: recorded against this certifier  # noqa: BLE001
        outcome.error = _fail_message(exc)
        progress.log(f"certifier {name!r} failed: {outcome.error}")
    else:
        outcome.verdicts, outcome.radius = certified, radius
        outcome.attempted = torch.zeros(n, dtype=torch.bool).index_fill_(0, rows, True)
    outcome.seconds = time.perf_counter() - start
    if world is not None:
        _merge_certified(outcome, n, world, has_rows=bool(mine) if outcome.error is None else None)
    return outcome


def _merge_certified(outcome: _Certified, n: int, world: World, has_rows: bool | None) -> None:
    """Every rank's verdicts and radii in ``outcome``, the same on every rank (any rank's error is the certifier's)."""
    told = distributed.gather_objects((outcome.error, has_rows, outcome.radius is not None, outcome.seconds))
    error = next((e for e, _, _, _ in told if e is not None), None)
    radii = {r for _, rows, r, _ in told if rows}
    if error is None and len(radii) > 1:
        error = "certify() returned radii for some batches only"
    outcome.seconds = max(t for *_, t in told)
    if error is not None:
        outcome.error, outcome.verdicts, outcome.radius, outcome.attempted = error, None, None, None
        return
    outcome.verdicts = _merge(outcome.verdicts if outcome.verdicts is not None else torch.zeros(n, dtype=torch.bool), world)
    if radii == {True}:
        outcome.radius = _merge(outcome.radius if outcome.radius is not None else torch.zeros(n, dtype=torch.float64), world)
    else:
        outcome.radius = None


def _attack(
    attacker: Attacker,
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack_rows: torch.Tensor,
    threat: ThreatModel,
    batch_size: int,
    device: torch.device,
    progress: Progress,
    world: World | None = None,
) -> _Attacked:
    n = images.shape[0]
    outcome = _Attacked(attacker, name, label=name)
    start = time.perf_counter()
    alive = torch.zeros(n, dtype=torch.bool)
    try:
        outcome.label = attack_label(attacker)
        mine = _batches(len(attack_rows), batch_size, world)
        with progress.task(f"attack: {name}", total=sum(s.stop - s.start for s in mine)) as task:
            for s in mine:
                rows = attack_rows[s]
                x, y = images[rows].to(device).float().div_(255), labels[rows].to(device)
                # A copy: an attack that wrote into the clean batch would otherwise pass the check against itself.
                adv = check_in_ball(attacker.perturb(model, x.clone(), y, threat), x, threat)
                with torch.no_grad():
                    alive[rows] = (model(adv).argmax(1) == y).cpu()
                # Robust accuracy so far over every evaluated sample up to the last one attacked (misclassified
                # ones count as not robust), so that the last line shows exactly the number that is stored.
                seen = int(attack_rows[s.stop - 1]) + 1 if s.stop < len(attack_rows) else n
                task.advance(len(rows), robust=f"{alive[:seen].float().mean().item():.2%}")
        synchronize(device)
    except Exception as exc:  # isolated: recorded against this attack  # noqa: BLE001
        outcome.error = _fail_message(exc)
        progress.log(f"attack {name!r} failed: {outcome.error}")
    else:
        outcome.survived = alive
    outcome.seconds = time.perf_counter() - start
    if world is not None:  # every rank's survivals; any rank's error is the attack's
        told = distributed.gather_objects((outcome.error, outcome.seconds))
        error = next((e for e, _ in told if e is not None), None)
        outcome.seconds = max(t for _, t in told)
        if error is not None:
            outcome.error, outcome.survived = error, None
        else:
            outcome.survived = _merge(alive, world)
    return outcome


def _check_soundness(indices: torch.Tensor, correct: torch.Tensor, certified: list[_Certified], attacked: list[_Attacked]) -> None:
    """Mark every certifier that certified a misclassified sample, or one an attack broke, as unsound."""
    for c in certified:
        if c.verdicts is None:
            continue
        problems = []
        wrong = torch.nonzero(c.verdicts & ~correct).flatten()
        if len(wrong):
            problems.append(f"certified {len(wrong)} misclassified samples (e.g. test index {int(indices[wrong[0]])})")
        for a in attacked:
            if a.survived is None:
                continue
            broken = torch.nonzero(c.verdicts & correct & ~a.survived).flatten()
            if len(broken):
                problems.append(f"certified {len(broken)} samples that {a.name} broke (e.g. test index {int(indices[broken[0]])})")
        if problems:
            c.error = "UNSOUND certificate: " + "; ".join(problems)
            c.verdicts = c.radius = c.attempted = None


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float(torch.finfo(torch.float64).max)


def _radius_stats(radius: torch.Tensor | None, tried: torch.Tensor) -> RadiusStats | None:
    if radius is None:
        return None
    values = radius[tried]
    capped = values.clamp(max=torch.finfo(torch.float64).max)
    return RadiusStats(mean=_finite(capped.mean().item()), median=_finite(values.median().item()))


def _collect(
    n: int,
    indices: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    correct: torch.Tensor,
    certified: list[_Certified],
    attacked: list[_Attacked],
    not_applicable: dict[str, str],
) -> Evaluation:
    # The outcomes that stand: (name, verdicts or survivals, rows attempted, radii).
    survived = {a.name: a.survived for a in attacked if a.survived is not None}
    verdicts = {c.name: (c.verdicts, c.attempted, c.radius) for c in certified if c.verdicts is not None and c.attempted is not None}
    # Accuracies are counts over totals, in Python floats (a float32 mean would store 0.15000000596).
    robust = int(torch.stack(list(survived.values())).all(0).sum()) / n if survived else None
    any_certified = int(torch.stack([v for v, _, _ in verdicts.values()]).any(0).sum()) / n if verdicts else None
    attack_results = tuple(
        AttackResult(
            name=a.name,
            label=a.label,
            options=options_dict(a.attacker.options),
            accuracy=None if a.survived is None else int(a.survived.sum()) / n,
            attacked=int(correct.sum()),
            seconds=a.seconds,
            error=a.error,
        )
        for a in attacked
    )
    certifier_results = []
    for c in certified:
        outcome = verdicts.get(c.name) if c.error is None else None
        certifier_results.append(
            CertifierResult(
                name=c.name,
                options=options_dict(c.certifier.options),
                accuracy=None if outcome is None else int(outcome[0][outcome[1]].sum()) / int(outcome[1].sum()),
                samples=0 if outcome is None else int(outcome[1].sum()),
                radius=None if outcome is None else _radius_stats(outcome[2], outcome[1]),
                seconds=c.seconds,
                error=c.error,
            )
        )
    result = EvaluationResult(
        samples=n,
        clean_accuracy=int(correct.sum()) / n,
        robust_accuracy=robust,
        certified_accuracy=any_certified,
        attacks=attack_results,
        certifiers=tuple(certifier_results),
        not_applicable=not_applicable,
    )
    samples = []
    for row in range(n):
        samples.append(
            SampleResult(
                index=int(indices[row]),
                label=int(labels[row]),
                prediction=int(predictions[row]),
                attacks={name: bool(alive[row]) for name, alive in survived.items()},
                certificates={
                    name: (bool(v[row]), None if radius is None else _finite(radius[row].item()))
                    for name, (v, attempted, radius) in verdicts.items()
                    if attempted[row]
                },
            )
        )
    return Evaluation(result=result, samples=samples)
