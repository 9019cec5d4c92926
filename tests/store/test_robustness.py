"""What the fault and bad-input matrix of issue 12 found in the store, each case as it must behave now.

Read commands open read-only and never wait on a writer; a database that is
not there, in memory, someone else's, gone or replaced, or that has a bad row,
a missing table or column or a bad revision, is said in one line; writes the
database cannot take now raise StoreUnavailable and leave the run as it was.

The cases that need no file run on both backends (``db``); the rest are SQLite's own: its
file (read-only, deleted, replaced, overwritten, in a read-only directory), its locks and
busy timeout, its page limit, and rows its loose typing lets a program spoil. Their
PostgreSQL counterparts (a row lock past the timeout, a server that goes away, a database
replaced, bad rows its types allow) are in ``test_postgresql.py`` and below.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from harness.errors import HarnessError, UsageError
from harness.results import AttackResult, EvaluationResult
from harness.store import RUNNING, RunInfo, SampleResult, StoreGone, StoreUnavailable, _sql, open_store

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def make_info() -> RunInfo:
    return RunInfo("linf_v2", "mnist", "inf", 0.3, "quick", 1, 1, {"trainer": {"lr": 0.1}}, "cpu", {"host": "box"})


def make_samples(n: int) -> list[SampleResult]:
    return [SampleResult(i, i % 10, i % 10, {"pgd": i % 2 == 0}, {"interval": (i % 3 == 0, None)}) for i in range(n)]


def make_result(n: int = 5) -> EvaluationResult:
    return EvaluationResult(samples=n, clean_accuracy=1.0, robust_accuracy=0.6, certified_accuracy=0.4,
                            attacks=(AttackResult("pgd", label="PGD-3", options={"steps": 3}, accuracy=0.6, attacked=n),))


def evaluate(store, run_id: int, result: EvaluationResult | None = None, samples=None, finish: bool = False) -> int:
    return store.record_evaluation(run_id, result=result or make_result(), samples=make_samples(5) if samples is None else samples,
                                   config={"samples": 5}, environment={"host": "box"}, seconds=1.0, finish=finish)


def finish(store, run_id: int) -> int:
    store.record_training(run_id, train_seconds=2.0, weights=None, training={}, config={"trainer": {"lr": 0.1}})
    return evaluate(store, run_id, finish=True)


def one_line_usage_error(call) -> str:
    with pytest.raises(UsageError) as exc:
        call()
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def make_db(path, finished: int = 1, running: int = 0):
    """Fill the database at ``path`` (a file path or a URL) with runs; return ``path``."""
    store = open_store(str(path))
    try:
        for _ in range(finished):
            finish(store, store.create_run(make_info()))
        for _ in range(running):
            store.create_run(make_info())
    finally:
        store.close()
    return path


def cli_error(r, *fragments: str) -> str:
    assert r.code != 0 and r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
def no_waiting(monkeypatch):
    """Timeouts so short that a command waiting on a lock fails instead of passing slowly."""
    monkeypatch.setattr(_sql, "_BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(_sql, "_READ_TIMEOUT_S", 0.05)


# -- read commands open read-only ----------------------------------------------------------------------


def test_read_commands_do_not_wait_while_another_process_holds_the_write_lock(harness_cli, tmp_path, no_waiting):
    db = make_db(tmp_path / "results.db", finished=2)
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE runs SET trainer = 'uncommitted' WHERE id = 1")
        runs = harness_cli("runs")
        assert runs.code == 0, runs.err
        assert "linf_v2" in runs.out and "uncommitted" not in runs.out  # what is committed, without waiting
        assert harness_cli("leaderboard", "--reported", "none").code == 0
        show = harness_cli("show", "1", "--samples", "3")
        assert show.code == 0 and "run 1: finished" in show.out
        # and the library says the same
        store = open_store(str(db), readonly=True)
        try:
            assert [r.id for r in store.list_runs()] == [1, 2] and len(store.samples(1)) == 5
        finally:
            store.close()
        # a writer, meanwhile, is told the database is busy (in one line, naming it) instead of a traceback
        store = open_store(str(db))
        try:
            with pytest.raises(StoreUnavailable) as exc:
                store.create_run(make_info())
            assert str(exc.value) == f"cannot write to database '{db}': database is locked (busy for more than 0.05 s)"
        finally:
            store.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_read_writes_nothing_to_the_file(tmp_path):
    db = make_db(tmp_path / "results.db")
    before = db.read_bytes()
    store = open_store(str(db), readonly=True)
    try:
        store.list_runs()
        store.check_alive()
        with pytest.raises(HarnessError, match="opened read-only"):
            store.create_run(make_info())
    finally:
        store.close()
    assert db.read_bytes() == before


def run_as_other_user(script: str, directory: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in ``directory`` as an unprivileged user (root reads and writes anything, so as nobody when root)."""
    prefix: list[str] = []
    if ROOT:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop privileges")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(script)], cwd=directory, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": str(directory)})


READ = """
    import sys
    from harness.cli import main
    sys.argv = ["harness", "runs", "--db", "results.db"]
    main()
"""


@pytest.fixture
def shared_dir():
    """A directory an unprivileged user can enter (pytest's tmp_path is private to its owner)."""
    directory = Path(tempfile.mkdtemp(prefix="harness-readonly-"))
    directory.chmod(0o755)
    yield directory
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(directory)


def test_a_0444_database_file_can_be_read(shared_dir):
    db = make_db(shared_dir / "results.db", finished=1, running=1)
    db.chmod(0o444)
    if ROOT:
        os.chown(shared_dir, 65534, 65534)  # its directory is the reader's, the file read-only
        os.chown(db, 65534, 65534)
    before = db.read_bytes()
    done = run_as_other_user(READ, shared_dir)
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout and "running" in done.stdout
    assert db.read_bytes() == before


def test_a_database_in_a_read_only_directory_can_be_read(shared_dir):
    directory = shared_dir / "mounted"
    directory.mkdir()
    db = make_db(directory / "results.db", finished=2)
    for path in (directory / "results.db-wal", directory / "results.db-shm"):
        path.unlink(missing_ok=True)  # as on read-only media: the log and its index cannot be made beside the file
    db.chmod(0o444)
    directory.chmod(0o555)
    done = run_as_other_user(READ, directory)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("finished") == 2
    assert sorted(p.name for p in directory.iterdir()) == ["results.db"]


def test_a_missing_file_is_not_created_by_a_read(harness_cli, tmp_path):
    for args in (["runs"], ["leaderboard"], ["show", "1"], ["db", "current"], ["db", "upgrade"]):
        line = cli_error(harness_cli(*args, "--db", "typo.db"))
        assert line == "error: no database at 'typo.db' (harness run creates it)", args
    assert not (tmp_path / "typo.db").exists()
    assert one_line_usage_error(lambda: open_store(str(tmp_path / "typo.db"), readonly=True)) == (
        f"no database at '{tmp_path / 'typo.db'}' (harness run creates it)"
    )
    assert list(tmp_path.iterdir()) == []


# -- databases that are refused ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", ":memory:"])
def test_an_in_memory_database_is_refused(harness_cli, url):
    for readonly in (False, True):
        message = one_line_usage_error(lambda: open_store(url, readonly=readonly))  # noqa: B023
        assert message == f"cannot use database {url!r}: an in-memory database keeps nothing; give a file path or a server URL"
    cli_error(harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--db", url), "in-memory database keeps nothing")


def test_an_unrelated_sqlite_file_is_refused_and_left_as_it_was(harness_cli, tmp_path):
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("CREATE TABLE tags (name TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    conn.close()
    before = path.read_bytes()
    expected = f"'{path}' is not a harness database (it has tables notes, tags); give another --db"
    for readonly in (False, True):
        assert one_line_usage_error(lambda: open_store(str(path), readonly=readonly)) == expected  # noqa: B023
    for args in (["runs"], ["run", "--plugin", "linf_v2", "--dataset", "mnist"]):
        cli_error(harness_cli(*args, "--db", str(path)), "is not a harness database (it has tables notes, tags)")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def execute(db: str, *statements: str) -> None:
    """Run SQL on the database at ``db`` (a path or a URL) apart from the store, as another program would."""
    engine = create_engine(db if "://" in db else f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def test_a_missing_table_or_column_is_found_at_open(db):
    make_db(db)
    execute(db, "ALTER TABLE runs DROP COLUMN resumes")
    for readonly in (False, True):
        message = one_line_usage_error(lambda: open_store(db, readonly=readonly))  # noqa: B023
        assert message == f"cannot open database '{db}': its table 'runs' has no column 'resumes' (revision 3 has it)"
    execute(db, "ALTER TABLE runs ADD COLUMN resumes INTEGER", "DROP TABLE sample_certificates")
    message = one_line_usage_error(lambda: open_store(db))
    assert message == f"cannot open database '{db}': its table 'sample_certificates' is missing (revision 3 has it)"


def test_a_read_only_store_writes_nothing_and_an_empty_database_is_not_read(db):
    assert one_line_usage_error(lambda: open_store(db, readonly=True)) in (
        f"no database at '{db}' (harness run creates it)",  # SQLite: no file
        f"cannot open database '{db}': it is empty (harness run creates the schema)",  # a server database without tables
    )
    make_db(db)
    store = open_store(db, readonly=True)
    try:
        with pytest.raises(HarnessError, match="opened read-only"):
            store.create_run(make_info())
        assert [r.status for r in store.list_runs()] == ["finished"]
    finally:
        store.close()


def test_a_server_that_cannot_be_reached_is_one_line_without_its_password(harness_cli):
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://u@127.0.0.1:1/x"
    message = one_line_usage_error(lambda: open_store(url))
    assert message.startswith(f"cannot open database {url!r}: ") and "127.0.0.1" in message
    for secret_url in ("postgresql+psycopg://u:hunter2@127.0.0.1:1/x", "postgresql+psycopg://u@127.0.0.1:1/x?password=hunter2",
                       "postgresql+psycopg://u:hunter2@127.0.0.1:1/x?sslpassword=hunter2&application_name=h"):
        for readonly in (False, True):
            message = one_line_usage_error(lambda: open_store(secret_url, readonly=readonly))  # noqa: B023
            assert "hunter2" not in message and "***" in message
        for args in (["runs"], ["leaderboard"], ["db", "current"], ["db", "upgrade"]):
            r = harness_cli(*args, "--db", secret_url)
            line = cli_error(r, "cannot ")
            assert r.code == 2 and "hunter2" not in line, line


def test_an_unparsable_url_hides_its_password():
    message = one_line_usage_error(lambda: open_store("postgresql://u:hunter2@host:notaport/x?password=hunter2"))
    assert "hunter2" not in message and "not a valid SQLAlchemy URL" in message


# -- a database that goes away during a run ----------------------------------------------------------------


@pytest.fixture
def opened(tmp_path):
    db = make_db(tmp_path / "results.db")
    store = open_store(str(db))
    run_id = store.create_run(make_info())
    store.check_alive()
    yield db, store, run_id
    store.close()


def test_a_deleted_database_is_noticed(opened):
    db, store, run_id = opened
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreGone) as exc:
        store.check_alive()
    assert str(exc.value) == f"database '{db}' is gone: its file {db} was deleted"
    with pytest.raises(StoreGone):
        evaluate(store, run_id, finish=True)
    assert not db.exists()


def test_a_database_replaced_by_another_harness_database_is_noticed(opened, tmp_path):
    db, store, run_id = opened
    other = make_db(tmp_path / "other.db", finished=3)
    os.replace(other, db)
    for suffix in ("-wal", "-shm"):  # the old database's log would otherwise be applied to the new file
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreGone, match="was replaced by another file"):
        store.check_alive()
    with pytest.raises(StoreGone):
        store.mark_ended(run_id, "failed", "boom")
    check = open_store(str(db))
    try:
        assert [r.status for r in check.list_runs()] == ["finished"] * 3  # the other database, untouched
    finally:
        check.close()


def test_a_database_overwritten_in_place_is_noticed(opened, tmp_path):
    db, store, run_id = opened
    store.close()
    other = make_db(tmp_path / "other.db", finished=3)
    store = open_store(str(db))
    store.check_alive()
    with sqlite3.connect(other) as source, sqlite3.connect(db) as target:
        source.backup(target)  # the same file (inode), another database's pages
    source.close()
    target.close()
    try:
        with pytest.raises(StoreGone) as exc:
            store.check_alive()
        assert str(exc.value).startswith(f"database '{db}' was replaced by another database (its id is ")
        with pytest.raises(StoreGone):
            store.create_run(make_info())
    finally:
        store.close()


def test_a_database_replaced_by_an_unrelated_file_is_noticed(opened, tmp_path):
    db, store, _ = opened
    unrelated = tmp_path / "unrelated.db"
    with sqlite3.connect(unrelated) as conn:
        conn.execute("CREATE TABLE notes (x)")
    conn.close()
    os.replace(unrelated, db)
    with pytest.raises(StoreGone):
        store.check_alive()


# -- rows that cannot be read --------------------------------------------------------------------------------


def spoil(db: Path, statement: str) -> None:
    """What another program, or a disk, could do to a row (sqlite3 leaves foreign keys unchecked by default)."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute(statement)
    conn.close()


@pytest.mark.parametrize(
    "statement, problem",
    [
        ("UPDATE runs SET config = '{not json' WHERE id = 2", "runs.config holds '{not json', which cannot be read"),
        ("UPDATE runs SET eps = 'abc' WHERE id = 2", "runs.eps holds 'abc', not a number"),
        ("UPDATE runs SET created_at = 'yesterday' WHERE id = 2", "runs.created_at holds 'yesterday', which cannot be read"),
        ("UPDATE runs SET status = 'exploded' WHERE id = 2", "runs.status holds 'exploded', not one of running, finished"),
        ("UPDATE results SET clean_accuracy = 'high' WHERE evaluation_id = 2", "evaluation 2: results.clean_accuracy holds 'high', not a number"),
        ("UPDATE attack_results SET options = '[1' WHERE evaluation_id = 2", "evaluation 2: attack_results.options holds '[1'"),
        ("UPDATE evaluations SET config = 5 WHERE id = 2", "evaluation 2: evaluations.config holds 5, not a JSON object"),
        ("DELETE FROM results WHERE evaluation_id = 2", "evaluation 2: results has no row for it"),
    ],
)
def test_a_bad_row_leaves_its_run_out_with_a_warning(tmp_path, harness_cli, statement, problem):
    db = make_db(tmp_path / "results.db", finished=3)
    spoil(db, statement)
    store = open_store(str(db), readonly=True)
    try:
        assert [r.id for r in store.list_runs()] == [1, 3]
        assert [r.id for r in store.list_runs(status="finished", dataset="mnist")] == [1, 3]
        (warning,) = store.warnings
        assert warning.startswith(f"run 2 in {db} cannot be read and is left out: ") and problem in warning, warning
        with pytest.raises(HarnessError) as exc:
            store.get_run(2)
        assert str(exc.value).startswith(f"run 2 in {db} cannot be read: ") and "\n" not in str(exc.value)
        assert store.get_run(3).result is not None
    finally:
        store.close()
    # (the leaderboard asks for finished runs only: a run whose status is not one it knows is not among them)
    for args in (["runs"], *([] if "status" in statement else [["leaderboard", "--reported", "none"]])):
        r = harness_cli(*args)
        assert r.code == 0, r.err
        (line,) = r.err.strip().splitlines()
        assert line.startswith("warning: run 2 in results.db cannot be read and is left out: ") and problem in line
    cli_error(harness_cli("show", "2"), "error: run 2 in results.db cannot be read: ", problem)
    assert harness_cli("show", "1").code == 0


@pytest.mark.parametrize(
    "statement, problem",
    [
        ("UPDATE evaluations SET config = '5' WHERE id = 2", "evaluation 2: evaluations.config holds 5, not a JSON object"),
        ("UPDATE runs SET environment = '[1, 2]' WHERE id = 2", "runs.environment holds [1, 2], not a JSON object"),
        ("DELETE FROM results WHERE evaluation_id = 2", "evaluation 2: results has no row for it"),
    ],
)
def test_a_bad_row_that_postgresql_types_allow_leaves_its_run_out(harness_postgres_url, harness_cli, statement, problem):
    # Only what a PostgreSQL column accepts: its types and checks refuse the rest of the SQLite cases above.
    db = make_db(harness_postgres_url, finished=3)
    execute(db, statement)
    store = open_store(db, readonly=True)
    try:
        assert [r.id for r in store.list_runs()] == [1, 3]
        (warning,) = store.warnings
        assert warning.startswith(f"run 2 in {db} cannot be read and is left out: ") and problem in warning, warning
    finally:
        store.close()
    for args in (["runs"], ["leaderboard", "--reported", "none"]):
        r = harness_cli(*args, "--db", db)
        assert r.code == 0, r.err
        (line,) = r.err.strip().splitlines()
        assert line.startswith(f"warning: run 2 in {db} cannot be read and is left out: ") and problem in line
    cli_error(harness_cli("show", "2", "--db", db), f"error: run 2 in {db} cannot be read: ", problem)


def test_bad_per_sample_rows_are_one_line(tmp_path):
    db = make_db(tmp_path / "results.db")
    spoil(db, "UPDATE sample_attacks SET survived = 'perhaps' WHERE idx = 1")
    store = open_store(str(db), readonly=True)
    try:
        with pytest.raises(HarnessError) as exc:
            store.samples(1)
        assert str(exc.value).startswith(f"the per-sample results of run 1 (evaluation 1) in {db} cannot be read: ")
    finally:
        store.close()


# -- writes the database cannot take now ----------------------------------------------------------------------


def test_a_write_busy_past_the_timeout_is_unavailable_and_nothing_is_lost(tmp_path, no_waiting):
    db = make_db(tmp_path / "results.db", finished=0)
    store = open_store(str(db))
    run_id = store.create_run(make_info())
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as exc:
            evaluate(store, run_id, finish=True)
        assert str(exc.value) == f"cannot write to database '{db}': database is locked (busy for more than 0.05 s)"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.get_run(run_id).status == RUNNING
    evaluate(store, run_id, finish=True)  # the same write, retried once the database is free
    assert store.get_run(run_id).status == "finished"
    store.close()


def test_a_full_disk_is_unavailable_and_the_run_is_left_as_it_was(tmp_path):
    from sqlalchemy import event

    db = make_db(tmp_path / "results.db", finished=0)
    store = open_store(str(db))
    run_id = store.create_run(make_info())
    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    store._engine.dispose()

    def small_disk(dbapi_connection, record):
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 2}")

    event.listen(store._engine, "connect", small_disk)
    try:
        with pytest.raises(StoreUnavailable) as exc:
            evaluate(store, run_id, make_result(2000), make_samples(2000), finish=True)
        assert str(exc.value) == f"cannot write to database '{db}': database or disk is full"
    finally:
        event.remove(store._engine, "connect", small_disk)
        store._engine.dispose()
    record = store.get_run(run_id)
    assert (record.status, record.evaluations) == (RUNNING, [])
    store.close()
