#!/usr/bin/env python
"""What a sweep on Ray costs per cell, against running the same cells one by one with ``harness run``.

The same N tiny cells (linf_v1 on MNIST, the quick preset at 1 epoch, seeds 0..N-1, 256 training and 50
test samples) are run

1. one by one, each as its own ``harness run`` **subprocess** (what a shell loop does: every run pays
   Python, torch and plugin start-up), into one SQLite file;
2. as ``harness sweep`` on a local Ray instance, **in this process** (the driver's own API, so Ray's start
   is timed apart), first with each task reserving every CPU (one cell at a time: like for like with 1),
   then with one CPU per task (cells in parallel), each into a fresh SQLite file.

Printed: Ray's start time; per cell, the time inside the task (store, planning, data, training,
evaluation, recording), and the dispatch overhead = (sweep wall time - Ray start - the cells' in-task
times) / N for the one-at-a-time sweep (task submission, worker start and imports, result return, the
driver's polling); and the totals side by side. Nothing is asserted; numbers depend on the machine.

Usage: scripts/bench_sweep_overhead.py [--cells 4] [--data-dir ../shared/data]
(run it on a quiet machine: it uses every core).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CELL = ["--dataset", "mnist", "--preset", "quick", "--epochs", "1", "--train-samples", "256", "--eval-samples", "50",
        "--set", "attacker.pgd.steps=5", "--device", "cpu"]


def one_by_one(n: int, work: Path, data_dir: Path) -> tuple[float, list[float], list[float]]:
    """Total wall time, each subprocess's wall time, each run's recorded train + eval time."""
    from harness.store import open_store

    exe = str(Path(sys.executable).parent / "harness")
    walls = []
    start = time.perf_counter()
    for seed in range(n):
        t = time.perf_counter()
        done = subprocess.run([exe, "run", "--plugin", "linf_v1", *CELL, "--seed", str(seed), "--data-dir", str(data_dir),
                               "--db", str(work / "one.db"), "--save-dir", str(work / "one-runs")],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"harness run failed: {done.stderr[-2000:]}")
        walls.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    store = open_store(str(work / "one.db"), readonly=True)
    inner = [(r.train_seconds or 0.0) + (r.eval_seconds or 0.0) for r in store.list_runs()]
    store.close()
    return total, walls, inner


def swept(n: int, work: Path, data_dir: Path, cpus: float, tag: str) -> tuple[float, float, list[float]]:
    """Total wall time (Ray start included), Ray's start time, each cell's in-task time."""
    import ray

    from harness.catalog import Catalog
    from harness.plugins import load_plugins
    from harness.store import open_store
    from harness.sweep.driver import run_sweep
    from harness.sweep.spec import quick_spec

    plugins = load_plugins()
    catalog = Catalog.build(plugins)
    spec = quick_spec(plugins="linf_v1", datasets="mnist", eps=None, norm=None, presets="quick", seeds=str(n),
                      overrides=["attacker.pgd.steps=5"], attacks=(), certifiers=(), gpus=0.0, cpus=cpus, name=f"bench-{tag}",
                      epochs=1, train_samples=256, eval_samples=50)
    db = str(work / f"{tag}.db")
    store = open_store(db)
    lines: list[str] = []
    start = time.perf_counter()
    try:
        summary = run_sweep(spec, store, db, catalog=catalog, versions=plugins.versions(), plugins=plugins.names(),
                            save_dir=work / f"{tag}-runs", data_dir=data_dir, use_ray=True, echo=lines.append)
    finally:
        store.close()
        if ray.is_initialized():
            ray.shutdown()
    total = time.perf_counter() - start
    if summary.count("finished") != n:
        sys.exit("the sweep did not finish every cell:\n" + "\n".join(lines))
    return total, summary.ray_start_seconds or 0.0, [o.seconds for o in summary.outcomes.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HARNESS_DATA", REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    n = args.cells
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        total_1, walls, inner_1 = one_by_one(n, work, args.data_dir)
        total_s, ray_start_s, tasks_s = swept(n, work, args.data_dir, float(cores), "serial")
        total_p, ray_start_p, tasks_p = swept(n, work, args.data_dir, 1.0, "parallel")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dispatch = (total_s - ray_start_s - sum(tasks_s)) / n
    mean = statistics.mean
    print(f"{n} cells: linf_v1 mnist quick, 1 epoch, 256 train / 50 test samples; {cores} cores")
    print(f"{'':38}{'total':>9}{'per cell':>10}")
    print(f"{'harness run, one subprocess per cell':38}{total_1:8.1f}s{mean(walls):9.1f}s   "
          f"(train+eval inside: {mean(inner_1):.1f} s; start-up and recording: {mean(walls) - mean(inner_1):.1f} s)")
    print(f"{'sweep on Ray, one cell at a time':38}{total_s:8.1f}s{(total_s - ray_start_s) / n:9.1f}s   "
          f"(Ray start {ray_start_s:.1f} s; in-task {mean(tasks_s):.1f} s; dispatch overhead {dispatch:.2f} s per cell)")
    print(f"{'sweep on Ray, 1 CPU per cell':38}{total_p:8.1f}s{(total_p - ray_start_p) / n:9.1f}s   "
          f"(Ray start {ray_start_p:.1f} s; in-task {mean(tasks_p):.1f} s, cells in parallel)")


if __name__ == "__main__":
    main()
