"""A recorded run is a promise: a full disk, a locked, deleted or replaced database never loses a run's results."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

TINY = [
    "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--epochs", "1", "--train-samples", "600",
    "--eval-samples", "24", "--set", "model.width=32", "--set", "model.depth=3", "--set", "attacker.pgd.steps=3", "--attack", "pgd",
]


@pytest.fixture(autouse=True)
def no_retry_pauses(monkeypatch):
    import harness.execution

    monkeypatch.setattr(harness.execution, "RECORD_RETRIES_S", (0.0, 0.0))


def test_a_full_disk_while_saving_the_weights_leaves_no_partial_file_and_keeps_the_evaluation(
    harness_cli, shared_data, tmp_path, monkeypatch
):
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "model.pt" in str(getattr(f, "name", f)):
            f.write(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 32: No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    r = harness_cli("run", *TINY, "--data-dir", str(shared_data))
    assert r.code == 0, r.err
    assert "the trained weights could not be saved" in r.err and "the evaluation goes on" in r.err
    run_dir = tmp_path / "runs" / "run-1"
    assert not (run_dir / "model.pt").exists()
    assert [p.name for p in run_dir.iterdir() if "model.pt" in p.name] == []  # no partial or temporary file stays
    shown = json.loads(harness_cli("show", "1", "--format", "json").out)
    assert shown["status"] == "finished" and shown["weights"] is None and shown["result"]["samples"] == 24


def test_results_the_database_cannot_take_go_to_a_file_that_harness_import_records(harness_cli, shared_data, tmp_path, monkeypatch):
    from harness.store import StoreUnavailable
    from harness.store._sql import SqlStore

    def locked(self, *args, **kwargs):
        raise StoreUnavailable("cannot write to results.db: database is locked (busy for more than 30 s)")

    with monkeypatch.context() as patch:
        patch.setattr(SqlStore, "record_evaluation", locked)
        r = harness_cli("run", *TINY, "--data-dir", str(shared_data))
    assert r.code == 1
    results = tmp_path / "runs" / "run-1" / "results.json"
    assert results.exists() and f"harness import {results}" in r.err
    assert r.err.count("retrying") == 2
    pending = json.loads(results.read_text())
    assert pending["run_id"] == 1 and len(pending["samples"]) == 24
    imported = harness_cli("import", str(results))
    assert imported.code == 0, imported.err
    assert "as run 1 (completed run 1" in imported.out
    shown = json.loads(harness_cli("show", "1", "--format", "json", "--samples", "100").out)
    assert shown["status"] == "finished" and shown["result"]["samples"] == 24 and len(shown["samples"]) == 24
    assert shown["result"]["clean_accuracy"] == pending["result"]["clean_accuracy"]
    again = harness_cli("import", str(results))
    assert again.code == 2 and "already finished" in again.err


@pytest.mark.parametrize("fate", ["deleted", "replaced"])
def test_a_database_deleted_or_replaced_during_the_run_is_noticed(harness_cli, shared_data, tmp_path, monkeypatch, fate):
    import harness.execution

    other = tmp_path / "other"
    other.mkdir()
    if fate == "replaced":  # another harness database, with runs of its own
        from harness.store import open_store

        open_store(str(other / "results.db")).close()
    real_evaluate = harness.execution.evaluate

    def evaluate_then_lose_the_database(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"results.db{suffix}").unlink(missing_ok=True)
        if fate == "replaced":
            shutil.copy(other / "results.db", tmp_path / "results.db")
        return result

    monkeypatch.setattr(harness.execution, "evaluate", evaluate_then_lose_the_database)
    r = harness_cli("run", *TINY, "--data-dir", str(shared_data))
    assert r.code == 1
    assert "finished" not in r.out
    assert ("deleted" in r.err or "replaced" in r.err or "another database" in r.err), r.err
    results = tmp_path / "runs" / "run-1" / "results.json"
    assert results.exists()
    if fate == "replaced":  # the replacement was not written to
        listed = harness_cli("runs")
        assert listed.code == 0 and "no runs recorded" in listed.out
    imported = harness_cli("import", str(results), "--db", "fresh.db")
    assert imported.code == 0 and "a new run" in imported.out, imported.err


@pytest.mark.parametrize("lr", ["1e30", "3"], ids=["non-finite", "finite-blow-up"])
def test_a_diverging_run_stops_at_once_and_is_recorded_failed_with_the_reason(harness_cli, shared_data, lr):
    r = harness_cli(
        "run", "--plugin", "crm", "--dataset", "mnist", "--preset", "quick", "--epochs", "2", "--train-samples", "1024",
        "--eval-samples", "16", "--set", f"trainer.lr={lr}", "--set", "trainer.robust_start_epoch=0", "--data-dir", str(shared_data),
    )
    assert r.code == 1 and "training diverged" in r.err
    shown = json.loads(harness_cli("show", "1", "--format", "json").out)
    assert shown["status"] == "failed" and "training diverged" in shown["error"] and "epoch 1/2" in shown["error"]
    assert shown["evaluations"] == []  # never evaluated, so never on the leaderboard
    assert "no run has finished yet: 1 failed" in harness_cli("leaderboard").out


@pytest.mark.parametrize("content", ["[]", '{"format": 1}', "not json"])
def test_a_malformed_results_file_is_one_line(harness_cli, tmp_path, content):
    (tmp_path / "bad.json").write_text(content)
    r = harness_cli("import", "bad.json", "--db", "any.db")
    assert r.code == 2 and r.err.startswith("error: 'bad.json' is not a harness results file: ") and len(r.err.splitlines()) == 1


def test_the_same_results_imported_twice_into_another_database_are_refused(harness_cli, shared_data, tmp_path, monkeypatch):
    from harness.store import StoreGone
    from harness.store._sql import SqlStore

    def gone(self, *args, **kwargs):
        raise StoreGone("results.db was replaced by another database")

    with monkeypatch.context() as patch:
        patch.setattr(SqlStore, "record_evaluation", gone)
        assert harness_cli("run", *TINY, "--data-dir", str(shared_data)).code == 1
    results = str(tmp_path / "runs" / "run-1" / "results.json")
    first = harness_cli("import", results, "--db", "other.db")
    assert first.code == 0 and "as run 1 (a new run)" in first.out, first.err
    second = harness_cli("import", results, "--db", "other.db")
    assert second.code == 2 and "already imported into other.db as run 1" in second.err
