"""The uniform evaluation: the same for every method.

On the test split (or a fixed, seeded subset of it, the same for every run):

1. clean accuracy;
2. every attack that applies to the threat model, on every correctly
   classified sample (certified ones included: they are the soundness check);
3. every certifier that applies to the model and threat model (on all of
   them, or on a fixed, seeded subset of at most
   :meth:`~harness.Certifier.sample_limit` samples, where a certifier is costly;
   its accuracy is then over that subset, and ``certified_samples/NAME`` says
   how many).

A sample counts as certified if any certifier certifies it. A certificate is a
promise: if a certifier certifies a sample that is misclassified or that an
attack broke, the evaluation raises :class:`~harness.errors.SoundnessError`
rather than report numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness.components import Attacker, Certifier
from harness.errors import HarnessError, SoundnessError
from harness.progress import Progress, SilentProgress
from harness.store import SampleResult
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
    metrics: dict[str, float]
    samples: list[SampleResult]


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _check_in_ball(adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel, attack: str) -> None:
    """An attack must stay inside the threat model; anything else would inflate robustness gaps."""
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if threat.norm == "inf" else delta.norm(dim=1)
    slack = 1e-5 * max(threat.eps, 1.0)
    if adv.min() < 0 or adv.max() > 1 or bool((size > threat.eps + slack).any()):
        raise HarnessError(f"attack {attack!r} returned points outside the {threat} ball or [0,1] (max size {size.max():.6g})")


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
) -> Evaluation:
    """Evaluate ``model`` on uint8 ``images`` (``N×C×H×W``) and ``labels``.

    ``indices`` are the dataset indices of the rows (stored per sample);
    ``certifiers`` that do not apply to this model are skipped.
    """
    progress = progress or SilentProgress()
    model.eval()
    n = images.shape[0]
    indices = torch.arange(n) if indices is None else indices
    labels = labels.to(torch.long)
    chunks = _batches(n, batch_size)

    def batch(s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return images[s].to(device).float().div_(255), labels[s].to(device)

    predictions = torch.empty(n, dtype=torch.long)
    with progress.task("evaluate: clean", total=n) as task, torch.no_grad():
        for s in chunks:
            x, _ = batch(s)
            logits = model(x)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise HarnessError(f"the model returned logits of shape {tuple(logits.shape)}; expected (batch, classes)")
            if not bool(torch.isfinite(logits).all()):
                bad = int((~torch.isfinite(logits)).any(1).sum())
                raise HarnessError(f"the model gives non-finite logits on {bad} of {s.stop - s.start} test images (did training diverge?)")
            predictions[s] = logits.argmax(1).cpu()
            task.advance(s.stop - s.start)
    correct = predictions == labels

    verdicts: dict[str, torch.Tensor] = {}
    radii: dict[str, torch.Tensor | None] = {}
    attempted: dict[str, torch.Tensor] = {}
    for certifier in certifiers:
        if not certifier.applies_to(model, threat):
            continue
        limit = certifier.sample_limit(model, threat)
        rows = eval_indices(n, limit, seed=SUBSET_SEED + 1)  # a subset of the evaluated rows, fixed per n
        certified = torch.zeros(n, dtype=torch.bool)
        radius: torch.Tensor | None = None
        label = f"certify: {certifier.name}" + (f" ({len(rows)} of {n})" if len(rows) < n else "")
        with progress.task(label, total=len(rows)) as task:
            for s in _batches(len(rows), batch_size):
                part = rows[s]
                x, y = images[part].to(device).float().div_(255), labels[part].to(device)
                result = certifier.certify(model, x, y, threat)
                certified[part] = result.certified.detach().cpu().bool()
                if result.radius is not None:
                    if radius is None:
                        radius = torch.zeros(n, dtype=torch.float64)
                    radius[part] = result.radius.detach().cpu().double()
                task.advance(len(part), certified=f"{certified[rows[: s.stop]].float().mean().item():.2%}")
        verdicts[certifier.name] = certified
        radii[certifier.name] = radius
        attempted[certifier.name] = torch.zeros(n, dtype=torch.bool).index_fill_(0, rows, True)

    survived: dict[str, torch.Tensor] = {}
    attack_rows = torch.nonzero(correct).flatten()
    for attacker in attackers:
        if threat.norm not in attacker.norms:
            continue
        alive = torch.zeros(n, dtype=torch.bool)
        with progress.task(f"attack: {attacker.name}", total=len(attack_rows)) as task:
            for s in _batches(len(attack_rows), batch_size):
                rows = attack_rows[s]
                x, y = images[rows].to(device).float().div_(255), labels[rows].to(device)
                adv = attacker.perturb(model, x, y, threat).detach()
                _check_in_ball(adv, x, threat, attacker.name)
                with torch.no_grad():
                    alive[rows] = (model(adv).argmax(1) == y).cpu()
                task.advance(len(rows), robust=f"{alive[attack_rows[: s.stop]].float().mean().item():.2%}")
        survived[attacker.name] = alive

    _check_soundness(indices, correct, verdicts, survived)

    metrics: dict[str, float] = {"eval_samples": float(n), "clean_accuracy": correct.float().mean().item()}
    if survived:
        all_survived = torch.stack(list(survived.values())).all(0)
        metrics["robust_accuracy"] = all_survived.float().mean().item()
        for name, alive in survived.items():
            metrics[f"robust_accuracy/{name}"] = alive.float().mean().item()
    if verdicts:
        any_certified = torch.stack(list(verdicts.values())).any(0)
        metrics["certified_accuracy"] = any_certified.float().mean().item()
        for name, certified in verdicts.items():
            tried = attempted[name]
            metrics[f"certified_accuracy/{name}"] = certified[tried].float().mean().item()
            metrics[f"certified_samples/{name}"] = float(tried.sum())
            if radii[name] is not None:
                metrics[f"average_radius/{name}"] = radii[name][tried].mean().item()

    samples = []
    for row in range(n):
        samples.append(
            SampleResult(
                index=int(indices[row]),
                label=int(labels[row]),
                prediction=int(predictions[row]),
                attacks={name: bool(alive[row]) for name, alive in survived.items()},
                certificates={
                    name: (bool(certified[row]), None if radii[name] is None else _finite(radii[name][row].item()))
                    for name, certified in verdicts.items()
                    if attempted[name][row]
                },
            )
        )
    return Evaluation(metrics=metrics, samples=samples)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float(torch.finfo(torch.float64).max)


def _check_soundness(
    indices: torch.Tensor,
    correct: torch.Tensor,
    verdicts: dict[str, torch.Tensor],
    survived: dict[str, torch.Tensor],
) -> None:
    problems = []
    for cname, certified in verdicts.items():
        wrong = torch.nonzero(certified & ~correct).flatten()
        if len(wrong):
            problems.append(f"{cname} certified {len(wrong)} misclassified samples (e.g. test index {int(indices[wrong[0]])})")
        for aname, alive in survived.items():
            broken = torch.nonzero(certified & correct & ~alive).flatten()
            if len(broken):
                problems.append(f"{cname} certified {len(broken)} samples that {aname} broke (e.g. test index {int(indices[broken[0]])})")
    if problems:
        raise SoundnessError("unsound certificate: " + "; ".join(problems))
