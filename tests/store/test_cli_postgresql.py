"""Every command on a PostgreSQL database (``--db postgresql://...``), and its password never shown or stored.

The URL carries a password the throwaway server ignores (it trusts loopback), so that every place a URL can
reach (output, errors, the run's configuration and environment, results files, the database itself) is checked.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

SECRET = "hunter2-s3cret"
TINY = ["--plugin", "linf_v2", "--dataset", "tiny", "--no-preset", "--eps", "0.1", "--epochs", "1", "--eval-samples", "30",
        "--set", "model.width=16", "--set", "model.depth=3", "--set", "attacker.pgd.steps=3", "--attack", "pgd",
        "--train-samples", "64", "--device", "cpu"]


@pytest.fixture
def url(harness_postgres_url) -> str:
    """The test's database as ``postgresql://user:password@host:port/db`` (no driver named: psycopg 3 is the default)."""
    plain = make_url(harness_postgres_url).set(drivername="postgresql", password=SECRET)
    return plain.render_as_string(hide_password=False)


def everything_stored(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return "\n".join(str(row) for t in inspect(conn).get_table_names() for row in conn.execute(text(f'SELECT * FROM "{t}"')))
    finally:
        engine.dispose()


def test_every_command_works_on_postgresql_and_never_shows_or_stores_the_password(harness_cli, harness_tiny_data, url, tmp_path,
                                                                                   monkeypatch):
    import harness.execution
    from harness.store import StoreUnavailable
    from harness.store._sql import SqlStore

    shown = url.replace(SECRET, "***")
    outputs = []

    def cli(*args, code=0):
        r = harness_cli(*args, "--db", url, plugins=[harness_tiny_data])
        outputs.append(r.out + r.err)
        assert r.code == code, r.err
        return r

    assert "empty" in cli("db", "current").out
    run = cli("run", *TINY)
    assert "run 1" in run.out + run.err
    listed = cli("runs")
    assert "finished" in listed.out and "linf_v2" in listed.out
    detail = json.loads(cli("show", "1", "--format", "json", "--samples", "5").out)
    assert detail["status"] == "finished" and detail["result"]["samples"] == 30 and len(detail["samples"]) == 5
    board = json.loads(cli("leaderboard", "--format", "json", "--reported", "none").out)
    assert [r["run_id"] for g in board for r in g["rows"] if r["kind"] == "measured"] == [1]
    again = cli("eval", "1", "--certifier", "interval", "--eval-samples", "20")
    assert "run 1, evaluation 2" in again.out
    assert [len(e["result"]["certifiers"]) >= 1 for e in json.loads(cli("show", "1", "--format", "json").out)["evaluations"]] == [True, True]
    assert "revision 3 (the newest)" in cli("db", "current").out
    assert "nothing to do" in cli("db", "upgrade").out

    # A second run whose results the database cannot take: they go to a file, which `harness import` records.
    monkeypatch.setattr(harness.execution, "RECORD_RETRIES_S", (0.0, 0.0))
    with monkeypatch.context() as patch:
        patch.setattr(SqlStore, "record_evaluation", lambda *a, **k: (_ for _ in ()).throw(StoreUnavailable(f"cannot write to {shown}")))
        failed = cli("run", *TINY, "--seed", "1", code=1)
    results = tmp_path / "runs" / "run-2" / "results.json"
    assert f"harness import {results}" in failed.err
    imported = cli("import", str(results))
    assert "as run 2" in imported.out
    assert cli("import", str(results), code=2).err.count("already") == 1
    assert json.loads(cli("show", "2", "--format", "json").out)["status"] == "finished"

    # $HARNESS_DB instead of --db: the same, and an error names the database without its password.
    monkeypatch.setenv("HARNESS_DB", url)
    for args, code in ((["runs"], 0), (["show", "99"], 2), (["db", "current"], 0)):
        r = harness_cli(*args, plugins=[harness_tiny_data])
        outputs.append(r.out + r.err)
        assert r.code == code, r.err
    assert outputs[-2].strip() == f"error: no run with id 99 in {shown}"

    # The password: never in any output, file written, or row stored; the URL is named with *** where it is named.
    said = "\n".join(outputs)
    assert SECRET not in said and shown in said
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 10_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
    stored = everything_stored(url)
    assert SECRET not in stored and "run-1" in stored
