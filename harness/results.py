"""What an evaluation found, as typed data: from the evaluation to the store, the leaderboard and the CLI.

One :class:`EvaluationResult` per evaluated run: clean accuracy, one
:class:`AttackResult` per attack and one :class:`CertifierResult` per
certifier that ran (accuracy, samples, radius statistics, time, options, or
the error that stopped it), and why every other registered certifier did not
apply. :class:`SampleResult` is the outcome on one test sample. Accuracies are
fractions in ``[0, 1]``; times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RadiusStats:
    """Certified radii over the samples a certifier certified (raw pixel units; 0 where it certified nothing)."""

    mean: float
    median: float


@dataclass(frozen=True)
class AttackResult:
    """One attack's outcome.

    ``accuracy`` is the robust accuracy over every evaluated sample (a
    misclassified sample is not robust); ``attacked`` how many samples the
    attack ran on (the correctly classified ones). On ``error`` the attack's
    partial outcome is discarded: ``accuracy`` is ``None``.
    """

    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    accuracy: float | None = None
    attacked: int = 0
    seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class CertifierResult:
    """One certifier's outcome.

    ``accuracy`` is over the ``samples`` it certified: every evaluated sample,
    or a costly certifier's fixed, seeded subset. On ``error`` (it raised,
    returned malformed verdicts, or certified a sample an attack broke) its
    verdicts are discarded: ``accuracy`` is ``None`` and no sample counts as
    certified by it.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    accuracy: float | None = None
    samples: int = 0
    radius: RadiusStats | None = None
    seconds: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """The uniform evaluation of one model.

    ``robust_accuracy``: correct and surviving every attack that ran without
    error (``None`` when none did); ``certified_accuracy``: certified by any
    certifier that ran without error (``None`` when none did). Both are over
    all ``samples``.
    """

    samples: int
    clean_accuracy: float
    robust_accuracy: float | None = None
    certified_accuracy: float | None = None
    attacks: tuple[AttackResult, ...] = ()
    certifiers: tuple[CertifierResult, ...] = ()
    #: Certifier name → why it did not apply to the model.
    not_applicable: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        """Every component that failed, one line each."""
        return [f"attack {a.name!r}: {a.error}" for a in self.attacks if a.error] + [
            f"certifier {c.name!r}: {c.error}" for c in self.certifiers if c.error
        ]

    def attack(self, name: str) -> AttackResult | None:
        return next((a for a in self.attacks if a.name == name), None)

    def certifier(self, name: str) -> CertifierResult | None:
        return next((c for c in self.certifiers if c.name == name), None)

    def attack_label(self) -> str | None:
        """The attacks behind ``robust_accuracy``, as tables name them (``PGD-100``, joined by ``+``)."""
        labels = sorted(a.label for a in self.attacks if a.error is None)
        return "+".join(labels) or None


@dataclass
class SampleResult:
    """The outcome of the uniform evaluation on one test sample.

    ``index`` is the sample's index in the dataset's test split. ``attacks``
    maps an attack name to whether the sample *survived* it (still classified
    correctly); ``certificates`` maps a certifier name to (certified, radius),
    radius ``None`` when the certifier yields none.
    """

    index: int
    label: int
    prediction: int
    attacks: dict[str, bool] = field(default_factory=dict)
    certificates: dict[str, tuple[bool, float | None]] = field(default_factory=dict)
