"""How fast the store records runs when many processes write at once, on SQLite and on PostgreSQL.

Each process opens the store (all start together on a new database, as a sweep's runs do), then ``--rounds``
times creates a run, records a heartbeat with a checkpoint, its training, ``--heartbeats`` more heartbeats, and
an evaluation with ``--samples`` per-sample rows (two attacks and two certifiers: five rows a sample). Printed per
backend: processes, wall time, runs/s and rows/s over the whole load, and the latency (median, 95th
percentile, max) of each kind of write, as each process measured it. Then it checks that no run and no row
was lost; any error a process met is printed and makes the exit status 1.

Usage::

    .venv/bin/python scripts/bench_store_concurrency.py                    # 8 processes on SQLite, 32 on PostgreSQL
    .venv/bin/python scripts/bench_store_concurrency.py --sqlite 4 --postgresql 16 --rounds 10 --samples 1000
    .venv/bin/python scripts/bench_store_concurrency.py --postgresql-url postgresql://user:pass@host/db   # a database it may fill

PostgreSQL is a throwaway server (:mod:`harness.testing_postgres`) unless ``--postgresql-url`` names one; the
throwaway server keeps ``fsync`` on (``--no-fsync``: off), so commits cost what they cost on a real server.
SQLite is a file in a temporary directory (write-ahead log, ``synchronous=FULL``, the store's settings).
``--sqlite 0`` or ``--postgresql 0`` skips that backend. Processes are forked (spawned where fork is missing).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.results import AttackResult, CertifierResult, EvaluationResult, SampleResult
from harness.store import FINISHED, RunInfo, open_store

OPERATIONS = ("open", "create_run", "heartbeat", "record_training", "record_evaluation")


def make_samples(n: int) -> list[SampleResult]:
    return [SampleResult(i, i % 10, (i * 3) % 10, {"pgd": i % 2 == 0, "fgsm": i % 3 == 0},
                         {"interval": (i % 4 == 0, None), "lip": (i % 5 == 0, 0.01 * i)}) for i in range(n)]


def make_result(n: int) -> EvaluationResult:
    return EvaluationResult(
        samples=n, clean_accuracy=0.5, robust_accuracy=0.25, certified_accuracy=0.2,
        attacks=(AttackResult("fgsm", "FGSM", accuracy=0.3, attacked=n), AttackResult("pgd", "PGD", accuracy=0.25, attacked=n)),
        certifiers=(CertifierResult("interval", accuracy=0.2, samples=n), CertifierResult("lip", accuracy=0.2, samples=n)),
    )


def worker(url: str, index: int, args: argparse.Namespace, barrier: Any, queue: Any) -> None:
    """One process's load; puts (index, {operation: [seconds, ...]}, run ids, error or None) on ``queue``."""
    times: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    ids: list[int] = []

    def timed(op: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        value = call(*args, **kwargs)
        times[op].append(time.perf_counter() - start)
        return value

    samples, result = make_samples(args.samples), make_result(args.samples)
    try:
        barrier.wait()
        store = timed("open", open_store, url)
        try:
            for k in range(args.rounds):
                info = RunInfo("linf_v2", "mnist", "inf", 0.3, "quick", index * 1000 + k, 1, {"worker": index, "round": k}, "cpu", {})
                run_id = timed("create_run", store.create_run, info)
                timed("heartbeat", store.heartbeat, run_id, checkpoint={"epoch": 1, "step": 10})
                timed("record_training", store.record_training, run_id, train_seconds=1.0, weights=None, training={}, config={})
                for _ in range(args.heartbeats):
                    timed("heartbeat", store.heartbeat, run_id)
                timed("record_evaluation", store.record_evaluation, run_id, result=result, samples=samples, config={}, environment={},
                      seconds=1.0, finish=True)
                ids.append(run_id)
        finally:
            store.close()
        queue.put((index, times, ids, None))
    except Exception as exc:  # noqa: BLE001 (any failure is the benchmark's finding: reported by the parent)
        queue.put((index, times, ids, f"{type(exc).__name__}: {exc}"))


def bench(name: str, url: str, processes: int, args: argparse.Namespace) -> bool:
    """Run the load on ``url`` with ``processes`` processes, print its numbers; True if nothing was lost and nothing failed."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier, queue = context.Barrier(processes + 1), context.Queue()
    children = [context.Process(target=worker, args=(url, i, args, barrier, queue)) for i in range(processes)]
    for child in children:
        child.start()
    barrier.wait()
    start = time.perf_counter()
    reports = [queue.get(timeout=args.timeout) for _ in children]
    wall = time.perf_counter() - start
    for child in children:
        child.join(timeout=60)
    errors = [f"process {i}: {error}" for i, _, _, error in reports if error]
    runs = sum(len(ids) for _, _, ids, _ in reports)
    rows = runs * (args.samples * 5 + 1 + 4 + 1)  # per sample: 1 + 2 attacks + 2 certificates; evaluation, 4 results, summary
    print(f"\n{name}: {processes} processes x {args.rounds} runs, {args.samples} samples each: {wall:.2f} s, "
          f"{runs / wall:.1f} runs/s, {rows / wall:,.0f} rows/s")
    print(f"  {'write':<18} {'count':>6} {'median ms':>10} {'p95 ms':>9} {'max ms':>9}")
    for op in OPERATIONS:
        values = sorted(t for _, times, _, _ in reports for t in times[op])
        if values:
            p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
            print(f"  {op:<18} {len(values):>6} {statistics.median(values) * 1e3:>10.1f} {p95 * 1e3:>9.1f} {values[-1] * 1e3:>9.1f}")
    lost = check(url, processes * args.rounds, args.samples) if not errors else None
    for error in errors:
        print(f"  ERROR {error}")
    if lost:
        print(f"  LOST {lost}")
    else:
        print("  no run or row lost" if not errors else "")
    return not errors and not lost


def check(url: str, runs: int, samples: int) -> str:
    """What is missing from the database after the load ('' if nothing)."""
    from sqlalchemy import create_engine, text

    store = open_store(url, readonly=True)
    try:
        finished = [r for r in store.list_runs() if r.status == FINISHED]
    finally:
        store.close()
    engine = create_engine(url if "://" in url else f"sqlite:///{url}")
    try:
        with engine.connect() as conn:
            stored = conn.scalar(text("SELECT count(*) FROM samples"))
    finally:
        engine.dispose()
    problems = []
    if len(finished) != runs:
        problems.append(f"{len(finished)} finished runs of {runs}")
    if stored != runs * samples:
        problems.append(f"{stored} sample rows of {runs * samples}")
    return "; ".join(problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite", type=int, default=8, metavar="N", help="processes writing to SQLite (default 8; 0: skip)")
    parser.add_argument("--postgresql", type=int, default=32, metavar="N", help="processes writing to PostgreSQL (default 32; 0: skip)")
    parser.add_argument("--rounds", type=int, default=5, help="runs each process records (default 5)")
    parser.add_argument("--samples", type=int, default=500, help="per-sample results of each evaluation (default 500)")
    parser.add_argument("--heartbeats", type=int, default=5, help="heartbeats of each run besides the checkpoint's (default 5)")
    parser.add_argument("--postgresql-url", help="a PostgreSQL database to fill (default: a throwaway server)")
    parser.add_argument("--no-fsync", action="store_true", help="the throwaway server without fsync (faster, not durable)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for a process (default 600)")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as directory:
        if args.sqlite:
            ok &= bench("SQLite", str(Path(directory) / "results.db"), args.sqlite, args)
    if args.postgresql:
        from harness.testing_postgres import PostgresServer, fresh_database

        if args.postgresql_url:
            ok &= bench("PostgreSQL", args.postgresql_url, args.postgresql, args)
        else:
            with PostgresServer(durable=not args.no_fsync) as server:
                label = "PostgreSQL (throwaway server, fsync " + ("off)" if args.no_fsync else "on)")
                ok &= bench(label, fresh_database(server.url()), args.postgresql, args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
