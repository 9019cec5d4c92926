"""A database written by schema 1 (``tests/store/data/schema-1.db``) upgrades to the current schema with nothing lost.

The frozen database holds real runs made by the harness at commit 3655b16
(``data/make-schema-1.sh``): finished l_inf and l2 runs with attacks,
certifiers, radii and a CROWN subset, a failed, an interrupted and a killed
(still ``running``) run. The test reads the old rows with ``sqlite3`` first and
checks that the upgraded store says the same things, typed.
"""

import shutil
import sqlite3
from pathlib import Path

import pytest

from harness.store._sql import SCHEMA_VERSION, SqlStore

FROZEN = Path(__file__).parent / "data" / "schema-1.db"


@pytest.fixture
def old(tmp_path):
    copy = tmp_path / "schema-1.db"
    shutil.copy(FROZEN, copy)
    with sqlite3.connect(copy) as db:
        db.row_factory = sqlite3.Row
        before = {
            "version": db.execute("SELECT version FROM schema_meta").fetchone()[0],
            "runs": [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")],
            "metrics": {(r["run_id"], r["name"]): r["value"] for r in db.execute("SELECT * FROM metrics")},
            "samples": {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("samples", "sample_attacks", "sample_certificates")},
        }
    return copy, before


def test_the_frozen_database_is_schema_1_with_every_status(old):
    _, before = old
    assert before["version"] == 1 and SCHEMA_VERSION == 2
    assert [r["status"] for r in before["runs"]] == ["finished", "finished", "finished", "interrupted", "running", "failed"]


def test_every_run_metric_and_sample_survives_the_upgrade(old):
    path, before = old
    store = SqlStore.open(str(path))
    try:
        runs = store.list_runs()
        assert [r.id for r in runs] == [r["id"] for r in before["runs"]]
        for record, row in zip(runs, before["runs"]):
            assert (record.status, record.info.trainer, record.info.dataset, record.info.eps, record.info.seed) == (
                row["status"], row["plugin"], row["dataset"], row["eps"], row["seed"]
            )
            assert (record.train_seconds, record.eval_seconds, record.error) == (row["train_seconds"], row["eval_seconds"], row["error"])
            metrics = {name: value for (run_id, name), value in before["metrics"].items() if run_id == record.id}
            if not metrics:
                assert record.result is None
                continue
            r = record.result
            assert (r.samples, r.clean_accuracy) == (metrics["eval_samples"], metrics["clean_accuracy"])
            assert (r.robust_accuracy, r.certified_accuracy) == (metrics.get("robust_accuracy"), metrics.get("certified_accuracy"))
            assert {a.name: a.accuracy for a in r.attacks} == {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("robust_accuracy/")}
            old_certified = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("certified_accuracy/")}
            assert {c.name: c.accuracy for c in r.certifiers} == old_certified
            for c in r.certifiers:
                assert c.samples == metrics.get(f"certified_samples/{c.name}", metrics["eval_samples"])
                mean = metrics.get(f"average_radius/{c.name}")
                assert (c.radius.mean if c.radius else None) == mean
            labels = {a["name"]: a["label"] for a in record.info.config["evaluation"]["attackers"]}
            assert all(a.label == labels[a.name] and a.error is None for a in r.attacks)
            # Every sample row survives, and its outcomes agree with the typed result.
            samples = store.samples(record.id)
            assert len(samples) == r.samples
            for a in r.attacks:
                assert sum(s.attacks[a.name] for s in samples) == round(a.accuracy * r.samples)
            for c in r.certifiers:
                tried = [s.certificates[c.name] for s in samples if c.name in s.certificates]
                assert len(tried) == c.samples and sum(ok for ok, _ in tried) == round(c.accuracy * c.samples)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_meta").fetchone()[0] == SCHEMA_VERSION
        assert {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in before["samples"]} == before["samples"]
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "metrics" not in tables and {"results", "attack_results", "certifier_results"} <= tables


def test_the_l2_run_keeps_its_radii_and_crown_subset(old):
    path, _ = old
    store = SqlStore.open(str(path))
    try:
        (crm,) = [r for r in store.list_runs() if r.info.trainer == "crm"]
        liplt, crown = crm.result.certifier("liplt"), crm.result.certifier("crown")
        radii = sorted(s.certificates["liplt"][1] for s in store.samples(crm.id))
        assert liplt.radius.mean == pytest.approx(sum(radii) / len(radii)) and liplt.radius.mean > 0
        assert liplt.radius.median == radii[(len(radii) - 1) // 2]  # torch.median's lower middle, as the evaluation computes it
        assert crown.samples == 5 and crown.radius is None
        assert crm.result.attack("pgd-l2").label == "L2-PGD-3"
    finally:
        store.close()


def test_the_upgraded_database_takes_new_runs(old):
    from harness.results import EvaluationResult
    from harness.store import RunInfo

    path, before = old
    store = SqlStore.open(str(path))
    try:
        run_id = store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, None, 1, 1, {}, "cpu", {}))
        store.record_results(run_id, result=EvaluationResult(samples=0, clean_accuracy=0.0), samples=[], config={}, train_seconds=0, eval_seconds=0)
        assert run_id == max(r["id"] for r in before["runs"]) + 1 and store.get_run(run_id).status == "finished"
    finally:
        store.close()


def test_the_upgraded_schema_is_the_fresh_schema(old, tmp_path):
    from sqlalchemy import create_engine, inspect

    path, _ = old
    SqlStore.open(str(path)).close()
    SqlStore.open(str(tmp_path / "fresh.db")).close()

    def schema(db):
        engine = create_engine(f"sqlite:///{db}")
        try:
            inspector = inspect(engine)
            return {
                table: sorted((c["name"], str(c["type"]), c["nullable"], c["primary_key"]) for c in inspector.get_columns(table))
                for table in inspector.get_table_names()
            }
        finally:
            engine.dispose()

    upgraded, fresh = schema(path), schema(tmp_path / "fresh.db")
    assert upgraded.keys() == fresh.keys()
    for table in fresh:
        assert upgraded[table] == fresh[table], table


def test_the_upgraded_configuration_names_the_trainer_once_and_lists_what_ran(old):
    path, _ = old
    store = SqlStore.open(str(path))
    try:
        for record in store.list_runs():
            assert "plugin" not in record.info.config and record.info.config["trainer"]["name"] == record.info.trainer
            if record.result is not None:
                listed = [c["name"] for c in record.info.config["evaluation"]["certifiers"]]
                assert sorted(listed) == sorted(c.name for c in record.result.certifiers)
                assert set(record.info.config["evaluation"]["not_applicable"]) == set(record.result.not_applicable)
    finally:
        store.close()
