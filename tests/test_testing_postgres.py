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


def test_a_server_whose_session_was_killed_is_stopped_and_deleted_by_its_watchdog(tmp_path):
    """SIGKILL (or a CI timeout) runs no atexit: the server's watchdog stops it and deletes its directory."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    try:
        find_bindir()
    except PostgresNotFound as exc:
        pytest.skip(str(exc))
    code = ("import os, sys; from harness.testing_postgres import PostgresServer; s = PostgresServer().start(); "
            "print(s.directory, flush=True); sys.stdin.read()")
    owner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    directory = Path(owner.stdout.readline().strip())
    postmaster = int((directory / "data" / "postmaster.pid").read_text().split()[0])
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 60  # a deadline, not a timing assertion: the watchdog polls every 0.5 s
    while (directory.exists() or _alive(postmaster)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not directory.exists() and not _alive(postmaster)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its parent is gone
        return stat.read().split(")")[-1].split()[0] != "Z"
