"""The throwaway PostgreSQL server and the ``harness_postgres_url`` fixture (harness.testing_postgres, harness.testing)."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, inspect, text

from harness.testing_postgres import PostgresNotFound, PostgresServer, find_bindir


def test_each_test_gets_a_fresh_empty_database(harness_postgres_url):
    engine = create_engine(harness_postgres_url)
    try:
        assert inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x int)"))
            assert conn.scalar(text("SELECT current_database()")).startswith("harness_test_")
    finally:
        engine.dispose()


def test_the_next_test_does_not_see_the_last_ones_tables(harness_postgres_url):
    engine = create_engine(harness_postgres_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_a_throwaway_server_starts_on_loopback_and_is_deleted_when_stopped():
    try:
        server = PostgresServer()
    except PostgresNotFound as exc:
        pytest.skip(str(exc))
    with server:
        directory = server.directory
        assert directory is not None and directory.exists()
        engine = create_engine(server.new_database())
        try:
            with engine.connect() as conn:
                assert conn.scalar(text("SHOW listen_addresses")) == "127.0.0.1"
        finally:
            engine.dispose()
    assert not directory.exists()
    server.stop()  # twice is fine


def test_no_binaries_is_one_clear_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_PG_BIN", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    with pytest.raises(PostgresNotFound, match=r"no PostgreSQL server binaries .*HARNESS_PG_BIN"):
        find_bindir()
    assert os.environ["HARNESS_PG_BIN"] == str(tmp_path)
