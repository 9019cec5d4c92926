"""The uniform evaluation: the same for every method.

On the test split (or a fixed, seeded subset of it, the same for every run):

1. clean accuracy;
2. every certifier given that applies to the trained model (on all samples,
   or on a fixed, seeded subset of at most
   :meth:`~harness.Certifier.sample_limit` samples where a certifier is costly;
   its accuracy is then over that subset), each sample ending certified, not
   certified, timed out (its time budget) or in error (its batch raised), with
   a radius per sample where the certifier gives one or bisection finds one
   (:mod:`harness.certification`); the others are reported with the reason
   they do not apply;
3. every attack given, on every correctly classified sample (certified ones
   included: they are the soundness check), each stage of a multi-stage attack
   checked as an attack (:mod:`harness.attacking`); an attack whose
   ``attacks_certified()`` is false (AutoAttack by default) runs after the
   others and only on the samples no standing sound certificate covers, the
   skipped ones counting as surviving it;
4. the gradient-masking check (:mod:`harness.masking`).

Robust accuracy is the per-sample worst case over the attacks: a sample is
robust if it survives every attack that ran. A sample counts as certified if
any sound certifier certifies it; an estimate (``sound = False``) is stored
and shown, never counted. Every attack and certifier records its cost
(:mod:`harness.cost`).

Each certifier and attack is isolated: one that raises, returns malformed
verdicts or adversarial points outside the threat model is recorded as an
error naming it, its partial outcome is discarded, and the evaluation goes on
with the others. A certificate is a promise: a sound certifier that certifies
a misclassified sample, or one an attack broke, is recorded as **unsound** (an
error) and none of its verdicts count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
from torch import nn

from harness.attacking import Attacked, attack
from harness.batches import SUBSET_SEED, batches, eval_indices, first_problem, merge
from harness.budget import Budgets
from harness.certification import Certified, certify
from harness.components import Attacker, Certifier
from harness.distributed import World
from harness.errors import HarnessError
from harness.evaluation_checks import ComponentFailed, attack_label, check_certificate, check_in_ball, fail_message
from harness.masking import gradient_free_breaks, masking_check, zero_gradient_rows
from harness.numerics import beyond_bound
from harness.options import options_dict
from harness.progress import Progress, SilentProgress
from harness.results import OUTCOMES, AttackResult, CertifierResult, EvaluationResult, GradientMasking, RadiusStats, SampleResult
from harness.threat import ThreatModel

__all__ = [
    "SUBSET_SEED", "ComponentFailed", "Evaluation", "attack_label", "check_certificate", "check_in_ball", "eval_indices", "evaluate",
]


@dataclass
class Evaluation:
    """The typed result and the per-sample outcomes."""

    result: EvaluationResult
    samples: list[SampleResult]


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
    budgets: Budgets | None = None,
) -> Evaluation:
    """Evaluate ``model`` on uint8 ``images`` (``N×C×H×W``) and ``labels``, reproducibly (seeded, see :func:`_seeded`).

    ``indices`` are the dataset indices of the rows (stored per sample).
    ``certifiers`` that do not apply to the model are reported with their
    reason; ``attackers`` must all be for ``threat``'s norm. ``names`` gives
    the name a component is recorded under (its catalog key; default its name).
    ``budgets`` limits each certifier's time (by that name; default: none).

    ``world`` (a multi-process run; every rank calls this with the same
    arguments): each phase's batches are split over the ranks (batch k to
    rank k mod size), the per-sample outcomes merged on every rank, and the
    soundness check and aggregates computed from the merged samples exactly
    as one process computes them. A deterministic component gives the same
    per-sample results as one process; an attack's random start draws from
    each rank's own stream (seeded with :data:`EVAL_SEED` on every rank), so
    it differs per sample, not in distribution. A time budget is each rank's.

    :raises HarnessError: the model itself fails: logits of the wrong shape, non-finite, or at least
        2^64 in magnitude (:data:`harness.numerics.OVERFLOW_BOUND`: margins computed from them can
        overflow into ``inf``, which a certifier would read as certified).
    """
    progress = progress or SilentProgress()
    name_of = names or (lambda component: component.name)
    budgets = budgets or Budgets()
    model.eval()
    n = images.shape[0]
    indices = torch.arange(n) if indices is None else indices
    labels = labels.to(torch.long)

    def batch(rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        return images[rows].to(device).float().div_(255), labels[rows].to(device)

    world = world if world is not None and world.size > 1 else None
    predictions = torch.empty(n, dtype=torch.long) if world is None else torch.zeros(n, dtype=torch.long)
    try:
        _predict(model, batch, batches(n, batch_size, world), predictions, n if world is None else None, progress)
    except HarnessError as exc:
        if world is None:
            raise
        problem: str | None = str(exc)
    else:
        problem = None
    problem = first_problem(problem, world)
    if problem is not None:
        raise HarnessError(problem)
    predictions = merge(predictions, world)
    correct = predictions == labels

    guard = _ModelGuard(model)
    not_applicable: dict[str, str] = {}
    certified_runs: list[Certified] = []
    for certifier in certifiers:
        name = name_of(certifier)
        reason = _applicability(certifier, model, threat)
        if reason is None:
            outcome = certify(certifier, name, model, images, labels, correct, threat, batch_size=batch_size, device=device,
                              progress=progress, budget=budgets.of(name), world=world)
            certified_runs.append(outcome)
        changed = first_problem(guard.changed(), world)
        if changed is not None and reason is None:
            outcome.discard(changed)
        elif changed is not None:
            not_applicable[name] = f"deciding whether it applies {changed}"
        elif reason is not None:
            not_applicable[name] = reason

    attack_rows = torch.nonzero(correct).flatten()
    attacked_runs: list[Attacked] = []
    # Attacks that attack certified samples too run first: their breaks decide which certificates still stand
    # when an attack that skips certified samples (AutoAttack by default: hours per thousand samples on a CPU,
    # nearly all on points a sound certificate already proves) runs.
    applicable = [a for a in attackers if threat.norm in a.norms]
    for attacker in sorted(applicable, key=lambda a: not _attacks_certified(a)):
        rows, skipped = attack_rows, None
        if not _attacks_certified(attacker):
            proven = _proven(certified_runs, attacked_runs, correct)
            rows, skipped = torch.nonzero(correct & ~proven).flatten(), torch.nonzero(proven).flatten()
        attacked = attack(attacker, name_of(attacker), model, images, labels, rows, threat, batch_size=batch_size, device=device,
                          progress=progress, world=world, skipped=skipped)
        changed = first_problem(guard.changed(), world)
        if changed is not None:
            attacked.discard(changed)
        attacked_runs.append(attacked)

    _check_soundness(indices, correct, certified_runs, attacked_runs)
    masking = _masking(model, batch, n, batch_size, correct, attacked_runs, progress, world)
    changed = first_problem(guard.changed(), world)
    if changed is not None:  # computing gradients must leave the model as it was; a model that changes itself is a bug
        raise HarnessError(f"the gradient-masking check: {changed}")
    return _collect(n, indices, labels, predictions, correct, certified_runs, attacked_runs, not_applicable, masking)


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
        return f"deciding whether it applies {fail_message(exc)}"
    return reason or f"its applies_to() is false for {type(model).__name__} under {threat}"


def _masking(
    model: nn.Module, batch: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], n: int, batch_size: int, correct: torch.Tensor,
    attacked: list[Attacked], progress: Progress, world: World | None,
) -> GradientMasking:
    """The gradient-masking check: zero input gradients over every sample, and what gradient-free attacks alone broke."""
    mine = batches(n, batch_size, world)
    problem: str | None = None
    zero = torch.zeros(n, dtype=torch.bool)
    with progress.task("check: gradient masking", total=sum(s.stop - s.start for s in mine)) as task:
        try:
            zero = zero_gradient_rows(model, batch, mine, n, done=task.advance)
        except Exception as exc:  # a model without a usable gradient: the check says nothing  # noqa: BLE001
            problem = fail_message(exc)
    problem = first_problem(problem, world)
    if problem is not None:
        progress.log(f"gradient-masking check: the input gradient could not be computed ({problem})")
    zero_fraction = None if problem is not None or n == 0 else int(merge(zero, world).sum()) / n
    survived: dict[str, torch.Tensor] = {}
    free: set[str] = set()
    for a in attacked:
        if a.survived is None:
            continue
        for stage, alive in a.stages.items():
            key = f"{a.name}/{stage}" if a.multi_stage else a.name
            survived[key] = alive
            if a.gradient_free or stage in a.gradient_free_stages:
                free.add(key)
    return masking_check(zero_fraction, gradient_free_breaks(correct, survived, free), n)


def _attacks_certified(attacker: Attacker) -> bool:
    try:
        return attacker.attacks_certified() is not False
    except Exception:  # a third party's answer must not stop the evaluation: attack everything  # noqa: BLE001
        return True


def _proven(certified: list[Certified], attacked: list[Attacked], correct: torch.Tensor) -> torch.Tensor:
    """The correctly classified samples that a sound certifier certified, among the certifiers no attack so far broke."""
    proven = torch.zeros_like(correct)
    for c in certified:
        verdicts = c.verdicts
        if not c.sound or c.error is not None or verdicts is None:
            continue
        if any(a.survived is not None and bool((verdicts & correct & ~a.survived).any()) for a in attacked):
            continue  # the soundness check will discard it; what it "proves" is attacked
        proven |= verdicts & correct
    return proven


def _check_soundness(indices: torch.Tensor, correct: torch.Tensor, certified: list[Certified], attacked: list[Attacked]) -> None:
    """Mark every sound certifier that certified a misclassified sample, or one an attack broke, as unsound."""
    for c in certified:
        verdicts = c.verdicts
        if verdicts is None or not c.sound:  # an estimate promises nothing: what an attack breaks is what it shows
            continue
        problems = []
        wrong = torch.nonzero(verdicts & ~correct).flatten()
        if len(wrong):
            problems.append(f"certified {len(wrong)} misclassified samples (e.g. test index {int(indices[wrong[0]])})")
        for a in attacked:
            if a.survived is None:
                continue
            broken = torch.nonzero(verdicts & correct & ~a.survived).flatten()
            if len(broken):
                problems.append(f"certified {len(broken)} samples that {a.name} broke (e.g. test index {int(indices[broken[0]])})")
        if problems:
            c.discard("UNSOUND certificate: " + "; ".join(problems))


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
    certified: list[Certified],
    attacked: list[Attacked],
    not_applicable: dict[str, str],
    masking: GradientMasking,
) -> Evaluation:
    standing_attacks = [a for a in attacked if a.survived is not None]
    standing = [c for c in certified if c.codes is not None]
    # Accuracies are counts over totals, in Python floats (a float32 mean would store 0.15000000596).
    robust = int(torch.stack([a.survived for a in standing_attacks if a.survived is not None]).all(0).sum()) / n if standing_attacks else None
    sound = [v for c in standing if c.sound and (v := c.verdicts) is not None]
    any_certified = int(torch.stack(sound).any(0).sum()) / n if sound else None
    attack_results = tuple(
        AttackResult(
            name=a.name,
            label=a.label,
            options=options_dict(a.attacker.options),
            accuracy=None if a.survived is None else int(a.survived.sum()) / n,
            attacked=a.attacked,
            seconds=a.cost.seconds,
            error=a.error,
            cost=a.cost,
            stages=a.cumulative(n),
            gradient_free=a.gradient_free,
        )
        for a in attacked
    )
    certifier_results = []
    for c in certified:
        attempted = c.attempted
        tried = 0 if attempted is None else int(attempted.sum())
        verdicts = c.verdicts
        certifier_results.append(
            CertifierResult(
                name=c.name,
                options=options_dict(c.certifier.options),
                accuracy=None if verdicts is None or attempted is None else int(verdicts[attempted].sum()) / tried,
                samples=tried,
                radius=None if attempted is None else _radius_stats(c.radius, attempted),
                seconds=c.cost.seconds,
                error=c.error,
                cost=c.cost,
                timeouts=c.count(OUTCOMES.index("timeout")),
                errors=c.count(OUTCOMES.index("error")),
                sample_error=c.sample_error,
                radius_method=c.radius_method if c.radius is not None else None,
                radius_tolerance=c.radius_tolerance if c.radius is not None else None,
                sound=c.sound,
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
        masking=masking,
    )
    # Python lists, read once: indexing tensors per row would cost more than the whole evaluation of a cheap model.
    broken_by = {a.name: a.broken_by(correct) for a in standing_attacks if a.multi_stage}
    survived = {a.name: a.survived.tolist() for a in standing_attacks if a.survived is not None}
    outcomes = {c.name: [OUTCOMES[k] if k >= 0 else None for k in c.codes.tolist()] for c in standing if c.codes is not None}
    radii = {c.name: None if c.radius is None else [_finite(r) for r in c.radius.tolist()] for c in standing}
    index, label, prediction = indices.tolist(), labels.tolist(), predictions.tolist()
    samples = []
    for row in range(n):
        sample = SampleResult(
            index=int(index[row]),
            label=int(label[row]),
            prediction=int(prediction[row]),
            attacks={name: bool(alive[row]) for name, alive in survived.items()},
            broken_by={name: stage for name, stages in broken_by.items() if (stage := stages[row]) is not None},
        )
        for name, outcome in outcomes.items():
            if outcome[row] is None:
                continue  # outside a costly certifier's subset
            radius = radii[name]
            sample.certificates[name] = (outcome[row] == "certified", None if radius is None else radius[row])
            sample.outcomes[name] = str(outcome[row])
        samples.append(sample)
    return Evaluation(result=result, samples=samples)
