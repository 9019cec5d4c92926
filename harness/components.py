"""The kinds of component a plugin can register, and what each must provide.

Every component is a class with declarative metadata: a unique lowercase
``name`` (per kind), a one-line ``description``, its ``source`` (the paper it
reproduces) and an ``Options`` dataclass of typed, closed options. The host
instantiates a component with validated options: ``Cls(options)``.

Models take raw images in ``[0, 1]`` (``N×C×H×W``) and return logits; any
normalisation happens inside the model. That keeps the threat model, the
attacks and the certifiers the same for every method. A model may also
implement the protocols below, which certifiers use to decide whether they
apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from harness.data.types import DatasetInfo, Splits
from harness.errors import PluginError, UsageError
from harness.options import NoOptions, option_docs
from harness.schedules import SchedulePhase
from harness.threat import NORMS, ThreatModel

if TYPE_CHECKING:
    from harness.train import TrainContext, TrainData, TrainingSteps

KINDS = ("model", "trainer", "certifier", "attacker", "dataset")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Source:
    """Where a component comes from: the paper it reproduces, and its code."""

    title: str
    authors: str = ""
    venue: str = ""
    url: str = ""
    code: str = ""

    def __str__(self) -> str:
        who = f"{self.authors}, " if self.authors else ""
        venue = f" ({self.venue})" if self.venue else ""
        return f"{who}{self.title}{venue}"


class Component:
    """Base of every component kind."""

    kind: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str]
    source: ClassVar[Source | None] = None
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def option_docs(cls) -> list[tuple[str, str, Any, str]]:
        return option_docs(cls.Options)

    @classmethod
    def class_problem(cls) -> tuple[str, str] | None:
        """What is wrong with the class's metadata or methods, and the fix; ``None`` if nothing.

        Checked when the catalog is built, so a plugin's mistake is reported at
        start-up (``harness plugins --check``), not halfway through a run.
        """
        where = f"{cls.__module__}.{cls.__qualname__}"
        for attr, what in (("kind", "the component kind"), ("name", "its unique lowercase name"), ("description", "a one-line description")):
            if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
                return f"{where} sets no {attr!r}", f"set the class attribute {attr} to {what} (a non-empty string)"
        if cls.kind not in KINDS:
            return f"{where}: unknown kind {cls.kind!r}", f"subclass one of harness.{', harness.'.join(k.capitalize() for k in KINDS)}"
        if cls.name != cls.name.lower() or " " in cls.name or ":" in cls.name:
            return (
                f"{where}: name {cls.name!r} is not lowercase without spaces or ':' (':' separates plugin:name)",
                f"rename it, e.g. {_suggest(cls.name)!r}",
            )
        norms = getattr(cls, "norms", None)
        if norms is None and cls.kind in ("certifier", "attacker"):
            return f"{where} declares no norms", "set norms = ('inf',), ('2',) or ('inf', '2'): the threat models it handles"
        if norms is not None and (isinstance(norms, str) or not norms or not set(norms) <= set(NORMS)):
            return f"{where}: norms {norms!r} are not a tuple of {', '.join(map(repr, NORMS))}", "set norms = ('inf',), ('2',) or ('inf', '2')"
        missing = [name for name in dir(cls) if getattr(getattr(cls, name, None), "harness_required", False)]
        if missing:
            calls = [f"{name}()" for name in missing]
            methods = " and ".join([", ".join(calls[:-1]), calls[-1]] if len(calls) > 1 else calls)
            base = next(b for b in cls.__mro__ if any(name in vars(b) for name in missing))
            return f"{where} does not implement {methods}", f"define {methods} as {base.__module__}.{base.__qualname__} describes"
        return None

    @classmethod
    def validate_class(cls) -> None:
        """Check the declarative metadata and required methods; raise PluginError naming what is wrong and the fix."""
        problem = cls.class_problem()
        if problem is not None:
            raise PluginError(f"{problem[0]}; {problem[1]}")


def required(method: F) -> F:
    """Mark a method that every concrete component of the kind overrides (:meth:`Component.class_problem` checks it)."""
    setattr(method, "harness_required", True)  # noqa: B010  (mypy knows no such attribute of a callable)
    return method


def _suggest(name: str) -> str:
    return "-".join(name.lower().replace(":", " ").split())


class Dataset(Component):
    """A labelled image dataset with a train and a test split."""

    kind = "dataset"
    info: ClassVar[DatasetInfo]

    @required
    def load(self, root: Path, *, download: bool = True) -> Splits:
        """Load both splits from ``root``, verifying checksums.

        Downloads from the official location when files are missing and
        ``download`` is true; raises :class:`~harness.errors.UsageError`
        naming the missing or corrupt file otherwise.
        """
        raise NotImplementedError(f"dataset {self.name!r} does not implement load()")


class Model(Component):
    """Builds the network a trainer trains."""

    kind = "model"

    @required
    def build(self, data: DatasetInfo) -> nn.Module:
        """Return a fresh network mapping ``[0,1]`` images ``N×C×H×W`` to logits ``N×K``.

        A run calls it first under ``torch.device("meta")`` to count the parameters before
        allocating them (a model bigger than the device's memory is refused), so keep it free
        of side effects; a build that cannot run on the meta device is simply not counted.
        """
        raise NotImplementedError(f"model {self.name!r} does not implement build()")


class Trainer(Component):
    """A training method: what ``harness run --plugin NAME`` names.

    ``model`` is the name of the model it trains unless a preset or
    ``--model`` names another; ``models`` lists every model it can train
    (``None``: any). ``norms`` are the threat models it trains for. Its
    ``Options`` should have an integer ``epochs`` field (the ``--epochs``
    override); fields declared with :func:`harness.options.epochs_field` scale
    with it. :class:`harness.scaffold.EpochTrainer` is a base class that holds
    the training loop; a trainer may also implement :meth:`fit` itself.
    """

    kind = "trainer"
    model: ClassVar[str]
    models: ClassVar[tuple[str, ...] | None] = None
    norms: ClassVar[tuple[str, ...]] = ("inf",)

    @required
    def fit(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> None:
        """Train ``model`` in place on ``data`` for ``ctx.threat``.

        It must leave the model in its final, evaluated form (for the l_inf-dist
        nets, p = ∞), with whatever that form needs kept in its ``state_dict``
        (a layer attribute such as p: ``get_extra_state``/``set_extra_state``),
        so that the saved weights, loaded into a freshly built model, give the
        evaluated logits. Report progress through ``ctx.progress``.

        Checkpoints (``ctx.checkpoints``) and resuming from one are the
        training loop's job: :class:`harness.scaffold.EpochTrainer` does both.
        A trainer with its own ``fit`` resumes only if it honours
        ``ctx.checkpoints`` itself and says so in :meth:`resumable`.
        """
        raise NotImplementedError(f"trainer {self.name!r} does not implement fit()")

    # -- one step at a time (harness bench step) -----------------------------------------------

    def steps(self, model: nn.Module, data: TrainData, ctx: TrainContext) -> TrainingSteps:
        """Called by ``harness bench step``: prepare a run of ``model`` on ``data`` as :meth:`fit` does, without
        training, and return what takes its steps one at a time (:class:`harness.train.TrainingSteps`).

        :class:`harness.scaffold.EpochTrainer` implements it; a trainer with its own :meth:`fit` does not
        unless it overrides this.

        :raises UsageError: this trainer cannot take one step at a time.
        """
        raise UsageError(
            f"trainer {self.name!r} cannot take one training step at a time (harness bench step): it implements fit() itself "
            "and not Trainer.steps(); build it on harness.scaffold.EpochTrainer to profile it"
        )

    def schedule_phases(self) -> list[SchedulePhase]:
        """The phases of this method's schedule, as fractions of training (``harness bench step`` times each one's
        middle); one phase, ``"training"``, by default."""
        return [SchedulePhase("training", 0.0, 1.0)]

    # -- resume ------------------------------------------------------------------------------

    @classmethod
    def resumable(cls) -> bool:
        """Whether a run of this trainer can continue from a checkpoint (``harness run --resume``).

        False by default: ``--resume`` refuses such a trainer. :class:`harness.scaffold.EpochTrainer`
        answers for its subclasses (see there).
        """
        return False

    def checkpoint_state(self) -> dict[str, Any]:
        """Called at every checkpoint: the trainer's own per-run state that a fresh start cannot rebuild.

        Everything else (the model, the optimiser, the position, the RNGs) is
        saved by the training loop. Return only tensors, dicts, lists, str,
        int, float, bool and None (a checkpoint is read with
        ``torch.load(weights_only=True)``); tensors may be the live ones, they
        are written at once. Nothing by default.
        """
        return {}

    def restore_state(self, saved: dict[str, Any]) -> None:
        """Called when resuming, after a fresh start of the run and before its first step: put back
        what :meth:`checkpoint_state` returned (tensors on the CPU; move them to the device).

        Restore tensors that the optimiser or anything else holds *in place*
        (``tensor.copy_(saved[...])`` under ``torch.no_grad()``): by then the
        optimiser is made over the fresh ones and its state loaded by parameter
        position, so a replaced tensor would no longer be trained. The model's
        weights are loaded already. Nothing by default.
        """


@dataclass
class Certificate:
    """Per-sample verdicts of a certifier.

    ``certified[i]`` promises that every input in the threat model's ball
    around sample ``i`` (and inside ``[0,1]``) is classified as its label.
    ``radius[i]``, when the certifier yields one, is the largest radius it
    certifies (raw pixel units, in the threat's norm); 0 where it certifies
    nothing.
    """

    certified: torch.Tensor
    radius: torch.Tensor | None = None


class Certifier(Component):
    """Sound robustness verification of a trained model.

    ``sound`` is false only for a paper's own evaluation protocol that is not a
    certificate (an estimate of a Lipschitz constant from below): its verdicts
    are stored and shown as "paper protocol", never counted as certified, and an
    attack breaking one is not a soundness failure.
    """

    kind = "certifier"
    norms: ClassVar[tuple[str, ...]]
    sound: ClassVar[bool] = True

    def applies_to(self, model: nn.Module, threat: ThreatModel) -> bool:
        """Whether this certifier can certify ``model`` (trained, in eval mode) under ``threat``.

        By default: when :meth:`not_applicable_reason` gives no reason.
        """
        return self.not_applicable_reason(model, threat) is None

    def not_applicable_reason(self, model: nn.Module, threat: ThreatModel) -> str | None:
        """Why this certifier cannot certify ``model`` under ``threat``, in a few words; ``None`` if it can.

        ``harness show`` prints the reason beside every certifier that did not
        run. Override this (and not :meth:`applies_to`) to give one; the
        default refuses only other norms.
        """
        if threat.norm not in self.norms:
            return f"it certifies {' and '.join('l_' + n for n in self.norms)} only"
        return None

    def sample_limit(self, model: nn.Module, threat: ThreatModel) -> int | None:
        """The most samples this certifier certifies in one evaluation, ``None`` for all.

        Costly certifiers (CROWN on convolutional networks: seconds per sample on a
        CPU) certify a fixed, seeded subset of the evaluated samples, the same for
        every run; their accuracy is reported over that subset, with its size.
        """
        return None

    @required
    def certify(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel) -> Certificate:
        """Certify a batch (the model is in eval mode, on the images' device)."""
        raise NotImplementedError(f"certifier {self.name!r} does not implement certify()")

    def radius_tolerance(self, threat: ThreatModel | None = None) -> float | None:
        """The tolerance of the harness's bisection for a per-sample radius under ``threat``, ``None`` for no bisection.

        Asked only of a certifier whose :meth:`certify` yields no radius. By
        default the ``radius_tolerance`` field of its options (0 or absent: none),
        whatever the threat; a certifier whose bisection costs more under one norm
        may answer ``None`` there.
        """
        tolerance = getattr(self.options, "radius_tolerance", None)
        return float(tolerance) if tolerance else None

    def certify_at(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, eps: torch.Tensor
    ) -> torch.Tensor:
        """Whether sample ``i`` is certified within radius ``eps[i]`` (a bool tensor ``(n,)``): the bisection's step.

        ``eps`` is float32, on the images' device (the radius recorded is exactly the float32 value asked).

        By default one :meth:`certify` per distinct radius; a certifier that can
        bound every sample over its own radius in one pass (bound propagation
        over per-sample input boxes) overrides it.
        """
        certified = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for value in eps.unique().tolist():
            rows = torch.nonzero(eps == value).flatten()
            verdicts = self.certify(model, images[rows], labels[rows], dataclasses.replace(threat, eps=value)).certified
            certified[rows] = verdicts.to(certified.device, torch.bool)
        return certified


@dataclass
class AttackStages:
    """What a multi-stage attack (AutoAttack) returns from :meth:`Attacker.perturb`: each stage's images, in the order run.

    Every stage's tensor has the images' shape: its adversarial example where
    the stage found one, the clean image (or any point in the ball) elsewhere.
    The harness checks each stage's images as any attack's and takes the
    worst case per sample; it stores each stage's robust accuracy and, per
    sample, the first stage that broke it. ``gradient_free`` names the stages
    that use no gradient (Square), which the gradient-masking check compares
    with the others.
    """

    stages: dict[str, torch.Tensor]
    gradient_free: frozenset[str] = frozenset()


class Attacker(Component):
    """An empirical attack: an upper bound on robust accuracy.

    ``gradient_free``: the attack queries the model's outputs only (a
    score-based attack such as Square); the gradient-masking check compares
    what it breaks with what the gradient attacks break.
    """

    kind = "attacker"
    norms: ClassVar[tuple[str, ...]]
    gradient_free: ClassVar[bool] = False

    def label(self) -> str:
        """How tables name this attack with its settings (e.g. ``PGD-100``)."""
        return self.name

    def attacks_certified(self) -> bool:
        """Whether the evaluation runs this attack on samples a sound certifier has certified too (the default).

        An expensive attack may answer False: it then runs only on the
        correctly classified samples no standing sound certificate covers, after
        the attacks that do attack certified samples (the soundness check), and
        the samples it skips count as surviving it (a sound certificate proves
        they do). Its robust accuracy is then the same number, at a fraction of
        the cost on a certifiably robust model.
        """
        return True

    @required
    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel) -> torch.Tensor | AttackStages:
        """Return adversarial images inside the threat model's ball and ``[0,1]`` (or, for a multi-stage attack, :class:`AttackStages`)."""
        raise NotImplementedError(f"attacker {self.name!r} does not implement perturb()")


# -- protocols that models may implement, and certifiers rely on --------------------------


@runtime_checkable
class LipschitzBounded(Protocol):
    """A model that knows an upper bound on the Lipschitz constant of each logit."""

    def lipschitz_constant(self, norm: str) -> float | None:
        """An upper bound L with ``|z_k(x) − z_k(x')| ≤ L·‖x − x'‖_norm`` for every logit k,
        w.r.t. raw ``[0,1]`` inputs, in the model's current (eval) state; ``None`` if unknown."""


@runtime_checkable
class IntervalBounded(Protocol):
    """A model that can bound its logits over an input box."""

    def supports_interval_bounds(self) -> bool:
        """Whether :meth:`interval_bounds` is sound for the model in its current state."""

    def interval_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sound element-wise (lower, upper) bounds of the logits for every input in the
        box ``[lower, upper]`` (raw ``[0,1]`` images ``N×C×H×W``), in eval mode."""


@runtime_checkable
class FeatureHead(Protocol):
    """A model made of a robust feature extractor and a conventional head (for example the
    l_inf-dist net + MLP): ``logits = head(features(x))``.

    Certifiers that bound conventional networks (auto_LiRPA's IBP, CROWN-IBP,
    CROWN) bound ``head`` over the box that :meth:`feature_bounds` gives.
    """

    head: nn.Module

    def supports_feature_bounds(self, norm: str) -> bool:
        """Whether :meth:`feature_bounds` is sound for the model in its current state and ``norm``."""

    def feature_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sound element-wise (lower, upper) bounds of the head's input for every image in the
        box ``[lower, upper]`` (raw ``[0,1]`` images ``N×C×H×W``), in eval mode."""
