"""What the store says about each cell of a sweep: its run, and what the sweep does with it.

The run of a cell is the stored run whose request (``config["request"]``,
stored with every run by ``harness run`` and by sweeps alike) has the cell's
key (:func:`harness.sweep.spec.cell_key`): a run started by hand with the same
options counts as the cell's run. When several runs have the key, a finished
one (the newest) is the cell's run, else the newest.

What the sweep does (:class:`Action`):

* ``finished``: nothing;
* ``running``: nothing; its process is alive (or its heartbeat recent) and it
  is not one of this sweep's tasks;
* ``resume``: interrupted, or ``running`` but stale (its process gone);
* ``retry``: failed, resumed fewer than ``retries`` times (the run's
  ``resumes`` counts every resume, whatever stopped it);
* ``gave up``: failed and already retried ``retries`` times
  (``--retry-failed`` tries each once more);
* ``new``: no run yet.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.liveness import stale_reason
from harness.store import FAILED, FINISHED, INTERRUPTED, RUNNING, RunRecord, Store
from harness.sweep.spec import Cell, cell_key


class Action(enum.StrEnum):
    FINISHED = "finished"
    RUNNING = "running"
    RESUME = "resume"
    RETRY = "retry"
    GAVE_UP = "gave up"
    NEW = "new"


#: The actions that give a cell a task.
TO_RUN = (Action.RESUME, Action.RETRY, Action.NEW)


@dataclass
class CellState:
    cell: Cell
    action: Action
    run: RunRecord | None
    reason: str = ""  # why it is resumed, left alone, or gave up


def runs_by_key(runs: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """The run of each cell key: a finished one (the newest), else the newest run."""
    chosen: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.id):
        key = run_key(run)
        if key is None:
            continue
        previous = chosen.get(key)
        if previous is None or run.status == FINISHED or previous.status != FINISHED:
            chosen[key] = run
    return chosen


def run_key(run: RunRecord) -> str | None:
    """The cell key of a stored run; None when it has no stored request (an external model, an older harness)."""
    config = run.info.config if isinstance(run.info.config, dict) else {}
    request: Any = config.get("request")
    if not isinstance(request, dict) or "trainer" not in request:
        return None
    return cell_key(request)


def classify(cell: Cell, run: RunRecord | None, *, retries: int, retry_failed: bool = False) -> CellState:
    """What the sweep does with ``cell`` whose run is ``run`` (see the module docstring)."""
    if run is None:
        return CellState(cell, Action.NEW, None)
    if run.status == FINISHED:
        return CellState(cell, Action.FINISHED, run)
    if run.status == RUNNING:
        stale = stale_reason(run)
        if stale is None:
            env = run.info.environment if isinstance(run.info.environment, dict) else {}
            return CellState(cell, Action.RUNNING, run, f"running: pid {env.get('pid')} on {env.get('host')}, heartbeat recent")
        return CellState(cell, Action.RESUME, run, f"stale: {stale}")
    if run.status == INTERRUPTED:
        return CellState(cell, Action.RESUME, run, f"interrupted: {run.error or 'no reason recorded'}")
    if run.status == FAILED:
        if run.resumes < retries:
            return CellState(cell, Action.RETRY, run, f"failed: {run.error or 'no reason recorded'}")
        if retry_failed:
            return CellState(cell, Action.RETRY, run, f"failed after {run.resumes} retries, tried again (--retry-failed): {run.error}")
        return CellState(cell, Action.GAVE_UP, run, f"failed after {run.resumes} retries: {run.error or 'no reason recorded'}")
    return CellState(cell, Action.GAVE_UP, run, f"status {run.status!r} unknown to this harness")


def survey(cells: list[Cell], store: Store | None, *, retries: int, retry_failed: bool = False) -> list[CellState]:
    """Every cell's state, from one read of the store (``None``: a database not created yet, so every cell is new)."""
    runs = runs_by_key(store.list_runs()) if store is not None else {}
    return [classify(c, runs.get(c.key), retries=retries, retry_failed=retry_failed) for c in cells]
