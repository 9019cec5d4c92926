"""Where runs are recorded.

The data model: a **run** is one model, trained by ``harness run``
(origin ``trained``: its configuration, seed, environment, training times,
per-epoch metrics, last checkpoint, weights file with its sha256, heartbeat
and how many times it was resumed) or trained elsewhere and brought in with
``harness eval --weights`` (origin ``external``: no training record). Each
run has zero or more **evaluations** (which attacks and certifiers ran with
which options, on how many samples, with which harness and torch, how long it
took), and each evaluation its typed result (per attack, per certifier) and
every per-sample outcome. A run's **best** evaluation, the one the
leaderboard shows, is the most complete one: the most attacks and certifiers
that ran without error, then the most samples, then the newest.

:class:`Store` is the interface; the SQLAlchemy backend behind
:func:`open_store` is private to this package, and its schema is versioned
by Alembic revisions (:mod:`harness.store.migrations`). The contract every
backend keeps:

* ``create_run`` commits a row with status ``running`` before any training,
  so a run that dies is still visible;
* ``record_evaluation`` writes the evaluation, its typed result, every
  per-sample result and, when it finishes the run, the run's final
  configuration and ``finished`` status, in **one transaction**: a crash
  part-way leaves the run as it was, never half-recorded;
* ``mark_ended`` sets ``failed`` or ``interrupted`` with the error message and
  touches nothing else; ``resume_run`` sets such a run ``running`` again;
* nothing already stored is ever deleted or rewritten by another run, and a
  finished run's evaluations are only ever added to;
* a write that cannot be done for a reason outside the harness (the database
  busy past the timeout, a full disk, an I/O error, a lost connection) raises
  :class:`StoreUnavailable`; a database that is no longer the one opened (its
  file deleted or replaced) raises :class:`StoreGone`; neither has written
  anything;
* a row that cannot be read (invalid JSON, a text where a number belongs)
  never breaks a listing: the run is left out, with a line in
  :attr:`Store.warnings`.

Accuracies are fractions in [0, 1]; times are seconds; timestamps are UTC.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from harness.errors import HarnessError
from harness.results import EvaluationResult, SampleResult

#: Status values of a run.
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"
STATUSES = (RUNNING, FINISHED, FAILED, INTERRUPTED)

#: Origins of a run's model: trained by ``harness run``, or a weights file trained elsewhere.
TRAINED, EXTERNAL = "trained", "external"
ORIGINS = (TRAINED, EXTERNAL)


class StoreGone(HarnessError):
    """The database this store opened is gone: its file was deleted, or replaced by another database."""


class StoreUnavailable(HarnessError):
    """A write could not be done now (busy past the timeout, disk full, I/O error, connection lost); nothing was written."""


@dataclass
class RunInfo:
    """What is known about a run before it starts. ``trainer`` is the trainer's key (what ``--plugin`` named)."""

    trainer: str
    dataset: str
    norm: str
    eps: float
    preset: str | None
    seed: int
    epochs: int | None
    config: dict[str, Any]  # the full resolved configuration (JSON-serialisable)
    device: str
    environment: dict[str, Any]  # versions of torch, harness, python, plugins; code commit; host; pid
    origin: str = TRAINED


@dataclass(frozen=True)
class WeightsFile:
    """A model's weights file: its path as given (absolute), sha256 and size in bytes."""

    path: str
    sha256: str
    bytes: int


@dataclass
class EvaluationRecord:
    """One stored evaluation of a run's model. ``config`` is the evaluation section of the configuration."""

    id: int
    run_id: int
    created_at: datetime
    seconds: float | None
    config: dict[str, Any]
    environment: dict[str, Any]
    result: EvaluationResult

    @property
    def completeness(self) -> tuple[int, int, datetime, int]:
        """What ranks a run's evaluations (the greatest is the best): components without error, samples, time, id."""
        r = self.result
        ok = sum(a.error is None for a in r.attacks) + sum(c.error is None for c in r.certifiers)
        return ok, r.samples, self.created_at, self.id


@dataclass
class RunRecord:
    """A stored run (one model), with its evaluations, oldest first, and the best of them."""

    id: int
    info: RunInfo
    status: str
    created_at: datetime
    finished_at: datetime | None
    train_seconds: float | None
    error: str | None
    heartbeat_at: datetime | None = None
    checkpoint: dict[str, Any] | None = None
    weights: WeightsFile | None = None
    training: dict[str, Any] = field(default_factory=dict)
    resumes: int = 0
    evaluations: list[EvaluationRecord] = field(default_factory=list)
    best: EvaluationRecord | None = None

    @property
    def result(self) -> EvaluationResult | None:
        """The best evaluation's result (what the leaderboard shows), or None before any evaluation."""
        return None if self.best is None else self.best.result

    @property
    def eval_seconds(self) -> float | None:
        """How long the best evaluation took."""
        return None if self.best is None else self.best.seconds


def best_evaluation(evaluations: list[EvaluationRecord]) -> EvaluationRecord | None:
    """The most complete evaluation: most components without error, then most samples, then the newest."""
    return max(evaluations, key=lambda e: e.completeness, default=None)


class Store(ABC):
    """A database of runs. See the module docstring for the contract.

    Every write raises :class:`StoreUnavailable` when the database cannot take
    it now and :class:`StoreGone` when it is no longer the database opened;
    :class:`~harness.errors.UsageError` names a run id that does not exist.
    """

    #: How messages name the database (a path, or a URL with its password hidden).
    name: str = ""

    #: Rows that could not be read, one line each (run id, what is wrong); the CLI prints them.
    warnings: list[str]

    @abstractmethod
    def create_run(self, info: RunInfo) -> int:
        """Record a new run with status ``running`` and a heartbeat now; return its id."""

    @abstractmethod
    def heartbeat(self, run_id: int, *, checkpoint: dict[str, Any] | None = None) -> None:
        """Record that a ``running`` run is alive now, and its latest checkpoint when given (epoch, step, path, bytes, saved_at)."""

    @abstractmethod
    def record_training(
        self,
        run_id: int,
        *,
        train_seconds: float,
        weights: WeightsFile | None,
        training: dict[str, Any],
        config: dict[str, Any],
    ) -> None:
        """Record a ``running`` run's finished training: its time, weights file, per-epoch metrics and configuration.

        The run stays ``running`` until its evaluation is recorded.
        """

    @abstractmethod
    def record_evaluation(
        self,
        run_id: int,
        *,
        result: EvaluationResult,
        samples: list[SampleResult],
        config: dict[str, Any],
        environment: dict[str, Any],
        seconds: float,
        run_config: dict[str, Any] | None = None,
        finish: bool = False,
    ) -> int:
        """Store an evaluation with its result and per-sample results in one transaction; return its id.

        ``finish=True``: the run must be ``running`` and becomes ``finished``,
        its configuration replaced by ``run_config`` when given. ``finish=False``:
        the run must be ``finished`` (a re-evaluation of its model).
        """

    @abstractmethod
    def create_external_run(self, info: RunInfo, weights: WeightsFile) -> int:
        """Record a model trained elsewhere (origin ``external``, status ``finished``, no training); return its id."""

    @abstractmethod
    def resume_run(self, run_id: int, environment: dict[str, Any]) -> RunRecord:
        """Set an ``interrupted``, ``failed`` or (stale) ``running`` run ``running`` again, one more resume, its environment replaced.

        The caller decides whether a ``running`` run is stale. A finished run is refused (UsageError).
        """

    @abstractmethod
    def mark_ended(self, run_id: int, status: str, error: str, *, train_seconds: float | None = None) -> None:
        """Mark a ``running`` run ``failed`` or ``interrupted`` with its error message."""

    @abstractmethod
    def get_run(self, run_id: int) -> RunRecord:
        """The run with its evaluations; UsageError naming the id if there is none, HarnessError if its rows cannot be read."""

    @abstractmethod
    def list_runs(
        self,
        *,
        status: str | None = None,
        dataset: str | None = None,
        norm: str | None = None,
        eps: float | None = None,
    ) -> list[RunRecord]:
        """Runs (with evaluations) matching every filter given, oldest first; unreadable ones are left out (see :attr:`warnings`).

        ``eps`` matches to 1e-4 relative (:func:`harness.threat.same_eps`).
        """

    @abstractmethod
    def samples(self, run_id: int, evaluation_id: int | None = None) -> list[SampleResult]:
        """The per-sample results of one of a run's evaluations (default: the best), by sample index."""

    @abstractmethod
    def check_alive(self) -> None:
        """Raise :class:`StoreGone` if the database opened is gone (deleted, or replaced by another one); cheap."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def open_store(url: str, *, readonly: bool = False) -> Store:
    """Open the store at a SQLAlchemy URL or a file path, creating or upgrading its schema when that is safe.

    A bare path such as ``results.db`` means ``sqlite:///results.db``.
    ``readonly=True`` (the read commands) never creates a database, never
    takes a write lock and never waits on a writer. Raises
    :class:`~harness.errors.UsageError` with one line naming the database
    (never its password) when it cannot be opened: in memory, not a harness
    database, a missing table or column, an unknown or newer revision, an older
    one that cannot be upgraded now (it says to run ``harness db upgrade``), an
    unreachable server.
    """
    from harness.store._sql import SqlStore

    return SqlStore.open(url, readonly=readonly)


def database_name(url: str) -> str:
    """How to print the database ``url`` names (``--db``, ``$HARNESS_DB``): its passwords replaced by ``***``; opens nothing.

    Every message of the store names its database this way (:attr:`Store.name`); use it wherever else a database URL
    is shown or stored (a sweep's plan, a job's log, a configuration).
    """
    from harness.store._sql import database_name as name

    return name(url)


@dataclass(frozen=True)
class Upgrade:
    """What :func:`upgrade_database` did: from which revision to which (0: schema 1, from before revisions), and its backup."""

    database: str
    from_revision: int
    to_revision: int
    backup: str | None  # the SQLite backup's path; None when nothing was upgraded, or for a server database

    def __str__(self) -> str:
        if self.from_revision == self.to_revision:
            return f"database {self.database!r} is at revision {self.to_revision}, the newest: nothing to do"
        before = "schema 1 (from before revisions)" if self.from_revision == 0 else f"revision {self.from_revision}"
        backup = f"; backup: {self.backup}" if self.backup else "; no backup made (a server database: back it up with its own tools)"
        return f"upgraded database {self.database!r} from {before} to revision {self.to_revision}{backup}"


def upgrade_database(url: str) -> Upgrade:
    """Bring a database to the newest revision (``harness db upgrade``), waiting for the write lock; a SQLite file is backed up first.

    Never creates a SQLite file that is not there. UsageError, one line, when it cannot be done; nothing is changed then.
    """
    from harness.store._sql import upgrade_database as upgrade

    return upgrade(url)


@dataclass(frozen=True)
class Revision:
    """What :func:`database_revision` found: the revision (0: schema 1, from before revisions; None: an empty database) and the newest."""

    database: str  # as messages name it: the password hidden
    revision: int | None
    newest: int

    def __str__(self) -> str:
        if self.revision is None:
            return f"{self.database}: empty (harness run creates the schema, at revision {self.newest})"
        if self.revision == self.newest:
            return f"{self.database}: revision {self.revision} (the newest)"
        before = "schema 1 (from before revisions)" if self.revision == 0 else f"revision {self.revision}"
        return f"{self.database}: {before}; this harness upgrades it to revision {self.newest}: harness db upgrade --db {self.database}"


def database_revision(url: str) -> Revision:
    """The database's revision, read only; refuses in one line what :func:`open_store` refuses."""
    from harness.store._sql import database_revision as revision

    return revision(url)


__all__ = [
    "EXTERNAL",
    "FAILED",
    "FINISHED",
    "INTERRUPTED",
    "ORIGINS",
    "RUNNING",
    "STATUSES",
    "TRAINED",
    "EvaluationRecord",
    "Revision",
    "Upgrade",
    "RunInfo",
    "RunRecord",
    "SampleResult",
    "Store",
    "StoreGone",
    "StoreUnavailable",
    "WeightsFile",
    "best_evaluation",
    "database_name",
    "database_revision",
    "open_store",
    "upgrade_database",
]
