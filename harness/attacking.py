"""One attack's part of the evaluation: which correctly classified samples survive it, per stage, and its cost.

Every image an attack returns is checked inside the threat model's ball and
``[0,1]`` (each stage's of a multi-stage attack, :class:`harness.AttackStages`)
and counts only if the model, in eval mode, misclassifies it. A sample survives
a multi-stage attack if it survives every stage; the first stage that broke it
is kept per sample. An attack that raises or returns points outside the ball
is an error, and its partial outcome is discarded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from harness.batches import batches, gather, merge
from harness.components import Attacker
from harness.cost import measure
from harness.distributed import World
from harness.env import synchronize
from harness.evaluation_checks import ComponentFailed, attack_label, check_stages, fail_message
from harness.progress import Progress
from harness.results import Cost
from harness.threat import ThreatModel

#: The stage name of a single-stage attack (a plain tensor from perturb()).
SINGLE = ""


@dataclass
class Attacked:
    """What one attack did: ``survived`` per sample (all stages), and each stage's own survival in the order run."""

    attacker: Attacker
    name: str
    label: str = ""
    survived: torch.Tensor | None = None
    stages: dict[str, torch.Tensor] = field(default_factory=dict)
    gradient_free_stages: frozenset[str] = frozenset()
    cost: Cost = field(default_factory=Cost)
    error: str | None = None
    #: How many samples it was run on (the correctly classified ones, less the certified ones it skips).
    attacked: int = 0

    @property
    def gradient_free(self) -> bool:
        return getattr(type(self.attacker), "gradient_free", False) is True

    @property
    def multi_stage(self) -> bool:
        return list(self.stages) != [SINGLE]

    def discard(self, error: str) -> None:
        self.error, self.survived, self.stages = error, None, {}

    def cumulative(self, n: int) -> dict[str, float]:
        """Robust accuracy over all ``n`` samples after each stage, in order (misclassified samples are not robust)."""
        if self.survived is None or not self.multi_stage:
            return {}
        alive = torch.ones_like(self.survived)
        out = {}
        for name, survived in self.stages.items():
            alive &= survived
            out[name] = int(alive.sum()) / n
        return out

    def broken_by(self, correct: torch.Tensor) -> list[str | None]:
        """Per sample, the first stage that broke it (``None``: it survived, was not attacked, or the attack has one stage)."""
        found: list[str | None] = [None] * len(correct)
        if self.survived is None or not self.multi_stage:
            return found
        alive = correct.clone()
        for name, survived in self.stages.items():
            for row in torch.nonzero(alive & ~survived).flatten().tolist():
                found[row] = name
            alive &= survived
        return found


def attack(
    attacker: Attacker,
    name: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack_rows: torch.Tensor,
    threat: ThreatModel,
    *,
    batch_size: int,
    device: torch.device,
    progress: Progress,
    world: World | None = None,
    skipped: torch.Tensor | None = None,
) -> Attacked:
    """Run ``attacker`` on the evaluated ``images`` (uint8) at ``attack_rows`` (the correctly classified ones).

    ``skipped``: rows it is not run on that count as surviving it (certified by a sound certifier that every attack
    run so far left standing; see :meth:`harness.Attacker.attacks_certified`).
    """
    n = images.shape[0]
    out = Attacked(attacker, name, label=name, attacked=len(attack_rows))
    alive = torch.zeros(n, dtype=torch.bool)
    if skipped is not None:
        alive[skipped] = True  # so that the progress line's robust accuracy counts them as the stored one does
    stages: dict[str, torch.Tensor] = {}
    order: tuple[list[str], frozenset[str]] | None = None
    attacked = 0
    with measure(device) as meter:
        try:
            out.label = attack_label(attacker)
            mine = batches(len(attack_rows), batch_size, world)
            with progress.task(f"attack: {name}", total=sum(s.stop - s.start for s in mine)) as task:
                for s in mine:
                    rows = attack_rows[s]
                    x, y = images[rows].to(device).float().div_(255), labels[rows].to(device)
                    # A copy: an attack that wrote into the clean batch would otherwise pass the check against itself.
                    given, free = check_stages(attacker.perturb(model, x.clone(), y, threat), x, threat)
                    if order is None:
                        order = (list(given), free)
                        stages = {stage: torch.zeros(n, dtype=torch.bool) for stage in given}
                    elif (list(given), free) != order:
                        raise ComponentFailed(f"perturb() returned stages {list(given)} in one batch and {order[0]} in another")
                    with torch.no_grad():
                        for stage, adv in given.items():
                            stages[stage][rows] = (model(adv).argmax(1) == y).cpu()
                    alive[rows] = torch.stack([stages[stage][rows] for stage in given]).all(0)
                    attacked += len(rows)
                    # Robust accuracy so far over every evaluated sample up to the last one attacked (misclassified
                    # ones count as not robust), so that the last line shows exactly the number that is stored.
                    seen = int(attack_rows[s.stop - 1]) + 1 if s.stop < len(attack_rows) else n
                    task.advance(len(rows), robust=f"{alive[:seen].float().mean().item():.2%}")
            synchronize(device)
        except Exception as exc:  # isolated: recorded against this attack  # noqa: BLE001
            out.error = fail_message(exc)
        meter.samples = attacked
    _conclude(out, meter.cost(), attacked, alive, stages, order, world)
    if out.survived is not None and skipped is not None and len(skipped):
        out.survived[skipped] = True
        for survived in out.stages.values():
            survived[skipped] = True
    if out.error is not None:
        progress.log(f"attack {name!r} failed: {out.error}")
    return out


def _conclude(
    out: Attacked, cost: Cost, attacked: int, alive: torch.Tensor, stages: dict[str, torch.Tensor],
    order: tuple[list[str], frozenset[str]] | None, world: World | None,
) -> None:
    """Merge over the processes (any rank's error is the attack's; every rank's stages must agree)."""
    told = gather((out.error, order, cost, attacked), world)
    error = next((e for e, *_ in told if e is not None), None)
    orders = [o for _, o, _, _ in told if o is not None]
    if error is None and any(o != orders[0] for o in orders):
        error = f"perturb() returned stages {orders[0][0]} on one process and {next(o for o in orders if o != orders[0])[0]} on another"
    costs = [c for _, _, c, _ in told]
    seconds = max((c.seconds for c in costs if c.seconds is not None), default=None)
    peaks = [c.peak_memory_bytes for c in costs if c.peak_memory_bytes is not None]
    total = sum(a for *_, a in told)
    out.cost = Cost(seconds=seconds, samples_per_second=total / seconds if seconds and total else None,
                    peak_memory_bytes=max(peaks) if peaks else None, memory_kind=costs[0].memory_kind)
    if error is not None:
        out.discard(error)
        return
    names, free = orders[0] if orders else ([SINGLE], frozenset())
    n = len(alive)
    out.survived = merge(alive, world)
    out.stages = {stage: merge(stages.get(stage, torch.zeros(n, dtype=torch.bool)), world) for stage in names}
    out.gradient_free_stages = free
