"""``autoattack``: the official AutoAttack (the ``pyautoattack`` package), stage by stage.

The package's :meth:`AutoAttack.run_standard_evaluation` runs its attacks in
order, each on the points every earlier one left robust, and returns only the
final adversarial images. The harness wants each stage's result (its robust
accuracy, the stage that broke each sample, and whether the gradient-free
Square breaks points the gradient attacks did not), so :meth:`AutoAttack.perturb`
calls that same method once per attack, on the points still robust: the same
attack objects, settings, seeds and batches of 250 as one full run, whose
survivors are exactly the points it passes on.

Two things differ from calling the package directly, both to keep the harness's
contracts:

* every stage's points are projected onto the threat model's ball and ``[0, 1]``
  (a no-op up to rounding) and a point counts as broken, for the next stage's
  survivors, only if the model misclassifies it after that projection;
* the seed is an option (default 0) rather than the package's default, the
  clock, so a run is reproducible; the package reseeds torch's global generator
  per batch, so it runs inside :func:`torch.random.fork_rng` and leaves the
  harness's random stream as it was.

With fewer than 10 classes the targeted attacks aim at every other class (the
package's 9 targets would index past the last class); with fewer than 4 (3 for
APGD-DLR) the DLR-loss attacks cannot be computed and are left out: the
stages stored name what ran.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness import Attacker, AttackStages, HarnessError, UsageError
from harness.options import doc_field
from harness.threat import ThreatModel
from harness_plugins.lib import citations

AttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]

#: The package's attacks that use no gradient: what the gradient-masking check compares with the rest.
GRADIENT_FREE = frozenset({"square"})
logger = logging.getLogger(__name__)

#: The package's norm names.
NORMS = {"inf": "Linf", "2": "L2"}
#: run_standard_evaluation's default batch size; the package seeds each attack per batch, so it is kept.
BATCH_SIZE = 250
#: The package's default number of target classes of APGD-T and FAB-T.
TARGETS = 9
#: Classes the DLR losses need: the untargeted one reads the third-largest logit, the targeted one the fourth.
DLR_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}


@dataclass(frozen=True)
class AutoAttackOptions:
    version: Literal["standard", "plus", "rand", "custom"] = doc_field(
        "standard",
        "the package's version: standard (APGD-CE, APGD-T, FAB-T, Square: RobustBench's), plus (six attacks, "
        "more restarts), rand (APGD-CE and APGD-DLR with EOT over 20 draws, for randomised models), custom (the attacks option)",
    )
    attacks: tuple[AttackName, ...] = doc_field(
        (), "version custom only: the attacks to run in this order, with the package's constructor settings"
    )
    seed: int = doc_field(0, "the seed of every attack (the package's default is the clock, which makes runs irreproducible)")
    certified: bool = doc_field(
        False,
        "also attack the samples a sound certifier certified (they cannot be broken if it is sound; the cheaper attacks "
        "attack them as the soundness check). Off: AutoAttack runs on the rest only, its robust accuracy is the same, and "
        "on a certifiably robust model it costs a fraction (on a CPU, 20 MNIST samples took 453 s when all were attacked)",
    )

    def __post_init__(self) -> None:
        if self.version == "custom" and not self.attacks:
            raise ValueError("version custom needs attacks, e.g. attacks=apgd-ce,square")
        if self.version != "custom" and self.attacks:
            raise ValueError(f"attacks are chosen by version {self.version!r}; set version=custom to choose them")
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks {','.join(self.attacks)} name one attack twice")


class AutoAttack(Attacker):
    name = "autoattack"
    description = "official AutoAttack (pyautoattack), standard: APGD-CE, APGD-T, FAB-T, Square, each on the points the earlier ones left"
    source = citations.AUTOATTACK
    norms = ("inf", "2")
    Options = AutoAttackOptions

    def attacks_certified(self) -> bool:
        return bool(self.options.certified)

    def label(self) -> str:
        o = self.options
        if o.version == "standard":
            return "AutoAttack"
        if o.version == "custom":
            return f"AutoAttack({'+'.join(o.attacks)})"
        return f"AutoAttack-{o.version}"

    def runner(self, model: nn.Module, threat: ThreatModel, device: torch.device, classes: int) -> Any:
        """The package's ``AutoAttack`` object for ``threat`` with this attacker's options (``classes``: the model's logits).

        Its ``attacks_to_run`` leave out the DLR-loss attacks when the model has
        too few classes for their loss (the package would index past the last
        logit); a run with nothing left raises :class:`HarnessError`.
        """
        o = self.options
        package = _pyautoattack()
        custom = list(o.attacks) if o.version == "custom" else None
        runner = package.AutoAttack(model, attacks=custom, device=device, eps=threat.eps, norm=NORMS[threat.norm], seed=o.seed, version=o.version)
        runner.verbose = False
        targets = min(TARGETS, classes - 1)
        runner.apgd_targeted.n_target_classes = min(runner.apgd_targeted.n_target_classes, targets)
        runner.fab.n_target_classes = min(runner.fab.n_target_classes, targets)
        left_out = [a for a in runner.attacks_to_run if classes < DLR_CLASSES.get(a, 0)]
        if left_out:
            runner.attacks_to_run = [a for a in runner.attacks_to_run if a not in left_out]
            if not runner.attacks_to_run:
                need = max(DLR_CLASSES[a] for a in left_out)
                raise HarnessError(f"AutoAttack's {', '.join(left_out)} need at least {need} classes; the model has {classes}")
            logger.info("AutoAttack: %s left out: the DLR loss needs more than the model's %d classes", ", ".join(left_out), classes)
        return runner

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel) -> AttackStages:
        with torch.no_grad():
            logits = model(images)
        survives = logits.argmax(1) == labels
        runner = self.runner(model, threat, images.device, int(logits.shape[1]))
        stages: dict[str, torch.Tensor] = {}
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _quiet():
            for attack in list(runner.attacks_to_run):
                adversarial = images.clone()
                rows = torch.nonzero(survives).flatten()
                if len(rows):
                    runner.attacks_to_run = [attack]
                    found, _ = runner.run_standard_evaluation(images[rows], labels[rows], batch_size=BATCH_SIZE)
                    found = project(found.detach().to(images.device, images.dtype), images[rows], threat)
                    with torch.no_grad():
                        broken = model(found).argmax(1) != labels[rows]
                    adversarial[rows[broken]] = found[broken]
                    survives[rows[broken]] = False
                stages[attack] = adversarial
        return AttackStages(stages, gradient_free=frozenset(stages) & GRADIENT_FREE)


def project(points: torch.Tensor, images: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """``points`` moved onto the threat model's ball around ``images`` and into ``[0, 1]`` (unchanged where inside)."""
    delta = points - images
    if threat.norm == "inf":
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        size = delta.flatten(1).norm(dim=1).view(-1, *[1] * (images.dim() - 1))
        delta = delta * (threat.eps / size.clamp(min=threat.eps))
    # Clipping to the box moves each pixel towards its clean value (inside the box), so it stays in the ball.
    return (images + delta).clamp(0, 1)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The package logs its progress at DEBUG and INFO whatever its verbosity; the harness reports results itself.

    Its checks' warnings (a randomised or dynamic model, probabilities for logits) still show.
    """
    package = logging.getLogger("auto-attack")
    level = package.level
    package.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        package.setLevel(level)


def _pyautoattack() -> Any:
    """Imported when the attack runs, so that the CLI works (and says what is missing) without it."""
    try:
        import pyautoattack
    except ImportError:
        raise UsageError("pyautoattack is not installed; install it with: pip install pyautoattack==0.2.0") from None
    return pyautoattack
