"""Sweep cells that train in several processes (``[resources] nproc``): the spec's rules, and one 2-process cell on CPU.

Ray is hidden (``sys.modules["ray"] = None``): the cell runs in the sweep's
process, which starts its two ranks (gloo) with harness.distributed.launch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.runner import RunRequest
from harness.sweep.spec import Resources, build_spec

BASE = {"name": "s", "plugins": ["linf_v2"], "datasets": ["mnist"]}


def test_nproc_defaults_to_whole_gpus_and_is_not_part_of_a_cells_identity():
    assert Resources().processes == 1 and Resources(gpus=1).processes == 1 and Resources(gpus=0.5).processes == 1
    assert Resources(gpus=4).processes == 4 and Resources(gpus=2.0).processes == 2 and Resources(gpus=2.5).processes == 1
    assert Resources(cpus=2, nproc=2).processes == 2  # CPU processes (gloo)
    one = build_spec(BASE | {"resources": {"gpus": 1}}).cells[0]
    four = build_spec(BASE | {"resources": {"gpus": 4, "nproc": 4}}).cells[0]
    assert one.key == four.key and one.id == four.id  # where it runs, not what it is


@pytest.mark.parametrize(("resources", "message"), [
    ({"gpus": 0.5, "nproc": 2}, "resources: nproc 2 needs a whole number of gpus (one per process), not gpus 0.5"),
    ({"gpus": 4, "nproc": 2}, "resources: nproc 2 must equal gpus 4 (one process per GPU)"),
    ({"gpus": 1, "nproc": 2}, "resources: nproc 2 must equal gpus 1"),
    ({"nproc": 0}, "resources: nproc 0 must be an integer >= 1"),
    ({"nproc": 1.5}, "resources: nproc 1.5 must be an integer >= 1"),
    ({"gpus": 2, "batch_stats": "local"}, "resources: batch_stats 'local' is refused in sweeps; valid: exact."),
    ({"nprocs": 2}, "unknown key of [resources] 'nprocs'; did you mean 'nproc'?"),
])
def test_nproc_mistakes_are_one_line_naming_the_values(resources, message):
    with pytest.raises(UsageError) as error:
        build_spec(BASE | {"resources": resources}, default_name="s")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_cell_harness_run_cannot_express_is_refused_when_it_trains_in_several_processes():
    with pytest.raises(UsageError, match=r"cell linf_v2 mnist \(nproc 2\): --attack: an empty list"):
        build_spec(BASE | {"attacks": [], "resources": {"nproc": 2, "cpus": 2}})
    assert build_spec(BASE | {"attacks": []}).cells[0].request == RunRequest(trainer="linf_v2", dataset="mnist", attacks=[])


def test_the_quick_forms_nproc_is_refused_with_a_spec_file(harness_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "s.toml").write_text('plugins = ["linf_v2"]\ndatasets = ["mnist"]\n')
    r = harness_cli("sweep", str(tmp_path / "s.toml"), "--nproc", "2")
    assert r.code == 2 and "--nproc is a quick-form option" in r.err
    r = harness_cli("sweep", "--plugin", "linf_v2", "--dataset", "mnist", "--gpus", "3", "--nproc", "2", "--dry-run")
    assert r.code == 2 and r.err.strip() == "error: resources: nproc 2 must equal gpus 3 (one process per GPU)"


# CRM on MNIST (the cheapest built-in trainer on a CPU); lipschitz-margin does not apply to its net (a warning), so no
# certifier costs time.
TINY = ["--plugin", "crm", "--dataset", "mnist", "--preset", "quick", "--epochs", "1", "--train-samples", "128",
        "--eval-samples", "20", "--set", "trainer.batch_size=64", "--set", "attacker.pgd-l2.steps=2", "--attack", "pgd-l2",
        "--certifier", "lipschitz-margin", "--cpus", "2", "--nproc", "2"]


def test_a_two_process_cell_is_one_recorded_run_its_log_holds_the_training_and_a_rerun_does_nothing(
        harness_cli, tmp_path, monkeypatch, shared_data):
    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray, whatever is installed
    args = [*TINY, "--data-dir", str(shared_data)]
    r = harness_cli("sweep", *args)
    assert r.code == 0, r.out + r.err
    assert "per run: 2 CPU, 0 GPU, 2 processes;" in r.out and "1 finished (1 now), 0 failed" in r.out
    assert "epoch" not in r.out + r.err  # no training output in the driver's

    from harness.store import open_store

    store = open_store(str(tmp_path / "results.db"), readonly=True)
    try:
        runs = store.list_runs()
        assert [(run.id, run.status, run.resumes) for run in runs] == [(1, "finished", 0)]
        config, env = runs[0].info.config, runs[0].info.environment
    finally:
        store.close()
    assert config["distributed"]["world_size"] == 2 and config["distributed"]["batch_stats"] == "exact"
    (log,) = (tmp_path / "runs" / "sweeps").glob("quick-*/*.log")
    # Rank 0 recorded the sweep's facts (HARNESS_LAUNCHER): a retried Ray task would know its run.
    assert env["launcher"] == {"ray_task": None, "sweep": log.parent.name, "cell": log.stem}
    text = log.read_text()
    assert "training in 2 processes: harness run --plugin crm" in text and "--db" not in text
    assert "epoch 1/1" in text and "run 1 finished" in text  # rank 0's output, in the cell's log
    assert text.rstrip().splitlines()[-1].startswith("== finished")

    again = harness_cli("sweep", *args)
    assert again.code == 0, again.out + again.err
    assert "nothing to do: every cell of sweep" in again.out and "queued" not in again.out
    status = json.loads(harness_cli("sweep", *args, "--status", "--format", "json").out)["cells"]
    assert [(c["run"], c["status"], c["resumes"]) for c in status] == [(1, "finished", 0)]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie nobody reaped yet is dead too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_ranks_die_with_a_launcher_killed_outright(tmp_path):
    """A sweep's Ray worker SIGKILLed (node lost, out of memory) takes its ranks with it: a retried task resumes alone."""
    fake = tmp_path / "fake-python"  # the ranks: record their pid, then wait
    fake.write_text(f"#!/bin/sh\necho $$ >> {tmp_path / 'pids'}\nexec sleep 120\n")
    fake.chmod(0o755)
    script = f"import sys; sys.executable = {str(fake)!r}\nfrom harness import distributed\ndistributed.launch(2, ['run'])\n"
    launcher = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len((tmp_path / "pids").read_text().split() if (tmp_path / "pids").exists() else []) < 2:
            time.sleep(0.1)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    assert all(_gone(p) for p in pids)
