"""Frozen databases of older schemas upgrade to the newest revision with nothing lost, and bad revisions are refused.

``data/schema-1.db`` holds real runs made by the harness at commit 3655b16
(``data/make-schema-1.sh``), from before Alembic (``schema_meta.version`` 1):
finished l_inf and l2 runs with attacks, certifiers, radii and a CROWN subset, a
failed, an interrupted and a killed (still ``running``) run.
``data/revision-1.db`` holds real runs made at commit 86943a6, the last before
store revision 2 (``schema_meta.version`` 2, which is Alembic's revision 1;
``data/make-revision-1.sh``): three finished runs (l_inf and l2, seven
certifiers among them, radii, a CROWN subset), a failed, an interrupted and a killed run.
``data/revision-2.db`` holds real runs made at commit 885e2fb, the last before store
revision 3 (``data/make-revision-2.sh``): two finished runs (one evaluated twice,
certified and uncertified samples, radii, a CROWN subset) and a failed one.
The tests read the old rows with ``sqlite3`` first and check that the upgraded
store says the same things, typed, and that the upgraded schema is the schema
a new database gets.

SQLite only: the frozen databases are SQLite files, and the backup beside the file, the
write lock an automatic upgrade needs free, and a newer or unknown revision in a file are
SQLite's. Revision 1 built by its migration on PostgreSQL and upgraded by ``harness db
upgrade`` to the fresh schema is ``test_postgresql.py``'s.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from harness.errors import UsageError
from harness.results import Cost, EvaluationResult
from harness.store import FINISHED, RunInfo, database_revision, open_store, upgrade_database
from harness.store import _migrate as migrate
from harness.store._schema import REVISION

DATA = Path(__file__).parent / "data"
RUN_COLUMNS = ("id", "status", "dataset", "norm", "eps", "preset", "seed", "epochs", "device", "train_seconds", "error")


def read_old(path: Path) -> dict:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        old = {
            "version": db.execute("SELECT version FROM schema_meta").fetchone()[0],
            "runs": [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")],
            "samples": sorted(tuple(r) for r in db.execute("SELECT run_id, idx, label, prediction FROM samples")),
            "sample_attacks": sorted(tuple(r) for r in db.execute("SELECT run_id, idx, attack, survived FROM sample_attacks")),
            "sample_certificates": sorted(
                tuple(r) for r in db.execute("SELECT run_id, idx, certifier, certified, radius FROM sample_certificates")
            ),
        }
        if "results" in tables:
            old["results"] = {r["run_id"]: dict(r) for r in db.execute("SELECT * FROM results")}
            old["attack_results"] = {(r["run_id"], r["attack"]): dict(r) for r in db.execute("SELECT * FROM attack_results")}
            old["certifier_results"] = {(r["run_id"], r["certifier"]): dict(r) for r in db.execute("SELECT * FROM certifier_results")}
        else:
            old["metrics"] = {(r["run_id"], r["name"]): r["value"] for r in db.execute("SELECT * FROM metrics")}
    db.close()
    return old


@pytest.fixture(params=["schema-1.db", "revision-1.db"])
def frozen(request, tmp_path):
    copy = tmp_path / request.param
    shutil.copy(DATA / request.param, copy)
    return copy, read_old(copy)


@pytest.fixture
def revision_1(tmp_path):
    copy = tmp_path / "revision-1.db"
    shutil.copy(DATA / "revision-1.db", copy)
    return copy, read_old(copy)


def test_the_frozen_databases_are_what_they_say(tmp_path):
    schema_1, revision_1 = read_old(DATA / "schema-1.db"), read_old(DATA / "revision-1.db")
    assert (schema_1["version"], revision_1["version"], REVISION) == (1, 2, 3)
    assert [r["status"] for r in schema_1["runs"]] == ["finished", "finished", "finished", "interrupted", "running", "failed"]
    assert [r["status"] for r in revision_1["runs"]] == ["finished", "finished", "finished", "failed", "interrupted", "running"]
    assert len(revision_1["sample_certificates"]) > 200 and len(revision_1["certifier_results"]) == 10


def test_every_run_result_and_sample_of_revision_1_survives_the_upgrade(revision_1):
    path, old = revision_1
    store = open_store(str(path))
    try:
        (note,) = store.warnings
        assert note.startswith(f"upgraded database '{path}' from revision 1 to revision 3; backup: {path}.rev1-backup-")
        runs = store.list_runs()
        assert [r.id for r in runs] == [r["id"] for r in old["runs"]]
        for record, row in zip(runs, old["runs"]):
            assert (record.id, record.status, record.info.dataset, record.info.norm, record.info.eps, record.info.preset, record.info.seed,
                    record.info.epochs, record.info.device, record.train_seconds, record.error) == tuple(row[c] for c in RUN_COLUMNS)
            assert record.info.trainer == row["trainer"] and record.info.origin == "trained"
            assert (record.checkpoint, record.weights, record.training, record.resumes, record.heartbeat_at) == (None, None, {}, 0, None)
            assert record.created_at.strftime("%Y-%m-%d %H:%M:%S.%f") == row["created_at"]
            summary = old["results"].get(record.id)
            if summary is None:
                assert record.evaluations == [] and record.result is None
                continue
            (evaluation,) = record.evaluations
            assert record.best == evaluation and evaluation.seconds == row["eval_seconds"] == record.eval_seconds
            assert evaluation.config == record.info.config["evaluation"] and evaluation.environment == record.info.environment
            assert evaluation.created_at == record.finished_at
            r = evaluation.result
            assert (r.samples, r.clean_accuracy, r.robust_accuracy, r.certified_accuracy, r.not_applicable) == (
                summary["eval_samples"], summary["clean_accuracy"], summary["robust_accuracy"], summary["certified_accuracy"],
                json_of(summary["not_applicable"]),
            )
            attacks = {name: a for (run_id, name), a in old["attack_results"].items() if run_id == record.id}
            assert [a.name for a in r.attacks] == sorted(attacks)
            for a in r.attacks:
                o = attacks[a.name]
                assert (a.label, a.options, a.accuracy, a.attacked, a.seconds, a.error) == (
                    o["label"], json_of(o["options"]), o["accuracy"], o["attacked"], o["seconds"], o["error"])
            certifiers = {name: c for (run_id, name), c in old["certifier_results"].items() if run_id == record.id}
            assert [c.name for c in r.certifiers] == sorted(certifiers)
            for c in r.certifiers:
                o = certifiers[c.name]
                assert (c.options, c.accuracy, c.samples, c.seconds, c.error) == (
                    json_of(o["options"]), o["accuracy"], o["samples"], o["seconds"], o["error"])
                assert (c.radius.mean if c.radius else None, c.radius.median if c.radius else None) == (o["mean_radius"], o["median_radius"])
        assert_samples_survived(store, old)
    finally:
        store.close()


def test_every_run_metric_and_sample_of_schema_1_survives_the_upgrade(tmp_path):
    path = tmp_path / "schema-1.db"
    shutil.copy(DATA / "schema-1.db", path)
    old = read_old(path)
    store = open_store(str(path))
    try:
        (note,) = store.warnings
        assert note.startswith(f"upgraded database '{path}' from schema 1 (from before revisions) to revision 3; backup: {path}.schema1-backup-")
        runs = store.list_runs()
        assert [r.id for r in runs] == [r["id"] for r in old["runs"]]
        for record, row in zip(runs, old["runs"]):
            assert (record.status, record.info.trainer, record.info.dataset, record.info.eps, record.info.seed) == (
                row["status"], row["plugin"], row["dataset"], row["eps"], row["seed"]
            )
            assert (record.train_seconds, record.eval_seconds, record.error) == (row["train_seconds"], row["eval_seconds"], row["error"])
            assert "plugin" not in record.info.config and record.info.config["trainer"]["name"] == record.info.trainer
            metrics = {name: value for (run_id, name), value in old["metrics"].items() if run_id == record.id}
            if not metrics:
                assert record.result is None and record.evaluations == []
                continue
            r = record.result
            assert (r.samples, r.clean_accuracy) == (metrics["eval_samples"], metrics["clean_accuracy"])
            assert (r.robust_accuracy, r.certified_accuracy) == (metrics.get("robust_accuracy"), metrics.get("certified_accuracy"))
            assert {a.name: a.accuracy for a in r.attacks} == {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("robust_accuracy/")}
            old_certified = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("certified_accuracy/")}
            assert {c.name: c.accuracy for c in r.certifiers} == old_certified
            for c in r.certifiers:
                assert c.samples == metrics.get(f"certified_samples/{c.name}", metrics["eval_samples"])
                assert (c.radius.mean if c.radius else None) == metrics.get(f"average_radius/{c.name}")
            labels = {a["name"]: a["label"] for a in record.info.config["evaluation"]["attackers"]}
            assert all(a.label == labels[a.name] and a.error is None for a in r.attacks)
            listed = [c["name"] for c in record.info.config["evaluation"]["certifiers"]]
            assert sorted(listed) == sorted(c.name for c in r.certifiers)
            assert set(record.info.config["evaluation"]["not_applicable"]) == set(r.not_applicable)
            samples = store.samples(record.id)
            for a in r.attacks:
                assert sum(s.attacks[a.name] for s in samples) == round(a.accuracy * r.samples)
        assert_samples_survived(store, old)
        # The l2 run keeps its radii and CROWN subset.
        (crm,) = [r for r in runs if r.info.trainer == "crm"]
        liplt, crown = crm.result.certifier("liplt"), crm.result.certifier("crown")
        radii = sorted(s.certificates["liplt"][1] for s in store.samples(crm.id))
        assert liplt.radius.mean == pytest.approx(sum(radii) / len(radii)) and liplt.radius.mean > 0
        assert liplt.radius.median == radii[(len(radii) - 1) // 2]  # torch.median's lower middle, as the evaluation computes it
        assert crown.samples == 5 and crown.radius is None
        assert crm.result.attack("pgd-l2").label == "L2-PGD-3"
    finally:
        store.close()


def json_of(value):
    import json

    return json.loads(value) if isinstance(value, str) else value


def assert_samples_survived(store, old: dict) -> None:
    """Every per-sample row of the old database, value for value, through the store's reads."""
    samples, attacks, certificates = [], [], []
    for record in store.list_runs():
        for s in store.samples(record.id):
            samples.append((record.id, s.index, s.label, s.prediction))
            attacks += [(record.id, s.index, name, int(survived)) for name, survived in s.attacks.items()]
            certificates += [(record.id, s.index, name, int(ok), radius) for name, (ok, radius) in s.certificates.items()]
            # Revision 3's outcome comes from the stored verdict; no stored attack had stages.
            assert s.outcomes == {name: "certified" if ok else "not-certified" for name, (ok, _) in s.certificates.items()}
            assert s.broken_by == {}
        for evaluation in record.evaluations:
            assert_predates_revision_3(evaluation.result)
    assert sorted(samples) == old["samples"]
    assert sorted(attacks) == old["sample_attacks"]
    assert sorted(certificates) == old["sample_certificates"]


def assert_predates_revision_3(result: EvaluationResult) -> None:
    """What an evaluation stored before revision 3 reads as: no cost, stages, time-outs, radius method or masking check."""
    assert result.masking is None
    for a in result.attacks:
        assert (a.cost, a.stages, a.gradient_free) == (Cost(seconds=a.seconds), {}, False)
    for c in result.certifiers:
        assert (c.cost, c.timeouts, c.errors, c.sample_error, c.radius_method, c.radius_tolerance, c.sound) == (
            Cost(seconds=c.seconds), 0, 0, None, None, None, True)


def test_revision_2_upgrades_to_3_with_each_outcome_from_its_verdict(revision_1):
    """Revision 2 as its migration leaves the frozen revision-1 file, then the automatic upgrade to revision 3."""
    from alembic import command

    path, old = revision_1
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        config = migrate._config(conn)
        command.stamp(config, "1")
        command.upgrade(config, "2")
    engine.dispose()
    assert database_revision(str(path)).revision == 2
    store = open_store(str(path))
    try:
        (note,) = store.warnings
        assert note.startswith(f"upgraded database '{path}' from revision 2 to revision 3; backup: {path}.rev2-backup-")
        assert_samples_survived(store, old)
        with sqlite3.connect(path) as db:
            counts = dict(db.execute("SELECT outcome, count(*) FROM sample_certificates GROUP BY outcome").fetchall())
        db.close()
        certified = sum(row[3] for row in old["sample_certificates"])
        assert counts == {"certified": certified, "not-certified": len(old["sample_certificates"]) - certified}
    finally:
        store.close()


REVISION_2_TABLES = ("runs", "evaluations", "results", "attack_results", "certifier_results", "samples", "sample_attacks",
                     "sample_certificates")


def read_tables(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table of revision 2, sorted, as sqlite3 reads them."""
    with sqlite3.connect(path) as db:
        columns = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in REVISION_2_TABLES}
        rows = {t: sorted(db.execute(f"SELECT {', '.join(columns[t])} FROM {t}").fetchall(), key=repr) for t in REVISION_2_TABLES}
    db.close()
    return {"columns": columns, **rows}


def test_every_row_of_the_frozen_revision_2_survives_the_upgrade_with_its_outcomes_derived(tmp_path):
    path = tmp_path / "revision-2.db"
    shutil.copy(DATA / "revision-2.db", path)
    old = read_tables(path)
    assert database_revision(str(path)).revision == 2
    assert [r[0] for r in old["evaluations"]] == [1, 2, 3] and len(old["sample_certificates"]) > 150
    assert sum(r[3] for r in old["sample_certificates"]) > 0  # some certified, some not: both outcomes are derived
    store = open_store(str(path))
    try:
        (note,) = store.warnings
        assert note.startswith(f"upgraded database '{path}' from revision 2 to revision 3; backup: {path}.rev2-backup-")
        runs = store.list_runs()
        assert [r.status for r in runs] == ["finished", "finished", "failed"] and len(runs[0].evaluations) == 2
        for record in runs:
            for evaluation in record.evaluations:
                assert_predates_revision_3(evaluation.result)
                for s in store.samples(record.id, evaluation.id):
                    assert s.outcomes == {n: "certified" if ok else "not-certified" for n, (ok, _) in s.certificates.items()}
                    assert s.broken_by == {}
    finally:
        store.close()
    # Every value revision 2 held is there, unchanged, in the columns it had.
    with sqlite3.connect(path) as db:
        for table in REVISION_2_TABLES:
            columns = ", ".join(old["columns"][table])
            assert sorted(db.execute(f"SELECT {columns} FROM {table}").fetchall(), key=repr) == old[table], table
        derived = db.execute("SELECT count(*) FROM sample_certificates WHERE outcome != CASE WHEN certified THEN 'certified' "
                             "ELSE 'not-certified' END").fetchone()
    db.close()
    assert derived == (0,)


def test_the_upgraded_database_takes_new_runs_and_never_reuses_an_id(frozen):
    path, old = frozen
    with sqlite3.connect(path) as db:  # a run deleted by hand: its id is still never handed out again
        db.execute("PRAGMA foreign_keys = OFF")
        last = max(r["id"] for r in old["runs"])
        for table in ("sample_attacks", "sample_certificates", "samples", "attack_results", "certifier_results", "results"):
            if table in {n for (n,) in db.execute("SELECT name FROM sqlite_master")}:
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (last,))
        db.execute("DELETE FROM runs WHERE id = ?", (last,))
    db.close()
    store = open_store(str(path))
    try:
        run_id = store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {}, "cpu", {}))
        evaluation_id = store.record_evaluation(run_id, result=EvaluationResult(samples=0, clean_accuracy=0.0), samples=[], config={},
                                                environment={}, seconds=0.0, finish=True)
        assert run_id == last + 1 and store.get_run(run_id).status == FINISHED
        assert evaluation_id == max(e.id for r in store.list_runs() for e in r.evaluations)
    finally:
        store.close()


def schema(path: Path) -> dict:
    """Every table's columns (name, type, nullable, primary key, default), indexes, foreign keys and checks, as SQLAlchemy inspects them."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        inspector = inspect(engine)
        found = {}
        for table in inspector.get_table_names():
            found[table] = {
                "columns": sorted((c["name"], str(c["type"]), c["nullable"], c["primary_key"], c["default"])
                                  for c in inspector.get_columns(table)),
                "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)),
                "foreign keys": sorted((tuple(k["constrained_columns"]), k["referred_table"], tuple(k["referred_columns"]))
                                       for k in inspector.get_foreign_keys(table)),
                "checks": sorted((k["name"], k["sqltext"]) for k in inspector.get_check_constraints(table)),
            }
        return found
    finally:
        engine.dispose()


@pytest.fixture(params=["schema-1.db", "revision-1.db", "revision-2.db"])
def any_frozen(request, tmp_path):
    copy = tmp_path / request.param
    shutil.copy(DATA / request.param, copy)
    return copy


def test_the_upgraded_schema_is_the_fresh_schema(any_frozen, tmp_path):
    path = any_frozen
    open_store(str(path)).close()
    open_store(str(tmp_path / "fresh.db")).close()
    upgraded, fresh = schema(path), schema(tmp_path / "fresh.db")
    assert sorted(fresh) == ["alembic_version", "attack_results", "certifier_results", "evaluations", "results", "runs",
                             "sample_attacks", "sample_certificates", "samples", "schema_meta"]
    assert upgraded.keys() == fresh.keys()
    for table in fresh:
        assert upgraded[table] == fresh[table], table
    with sqlite3.connect(path) as db, sqlite3.connect(tmp_path / "fresh.db") as new:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == new.execute("SELECT version_num FROM alembic_version").fetchall()
        meta = "SELECT id, version FROM schema_meta"
        assert db.execute(meta).fetchall() == [(1, 3)] == new.execute(meta).fetchall()
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    new.close()


def test_revision_1_built_by_its_migration_is_the_frozen_schema_and_upgrades_to_the_fresh_one(tmp_path, revision_1):
    from alembic import command

    built = tmp_path / "built.db"
    engine = create_engine(f"sqlite:///{built}")
    with engine.begin() as conn:
        command.upgrade(migrate._config(conn), "1")
    engine.dispose()
    frozen, _ = revision_1
    ours, theirs = schema(built), schema(frozen)
    theirs["alembic_version"] = ours["alembic_version"]  # the frozen file is from before Alembic
    assert ours == theirs
    open_store(str(built)).close()
    open_store(str(tmp_path / "fresh.db")).close()
    assert schema(built) == schema(tmp_path / "fresh.db")


def test_the_backup_is_the_database_as_it_was(revision_1):
    path, old = revision_1
    done = upgrade_database(str(path))
    assert (done.from_revision, done.to_revision) == (1, 3) and done.backup is not None
    backup = Path(done.backup)
    assert backup.parent == path.parent and backup.name.startswith("revision-1.db.rev1-backup-")
    assert read_old(backup) == old
    assert str(done) == f"upgraded database '{path}' from revision 1 to revision 3; backup: {backup}"
    again = upgrade_database(str(path))
    assert (again.from_revision, again.backup) == (3, None)
    assert str(again) == f"database '{path}' is at revision 3, the newest: nothing to do"


def test_harness_db_current_and_upgrade(harness_cli, revision_1):
    path, _ = revision_1
    current = harness_cli("db", "current", "--db", str(path))
    assert current.code == 0 and current.out.strip() == (
        f"{path}: revision 1; this harness upgrades it to revision 3: harness db upgrade --db {path}"
    )
    upgraded = harness_cli("db", "upgrade", "--db", str(path))
    assert upgraded.code == 0, upgraded.err
    assert upgraded.out.startswith(f"upgraded database '{path}' from revision 1 to revision 3; backup: {path}.rev1-backup-")
    assert Path(upgraded.out.split("backup: ")[1].strip()).is_file()
    assert harness_cli("db", "current", "--db", str(path)).out.strip() == f"{path}: revision 3 (the newest)"
    assert database_revision(str(path)).revision == 3


def test_an_automatic_upgrade_waits_for_no_writer_and_says_what_to_run(revision_1):
    path, old = revision_1
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        for readonly in (False, True):
            with pytest.raises(UsageError) as exc:
                open_store(str(path), readonly=readonly)
            assert str(exc.value) == (
                f"database '{path}' is at an older revision than this harness's 3 and cannot be upgraded automatically "
                f"(another process is writing to it now): run `harness db upgrade --db {path}`"
            )
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert read_old(path) == old and list(path.parent.glob("*backup*")) == []
    store = open_store(str(path), readonly=True)  # once the writer is gone, a read command upgrades it (it is safe)
    try:
        assert len(store.list_runs()) == len(old["runs"])
    finally:
        store.close()


def test_a_failed_upgrade_leaves_the_database_as_it_was(revision_1, monkeypatch):
    path, old = revision_1
    real = migrate.command.upgrade

    def upgrade_then_fail(config, revision):
        real(config, revision)  # every table rebuilt and copied ...
        raise RuntimeError("the disk went away")  # ... then a failure before the commit

    monkeypatch.setattr(migrate.command, "upgrade", upgrade_then_fail)
    with pytest.raises(RuntimeError, match="the disk went away"):
        open_store(str(path))
    assert read_old(path) == old
    with sqlite3.connect(path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "evaluations" not in tables and "alembic_version" not in tables
    monkeypatch.undo()
    open_store(str(path)).close()
    assert database_revision(str(path)).revision == 3


def set_revision(path: Path, value: str) -> None:
    open_store(str(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (value,))
    db.close()


def test_a_newer_revision_is_refused_naming_both(tmp_path):
    path = tmp_path / "future.db"
    set_revision(path, "4")
    before = path.read_bytes()
    for call in (lambda: open_store(str(path)), lambda: open_store(str(path), readonly=True), lambda: upgrade_database(str(path)),
                 lambda: database_revision(str(path))):
        with pytest.raises(UsageError) as exc:
            call()
        assert str(exc.value) == f"database '{path}' was written by a newer harness (revision 4; this harness knows up to 3)"
    assert path.read_bytes() == before


@pytest.mark.parametrize("value", ["abc", "0", "02", ""])
def test_an_unknown_revision_is_refused_in_one_line(tmp_path, harness_cli, value):
    path = tmp_path / "odd.db"
    set_revision(path, value)
    with pytest.raises(UsageError) as exc:
        open_store(str(path), readonly=True)
    assert str(exc.value) == f"cannot open database '{path}': its revision {value!r} is not a harness revision (known: 1, 2, 3)"
    r = harness_cli("runs", "--db", str(path))
    assert r.code == 2 and r.err.strip() == f"error: {exc.value}"


def test_an_unknown_schema_version_from_before_revisions_is_refused_in_one_line(tmp_path, harness_cli):
    path = tmp_path / "odd.db"
    shutil.copy(DATA / "revision-1.db", path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_meta SET version = 'abc'")
    db.close()
    for args in (["runs"], ["leaderboard"], ["run", "--plugin", "linf_v2", "--dataset", "mnist"]):
        r = harness_cli(*args, "--db", str(path))
        assert r.code == 2 and r.err.strip() == (
            f"error: cannot open database '{path}': its schema version 'abc' is not one harness knows (1 or 2, before revisions)"
        )


def test_an_empty_database_file_is_created_by_a_write_and_refused_by_a_read(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(UsageError, match="it is empty"):
        open_store(str(path), readonly=True)
    assert database_revision(str(path)).revision is None
    open_store(str(path)).close()
    assert database_revision(str(path)).revision == 3
