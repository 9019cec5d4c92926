"""The store on PostgreSQL: a round trip, a read-only open, and revision 1 upgraded to the fresh schema.

Each test gets a fresh database from ``harness_postgres_url`` (a throwaway server, or ``$HARNESS_TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from harness.errors import UsageError
from harness.results import CertifierResult, EvaluationResult, RadiusStats
from harness.store import RunInfo, SampleResult, _migrate, database_revision, open_store, upgrade_database

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
    assert (done.from_revision, done.to_revision, done.backup) == (1, 2, None)
    assert schema(URL) == fresh
    store = open_store(URL)
    try:
        (record,) = store.list_runs()
        assert (record.result, record.eval_seconds, store.samples(1)) == (RESULT, 2.5, SAMPLES)
        assert store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {}, "cpu", {})) == 2
    finally:
        store.close()
