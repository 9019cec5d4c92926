"""Done when (issue 13): a 2 plugins x 2 seeds tiny matrix swept on a local Ray instance into PostgreSQL.

4 finished runs; one Ray worker killed (SIGKILL) mid-run after its run's first checkpoint, and that run
resumed once and finished; rerunning the sweep does nothing; --status shows every cell from the database;
the leaderboard shows mean and std over the 2 seeds. One sweep (module fixture) serves every test here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'harness-bench[ray]'; scripts/setup-venv.sh installs it)")

SECRET = "s3cret-pw"
# The worker is killed at its first checkpoint before the last epoch: the epochs after it are the window
# the poll below must hit (one epoch of 256 images, about half a second, was missed now and then).
EPOCHS = 3
TINY = [
    "--plugin", "linf_v2,linf_v1", "--dataset", "mnist", "--preset", "quick", "--seeds", "2", "--epochs", str(EPOCHS),
    "--train-samples", "1024", "--eval-samples", "50", "--set", "model.width=64", "--set", "model.depth=3",
    "--set", "attacker.pgd.steps=5", "--attack", "pgd",
]


@dataclass
class Swept:
    url: str
    secret: str  # the URL's password
    cwd: Path
    env: dict[str, str]
    code: int
    out: str
    err: str
    killed_run: int
    killed_pid: int
    killed_epoch: int  # of its checkpoint when killed


def _kill_after_first_checkpoint(proc: subprocess.Popen[str], url: str) -> tuple[int, int, int]:
    """SIGKILL the worker of a linf_v2 run once a checkpoint before its last epoch is recorded; its run id, pid and
    the checkpoint's epoch."""
    from harness.errors import HarnessError
    from harness.store import open_store

    deadline = time.monotonic() + 300
    store = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before a checkpoint was recorded: {proc.communicate()}")
        try:
            store = store or open_store(url, readonly=True)
            runs = store.list_runs(status="running")
        except HarnessError:  # the sweep has not created the schema yet
            time.sleep(0.2)
            continue
        for run in runs:
            epoch = (run.checkpoint or {}).get("epoch")
            if run.info.trainer == "linf_v2" and epoch is not None and 1 <= epoch < EPOCHS:
                pid = run.info.environment["pid"]
                os.kill(pid, signal.SIGKILL)
                store.close()
                return run.id, pid, epoch
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no linf_v2 checkpoint within 300 s")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, harness_postgres_server, harness_exe, shared_data):
    from sqlalchemy.engine import make_url

    from harness.testing import builtin_plugins
    from harness.testing_postgres import drop_database, fresh_database

    url = fresh_database(harness_postgres_server)
    # A password (one the trust-authenticating test server ignores, or $HARNESS_TEST_POSTGRES_URL's): never printed, logged or stored.
    parsed = make_url(url)
    with_password = url if parsed.password else parsed.set(password=SECRET).render_as_string(hide_password=False)
    cwd = tmp_path_factory.mktemp("sweep")
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DB", "HARNESS_DISABLE_PLUGINS", "RAY_ADDRESS")}
    env |= {"HARNESS_ONLY_PLUGINS": ",".join(builtin_plugins()), "RAY_AUTH_MODE": "disabled", "HARNESS_DATA": str(shared_data)}
    proc = subprocess.Popen([harness_exe, "sweep", *TINY, "--db", with_password], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        run_id, pid, epoch = _kill_after_first_checkpoint(proc, url)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    yield Swept(with_password, str(make_url(with_password).password), cwd, env, proc.returncode, out, err, run_id, pid, epoch)
    drop_database(url)


def _harness(swept: Swept, exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args, "--db", swept.url], cwd=swept.cwd, env=swept.env, capture_output=True, text=True, timeout=600)


def test_the_sweep_records_four_finished_runs_and_the_killed_one_resumed_once(swept):
    from harness.store import open_store

    assert swept.code == 0, swept.out + swept.err
    assert "4 cells: 0 finished, 0 running elsewhere, 0 to resume, 0 to retry, 0 failed (gave up), 4 new" in swept.out
    assert "on a local Ray instance: 2 CPUs" in swept.out
    assert swept.out.count(": queued") == 4 and "4 finished (4 now), 0 failed" in swept.out
    assert "epoch" not in swept.out + swept.err  # training logs stay in the cells' logs
    assert ":***@" in swept.out and swept.secret not in swept.out + swept.err
    store = open_store(swept.url, readonly=True)
    try:
        runs = store.list_runs()
    finally:
        store.close()
    assert len(runs) == 4 and all(r.status == "finished" for r in runs)
    assert sorted((r.info.trainer, r.info.seed) for r in runs) == [("linf_v1", 0), ("linf_v1", 1), ("linf_v2", 0), ("linf_v2", 1)]
    killed = next(r for r in runs if r.id == swept.killed_run)
    assert killed.resumes == 1
    assert killed.info.environment["pid"] != swept.killed_pid  # finished by the retried task, in another worker
    assert killed.info.environment["launcher"]["ray_task"]
    assert all(r.resumes == 0 for r in runs if r.id != swept.killed_run)
    assert f"finished: run {swept.killed_run}" in swept.out
    logs = list((swept.cwd / "runs" / "sweeps").glob("quick-*/*.log"))
    assert len(logs) == 4
    retried = [log.read_text() for log in logs if log.read_text().count("== 20") == 2]
    assert len(retried) == 1 and f"resumed from epoch {swept.killed_epoch}" in retried[0]
    assert all(swept.secret not in log.read_text() for log in logs)
    assert all(swept.secret not in json.dumps([r.info.config, r.info.environment]) for r in runs)


def test_rerunning_the_sweep_does_nothing(swept, harness_exe):
    again = _harness(swept, harness_exe, "sweep", *TINY)
    assert again.returncode == 0, again.stderr
    assert "4 cells: 4 finished" in again.stdout and "nothing to do: every cell of sweep quick-" in again.stdout
    assert "Ray" not in again.stdout and "queued" not in again.stdout and swept.secret not in again.stdout + again.stderr


def test_status_shows_every_cell_from_the_database(swept, harness_exe):
    shown = _harness(swept, harness_exe, "sweep", *TINY, "--status", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    cells = json.loads(shown.stdout)["cells"]
    assert len(cells) == 4 and {c["status"] for c in cells} == {"finished"}
    assert sorted(c["resumes"] for c in cells) == [0, 0, 0, 1]
    assert all(c["clean"] is not None and c["certified"] is not None for c in cells)


def test_the_leaderboard_shows_mean_and_std_over_the_two_seeds(swept, harness_exe):
    board = _harness(swept, harness_exe, "leaderboard", "--format", "json", "--reported", "none")
    assert board.returncode == 0, board.stderr
    rows = [row for group in json.loads(board.stdout) for row in group["rows"]]
    assert len(rows) == 2
    for row in rows:
        assert row["n"] == 2 and row["seeds"] == [0, 1] and row["statistic"] == "mean"
        assert row["certified_std"] is not None and row["clean_std"] is not None
    table = _harness(swept, harness_exe, "leaderboard", "--reported", "none").stdout
    assert "±" in table and "(2)" in table
