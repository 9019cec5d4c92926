"""Test helpers and pytest fixtures for plugin authors (and for harness's own tests).

Installed as a pytest plugin (the ``pytest11`` entry point ``harness``), so a
plugin package's tests get these fixtures without importing anything:

``harness_catalog``
    a factory: ``harness_catalog(my_plugin_module)`` is a
    :class:`~harness.catalog.Catalog` of the built-in plugins plus yours, and
    nothing else that happens to be installed;
``harness_store``
    a temporary results database (SQLite in ``tmp_path``), closed afterwards;
``harness_tiny_data``
    :class:`TinyData`, a plugin object registering ``tiny``, a three-class 4×4
    dataset small enough to train on in seconds; pass it to the other two;
``harness_cli``
    runs ``harness ARGS`` in-process in a temporary directory with only the
    built-in plugins and the plugin modules you pass, and returns the exit
    code, stdout and stderr;
``harness_postgres_url``
    the URL of a fresh, empty PostgreSQL database for one test, on the
    session's server (``harness_postgres_server``): the server of
    ``$HARNESS_TEST_POSTGRES_URL`` if set, else a throwaway one started for the
    session (:mod:`harness.testing_postgres`); skipped, saying why, only when
    no PostgreSQL binaries can be found.

:func:`check_certifier_sound` is the contract test every certifier must
pass: each certified sample is classified correctly, survives the given
attacks, keeps its label at random points and corners of the ball, and its
radius, if any, is consistent with its verdict. Parametrise it over your
certifier and a model it applies to; :func:`train_tiny` trains one in seconds.
:func:`check_attacker_in_ball` is the attackers' contract: the check the
evaluation applies to every adversarial batch. :func:`check_resumes` is the
trainers' resume contract: stopped and resumed, a run ends with the weights of
one that never stopped.

Imports of torch and of the host's internals happen inside the fixtures, so
loading this plugin costs a pytest session nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.catalog import Catalog
    from harness.components import Attacker, AttackStages, Certifier, Model, Trainer
    from harness.data.types import DatasetInfo, Splits
    from harness.store import Store
    from harness.threat import ThreatModel

__all__ = [
    "CliResult",
    "TinyData",
    "TinyRun",
    "builtin_plugins",
    "check_attacker_in_ball",
    "check_certifier_sound",
    "check_resumes",
    "make_catalog",
    "run_cli",
    "tiny_info",
    "tiny_splits",
    "train_tiny",
]


def builtin_plugins() -> list[str]:
    """The entry-point names of the built-in plugins (those shipped by harness-bench)."""
    from harness.plugins import BUILTIN_DISTRIBUTION, ENTRY_POINT_GROUP

    return sorted(
        ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION
    )


def make_catalog(*plugins: Any, builtins: bool | Iterable[str] = True) -> Catalog:
    """A catalog of the built-in plugins (all, some by name, or none) and the given plugin objects.

    Third-party plugins installed in the environment are left out, so a test
    sees the same components wherever it runs.
    """
    from harness.catalog import Catalog
    from harness.plugins import load_plugins

    if builtins is True:
        only: list[str] = builtin_plugins()
    elif builtins is False:
        only = []
    else:
        only = list(builtins)
    return Catalog.build(load_plugins(entry_points=bool(only), only=only, extra=plugins, environment=False))


# -- a tiny dataset ---------------------------------------------------------------------------------------------


def tiny_splits(n_train: int = 600, n_test: int = 120, seed: int = 0) -> Splits:
    """Three classes of 1×4×4 images, each a fixed pattern plus noise, well separated under l_inf (0.1 fits)."""
    import torch

    from harness.data.types import Splits

    generator = torch.Generator().manual_seed(seed)
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    centres = torch.stack([torch.full((4, 4), 0.2), torch.full((4, 4), 0.8), 0.2 + 0.6 * checker])[:, None]

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 3, (n,), generator=generator)
        images = (centres[labels] + 0.04 * torch.randn(n, 1, 4, 4, generator=generator)).clamp(0, 1)
        return (images * 255).round().to(torch.uint8), labels

    return Splits(*make(n_train), *make(n_test))


def tiny_info() -> DatasetInfo:
    """The :class:`~harness.DatasetInfo` of ``tiny`` (what ``Model.build`` gets for it)."""
    from harness.data.types import DatasetInfo

    return DatasetInfo(name="tiny", num_classes=3, shape=(1, 4, 4), mean=(0.5,), std=0.3)


def _tiny_class() -> type:
    from harness.components import Dataset

    class TinyDataset(Dataset):
        name = "tiny"
        description = "three 4×4 patterns plus noise, 600 training and 120 test images (tests)"
        info = tiny_info()

        def load(self, root: Path, *, download: bool = True) -> Splits:
            return tiny_splits()

    return TinyDataset


class TinyData:
    """A plugin object registering the ``tiny`` dataset: ``harness_catalog(TinyData())``."""

    @hookimpl
    def register_datasets(self) -> list[type]:
        return [_tiny_class()]


@dataclass
class TinyRun:
    """A model trained on ``tiny``, and ``tiny``'s test split as float images in ``[0, 1]`` with their labels."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor


def train_tiny(trainer: Trainer, model: Model, threat: ThreatModel, *, seed: int = 0) -> TinyRun:
    """Build ``model`` for ``tiny``, train it with ``trainer`` for ``threat`` on the CPU, as ``harness run`` would.

    Seeded like a run (the same seed, the same weights); the model comes back as
    ``fit`` leaves it (in eval mode for a :class:`harness.scaffold.EpochTrainer`).
    Pass the components with their options: ``train_tiny(MyTrainer(MyOptions(epochs=5)), MyModel(), threat)``.
    """
    import torch

    from harness.train import TrainContext, TrainData

    splits = tiny_splits()
    torch.manual_seed(seed)
    network = model.build(tiny_info())
    context = TrainContext(threat=threat, device=torch.device("cpu"), seed=seed, generator=torch.Generator().manual_seed(seed))
    trainer.fit(network, TrainData(tiny_info(), splits.train_images, splits.train_labels), context)
    return TinyRun(network, splits.test_images.float() / 255, splits.test_labels)


def check_resumes(
    trainer: Callable[[], Trainer],
    model: Model,
    threat: ThreatModel,
    directory: Path,
    *,
    stops: Sequence[int],
    data: tuple[DatasetInfo, torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
) -> nn.Module:
    """The resume contract: a run stopped after ``k`` steps and resumed ends exactly as one that never stopped.

    For each ``k`` in ``stops``: trains with checkpoints in ``directory / f"stop-{k}"``, asks
    for a stop after step ``k`` (the signal handler's way), expects
    :class:`~harness.errors.TrainingInterrupted`, then resumes from the checkpoint with a
    *new* trainer (``trainer()``), model and generator, seeded as ``harness run`` seeds them,
    and compares every entry of the final ``state_dict`` (tensors with ``torch.equal``) and
    ``ctx.history`` with an uninterrupted run's (which saves no checkpoints: a save must not
    change the run either). CPU only; returns the uninterrupted run's model.

    :param data: ``(info, uint8 images, labels)`` to train on; ``tiny``'s training split by default.
    """
    import torch

    from harness.checkpoint import Checkpointing, load_checkpoint
    from harness.errors import TrainingInterrupted
    from harness.train import TrainContext, TrainData

    if data is None:
        splits = tiny_splits()
        data = (tiny_info(), splits.train_images, splits.train_labels)
    info, images, labels = data

    def run(checkpoints: Checkpointing | None, stop_after: int | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
        torch.manual_seed(seed)
        network = model.build(info)
        context = TrainContext(threat, torch.device("cpu"), seed, torch.Generator().manual_seed(seed), checkpoints=checkpoints)
        if stop_after is not None and checkpoints is not None:
            context.progress = _StopAfter(stop_after, checkpoints)
        trainer().fit(network, TrainData(info, images, labels), context)
        return network, context.history

    reference, history = run(None)
    for k in stops:
        where = directory / f"stop-{k}"
        try:
            run(Checkpointing(where), stop_after=k)
        except TrainingInterrupted as stopped:
            if stopped.steps_done != k or stopped.checkpoint is None:
                raise AssertionError(f"asked to stop after step {k}: {stopped}") from None
        else:
            raise AssertionError(f"no TrainingInterrupted after a stop was requested at step {k} (fewer steps in the run?)")
        resumed, resumed_history = run(Checkpointing(where, resume=load_checkpoint(where / "checkpoint.pt")))
        expected, got = reference.state_dict(), resumed.state_dict()
        if list(got) != list(expected):
            raise AssertionError(f"resumed after step {k}: state_dict keys {list(got)} != {list(expected)}")
        for key, value in expected.items():
            if not _same(got[key], value):
                raise AssertionError(f"resumed after step {k}: {key} differs from the uninterrupted run's")
        if resumed_history != history:
            raise AssertionError(f"resumed after step {k}: history {resumed_history} != {history}")
    return reference


def _same(a: Any, b: Any) -> bool:
    """Equal state entries: tensors exactly, extra states (dicts and lists of tensors, say) entry by entry."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


class _StopAfter:
    """Progress that asks ``checkpoints`` to stop once ``steps`` training steps were reported."""

    def __init__(self, steps: int, checkpoints: Any) -> None:
        self.steps, self.seen, self.checkpoints = steps, 0, checkpoints

    def task(self, description: str, total: int | None = None) -> Any:
        import contextlib

        outer = self

        class Task:
            def advance(self, n: int = 1, **metrics: Any) -> None:
                outer.seen += n
                if outer.seen == outer.steps:
                    outer.checkpoints.request_stop("test")

        return contextlib.nullcontext(Task())

    def log(self, message: str) -> None:
        pass


# -- the contract tests for certifiers and attackers ---------------------------------------------------------------------------


def check_certifier_sound(
    certifier: Certifier,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    threat: ThreatModel,
    *,
    attackers: Sequence[Attacker] = (),
    samples: int = 20,
    seed: int = 0,
    min_certified: float = 0.0,
) -> torch.Tensor:
    """Check the promise of ``certifier`` on a batch; return its verdicts.

    Every certified sample must be classified correctly, survive each of
    ``attackers``, and keep its label at ``samples`` random points of the ball
    (for l_inf also at random corners of the box), all within ``[0, 1]``. The
    verdicts and radii must pass the evaluation's own checks (one bool per
    sample; radii non-negative, at least eps where certified and at most eps
    where not). ``min_certified`` guards against a vacuous pass.

    :raises AssertionError: naming the first broken promise.
    """
    import torch

    model.eval()
    if not certifier.applies_to(model, threat):
        raise AssertionError(f"{certifier.name} does not apply: {certifier.not_applicable_reason(model, threat)}")
    from harness.evaluation import ComponentFailed, check_certificate

    try:  # the evaluation's own checks: verdicts' shape and dtype, radii agreeing with them
        certified, _ = check_certificate(certifier.certify(model, images, labels, threat), len(labels), threat)
    except ComponentFailed as exc:
        raise AssertionError(f"{certifier.name}: {exc}") from None
    certified = certified.to(labels.device)
    fraction = certified.float().mean().item()
    if fraction < min_certified:
        raise AssertionError(f"{certifier.name} certified {fraction:.1%} < {min_certified:.1%}: the check would be vacuous")

    def holds(points: torch.Tensor, what: str) -> None:
        with torch.no_grad():
            kept = model(points).argmax(1) == labels
        broken = certified & ~kept
        if bool(broken.any()):
            index = int(torch.nonzero(broken)[0])
            raise AssertionError(f"{certifier.name} certified sample {index}, but {what} changes its label")

    holds(images, "the clean image")
    from harness.components import AttackStages

    for attacker in attackers:
        adversarial = attacker.perturb(model, images, labels, threat)
        if isinstance(adversarial, AttackStages):  # a multi-stage attack: each stage's points
            for stage, points in adversarial.stages.items():
                holds(points.detach(), f"attack {attacker.name} (stage {stage})")
        else:
            holds(adversarial.detach(), f"attack {attacker.name}")
    generator = torch.Generator().manual_seed(seed)
    for _ in range(samples):
        if threat.norm == "inf":
            lower, upper = (images - threat.eps).clamp(0, 1), (images + threat.eps).clamp(0, 1)
            holds(lower + torch.rand(images.shape, generator=generator) * (upper - lower), "a random point of the box")
            holds(torch.where(torch.rand(images.shape, generator=generator) < 0.5, lower, upper), "a corner of the box")
        else:
            direction = torch.randn(images.shape, generator=generator)
            norms = direction.flatten(1).norm(dim=1).view(-1, *[1] * (images.dim() - 1))
            scale = threat.eps * torch.rand(len(images), generator=generator).view_as(norms)
            holds((images + direction / norms * scale).clamp(0, 1), "a random point of the ball")
    return certified


def check_attacker_in_ball(
    attacker: Attacker, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel
) -> torch.Tensor | AttackStages:
    """Check that ``attacker`` keeps to the threat model on a batch; return its adversarial images
    (of a multi-stage attack, its :class:`~harness.AttackStages`, every stage checked).

    The check is the evaluation's own: a finite tensor of the images' shape,
    inside ``[0, 1]`` and within ``threat.eps`` of the clean images in its norm
    (up to a rounding slack of ``1e-5·max(eps, 1)``). The evaluation records an
    attack that fails it as an error and discards its outcome. The clean images
    must come back unchanged.

    :raises AssertionError: saying what is wrong.
    """
    import torch

    from harness.components import AttackStages
    from harness.evaluation import ComponentFailed, check_in_ball

    model.eval()
    clean = images.clone()
    adversarial = attacker.perturb(model, images, labels, threat)
    if not torch.equal(images, clean):
        raise AssertionError(f"{attacker.name} changed the clean images in place")
    try:
        if isinstance(adversarial, AttackStages):
            return AttackStages({stage: check_in_ball(points, images, threat) for stage, points in adversarial.stages.items()},
                                gradient_free=adversarial.gradient_free)
        return check_in_ball(adversarial, images, threat)
    except ComponentFailed as exc:
        raise AssertionError(f"{attacker.name}: {exc}") from None


# -- the CLI in-process -----------------------------------------------------------------------------------------


@dataclass
class CliResult:
    """What a ``harness`` command did: its exit code, standard output and standard error."""

    code: int
    out: str
    err: str


def run_cli(args: Sequence[str], *, plugins: Sequence[Any] = (), capsys: Any) -> CliResult:
    """Run ``harness ARGS`` in this process with the built-in plugins and ``plugins`` (module or objects)."""
    import harness.cli
    from harness.plugins import load_plugins

    harness.cli._state = harness.cli._State(load_plugins(only=builtin_plugins(), extra=plugins))
    capsys.readouterr()
    try:
        harness.cli.main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    else:
        code = 0
    finally:
        harness.cli._state = None
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def harness_catalog() -> Callable[..., Catalog]:
    """``harness_catalog(*plugins, builtins=True)``: see :func:`make_catalog`."""
    return make_catalog


@pytest.fixture
def harness_store(tmp_path: Path) -> Iterator[Store]:
    """A fresh results database, ``tmp_path / "results.db"``: where ``harness_cli`` finds it by default (the read commands never create one)."""
    from harness.store import open_store

    store = open_store(str(tmp_path / "results.db"))
    yield store
    store.close()


@pytest.fixture(scope="session")
def harness_postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for the session: ``$HARNESS_TEST_POSTGRES_URL``, else a throwaway server, stopped at the end.

    Skips (naming what is missing) when there is no URL and no PostgreSQL binaries; a server that is found but does not start
    fails, with its log. Tests take their databases from ``harness_postgres_url``.
    """
    import os

    from harness.testing_postgres import PostgresNotFound, PostgresServer

    given = os.environ.get("HARNESS_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    try:
        server = PostgresServer()
    except PostgresNotFound as exc:
        pytest.skip(str(exc))
    with server:
        yield server.url()


@pytest.fixture
def harness_postgres_url(harness_postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (``postgresql+psycopg://...``), dropped afterwards.

    On the server of ``harness_postgres_server``. Where its user may not create databases (a
    ``$HARNESS_TEST_POSTGRES_URL`` for one database), that database's ``public`` schema is emptied instead.
    """
    from sqlalchemy.exc import DBAPIError

    from harness.testing_postgres import drop_database, empty_schema, fresh_database

    try:
        url = fresh_database(harness_postgres_server)
    except DBAPIError as exc:
        if "permission denied" not in str(exc):
            raise
        empty_schema(harness_postgres_server)
        yield harness_postgres_server
        return
    try:
        yield url
    finally:
        drop_database(url, via=harness_postgres_server)


@pytest.fixture
def harness_tiny_data() -> TinyData:
    """A plugin object registering the ``tiny`` dataset; pass it to ``harness_catalog`` or ``harness_cli``."""
    return TinyData()


@pytest.fixture
def harness_cli(capsys: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., CliResult]:
    """``harness_cli(*args, plugins=())``: run the CLI in-process in ``tmp_path``, with only the built-in plugins and ``plugins``."""
    monkeypatch.chdir(tmp_path)
    for variable in ("HARNESS_DB", "HARNESS_DISABLE_PLUGINS", "HARNESS_ONLY_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)

    def run(*args: str, plugins: Sequence[Any] = ()) -> CliResult:
        return run_cli(args, plugins=plugins, capsys=capsys)

    return run
