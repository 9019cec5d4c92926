"""A run survives its process: killed (SIGKILL) or stopped (SIGTERM, SIGHUP) mid-training, resumed with --resume,
it ends with exactly the weights, results and per-sample results of the run that was never interrupted (CPU)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch

# Three short epochs of a small l_inf-dist net v2: slow enough to stop between checkpoints, quick to run.
TINY = [
    "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--epochs", "3", "--train-samples", "1536",
    "--eval-samples", "40", "--set", "model.width=64", "--set", "model.depth=3", "--set", "attacker.pgd.steps=5",
    "--attack", "pgd", "--device", "cpu",
]


def _harness(exe: str, env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([exe, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_epoch(db: Path, run_id: int) -> int | None:
    """The epoch of the run's last recorded checkpoint (read-only, never waiting on the writer)."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
            row = conn.execute("SELECT checkpoint FROM runs WHERE id = ?", (run_id,)).fetchone()
    except sqlite3.Error:
        return None
    if not row or row[0] is None:
        return None
    return json.loads(row[0]).get("epoch")


def _stop_after_first_checkpoint(proc: subprocess.Popen[str], db: Path, sig: int) -> int:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        epoch = _checkpoint_epoch(db, 1)
        if epoch is not None:
            proc.send_signal(sig)
            return epoch
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint within 300 s")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def _results(db: Path) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
    """Every stored number of run 1's evaluation, without ids and times."""
    with sqlite3.connect(db) as conn:
        (evaluation,) = conn.execute("SELECT id FROM evaluations WHERE run_id = 1").fetchall()
        e = evaluation[0]
        summary = conn.execute(
            "SELECT eval_samples, clean_accuracy, robust_accuracy, certified_accuracy FROM results WHERE evaluation_id = ?", (e,)
        ).fetchall()
        certifiers = conn.execute(
            "SELECT certifier, accuracy, samples, mean_radius, median_radius FROM certifier_results WHERE evaluation_id = ? "
            "ORDER BY certifier", (e,)
        ).fetchall()
        samples = conn.execute("SELECT idx, label, prediction FROM samples WHERE evaluation_id = ? ORDER BY idx", (e,)).fetchall()
        certificates = conn.execute(
            "SELECT idx, certifier, certified, radius FROM sample_certificates WHERE evaluation_id = ? ORDER BY idx, certifier", (e,)
        ).fetchall()
    return summary, certifiers, samples, certificates


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, harness_exe, shared_data) -> Path:
    """The reference: the same run, never interrupted."""
    from harness.testing import builtin_plugins

    cwd = tmp_path_factory.mktemp("uninterrupted")
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_DB"} | {"HARNESS_ONLY_PLUGINS": ",".join(builtin_plugins())}
    done = subprocess.run([harness_exe, "run", *TINY, "--data-dir", str(shared_data)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return cwd


def _assert_identical(cwd: Path, reference: Path) -> None:
    ours, theirs = _weights(cwd / "runs" / "run-1"), _weights(reference / "runs" / "run-1")
    assert ours.keys() == theirs.keys()
    for key in theirs:
        same = torch.equal(ours[key], theirs[key]) if isinstance(theirs[key], torch.Tensor) else ours[key] == theirs[key]
        assert same, key
    assert _results(cwd / "results.db") == _results(reference / "results.db")


def test_a_run_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_run(
    uninterrupted, tmp_path, harness_exe, builtin_env, shared_data
):
    proc = _harness(harness_exe, builtin_env, tmp_path, "run", *TINY, "--data-dir", str(shared_data))
    epoch = _stop_after_first_checkpoint(proc, tmp_path / "results.db", signal.SIGKILL)
    proc.wait(timeout=60)
    assert 1 <= epoch < 3
    # Killed: still "running" in the store, but its process is gone, so it is stale and resumable.
    runs = subprocess.run([harness_exe, "runs"], cwd=tmp_path, env=builtin_env, capture_output=True, text=True)
    assert "running (stale) (resumable)" in runs.stdout, runs.stdout
    resumed = subprocess.run([harness_exe, "run", "--resume", "1", "--data-dir", str(shared_data)], cwd=tmp_path,
                             env=builtin_env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from epoch" in resumed.stderr + resumed.stdout
    _assert_identical(tmp_path, uninterrupted)
    shown = json.loads(subprocess.run([harness_exe, "show", "1", "--format", "json"], cwd=tmp_path, env=builtin_env,
                                      capture_output=True, text=True).stdout)
    assert shown["status"] == "finished" and shown["resumes"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_write_a_checkpoint_and_record_the_run_interrupted(
    uninterrupted, tmp_path, harness_exe, builtin_env, shared_data, sig
):
    proc = _harness(harness_exe, builtin_env, tmp_path, "run", *TINY, "--data-dir", str(shared_data))
    _stop_after_first_checkpoint(proc, tmp_path / "results.db", sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with harness run --resume 1" in err
    with sqlite3.connect(tmp_path / "results.db") as conn:
        status, error = conn.execute("SELECT status, error FROM runs WHERE id = 1").fetchone()
    assert status == "interrupted" and signal.Signals(sig).name in error
    runs = subprocess.run([harness_exe, "runs"], cwd=tmp_path, env=builtin_env, capture_output=True, text=True)
    assert "interrupted (resumable)" in runs.stdout
    resumed = subprocess.run([harness_exe, "run", "--resume", "1", "--data-dir", str(shared_data)], cwd=tmp_path,
                             env=builtin_env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    _assert_identical(tmp_path, uninterrupted)


def test_resume_refuses_what_would_change_the_run_and_runs_that_cannot_resume(harness_cli, shared_data):
    first = harness_cli("run", *TINY[:-2], "--epochs", "1", "--data-dir", str(shared_data))
    assert first.code == 0, first.err
    changed = harness_cli("run", "--resume", "1", "--epochs", "5")
    assert changed.code == 2 and "--epochs cannot be given with --resume 1" in changed.err
    finished = harness_cli("run", "--resume", "1")
    assert finished.code == 2 and "run 1 is finished: nothing to resume" in finished.err
    missing = harness_cli("run", "--resume", "7")
    assert missing.code == 2 and "no run with id 7" in missing.err
    every = harness_cli("run", *TINY, "--checkpoint-every", "0")
    assert every.code == 2 and "--checkpoint-every 0 is out of range; it must be >= 1" in every.err
    neither = harness_cli("run")
    assert neither.code == 2 and "--plugin" in neither.err and "--resume" in neither.err
