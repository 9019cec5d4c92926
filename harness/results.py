"""What an evaluation found, as typed data: from the evaluation to the store, the leaderboard and the CLI.

One :class:`EvaluationResult` per evaluated run: clean accuracy, one
:class:`AttackResult` per attack and one :class:`CertifierResult` per
certifier that ran (accuracy, samples, radius statistics, time, options, or
the error that stopped it), and why every other registered certifier did not
apply. :class:`SampleResult` is the outcome on one test sample. Accuracies are
fractions in ``[0, 1]``; times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class RadiusStats:
    """Certified radii over the samples a certifier certified (raw pixel units; 0 where it certified nothing)."""

    mean: float
    median: float


#: A certifier's outcome on one sample. A time-out or an error is never a certificate: it counts as not certified in
#: every accuracy, and tables show how many there were.
OUTCOMES = ("certified", "not-certified", "timeout", "error")

#: How a certifier's per-sample radii were obtained: its own closed form, or the harness's bisection over eps.
RADIUS_METHODS = ("closed-form", "bisection")


@dataclass(frozen=True)
class Cost:
    """What a component (an attack, a certifier) cost in one evaluation.

    ``seconds`` of wall time; ``samples_per_second`` over the samples it ran on;
    ``peak_memory_bytes`` the peak while it ran, of the kind ``memory_kind``:
    ``cuda-allocated`` (``torch.cuda.max_memory_allocated`` on its device,
    reset before it) or ``rss`` (the process's resident set on the CPU,
    sampled while it ran).
    """

    seconds: float | None = None
    samples_per_second: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None


@dataclass(frozen=True)
class GradientMasking:
    """Signs that an attack's numbers overstate robustness (gradient masking), per evaluation.

    ``zero_gradient_fraction``: the fraction of evaluated samples whose input
    gradient of the cross-entropy loss is exactly zero. ``gradient_free_breaks``:
    samples that a gradient-free attack (or stage, as AutoAttack's Square)
    broke and every gradient attack missed; ``unreliable`` when they exceed
    AutoAttack's own threshold (``checks.check_square_sr``: 0.2 % of the
    samples), as RobustBench flags such a model.
    """

    zero_gradient_fraction: float | None = None
    gradient_free_breaks: int | None = None
    unreliable: bool | None = None


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
    cost: Cost = field(default_factory=Cost)
    #: A multi-stage attack (AutoAttack): stage → robust accuracy after it (stages run in order, each on what survived).
    stages: dict[str, float] = field(default_factory=dict)
    #: Whether the attack uses no gradient (Square): the gradient-masking check compares it with the others.
    gradient_free: bool = False

    def __post_init__(self) -> None:
        _same_seconds(self)


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
    cost: Cost = field(default_factory=Cost)
    #: Samples it ran out of time on (its time budget), and samples a batch of which raised: never certified.
    timeouts: int = 0
    errors: int = 0
    #: The first per-sample error's message (the certifier as a whole stands; ``error`` is for one that does not).
    sample_error: str | None = None
    #: How its radii were found (:data:`RADIUS_METHODS`), and the bisection's tolerance; ``None`` without radii.
    radius_method: str | None = None
    radius_tolerance: float | None = None
    #: False for a paper's own protocol that is not a sound certificate (``liplt-estimate``): shown as such, never
    #: counted in certified accuracy, and not a soundness failure when an attack breaks what it "certifies".
    sound: bool = True

    def __post_init__(self) -> None:
        _same_seconds(self)


def _same_seconds(result: AttackResult | CertifierResult) -> None:
    """``seconds`` and ``cost.seconds`` are one number (the store keeps one): either given fills the other."""
    if result.cost.seconds is None and result.seconds is not None:
        object.__setattr__(result, "cost", replace(result.cost, seconds=result.seconds))
    elif result.seconds is None and result.cost.seconds is not None:
        object.__setattr__(result, "seconds", result.cost.seconds)
    elif result.seconds != result.cost.seconds:
        raise ValueError(f"{result.name!r}: seconds {result.seconds} and cost.seconds {result.cost.seconds} differ")


@dataclass(frozen=True)
class EvaluationResult:
    """The uniform evaluation of one model.

    ``robust_accuracy``: correct and surviving every attack that ran without
    error (``None`` when none did); ``certified_accuracy``: certified by any
    sound certifier that ran without error (``None`` when none did); an
    estimate (``sound`` false) never counts. Both are over
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
    masking: GradientMasking | None = None

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
    radius ``None`` when the certifier yields none. ``outcomes`` maps every
    certifier in ``certificates`` to one of :data:`OUTCOMES` (certified exactly
    when ``certificates`` says so); ``broken_by`` maps a multi-stage attack that
    broke the sample to the stage that did.
    """

    index: int
    label: int
    prediction: int
    attacks: dict[str, bool] = field(default_factory=dict)
    certificates: dict[str, tuple[bool, float | None]] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    broken_by: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A certificate given without its outcome (a result from before outcomes) has the one its verdict says.
        for name, (certified, _) in self.certificates.items():
            self.outcomes.setdefault(name, "certified" if certified else "not-certified")
