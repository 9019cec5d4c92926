"""The store on PostgreSQL: a round trip, a read-only open, and revision 1 upgraded to the fresh schema.

Each test gets a fresh database from ``harness_postgres_url`` (a throwaway server, or ``$HARNESS_TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from harness.errors import UsageError
from harness.results import CertifierResult, EvaluationResult, RadiusStats
from harness.store import RunInfo, SampleResult, StoreGone, StoreUnavailable, _migrate, _sql, database_revision, open_store, upgrade_database
from harness.testing_postgres import PostgresNotFound, PostgresServer

RESULT = EvaluationResult(samples=2, clean_accuracy=0.5, certified_accuracy=0.5,
                          certifiers=(CertifierResult("ibp", {}, 0.5, 2, RadiusStats(0.1, 0.05), 1.0),))
SAMPLES = [SampleResult(0, 1, 1, {}, {"ibp": (True, 0.1)}), SampleResult(1, 2, 3, {}, {"ibp": (False, None)})]


def empty(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def schema(url: str) -> dict:
    engine = create_engine(url)
    try:
        i = inspect(engine)
        return {t: (sorted((c["name"], str(c["type"]), c["nullable"], str(c["default"])) for c in i.get_columns(t)),
                    i.get_pk_constraint(t), sorted(x["name"] for x in i.get_indexes(t)), sorted(map(str, i.get_foreign_keys(t))))
                for t in i.get_table_names()}
    finally:
        engine.dispose()


def test_a_round_trip_and_a_read_only_open(harness_postgres_url):
    URL = harness_postgres_url
    store = open_store(URL)
    try:
        run_id = store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {"a": 1}, "cpu", {}))
        store.heartbeat(run_id, checkpoint={"epoch": 1})
        store.record_evaluation(run_id, result=RESULT, samples=SAMPLES, config={}, environment={}, seconds=1.0, finish=True)
        store.check_alive()
    finally:
        store.close()
    reader = open_store(URL, readonly=True)
    try:
        (record,) = reader.list_runs()
        assert (record.status, record.result, record.checkpoint) == ("finished", RESULT, {"epoch": 1})
        assert reader.samples(run_id) == SAMPLES
    finally:
        reader.close()


def test_revision_1_is_upgraded_by_harness_db_upgrade_only_to_the_fresh_schema(harness_postgres_url):
    URL = harness_postgres_url
    open_store(URL).close()
    fresh = schema(URL)
    empty(URL)
    engine = create_engine(URL)
    with engine.begin() as conn:
        from alembic import command

        command.upgrade(_migrate._config(conn), "1")
        conn.execute(text(
            "INSERT INTO runs (trainer, dataset, norm, eps, preset, seed, epochs, status, config, device, environment, created_at, "
            "finished_at, train_seconds, eval_seconds, error) VALUES ('linf_v2', 'mnist', 'inf', 0.3, NULL, 1, 1, 'finished', "
            "'{\"evaluation\": {\"samples\": 2}}', 'cpu', '{}', now(), now(), 1.5, 2.5, NULL)"
        ))
        conn.execute(text("INSERT INTO results VALUES (1, 2, 0.5, NULL, 0.5, '{}')"))
        conn.execute(text("INSERT INTO certifier_results VALUES (1, 'ibp', '{}', 0.5, 2, 0.1, 0.05, 1.0, NULL)"))
        conn.execute(text("INSERT INTO samples VALUES (1, 0, 1, 1), (1, 1, 2, 3)"))
        conn.execute(text("INSERT INTO sample_certificates VALUES (1, 0, 'ibp', true, 0.1), (1, 1, 'ibp', false, NULL)"))
    engine.dispose()
    with pytest.raises(UsageError, match="server database.*harness db upgrade"):
        open_store(URL)  # never automatically: a server database is backed up first, with its own tools
    assert database_revision(URL).revision == 1
    done = upgrade_database(URL)
    assert (done.from_revision, done.to_revision, done.backup) == (1, 3, None)
    assert schema(URL) == fresh
    store = open_store(URL)
    try:
        (record,) = store.list_runs()
        assert (record.result, record.eval_seconds, store.samples(1)) == (RESULT, 2.5, SAMPLES)
        assert store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {}, "cpu", {})) == 2
    finally:
        store.close()


# -- what a server database can do to a run: a writer's lock held, the server gone, the database replaced --------------


def finish_args() -> dict:
    return {"result": RESULT, "samples": SAMPLES, "config": {}, "environment": {}, "seconds": 1.0, "finish": True}


def test_a_row_locked_past_the_busy_timeout_is_unavailable_and_nothing_is_lost(harness_postgres_url, monkeypatch):
    monkeypatch.setattr(_sql, "_BUSY_TIMEOUT_S", 0.05)  # PostgreSQL's lock_timeout follows it
    store = open_store(harness_postgres_url)
    engine = create_engine(harness_postgres_url)
    try:
        run_id = store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {}, "cpu", {}))
        with engine.connect() as blocker:
            blocker.execute(text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": run_id})
            with pytest.raises(StoreUnavailable) as exc:
                store.record_evaluation(run_id, **finish_args())
            assert str(exc.value) == (f"cannot write to database '{harness_postgres_url}': "
                                      "canceling statement due to lock timeout (busy for more than 0.05 s)")
            blocker.rollback()
        record = store.get_run(run_id)
        assert (record.status, record.evaluations) == ("running", [])
        store.record_evaluation(run_id, **finish_args())  # the same write, once the lock is free
        assert store.get_run(run_id).status == "finished"
    finally:
        engine.dispose()
        store.close()


@pytest.fixture
def own_server():
    """A server of this test's own, to stop and start again."""
    try:
        server = PostgresServer()
    except PostgresNotFound as exc:
        pytest.skip(str(exc))
    with server:
        yield server


def test_a_server_that_goes_away_is_unavailable_and_the_store_carries_on_when_it_is_back(own_server):
    url = own_server.new_database()
    store = open_store(url)
    try:
        run_id = store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {}, "cpu", {}))
        own_server.halt()
        for write in (lambda: store.heartbeat(run_id), lambda: store.record_evaluation(run_id, **finish_args())):
            with pytest.raises(StoreUnavailable) as exc:
                write()
            assert str(exc.value).startswith(f"cannot write to database '{url}': ") and "\n" not in str(exc.value)
        with pytest.raises(StoreUnavailable):
            store.check_alive()
        own_server.start()
        store.check_alive()
        store.record_evaluation(run_id, **finish_args())
        assert store.get_run(run_id).status == "finished"
    finally:
        store.close()


def test_a_database_replaced_by_another_harness_database_is_gone(harness_postgres_url):
    store = open_store(harness_postgres_url)
    try:
        run_id = store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {}, "cpu", {}))
        empty(harness_postgres_url)
        open_store(harness_postgres_url).close()  # another harness creates a new schema in it
        with pytest.raises(StoreGone, match="was replaced by another database"):
            store.check_alive()
        with pytest.raises(StoreGone):
            store.mark_ended(run_id, "failed", "boom")
    finally:
        store.close()


def test_backends_connections_ended_by_the_server_are_replaced(harness_postgres_url):
    store = open_store(harness_postgres_url)
    engine = create_engine(harness_postgres_url)
    try:
        run_id = store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {}, "cpu", {}))
        with engine.begin() as conn:  # an administrator ends every other session (a failover does the same)
            ended = conn.scalar(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                     "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        assert ended >= 1
        store.heartbeat(run_id)  # a new connection, without the caller seeing anything
        assert store.get_run(run_id).heartbeat_at is not None
    finally:
        engine.dispose()
        store.close()
