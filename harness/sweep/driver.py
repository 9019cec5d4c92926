"""Running a sweep: validate every cell, show the plan, run what is left on Ray (or one by one), report.

The driver never trains. It submits one task per cell to run
(:func:`harness.sweep.cell.run_cell`), learns how each ends from the task's
result and what happens meanwhile by polling the store (a run appearing,
resumed), and prints one line per change. A failed cell is retried while its
run's ``resumes`` is below ``retries``; a task whose worker dies is retried
by Ray (``max_retries``) and takes its run over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import HarnessError, UsageError, one_line
from harness.store import database_name
from harness.sweep.cell import FAILED, FINISHED, INTERRUPTED, SKIPPED, CellJob, Outcome, run_cell
from harness.sweep.report import cell_line, outcome_text, plan_lines
from harness.sweep.spec import Cell, Spec
from harness.sweep.state import TO_RUN, Action, CellState, runs_by_key, survey

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.runner import Plan
    from harness.store import Store

#: Seconds between two looks at the store for runs appearing or resumed.
POLL_S = 2.0
#: How long an interrupted sweep waits for its tasks to write their checkpoints.
STOP_WAIT_S = 120.0
INSTALL_RAY = "pip install 'harness-bench[ray]'"


class SweepFailed(HarnessError):
    """Some cells of the sweep failed and were given up on (exit status 1)."""


@dataclass
class Summary:
    """How the sweep's cells ended (cell id → outcome; cells not run keep their survey state)."""

    states: list[CellState]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    ray_start_seconds: float | None = None

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == FAILED]


def validate(spec: Spec, catalog: Catalog, versions: dict[str, str | None]) -> dict[str, Plan]:
    """Plan every cell before anything runs (device ``auto``: the driver may have no GPU); the first bad one is a UsageError naming it."""
    from harness.leaderboard import configuration_key
    from harness.runner import plan_run

    plans: dict[str, Plan] = {}
    resolved: dict[str, Cell] = {}
    for cell in spec.cells:
        try:
            plan = plans[cell.id] = plan_run(catalog, dataclasses.replace(cell.request, device="auto"), versions)
        except HarnessError as exc:
            raise UsageError(f"cell {cell.label}: {exc}") from None
        # Two cells asking for the same run in other words (an option set to its default, a preset named or chosen by
        # default): two runs of one seed, which the leaderboard would show as two seeds.
        same = resolved.setdefault(f"{plan.seed} {configuration_key(plan.config())}", cell)
        if same is not cell:
            raise UsageError(f"cells {same.label!r} and {cell.label!r} are the same run (the same configuration and seed): "
                             "leave one out")
    return plans


class Executor(Protocol):
    def submit(self, job: CellJob) -> None: ...

    def wait(self, timeout: float) -> list[tuple[CellJob, Outcome]]: ...

    def pending(self) -> int: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class InProcess:
    """Runs the cells one after another in this process (no Ray)."""

    def __init__(self, catalog: Catalog, versions: dict[str, str | None]) -> None:
        self.catalog, self.versions = catalog, versions
        self.queue: list[CellJob] = []

    def submit(self, job: CellJob) -> None:
        self.queue.append(job)

    def wait(self, timeout: float) -> list[tuple[CellJob, Outcome]]:
        job = self.queue.pop(0)
        return [(job, run_cell(job, catalog=self.catalog, versions=self.versions, launcher={"ray_task": None}))]

    def pending(self) -> int:
        return len(self.queue)

    def stop(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        pass


def _ray_task(job: CellJob, submission: str) -> Outcome:
    """A cell as a Ray task: torch threads = its CPUs; its Ray ids recorded in its run's environment.

    ``ray_task`` names this submission, whatever Ray attempt runs it: Ray's task id and the driver's ``submission``
    token. Task ids alone repeat from one local Ray instance to the next (the first task of every job 01000000 has
    the same id), and a run "running under this task" is taken over at once, alive or not.
    """
    import ray

    context = ray.get_runtime_context()
    task = context.get_task_id()
    launcher = {"ray_task": f"{task}/{submission}" if submission else task, "ray_node": context.get_node_id()}
    return run_cell(job, launcher=launcher, threads=max(1, int(job.cell.resources.cpus)))


class OnRay:
    """Runs each cell as a Ray task, on a local instance started here or on the cluster at ``address``."""

    def __init__(self, address: str | None, retries: int, echo: Callable[[str], None]) -> None:
        import ray

        self.ray = ray
        self.retries = retries
        self.started = False
        self.start_seconds = 0.0
        if not ray.is_initialized():
            start = time.perf_counter()
            if address or os.environ.get("RAY_ADDRESS"):
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
                where = f"the Ray cluster at {address or os.environ['RAY_ADDRESS']}"
            else:
                ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
                self.started = True
                where = "a local Ray instance"
            self.start_seconds = time.perf_counter() - start
            resources = ray.cluster_resources()
            echo(f"on {where}: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs "
                 f"({self.start_seconds:.1f} s to {'start' if self.started else 'connect'})")
        self.remote = ray.remote(_ray_task)
        self.refs: dict[Any, CellJob] = {}

    def check_fits(self, cells: list[Cell]) -> None:
        """On a local instance started here, a cell that needs more than this machine has is a UsageError (Ray would wait forever)."""
        if not self.started:
            return  # a cluster may grow (an autoscaler); Ray reports a task no node can take
        total = self.ray.cluster_resources()
        for cell in cells:
            for name, key, value in (("GPUs", "GPU", cell.resources.gpus), ("CPUs", "CPU", cell.resources.cpus)):
                if value > total.get(key, 0):
                    raise UsageError(f"cell {cell.label} needs {value:g} {name} per run; this machine has {total.get(key, 0):g} "
                                     f"(lower --{name.lower()}, or give --address of a Ray cluster that has them)")

    def submit(self, job: CellJob) -> None:
        resources = job.cell.resources
        ref = self.remote.options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=max(1, self.retries), retry_exceptions=False,
            name=f"harness-sweep {job.sweep} {job.cell.id}",
        ).remote(job, uuid.uuid4().hex)
        self.refs[ref] = job

    def wait(self, timeout: float) -> list[tuple[CellJob, Outcome]]:
        ready, waiting = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)  # back as soon as one ends
        if ready and waiting:
            ready += self.ray.wait(waiting, num_returns=len(waiting), timeout=0)[0]
        done = []
        for ref in ready:
            job = self.refs.pop(ref)
            try:
                outcome = self.ray.get(ref)
            except Exception as exc:  # the task died more often than max_retries, or Ray itself failed  # noqa: BLE001
                outcome = Outcome(job.cell.id, FAILED, reason=f"its Ray task was lost: {one_line(exc)}")
            done.append((job, outcome))
        return done

    def pending(self) -> int:
        return len(self.refs)

    def stop(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref)  # a KeyboardInterrupt in the task: the run writes a checkpoint and is recorded interrupted

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _check_local_gpus(wanted: float) -> None:
    import torch

    have = torch.cuda.device_count()
    if wanted > have:
        raise UsageError(f"the cells need {wanted:g} GPUs per run; this machine has {have} (lower --gpus, or install Ray and give --address)")


def absolute_db(db: str) -> str:
    """``db`` for a task: a SQLite file's path made absolute (a Ray worker's directory is not the driver's: a relative
    path would record the runs in another, new database); a server's URL as it is."""
    if "://" not in db:
        return str(Path(db).expanduser().absolute())
    if db.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        url = make_url(db)
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            return url.set(database=str(Path(url.database).expanduser().absolute())).render_as_string(hide_password=False)
    return db


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a scheduler, a closed terminal) stop the driver as Ctrl-C does: a KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_sweep(
    spec: Spec,
    store: Store | None,
    db: str,
    *,
    catalog: Catalog,
    versions: dict[str, str | None],
    plugins: list[str] | None,
    save_dir: Path,
    data_dir: Path | None,
    address: str | None = None,
    retries: int = 2,
    retry_failed: bool = False,
    dry_run: bool = False,
    use_ray: bool | None = None,
    echo: Callable[[str], None] = print,
) -> Summary:
    """Validate, show the plan and run the cells still to run; the :class:`Summary` says how each ended.

    ``store`` is ``None`` only for a dry run on a database not created yet.
    """
    start = time.perf_counter()
    plans = validate(spec, catalog, versions)
    logs = (save_dir / "sweeps" / spec.name).absolute()
    # The survey and the run under the sweep's lock (never a dry run): a second driver is refused before it looks.
    with _one_driver(logs, spec) if not dry_run and store is not None else contextlib.nullcontext():
        return _sweep(spec, store, db, plans, logs, catalog=catalog, versions=versions, plugins=plugins, save_dir=save_dir,
                      data_dir=data_dir, address=address, retries=retries, retry_failed=retry_failed, dry_run=dry_run,
                      use_ray=use_ray, echo=echo, start=start)


@contextmanager
def _one_driver(logs: Path, spec: Spec) -> Iterator[None]:
    """Hold the sweep's lock (``LOGS/.driver``) while it runs: a second driver of the same sweep (same name, same
    --save-dir) is a UsageError. Two at once would both start the cells neither sees started yet: two runs of one
    seed (and Ray task ids repeat from one local instance to the next). The lock goes with the process, however it
    ends (SIGKILL included)."""
    import fcntl
    import platform

    path = logs / ".driver"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115  # held until the sweep ends
    except OSError as exc:
        raise UsageError(f"cannot write the sweep's logs under {logs}: {exc.strerror or exc} (give another --save-dir)") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UsageError(f"sweep {spec.name} is already running ({holder}; lock {path}): wait for it, or stop it and "
                             "run this again (harness sweep --status shows its cells)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _sweep(
    spec: Spec, store: Store | None, db: str, plans: dict[str, Plan], logs: Path, *, catalog: Catalog,
    versions: dict[str, str | None], plugins: list[str] | None, save_dir: Path, data_dir: Path | None, address: str | None,
    retries: int, retry_failed: bool, dry_run: bool, use_ray: bool | None, echo: Callable[[str], None], start: float,
) -> Summary:
    states = survey(spec.cells, store, retries=retries, retry_failed=retry_failed)
    summary = Summary(states)
    for line in plan_lines(spec, states, plans, store.name if store is not None else database_name(db)):
        echo(line)
    for state in states:
        if dry_run or state.action in (Action.GAVE_UP, Action.RUNNING):
            run = f"run {state.run.id}" if state.run is not None else "no run yet"
            hint = "; --retry-failed tries it again" if state.action == Action.GAVE_UP else ""
            echo(cell_line(state.cell.label, f"{state.action.value} ({run})" + (f": {state.reason}" if state.reason else "") + hint))
    todo = [s for s in states if s.action in TO_RUN]
    if dry_run:
        echo(f"dry run: {len(todo)} cells would run; their logs would go to {logs}")
        return summary
    if store is None:
        raise UsageError(f"no database {database_name(db)} to run sweep {spec.name} into")  # only a dry run may go without one
    if not todo:
        echo(f"nothing to do: every cell of sweep {spec.name} is finished" if all(s.action == Action.FINISHED for s in states)
             else f"nothing to do: no cell of sweep {spec.name} is left to run (harness sweep --status shows them)")
        return summary
    if use_ray is None:
        use_ray = ray_available()
        if not use_ray:
            if address:
                raise UsageError(f"--address {address} needs Ray, which is not installed: {INSTALL_RAY}")
            echo(f"Ray is not installed: running the {len(todo)} cells one after another in this process "
                 f"({INSTALL_RAY} runs them in parallel, or on a cluster with --address)")
    needs = max((s.cell.resources for s in todo), key=lambda r: (r.gpus, r.cpus))
    if not use_ray and needs.gpus > 0:
        _check_local_gpus(needs.gpus)
    executor: Executor = OnRay(address, retries, echo) if use_ray else InProcess(catalog, versions)
    if isinstance(executor, OnRay):
        summary.ray_start_seconds = executor.start_seconds
        try:
            executor.check_fits([s.cell for s in todo])
        except UsageError:
            executor.close()
            raise
    echo(f"logs: {logs}/CELL.log (one per cell)")
    cells = {s.cell.id: s.cell for s in states}
    seen: dict[str, tuple[int, str, int] | None] = {}
    tries: dict[str, int] = {}
    task_db = absolute_db(db)

    def submit(cell: Cell, retry: bool, what: str) -> None:
        job = CellJob(cell=cell, sweep=spec.name, db=task_db, save_dir=save_dir.absolute(), log=logs / f"{cell.id}.log",
                      data_dir=data_dir.absolute() if data_dir is not None else None, retry=retry, plugins=plugins)
        executor.submit(job)
        echo(cell_line(cell.label, what))

    for state in todo:
        seen[state.cell.id] = _signature(state.run)
        run = f" run {state.run.id}" if state.run is not None else ""
        what = {Action.NEW: "queued", Action.RESUME: f"queued to resume{run} ({state.reason})",
                Action.RETRY: f"queued to retry{run} ({state.reason})"}[state.action]
        submit(state.cell, state.action == Action.RETRY, what)
        tries[state.cell.id] = int(state.action == Action.RETRY)
    stopping = False
    try:
        with _stopped_by_signals():
            _loop(executor, store, cells, seen, summary, echo, retries, use_ray, submit, tries)
    except _Stopped:
        stopping = True
    except KeyboardInterrupt:
        stopping = True
        echo(f"interrupted: stopping {executor.pending()} running cells (each writes a checkpoint; rerun the sweep to resume them)")
        executor.stop()
        deadline = time.monotonic() + STOP_WAIT_S
        try:
            while executor.pending() and time.monotonic() < deadline:
                for job, outcome in executor.wait(POLL_S):
                    summary.outcomes[outcome.cell] = outcome
                    echo(cell_line(job.cell.label, outcome_text(outcome)))
        finally:
            executor.close()
        raise KeyboardInterrupt(f"sweep {spec.name} interrupted; rerun it to resume its cells") from None
    executor.close()
    summary.seconds = time.perf_counter() - start
    echo(summary_line(spec, summary))
    if stopping:
        raise KeyboardInterrupt(f"sweep {spec.name} interrupted; rerun it to resume its cells")
    return summary


class _Stopped(Exception):
    """A cell run in this process was interrupted: the sweep stops after it."""


def _loop(
    executor: Executor, store: Store, cells: dict[str, Cell], seen: dict[str, Any], summary: Summary, echo: Callable[[str], None],
    retries: int, use_ray: bool, submit: Callable[[Cell, bool, str], None], tries: dict[str, int],
) -> None:
    """Wait for the tasks, report each change, retry what may be retried (``tries``: this driver's, by cell), until none is left."""
    stopped = False
    while executor.pending():
        done = executor.wait(POLL_S)
        _report_changes(store, cells, seen, {j.cell.id for j in getattr(executor, "refs", {}).values()}, echo)
        for job, outcome in done:
            summary.outcomes[outcome.cell] = outcome
            echo(cell_line(job.cell.label, outcome_text(outcome)))
            again = _retry(store, outcome, retries, use_ray, stopped, tries.get(outcome.cell, 0))
            if again is not None:
                tries[outcome.cell] = tries.get(outcome.cell, 0) + 1
                submit(job.cell, True, again)
            elif outcome.status == INTERRUPTED and not use_ray:
                stopped = True  # Ctrl-C (or a stop signal) reached this process during the cell: the sweep stops here
                executor.stop()
    if stopped:
        raise _Stopped


def summary_line(spec: Spec, summary: Summary) -> str:
    already = sum(s.action == Action.FINISHED for s in summary.states if s.cell.id not in summary.outcomes)
    now = summary.count(FINISHED)
    parts = [f"{already + now} finished ({now} now)", f"{summary.count(FAILED) + sum(s.action == Action.GAVE_UP for s in summary.states)} failed"]
    for status, name in ((INTERRUPTED, "interrupted"), (SKIPPED, "running elsewhere")):
        if summary.count(status):
            parts.append(f"{summary.count(status)} {name}")
    return f"sweep {spec.name}: {len(summary.states)} cells: " + ", ".join(parts) + f"; {summary.seconds:.0f} s"


def _signature(run: Any) -> tuple[int, str, int] | None:
    return None if run is None else (run.id, run.status, run.resumes)


def _report_changes(store: Store, cells: dict[str, Cell], seen: dict[str, Any], running: set[str], echo: Callable[[str], None]) -> None:
    """One line for each in-flight cell whose run appeared or was resumed since the last look."""
    if not running:
        return
    try:
        runs = runs_by_key(store.list_runs(status="running"))  # only running runs make these lines
    except HarnessError:
        return  # the store is busy: the next look will see it
    for cell_id in running:
        run = runs.get(cells[cell_id].key)
        signature = _signature(run)
        if run is None or signature == seen.get(cell_id):
            continue
        before = seen.get(cell_id)
        seen[cell_id] = signature
        if run.status != "running":
            continue
        env = run.info.environment if isinstance(run.info.environment, dict) else {}
        where = f"pid {env.get('pid')} on {env.get('host')}"
        if before is None or before[0] != run.id:
            echo(cell_line(cells[cell_id].label, f"running: run {run.id} ({where})"))
        elif run.resumes > before[2]:
            echo(cell_line(cells[cell_id].label, f"resumed: run {run.id}, resume {run.resumes} ({where})"))


def _retry(store: Store, outcome: Outcome, retries: int, use_ray: bool, stopping: bool, tried: int = 0) -> str | None:
    """What to say when the cell is tried again; None when it is not.

    The retries are counted by the run's ``resumes`` and by ``tried``, this driver's retries of the cell: a retry
    that fails before its run is resumed (an unreadable checkpoint, its data gone) counts no resume.
    """
    if stopping or outcome.run_id is None or not outcome.retryable or outcome.status not in (FAILED, INTERRUPTED):
        return None
    if outcome.status == INTERRUPTED and not use_ray:
        return None
    try:
        run = store.get_run(outcome.run_id)
    except HarnessError:
        return None
    done = max(run.resumes, tried)
    if run.status == "finished" or done >= retries:
        return None
    return f"retrying: run {run.id}, retry {done + 1} of {retries}"
