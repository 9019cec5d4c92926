"""Many processes recording runs into one database at once lose no row and meet no lock error.

8 processes on SQLite (one writer at a time, each waiting its turn on the busy timeout), 32 on PostgreSQL
(row locks), all starting together on a database that does not exist yet (SQLite) or is empty (PostgreSQL),
as a sweep's runs do: each opens it (the first creates the schema), then several times creates a run,
records heartbeats and a checkpoint, its training, and an evaluation with its per-sample rows.
``scripts/bench_store_concurrency.py`` measures the same load.
"""

from __future__ import annotations

import multiprocessing

import pytest

from harness.results import AttackResult, CertifierResult, EvaluationResult
from harness.store import FINISHED, RunInfo, SampleResult, open_store

ROUNDS = 3
SAMPLES = 100
PROCESSES = {"sqlite": 8, "postgresql": 32}


def samples() -> list[SampleResult]:
    return [SampleResult(i, i % 10, (i * 3) % 10, {"pgd": i % 2 == 0, "fgsm": i % 3 == 0},
                         {"interval": (i % 4 == 0, None), "lip": (i % 5 == 0, 0.01 * i)}) for i in range(SAMPLES)]


RESULT = EvaluationResult(
    samples=SAMPLES, clean_accuracy=0.5, robust_accuracy=0.25, certified_accuracy=0.2,
    attacks=(AttackResult("fgsm", "FGSM", accuracy=0.3, attacked=SAMPLES), AttackResult("pgd", "PGD", accuracy=0.25, attacked=SAMPLES)),
    certifiers=(CertifierResult("interval", accuracy=0.2, samples=SAMPLES), CertifierResult("lip", accuracy=0.2, samples=SAMPLES)),
)


def record_runs(url: str, worker: int, barrier, queue) -> None:
    """One process: open the store when all are ready, then record ROUNDS runs; put ("ok", ids) or ("error", what)."""
    try:
        barrier.wait()
        store = open_store(url)
        try:
            ids = []
            for k in range(ROUNDS):
                info = RunInfo("linf_v2", "mnist", "inf", 0.3, "quick", worker * 100 + k, 1, {"worker": worker, "round": k}, "cpu", {"pid": worker})
                run_id = store.create_run(info)
                store.heartbeat(run_id, checkpoint={"epoch": 1, "step": 10, "worker": worker})
                store.record_training(run_id, train_seconds=1.0, weights=None, training={"epochs": [{"loss": 0.5}]}, config=info.config)
                store.heartbeat(run_id)
                store.record_evaluation(run_id, result=RESULT, samples=samples(), config={}, environment={}, seconds=1.0, finish=True)
                ids.append(run_id)
            queue.put(("ok", worker, ids))
        finally:
            store.close()
    except BaseException as exc:  # reported to the test, which fails naming it
        queue.put(("error", worker, f"{type(exc).__name__}: {exc}"))


def test_concurrent_writers_lose_no_row_and_meet_no_lock_error(db, backend):
    n = PROCESSES[backend]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier, queue = context.Barrier(n), context.Queue()
    processes = [context.Process(target=record_runs, args=(db, w, barrier, queue)) for w in range(n)]
    for p in processes:
        p.start()
    reports = [queue.get(timeout=300) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    errors = [f"worker {w}: {what}" for kind, w, what in reports if kind == "error"]
    assert errors == []
    ids = sorted(i for _, _, found in reports for i in found)
    assert ids == list(range(1, n * ROUNDS + 1))  # every run recorded once, no id lost or given twice
    store = open_store(db, readonly=True)
    try:
        runs = store.list_runs()
        assert store.warnings == []
        assert sorted(r.id for r in runs) == ids
        assert {(r.info.config["worker"], r.info.config["round"]) for r in runs} == {(w, k) for w in range(n) for k in range(ROUNDS)}
        for record in runs:
            assert record.status == FINISHED and len(record.evaluations) == 1 and record.result == RESULT
            assert record.checkpoint == {"epoch": 1, "step": 10, "worker": record.info.config["worker"]}
        assert store.samples(runs[0].id) == samples() == store.samples(runs[-1].id)
    finally:
        store.close()
    from sqlalchemy import create_engine, text

    engine = create_engine(db if "://" in db else f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            counts = {t: conn.scalar(text(f"SELECT count(*) FROM {t}")) for t in ("samples", "sample_attacks", "sample_certificates")}
    finally:
        engine.dispose()
    total = n * ROUNDS * SAMPLES
    assert counts == {"samples": total, "sample_attacks": 2 * total, "sample_certificates": 2 * total}


pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
