"""The SQLAlchemy store: the Store contract, the schema version, and the errors a user can meet."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from harness.errors import HarnessError, UsageError
from harness.results import AttackResult, CertifierResult, Cost, EvaluationResult, GradientMasking, RadiusStats
from harness.store import (
    EXTERNAL,
    FAILED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    TRAINED,
    RunInfo,
    SampleResult,
    WeightsFile,
    open_store,
)
from harness.store._sql import SqlStore

EPS = 8 / 255


def make_info(**overrides) -> RunInfo:
    info = RunInfo(
        trainer="linf_v2",
        dataset="mnist",
        norm="inf",
        eps=EPS,
        preset="quick",
        seed=1234,
        epochs=3,
        config={"trainer": {"lr": 0.001, "schedule": [1, 2]}, "model": {"width": 128}, "preset": "quick"},
        device="cpu",
        environment={"torch": "2.13.0", "python": "3.11.7", "plugins": {"linf_v2": "0.1"}},
    )
    return replace(info, **overrides)


def make_samples(n: int, attacks=("fgsm", "pgd"), certifiers=("crown", "ibp", "lip")) -> list[SampleResult]:
    return [
        SampleResult(
            index=i,
            label=i % 10,
            prediction=(i * 7) % 10,
            attacks={a: (i + k) % 3 != 0 for k, a in enumerate(attacks)},
            certificates={c: ((i + k) % 2 == 0, None if k == 1 else 0.001 * i + k / 3) for k, c in enumerate(certifiers)},
            outcomes={c: "certified" if (i + k) % 2 == 0 else "not-certified" for k, c in enumerate(certifiers)},
        )
        for i in range(n)
    ]


def make_result(clean: float = 0.99, certified: float | None = 0.9, samples: int = 5) -> EvaluationResult:
    return EvaluationResult(
        samples=samples,
        clean_accuracy=clean,
        robust_accuracy=None if certified is None else min(1.0, certified + 0.01),
        certified_accuracy=certified,
        attacks=(
            AttackResult("pgd", label="PGD-100", options={"steps": 100}, accuracy=0.95, attacked=4, seconds=1.5),
            AttackResult("fgsm", label="FGSM", accuracy=None, attacked=4, seconds=0.25, error="raised ValueError: boom"),
        ),
        certifiers=(
            CertifierResult("crown", options={"max_samples": 0}, accuracy=certified, samples=samples, seconds=2.0),
            CertifierResult("lip", accuracy=0.5, samples=2, radius=RadiusStats(mean=0.125, median=0.0625), seconds=0.5),
        ),
        not_applicable={"interval": "Linear does not implement interval_bounds()"},
    )


EVAL_CONFIG = {"attackers": [{"name": "pgd", "label": "PGD-100"}], "certifiers": [{"name": "crown"}], "samples": 5}
EVAL_ENV = {"harness": "0.1.0", "torch": "2.13.0", "host": "box", "device": "cpu"}


def evaluate(store: SqlStore, run_id: int, result: EvaluationResult | None = None, samples: list[SampleResult] | None = None,
             finish: bool = False, run_config=None, seconds: float = 3.25) -> int:
    return store.record_evaluation(
        run_id,
        result=make_result() if result is None else result,
        samples=make_samples(5) if samples is None else samples,
        config=EVAL_CONFIG,
        environment=EVAL_ENV,
        seconds=seconds,
        run_config=run_config,
        finish=finish,
    )


def finish(store: SqlStore, run_id: int, samples: list[SampleResult] | None = None, clean: float = 0.99, config=None) -> int:
    store.record_training(run_id, train_seconds=12.5, weights=None, training={"epochs": [{"epoch": 1, "loss": 0.5}]}, config={"trained": True})
    return evaluate(store, run_id, make_result(clean=clean), samples, finish=True, run_config=config if config is not None else {"final": True})


def rows(db: str, table: str) -> int:
    """How many rows ``table`` holds, read apart from the store; ``db`` is a path or a URL."""
    engine = create_engine(db if "://" in db else f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return int(conn.scalar(text(f"SELECT count(*) FROM {table}")))
    finally:
        engine.dispose()


@pytest.fixture
def store(db):
    s = SqlStore.open(db)
    yield s
    s.close()


def test_open_store_gives_a_sql_store_and_creates_the_schema(db):
    store = open_store(db)
    try:
        assert isinstance(store, SqlStore)
        assert rows(db, "runs") == 0
    finally:
        store.close()


def test_open_store_creates_the_sqlite_file(tmp_path):  # SQLite only: a file
    store = open_store(str(tmp_path / "runs.db"))
    store.close()
    assert (tmp_path / "runs.db").is_file()


def test_a_new_run_is_running_and_its_info_round_trips(store):
    info = make_info(preset=None, epochs=None)
    run_id = store.create_run(info)
    record = store.get_run(run_id)
    assert record.id == run_id
    assert record.info == info and record.info.origin == TRAINED
    assert record.status == RUNNING
    assert record.created_at.tzinfo == UTC and record.heartbeat_at >= record.created_at
    assert (record.finished_at, record.train_seconds, record.eval_seconds, record.error) == (None, None, None, None)
    assert (record.checkpoint, record.weights, record.training, record.resumes) == (None, None, {}, 0)
    assert record.result is None and record.best is None and record.evaluations == []
    assert store.samples(run_id) == []


def test_record_evaluation_finishes_the_run_with_the_exact_result_config_and_samples(store):
    run_id = store.create_run(make_info())
    weights = WeightsFile(path="/runs/run-1/model.pt", sha256="ab" * 32, bytes=123_456)
    training = {"epochs": [{"epoch": 1, "loss": 1.5, "acc": 0.25}, {"epoch": 2, "loss": 0.75, "acc": 0.5}]}
    store.record_training(run_id, train_seconds=61.125, weights=weights, training=training, config={"trained": 1})
    trained = store.get_run(run_id)
    assert (trained.status, trained.train_seconds, trained.weights, trained.training) == (RUNNING, 61.125, weights, training)
    assert trained.info.config == {"trained": 1}
    samples = make_samples(20)
    result = make_result(clean=0.9875, certified=1 / 3, samples=20)
    final = {"evaluation": {"certifiers": [{"name": "crown"}], "not_applicable": {"interval": "why"}}}
    evaluation_id = store.record_evaluation(run_id, result=result, samples=samples, config=EVAL_CONFIG, environment=EVAL_ENV,
                                            seconds=0.1, run_config=final, finish=True)
    record = store.get_run(run_id)
    assert record.status == FINISHED
    # Typed, exact, in name order: every attack and certifier, the failed one with its error, and the reasons.
    expected = replace(result, attacks=tuple(sorted(result.attacks, key=lambda a: a.name)))
    assert record.result == expected
    assert record.result.errors == ["attack 'fgsm': raised ValueError: boom"]
    assert record.info.config == final
    (evaluation,) = record.evaluations
    assert record.best == evaluation and evaluation.id == evaluation_id and evaluation.run_id == run_id
    assert (evaluation.config, evaluation.environment, evaluation.seconds) == (EVAL_CONFIG, EVAL_ENV, 0.1)
    assert (record.train_seconds, record.eval_seconds, record.error, record.weights) == (61.125, 0.1, None, weights)
    assert record.finished_at.tzinfo == UTC and evaluation.created_at.tzinfo == UTC
    assert record.finished_at >= record.created_at
    assert store.samples(run_id) == samples == store.samples(run_id, evaluation_id)
    # both kinds of radius come back as they went in
    assert store.samples(run_id)[3].certificates == {"crown": (False, 0.003), "ibp": (True, None), "lip": (False, 0.003 + 2 / 3)}


def test_revision_3_fields_round_trip_costs_outcomes_stages_and_the_masking_check(store):
    run_id = store.create_run(make_info())
    result = EvaluationResult(
        samples=4,
        clean_accuracy=0.75,
        robust_accuracy=0.25,
        certified_accuracy=0.25,
        attacks=(
            AttackResult("autoattack", label="AutoAttack", accuracy=0.25, attacked=3, seconds=8.0,
                         cost=Cost(seconds=8.0, samples_per_second=0.375, peak_memory_bytes=3 * 2**30, memory_kind="cuda-allocated"),
                         stages={"apgd-ce": 0.5, "apgd-t": 0.5, "fab-t": 0.5, "square": 0.25}),
            AttackResult("square", label="Square", accuracy=0.5, attacked=3, gradient_free=True),
        ),
        certifiers=(
            CertifierResult("ibp", accuracy=0.25, samples=4, radius=RadiusStats(mean=0.125, median=0.0625), seconds=2.0,
                            cost=Cost(seconds=2.0, samples_per_second=2.0, peak_memory_bytes=123_456_789, memory_kind="rss"),
                            timeouts=1, errors=1, sample_error="raised RuntimeError: out of memory",
                            radius_method="bisection", radius_tolerance=0.001),
            CertifierResult("liplt-estimate", accuracy=0.5, samples=4, radius=RadiusStats(mean=0.5, median=0.5),
                            radius_method="closed-form", sound=False),
        ),
        masking=GradientMasking(zero_gradient_fraction=0.25, gradient_free_breaks=1, unreliable=True),
    )
    outcomes = ["certified", "not-certified", "timeout", "error"]
    samples = [
        SampleResult(index=i, label=1, prediction=1 if i < 3 else 2, attacks={"autoattack": i == 0, "square": i < 2},
                     certificates={"ibp": (i == 0, 0.25 if i == 0 else 0.0), "liplt-estimate": (i < 2, 0.5)},
                     outcomes={"ibp": outcomes[i], "liplt-estimate": "certified" if i < 2 else "not-certified"},
                     broken_by={} if i == 0 else {"autoattack": "square" if i == 1 else "apgd-ce"})
        for i in range(4)
    ]
    store.record_evaluation(run_id, result=result, samples=samples, config={"certifier_budget": {"ibp": 60.0}}, environment={},
                            seconds=10.0, finish=True)
    assert store.get_run(run_id).result == result
    assert store.samples(run_id) == samples


def test_an_outcome_that_contradicts_the_verdict_or_is_unknown_is_refused(store, db):
    run_id = store.create_run(make_info())
    for outcomes, message in (({"ibp": "timeout"}, "outcome 'timeout' but certified=True"),
                              ({"ibp": "maybe"}, "outcome 'maybe', not one of certified, not-certified, timeout, error")):
        sample = SampleResult(0, 1, 1, certificates={"ibp": (True, None)}, outcomes=outcomes)
        with pytest.raises(HarnessError, match=f"sample 0: certifier 'ibp' has {message}; nothing was stored"):
            store.record_evaluation(run_id, result=EvaluationResult(samples=1, clean_accuracy=1.0), samples=[sample], config={},
                                    environment={}, seconds=1.0, finish=True)
    bad_method = EvaluationResult(samples=1, clean_accuracy=1.0, certifiers=(CertifierResult("ibp", radius_method="guess"),))
    with pytest.raises(HarnessError, match="radius method 'guess' is not one of closed-form, bisection"):
        store.record_evaluation(run_id, result=bad_method, samples=[], config={}, environment={}, seconds=1.0, finish=True)
    assert store.get_run(run_id).status == RUNNING and rows(db, "sample_certificates") == 0
    # The database itself refuses a certificate whose columns disagree, whoever writes it.
    finish(store, run_id, samples=make_samples(1))
    engine = create_engine(db if "://" in db else f"sqlite:///{db}")
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("UPDATE sample_certificates SET outcome = 'error' WHERE certified = :yes"), {"yes": True})
    finally:
        engine.dispose()


def test_a_sample_without_an_outcome_gets_the_one_its_verdict_says(store):
    run_id = store.create_run(make_info())
    sample = SampleResult(0, 1, 1, certificates={"ibp": (True, None), "lip": (False, 0.0)})
    store.record_evaluation(run_id, result=EvaluationResult(samples=1, clean_accuracy=1.0), samples=[sample], config={}, environment={},
                            seconds=1.0, finish=True)
    (read,) = store.samples(run_id)
    assert read.outcomes == {"ibp": "certified", "lip": "not-certified"} and read.broken_by == {}


def test_a_finished_model_is_evaluated_again_and_the_most_complete_evaluation_is_best(store):
    run_id = store.create_run(make_info())
    first = finish(store, run_id, samples=make_samples(5))
    full = make_result()  # pgd ran, fgsm failed, crown and lip ran: 3 components without error
    # More samples but fewer components without error: not better.
    fewer = replace(full, samples=50, certifiers=full.certifiers[:1])
    second = evaluate(store, run_id, fewer, make_samples(50))
    assert store.get_run(run_id).best.id == first
    # As many components and more samples: better.
    third = evaluate(store, run_id, replace(full, samples=40), make_samples(40, certifiers=("crown", "lip")))
    record = store.get_run(run_id)
    assert [e.id for e in record.evaluations] == [first, second, third] and record.best.id == third
    assert record.result.samples == 40 and len(store.samples(run_id)) == 40
    assert len(store.samples(run_id, second)) == 50 and store.samples(run_id, first) == make_samples(5)
    # The same completeness and samples: the newest.
    fourth = evaluate(store, run_id, replace(full, samples=40), make_samples(40))
    assert store.get_run(run_id).best.id == fourth
    # The run itself is untouched by re-evaluations.
    assert (record.status, record.info.config, record.train_seconds) == (FINISHED, {"final": True}, 12.5)


def test_a_re_evaluation_needs_a_finished_run_and_run_config_needs_finish(store):
    run_id = store.create_run(make_info())
    with pytest.raises(HarnessError, match=f"run {run_id} .* is running, not finished: cannot record another evaluation"):
        evaluate(store, run_id)
    with pytest.raises(ValueError, match="finish=True"):
        evaluate(store, run_id, run_config={"x": 1})
    finish(store, run_id)
    with pytest.raises(HarnessError, match="is finished, not running"):
        evaluate(store, run_id, finish=True)
    assert len(store.get_run(run_id).evaluations) == 1


def test_samples_of_an_evaluation_of_another_run_are_refused(store, db):
    one, two = store.create_run(make_info()), store.create_run(make_info())
    first = finish(store, one)
    finish(store, two)
    with pytest.raises(UsageError) as exc:
        store.samples(two, first)
    assert str(exc.value) == f"run {two} in {db} has no evaluation {first} (its evaluations: {first + 1})"


def test_heartbeat_and_checkpoint(store):
    run_id = store.create_run(make_info())
    before = store.get_run(run_id).heartbeat_at
    checkpoint = {"epoch": 2, "step": 300, "path": "/runs/run-1/checkpoint.pt", "bytes": 4096, "saved_at": "2026-12-01T00:00:00+00:00"}
    store.heartbeat(run_id, checkpoint=checkpoint)
    record = store.get_run(run_id)
    assert record.heartbeat_at >= before and record.checkpoint == checkpoint
    store.heartbeat(run_id)
    assert store.get_run(run_id).checkpoint == checkpoint  # a plain heartbeat keeps the last checkpoint
    store.mark_ended(run_id, INTERRUPTED, "SIGTERM")
    with pytest.raises(HarnessError, match="is interrupted, not running: cannot record a heartbeat"):
        store.heartbeat(run_id)


def test_resume_sets_an_ended_run_running_again(store):
    for status in (INTERRUPTED, FAILED, RUNNING):
        run_id = store.create_run(make_info())
        store.heartbeat(run_id, checkpoint={"epoch": 1})
        if status != RUNNING:
            store.mark_ended(run_id, status, "boom", train_seconds=5.0)
        record = store.resume_run(run_id, {"host": "other", "pid": 42})
        assert (record.status, record.resumes, record.error, record.finished_at) == (RUNNING, 1, None, None)
        assert record.info.environment == {"host": "other", "pid": 42} and record.checkpoint == {"epoch": 1}
        assert store.resume_run(run_id, {"pid": 43}).resumes == 2
    finish(store, run_id)
    with pytest.raises(UsageError, match=f"run {run_id} .* is finished: there is nothing to resume"):
        store.resume_run(run_id, {})
    with pytest.raises(UsageError, match="no run with id 999"):
        store.resume_run(999, {})


def test_an_external_model_is_a_finished_run_without_training(store):
    weights = WeightsFile(path="/elsewhere/model.pt", sha256="cd" * 32, bytes=99)
    run_id = store.create_external_run(make_info(origin=EXTERNAL, preset=None, epochs=None), weights)
    record = store.get_run(run_id)
    assert (record.status, record.info.origin, record.weights, record.train_seconds, record.training) == (FINISHED, EXTERNAL, weights, None, {})
    assert record.best is None
    evaluation_id = evaluate(store, run_id)
    assert store.get_run(run_id).best.id == evaluation_id
    assert [r.id for r in store.list_runs(status=FINISHED)] == [run_id]


def test_an_unknown_origin_is_refused(store):
    with pytest.raises(ValueError, match="'borrowed'"):
        store.create_run(make_info(origin="borrowed"))


def test_samples_come_back_by_index(store):
    run_id = store.create_run(make_info())
    samples = make_samples(6)
    finish(store, run_id, samples=[samples[i] for i in (4, 0, 5, 2, 1, 3)])
    assert [s.index for s in store.samples(run_id)] == [0, 1, 2, 3, 4, 5]
    assert store.samples(run_id) == samples


def test_a_sample_without_attacks_or_certificates(store):
    run_id = store.create_run(make_info())
    samples = [SampleResult(index=7, label=1, prediction=2)]
    result = EvaluationResult(samples=1, clean_accuracy=0.0)
    store.record_evaluation(run_id, result=result, samples=samples, config={}, environment={}, seconds=0.0, finish=True)
    assert store.samples(run_id) == samples
    assert store.get_run(run_id).result == result


def test_a_failed_record_evaluation_stores_nothing(store, db):
    run_id = store.create_run(make_info())
    samples = make_samples(10)
    samples[7] = replace(samples[7], index=3)  # a duplicate index: the samples insert fails part-way
    with pytest.raises(IntegrityError):
        evaluate(store, run_id, samples=samples, finish=True, run_config={"final": 1})
    record = store.get_run(run_id)
    assert record.status == RUNNING
    assert (record.finished_at, record.train_seconds, record.eval_seconds) == (None, None, None)
    assert record.result is None and record.info.config == make_info().config and record.evaluations == []
    assert store.samples(run_id) == []
    for table in ("evaluations", "results", "attack_results", "certifier_results", "samples", "sample_attacks", "sample_certificates"):
        assert rows(db, table) == 0, table
    # and the run can still be finished properly afterwards
    finish(store, run_id)
    assert store.get_run(run_id).status == FINISHED


def test_a_finished_run_is_never_rewritten(store):
    run_id = store.create_run(make_info())
    finish(store, run_id, clean=0.75)
    before = (store.get_run(run_id), store.samples(run_id))
    with pytest.raises(HarnessError, match=f"run {run_id} .* is finished") as exc:
        evaluate(store, run_id, samples=make_samples(3), finish=True)
    assert not isinstance(exc.value, UsageError)
    with pytest.raises(HarnessError, match="is finished"):
        store.mark_ended(run_id, INTERRUPTED, "too late")
    assert (store.get_run(run_id), store.samples(run_id)) == before


def test_mark_ended_sets_status_and_error_and_keeps_earlier_runs(store):
    first = store.create_run(make_info(seed=1))
    finish(store, first, clean=0.8)
    first_before = (store.get_run(first), store.samples(first))

    second = store.create_run(make_info(seed=2))
    store.mark_ended(second, FAILED, "RuntimeError: CUDA out of memory", train_seconds=42.5)
    third = store.create_run(make_info(seed=3))
    store.mark_ended(third, INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)")

    failed, interrupted = store.get_run(second), store.get_run(third)
    assert (failed.status, failed.error, failed.train_seconds) == (FAILED, "RuntimeError: CUDA out of memory", 42.5)
    assert (interrupted.status, interrupted.train_seconds) == (INTERRUPTED, None)
    assert failed.finished_at is not None and failed.finished_at.tzinfo == UTC
    assert failed.result is None and store.samples(second) == []
    assert failed.info == make_info(seed=2)
    assert (store.get_run(first), store.samples(first)) == first_before


def test_mark_ended_only_takes_failed_or_interrupted(store):
    run_id = store.create_run(make_info())
    for status in (FINISHED, RUNNING, "crashed"):
        with pytest.raises(ValueError, match=repr(status)):
            store.mark_ended(run_id, status, "x")
    assert store.get_run(run_id).status == RUNNING


def test_a_missing_run_id_is_a_usage_error_naming_it(store, db):
    def check(call):
        with pytest.raises(UsageError) as exc:
            call()
        assert str(exc.value) == f"no run with id 42 in {db}"

    check(lambda: store.get_run(42))
    check(lambda: store.samples(42))
    check(lambda: store.mark_ended(42, FAILED, "boom"))
    check(lambda: finish(store, 42))
    check(lambda: evaluate(store, 42))
    check(lambda: store.heartbeat(42))
    check(lambda: store.resume_run(42, {}))


def test_list_runs_filters_and_orders_oldest_first(store):
    mnist = store.create_run(make_info())
    finish(store, mnist)
    cifar = store.create_run(make_info(dataset="cifar10"))
    finish(store, cifar, clean=0.25)
    l2 = store.create_run(make_info(norm="2", eps=0.5))
    finish(store, l2, clean=0.7)
    other_eps = store.create_run(make_info(eps=0.3))
    finish(store, other_eps, clean=0.8)
    near_miss = store.create_run(make_info(eps=EPS * (1 + 1e-3)))
    finish(store, near_miss)
    running = store.create_run(make_info())
    failed = store.create_run(make_info())
    store.mark_ended(failed, FAILED, "boom")

    def ids(**filters):
        return [r.id for r in store.list_runs(**filters)]

    assert ids() == [mnist, cifar, l2, other_eps, near_miss, running, failed]
    assert ids(status=FINISHED) == [mnist, cifar, l2, other_eps, near_miss]
    assert ids(status=RUNNING) == [running]
    assert ids(status=FAILED) == [failed]
    assert ids(dataset="cifar10") == [cifar]
    assert ids(norm="2") == [l2]
    assert ids(eps=0.3) == [other_eps]
    assert ids(status=FINISHED, dataset="mnist", norm="inf", eps=EPS) == [mnist]
    assert ids(dataset="svhn") == []
    # 8/255 typed as a rounded decimal is not the same float, but the same radius
    typed = float("0.031372549020")
    assert typed != EPS
    assert ids(status=FINISHED, eps=typed) == [mnist, cifar]
    # results come with the listed runs
    by_id = {r.id: r for r in store.list_runs(status=FINISHED)}
    assert by_id[l2].result.clean_accuracy == 0.7 and by_id[mnist].result.clean_accuracy == 0.99
    assert by_id[other_eps].info.eps == 0.3


def test_eps_matching_works_both_ways(store):
    typed = store.create_run(make_info(eps=float("0.0313725490196078")))
    assert [r.id for r in store.list_runs(eps=8 / 255)] == [typed]
    assert store.list_runs(eps=0.0) == []
    zero = store.create_run(make_info(eps=0.0))
    assert [r.id for r in store.list_runs(eps=0.0)] == [zero]


def test_a_second_store_on_the_same_file_sees_the_runs(store, db):
    run_id = store.create_run(make_info())
    finish(store, run_id)
    other = SqlStore.open(db)
    try:
        assert other.get_run(run_id) == store.get_run(run_id)
        assert other.samples(run_id) == store.samples(run_id)
        # and writes through either are seen by both
        second = other.create_run(make_info(seed=9))
        assert [r.id for r in store.list_runs()] == [run_id, second]
    finally:
        other.close()


def test_runs_persist_across_processes(db):
    script = textwrap.dedent(
        f"""
        from harness.results import EvaluationResult
        from harness.store import open_store, RunInfo, SampleResult
        store = open_store({db!r})
        info = RunInfo("linf_v2", "mnist", "inf", 8 / 255, None, 7, 2, {{"a": 1}}, "cpu", {{"python": "3"}})
        run_id = store.create_run(info)
        store.record_evaluation(run_id, result=EvaluationResult(samples=1, clean_accuracy=0.5), config={{}}, environment={{}},
                                samples=[SampleResult(3, 1, 1, {{"pgd": True}}, {{"ibp": (True, 0.25)}})],
                                seconds=2.0, run_config={{"a": 2}}, finish=True)
        store.close()
        print(run_id)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    run_id = int(done.stdout.strip())
    store = open_store(db)
    try:
        record = store.get_run(run_id)
        assert (record.status, record.info.seed, record.info.eps, record.result.clean_accuracy) == (FINISHED, 7, 8 / 255, 0.5)
        assert store.samples(run_id) == [SampleResult(3, 1, 1, {"pgd": True}, {"ibp": (True, 0.25)})]
    finally:
        store.close()


def test_a_bare_relative_path_is_relative_to_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("relative.db")
    try:
        store.create_run(make_info())
    finally:
        store.close()
    monkeypatch.chdir(tmp_path.parent)
    assert (tmp_path / "relative.db").is_file()


def test_a_sqlite_url_opens_the_same_database(tmp_path):  # SQLite only: a path and a sqlite:/// URL
    db = tmp_path / "runs.db"
    store = open_store(str(db))
    run_id = store.create_run(make_info())
    store.close()
    other = open_store(f"sqlite:///{db}")
    try:
        assert other.get_run(run_id).info == make_info()
    finally:
        other.close()


def test_ten_thousand_samples_are_stored_and_read_back(store, db):
    run_id = store.create_run(make_info())
    samples = make_samples(10_000)
    finish(store, run_id, samples=samples)
    assert rows(db, "samples") == 10_000
    assert rows(db, "sample_attacks") == 20_000
    assert rows(db, "sample_certificates") == 30_000
    back = store.samples(run_id)
    assert len(back) == 10_000
    assert back[9_999] == SampleResult(
        index=9_999,
        label=9,
        prediction=(9_999 * 7) % 10,
        attacks={"fgsm": False, "pgd": True},
        certificates={"crown": (False, 9.999), "ibp": (True, None), "lip": (False, 9.999 + 2 / 3)},
    )
    assert back[0].attacks == {"fgsm": False, "pgd": True}
    assert back == samples


def test_non_finite_floats_are_refused_in_json_columns(store, db):
    with pytest.raises(ValueError, match="config is not plain JSON"):
        store.create_run(make_info(config={"trainer": {"lr": float("inf")}}))
    assert store.list_runs() == []


# -- errors on open -----------------------------------------------------------------------------------


def open_error(url: str) -> str:
    with pytest.raises(UsageError) as exc:
        SqlStore.open(url)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_directory_that_does_not_exist(tmp_path):
    path = tmp_path / "nope" / "runs.db"
    assert open_error(str(path)) == f"cannot open database '{path}': directory {path.parent} does not exist"
    url = f"sqlite:///{path}"
    assert open_error(url) == f"cannot open database '{url}': directory {path.parent} does not exist"
    assert not path.parent.exists()


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    garbage = b"this is not a database\n" * 200
    path.write_bytes(garbage)
    message = open_error(str(path))
    assert str(path) in message and "not a database" in message
    assert path.read_bytes() == garbage


def test_a_directory_given_as_the_database(tmp_path):
    assert "is a directory" in open_error(str(tmp_path))


def test_a_database_of_someone_else_with_a_runs_table(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (name TEXT)")
    message = open_error(str(path))
    assert str(path) in message and "has harness table(s) runs but no schema revision" in message


@pytest.mark.parametrize(
    "url, reason",
    [
        ("nosuchdialect://host/db", "unknown database dialect 'nosuchdialect'"),
        ("sqlite+nosuchdriver:///x.db", "unknown database dialect 'sqlite+nosuchdriver'"),
        ("not a url://", "not a valid SQLAlchemy URL"),
    ],
)
def test_bad_urls(url, reason, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_error(url) == f"cannot open database '{url}': {reason}"


def test_a_password_in_the_url_is_not_repeated(monkeypatch):
    message = open_error("nosuchdialect://user:hunter2@host/db")
    assert "hunter2" not in message and "user:***@host/db" in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_a_directory_that_is_not_writable(tmp_path):
    directory = tmp_path / "locked"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        message = open_error(str(directory / "runs.db"))
        assert message.startswith(f"cannot open database '{directory / 'runs.db'}': directory {directory} is not writable")
    finally:
        directory.chmod(0o700)


def test_non_finite_numbers_are_refused_and_nothing_is_stored(db):
    store = SqlStore.open(db)
    run_id = store.create_run(make_info())
    result = EvaluationResult(samples=1, clean_accuracy=0.5, certifiers=(CertifierResult("x", accuracy=0.5, radius=RadiusStats(float("nan"), 0.0)),))
    with pytest.raises(HarnessError, match="certifier 'x' radius"):
        store.record_evaluation(run_id, result=result, samples=[], config={}, environment={}, seconds=1.0, finish=True)
    record = store.get_run(run_id)
    assert record.status == "running" and record.result is None
    store.close()


def test_a_text_longer_than_its_column_is_refused_the_same_on_every_backend(store, db):
    # PostgreSQL enforces VARCHAR lengths, SQLite does not: the store checks them itself, so both refuse alike.
    with pytest.raises(HarnessError, match=r"runs.trainer holds at most 100 characters, and 'xxx.* has 101; nothing was stored"):
        store.create_run(make_info(trainer="x" * 101))
    assert rows(db, "runs") == 0
    run_id = store.create_run(make_info(trainer="x" * 100))
    long_label = replace(make_result(), attacks=(AttackResult("pgd", label="L" * 201, accuracy=0.5, attacked=5),))
    with pytest.raises(HarnessError, match="attack_results.label holds at most 200 characters"):
        evaluate(store, run_id, long_label, finish=True)
    with pytest.raises(HarnessError, match="sample_attacks.attack holds at most 100 characters"):
        evaluate(store, run_id, samples=[SampleResult(0, 1, 1, {"a" * 101: True})], finish=True)
    assert store.get_run(run_id).status == RUNNING and rows(db, "evaluations") == 0


def test_an_error_message_with_a_nul_character_is_recorded(store):
    run_id = store.create_run(make_info())
    store.mark_ended(run_id, FAILED, "ValueError: bad byte \x00 in input")
    assert store.get_run(run_id).error == "ValueError: bad byte \\x00 in input"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://u:hunter2@db.example:5432/runs", "postgresql://u:***@db.example:5432/runs"),
        ("postgresql+psycopg://u@h/db?password=hunter2&sslmode=require", "postgresql+psycopg://u@h/db?password=***&sslmode=require"),
        ("postgresql://u:hun%40ter2@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:hunter2@h:notaport/db", "postgresql://u:***@h:notaport/db"),
        ("results.db", "results.db"),
    ],
)
def test_database_name_hides_every_password_and_opens_nothing(url, shown):
    from harness.store import database_name

    assert database_name(url) == shown
