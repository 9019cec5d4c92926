"""Running one cell: the body of a sweep's Ray task (or of one step of the sweep without Ray).

:func:`run_cell` opens the store itself, finds the cell's run and

* returns at once when it is finished, or running elsewhere (alive, and not
  this task's own earlier attempt);
* resumes it when it is interrupted, stale (its process gone, its heartbeat
  old), failed and the driver allows a retry, or ``running`` under this very
  Ray task: an earlier attempt of the task was lost with its node (Ray
  retries the task; the run's environment names the task that runs it,
  :func:`harness.env.launched_by`), without waiting for its heartbeat to age;
* else starts it;

and executes it in this process (:func:`harness.execution.execute`), or, when
the cell's resources give ``nproc`` > 1, in ``nproc`` processes started here
(:func:`harness.distributed.launch` of ``harness run ... --nproc N``, or
``harness run --resume ID``), then reads how it ended from the store. All it
prints (training progress, warnings, a plugin's prints; the ranks' output)
goes to the cell's log file, appended to on every attempt, never to the
driver; the driver gets an :class:`Outcome`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, one_line

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.runner import RunRequest
    from harness.store import RunRecord, Store
    from harness.sweep.spec import Cell

# Outcome statuses.
FINISHED, FAILED, INTERRUPTED, SKIPPED = "finished", "failed", "interrupted", "skipped"


@dataclass
class CellJob:
    """What a task needs to run a cell: everything plain data, so that Ray can ship it."""

    cell: Cell
    sweep: str
    db: str
    save_dir: Path
    log: Path
    data_dir: Path | None = None
    retry: bool = False  # the driver allows resuming a failed run
    plugins: list[str] | None = None  # in a Ray worker: load these plugins (the driver's); None: the worker's environment decides


@dataclass
class Outcome:
    """What became of a cell in one task."""

    cell: str  # the cell's id
    status: str  # FINISHED, FAILED, INTERRUPTED or SKIPPED
    run_id: int | None = None
    resumed: bool = False
    reason: str = ""
    retryable: bool = True  # False: trying again cannot help (no run was created, or it cannot be resumed)
    numbers: dict[str, float | None] = field(default_factory=dict)  # clean, attacked, certified when finished
    seconds: float = 0.0
    host: str = ""
    pid: int = 0


_worker: dict[str, Any] = {}


def _worker_catalog(plugins: list[str] | None) -> tuple[Catalog, dict[str, str | None]]:
    """The catalog of this worker process, built once per plugin selection."""
    from harness.catalog import Catalog
    from harness.plugins import load_plugins

    key = ",".join(plugins) if plugins is not None else None
    if _worker.get("key", "unset") != key:
        loaded = load_plugins(only=plugins) if plugins is not None else load_plugins()
        _worker.update(key=key, catalog=Catalog.build(loaded), versions=loaded.versions())
    return _worker["catalog"], _worker["versions"]


def run_cell(
    job: CellJob,
    *,
    catalog: Catalog | None = None,
    versions: dict[str, str | None] | None = None,
    launcher: dict[str, Any] | None = None,
    threads: int | None = None,
) -> Outcome:
    """Run ``job``'s cell to its end (see the module docstring); never raises for the cell's own failures.

    ``catalog`` and ``versions``: the driver's, when it runs the cell itself;
    in a Ray worker they are built here. ``launcher``: who runs it (recorded
    in the run's environment). ``threads``: torch's thread count (a task's cpus).
    """
    start = time.perf_counter()
    job.log.parent.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(job.cell.id, FAILED, host=platform.node(), pid=os.getpid())
    with open(job.log, "a", encoding="utf-8", buffering=1) as stream, redirect_stdout(stream), redirect_stderr(stream):
        from harness.store import database_name

        stream.write(f"== {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC  cell {job.cell.label} ({job.cell.id})  sweep {job.sweep}  "
                     f"db {database_name(job.db)}  "
                     f"host {outcome.host} pid {outcome.pid}" + "".join(f"  {k} {v}" for k, v in (launcher or {}).items()) + "\n")
        try:
            if threads is not None:
                import torch

                torch.set_num_threads(max(1, threads))
            if catalog is None:
                catalog, versions = _worker_catalog(job.plugins)
            _run(job, catalog, versions or {}, launcher or {}, stream, outcome, threads)
        except KeyboardInterrupt as exc:
            outcome.status, outcome.reason = INTERRUPTED, one_line(exc) or "interrupted"
        except HarnessError as exc:
            outcome.status, outcome.reason = FAILED, one_line(exc)
        except Exception as exc:  # a bug in a plugin: the sweep goes on; the traceback is in the log  # noqa: BLE001
            import traceback

            traceback.print_exc(file=stream)
            outcome.status, outcome.reason = FAILED, f"{type(exc).__name__}: {one_line(exc)}"
        outcome.seconds = time.perf_counter() - start
        stream.write(f"== {outcome.status}" + (f": {outcome.reason}" if outcome.reason else "") + f" ({outcome.seconds:.1f} s)\n")
    return outcome


def _run(job: CellJob, catalog: Catalog, versions: dict[str, str | None], launcher: dict[str, Any], stream: Any, outcome: Outcome,
         threads: int | None = None) -> None:
    from harness.env import launched_by
    from harness.execution import execute
    from harness.liveness import stale_reason
    from harness.progress import ConsoleProgress
    from harness.runner import plan_resume, plan_run
    from harness.store import FAILED as RUN_FAILED
    from harness.store import FINISHED as RUN_FINISHED
    from harness.store import INTERRUPTED as RUN_INTERRUPTED
    from harness.store import RUNNING, open_store
    from harness.sweep.spec import with_where
    from harness.sweep.state import runs_by_key

    store = open_store(job.db)
    try:
        run = runs_by_key(store.list_runs()).get(job.cell.key)
        device = job.cell.resources.device
        ours = False
        if run is not None:
            outcome.run_id = run.id
            if run.status == RUN_FINISHED:
                _finished(outcome, run, "already finished")
                return
            ours = launcher.get("ray_task") is not None and _launcher(run).get("ray_task") == launcher.get("ray_task")
            if run.status == RUNNING and not ours and stale_reason(run) is None:
                env = run.info.environment if isinstance(run.info.environment, dict) else {}
                outcome.status, outcome.reason = SKIPPED, f"run {run.id} is running elsewhere (pid {env.get('pid')} on {env.get('host')})"
                return
            if run.status == RUN_FAILED and not job.retry:
                outcome.status, outcome.reason, outcome.retryable = FAILED, f"run {run.id} failed: {run.error}", False
                return
            try:
                # This task's own run is resumed though it looks alive (its lost node's heartbeat is not old yet).
                taken = dataclasses.replace(run, status=RUN_INTERRUPTED) if ours and run.status == RUNNING else run
                plan = plan_resume(catalog, taken, versions, device=device, data_dir=job.data_dir)
            except HarnessError as exc:
                outcome.retryable = False
                raise HarnessError(f"run {run.id} cannot be resumed: {one_line(exc)}") from None
            outcome.resumed = True
            if ours:
                print(f"run {run.id} was running under this task's earlier attempt (its node or worker was lost): taking it over")
        else:
            try:
                plan = plan_run(catalog, with_where(job.cell, data_dir=job.data_dir, save_dir=job.save_dir, device=device), versions)
            except HarnessError:
                outcome.retryable = False
                raise
        try:
            with launched_by(**launcher, sweep=job.sweep, cell=job.cell.id):
                if job.cell.resources.processes > 1:
                    run_id = _launch(job, store, plan.request, run, ours, stream, threads, outcome)
                else:
                    run_id = execute(plan, store, progress=ConsoleProgress(stream), resume=run)
        except BaseException:
            latest = runs_by_key(_safe_list(store)).get(job.cell.key)
            if latest is not None:
                outcome.run_id = latest.id
            elif run is None:
                outcome.retryable = False  # it failed before its run was recorded (its data, say): a retry fails the same way
            raise
        _finished(outcome, store.get_run(run_id), "")
    finally:
        store.close()


def _launch(job: CellJob, store: Store, request: RunRequest, run: RunRecord | None, ours: bool, stream: Any, threads: int | None,
            outcome: Outcome) -> int:
    """Train the cell's run in ``nproc`` processes (``harness run --nproc N``, or ``--resume ID``); its id once they end.

    The ranks get the database in ``HARNESS_DB`` (never on a command line: it
    may hold a password), this task's :func:`harness.env.launched_by` facts in
    ``HARNESS_LAUNCHER`` (rank 0 records them), the driver's plugins in
    ``HARNESS_ONLY_PLUGINS``, and write to the cell's log. A run the
    processes leave ``running`` (rank 0 killed) is marked failed, so that the
    sweep's bounded retries apply; processes that end before they resumed the
    run (its ``resumes`` unchanged) make the cell not retryable, since a retry
    would not count.
    """
    from harness import distributed
    from harness.env import launcher_variable
    from harness.runner import run_arguments
    from harness.store import FAILED as RUN_FAILED
    from harness.store import INTERRUPTED as RUN_INTERRUPTED
    from harness.store import RUNNING
    from harness.sweep.state import runs_by_key

    nproc = job.cell.resources.processes
    if run is None:
        args = ["run", *run_arguments(request), "--nproc", str(nproc)]
    else:
        if ours and run.status == RUNNING:  # the ranks' harness run --resume resumes only a run that is not alive
            store.mark_ended(run.id, RUN_INTERRUPTED, "its Ray task's earlier attempt was lost with its node or worker; "
                                                      "taken over by the task's retry")
        args = ["run", "--resume", str(run.id), "--device", request.device, "--nproc", str(nproc)]
        if request.data_dir is not None:
            args += ["--data-dir", str(Path(request.data_dir).absolute())]
    env = {"HARNESS_DB": job.db, **launcher_variable()}
    if job.plugins:
        env["HARNESS_ONLY_PLUGINS"] = ",".join(job.plugins)
    cpus = threads if threads is not None else int(job.cell.resources.cpus)
    env["OMP_NUM_THREADS"] = str(max(1, cpus // nproc))  # the cell's cpus, shared by its processes
    print(f"training in {nproc} processes: harness " + " ".join(args), flush=True)
    code = distributed.launch(nproc, args, batch_stats=job.cell.resources.batch_stats, stdout=stream, env=env)
    latest = store.get_run(run.id) if run is not None else runs_by_key(store.list_runs()).get(job.cell.key)
    if latest is None:
        raise HarnessError(f"its {nproc} processes ended with status {code} before recording a run (the log says why)")
    if run is not None and latest.resumes == run.resumes:
        outcome.retryable = False
        raise HarnessError(f"its {nproc} processes ended with status {code} before resuming run {run.id} (the log says why)")
    if latest.status == RUNNING:  # rank 0 died without recording how (killed): a failure, retried a bounded number of times
        store.mark_ended(latest.id, RUN_FAILED, f"its {nproc} processes ended with status {code} and left it running")
        latest = store.get_run(latest.id)
    if latest.status == RUN_INTERRUPTED:
        raise KeyboardInterrupt(latest.error or f"status {code}")
    if latest.status == RUN_FAILED:
        raise HarnessError(f"run {latest.id} failed: {latest.error or f'status {code}'}")
    return latest.id


def _safe_list(store: Store) -> list[RunRecord]:
    try:
        return store.list_runs()
    except HarnessError:
        return []


def _launcher(run: RunRecord) -> dict[str, Any]:
    env = run.info.environment if isinstance(run.info.environment, dict) else {}
    launcher = env.get("launcher")
    return launcher if isinstance(launcher, dict) else {}


def _finished(outcome: Outcome, run: RunRecord, reason: str) -> None:
    outcome.status, outcome.run_id, outcome.reason = FINISHED, run.id, reason
    outcome.numbers = key_numbers(run)


def key_numbers(run: RunRecord) -> dict[str, float | None]:
    """A finished run's clean, attacked and certified accuracy (its best evaluation's)."""
    result = run.result
    if result is None:
        return {}
    return {"clean": result.clean_accuracy, "attacked": result.robust_accuracy, "certified": result.certified_accuracy}
