"""Where runs are recorded.

:class:`Store` is the interface; the SQLAlchemy backend behind
:func:`open_store` is private to this package. The contract every backend
keeps:

* ``create_run`` commits a row with status ``running`` before any training, so
  a run that dies is still visible;
* ``record_results`` writes the typed evaluation result (per attack, per
  certifier), every per-sample result, the final configuration (which
  certifiers ran is known only after training) and the ``finished`` status in
  **one transaction**: a crash part-way leaves the run as it was, never
  half-recorded;
* ``mark_ended`` sets ``failed`` or ``interrupted`` with the error message and
  touches nothing else;
* nothing already stored is ever deleted or rewritten by another run.

Accuracies are fractions in [0, 1]; times are seconds; timestamps are UTC.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from harness.results import EvaluationResult, SampleResult

#: Status values of a run.
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"
STATUSES = (RUNNING, FINISHED, FAILED, INTERRUPTED)


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
    environment: dict[str, Any]  # versions of torch, harness, python, plugins; code commit; host


@dataclass
class RunRecord:
    """A stored run, with its evaluation result once it finished."""

    id: int
    info: RunInfo
    status: str
    created_at: datetime
    finished_at: datetime | None
    train_seconds: float | None
    eval_seconds: float | None
    error: str | None
    result: EvaluationResult | None = None


class Store(ABC):
    """A database of runs. See the module docstring for the contract."""

    @abstractmethod
    def create_run(self, info: RunInfo) -> int:
        """Record a new run with status ``running``; return its id."""

    @abstractmethod
    def record_results(
        self,
        run_id: int,
        *,
        result: EvaluationResult,
        samples: list[SampleResult],
        config: dict[str, Any],
        train_seconds: float,
        eval_seconds: float,
    ) -> None:
        """Store the result, the per-sample results and the final ``config``, and mark the run ``finished``, atomically."""

    @abstractmethod
    def mark_ended(self, run_id: int, status: str, error: str, *, train_seconds: float | None = None) -> None:
        """Mark a run ``failed`` or ``interrupted`` with its error message."""

    @abstractmethod
    def get_run(self, run_id: int) -> RunRecord:
        """The run with its metrics; raises UsageError naming the id if there is none."""

    @abstractmethod
    def list_runs(
        self,
        *,
        status: str | None = None,
        dataset: str | None = None,
        norm: str | None = None,
        eps: float | None = None,
    ) -> list[RunRecord]:
        """Runs (with results) matching every filter given, oldest first. ``eps`` matches to 1e-4 relative (:func:`harness.threat.same_eps`)."""

    @abstractmethod
    def samples(self, run_id: int) -> list[SampleResult]:
        """The per-sample results of a run, by sample index."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def open_store(url: str) -> Store:
    """Open (creating if needed) the store at a SQLAlchemy URL or a file path.

    A bare path such as ``results.db`` means ``sqlite:///results.db``. Raises
    UsageError with one line naming the URL when it cannot be opened, or when
    its schema is newer than this harness understands.
    """
    from harness.store._sql import SqlStore

    return SqlStore.open(url)


__all__ = [
    "FAILED",
    "FINISHED",
    "INTERRUPTED",
    "RUNNING",
    "STATUSES",
    "RunInfo",
    "RunRecord",
    "SampleResult",
    "Store",
    "open_store",
]
