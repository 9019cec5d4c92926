"""Sweeps without Ray (one cell after another in this process) on SQLite: validation, plan, idempotency, retries, status.

Ray is hidden in every test here (``sys.modules["ray"] = None``), whatever is installed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import DatasetInfo, hookimpl
from harness.scaffold import BatchLoss, EpochTrainer, Step

INFO = DatasetInfo(name="blobs", num_classes=2, shape=(1, 2, 2), mean=(0.5,), std=0.25)


def blobs(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    centre = torch.where(labels[:, None] == 1, 200.0, 55.0)
    images = (centre + 20 * torch.randn(n, 4, generator=g)).clamp(0, 255).to(torch.uint8).view(n, 1, 2, 2)
    return images, labels


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


@dataclass(frozen=True)
class FlakyOptions:
    epochs: int = 2
    batch_size: int = 64
    lr: float = 0.1


class Flaky(EpochTrainer):
    """Cross-entropy that raises in its second epoch while ``failures`` says so (one less each time)."""

    name = "flaky"
    description = "a trainer that fails its first attempts (test)"
    model = "linear"
    Options = FlakyOptions
    failures = 0
    interrupts = 0

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.options.lr)

    def schedule(self, step: Step) -> dict[str, float]:
        if step.epoch == 1 and step.index == 0 and Flaky.failures > 0:
            Flaky.failures -= 1
            raise RuntimeError("flaky failed on purpose")
        if step.epoch == 1 and step.index == 0 and Flaky.interrupts > 0:
            Flaky.interrupts -= 1
            raise KeyboardInterrupt("SIGINT")  # as Ctrl-C does, in the middle of training
        return {"lr": self.options.lr}

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        logits = model(images)
        return BatchLoss(F.cross_entropy(logits, labels), logits)


class BlobsPlugin:
    @hookimpl
    def register_datasets(self):
        from harness import Dataset, Splits

        class Blobs(Dataset):
            name = "blobs"
            description = "two Gaussian blobs as 1x2x2 images (test data)"
            info = INFO

            def load(self, root, *, download=True):
                return Splits(*blobs(256), *blobs(64, seed=1))

        return [Blobs]

    @hookimpl
    def register_models(self):
        from harness import Model

        class LinearModel(Model):
            name = "linear"
            description = "a linear classifier (test)"

            def build(self, data):
                return Linear()

        return [LinearModel]

    @hookimpl
    def register_trainers(self):
        return [Flaky]


QUICK = ["--plugin", "flaky", "--dataset", "blobs", "--eps", "0.01", "--certifier", "interval", "--attack", "pgd",
         "--set", "attacker.pgd.steps=2"]


@pytest.fixture
def sweep(harness_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray, whatever is installed
    monkeypatch.setattr(Flaky, "failures", 0)
    monkeypatch.setattr(Flaky, "interrupts", 0)

    def run(*args: str):
        return harness_cli("sweep", *args, plugins=[BlobsPlugin()])

    return run


def test_without_ray_the_cells_run_one_by_one_and_a_rerun_does_nothing(sweep, tmp_path):
    r = sweep(*QUICK, "--seeds", "2")
    assert r.code == 0, r.err
    out = r.out
    assert "2 cells: 0 finished, 0 running elsewhere, 0 to resume, 0 to retry, 0 failed (gave up), 2 new" in out
    assert "Ray is not installed: running the 2 cells one after another in this process (pip install 'harness-bench[ray]'" in out
    assert out.count(": queued") == 2 and out.count(": finished: run ") == 2
    assert "2 finished (2 now), 0 failed" in out
    assert "epoch" not in out + r.err  # training output goes to the cells' logs
    logs = sorted((tmp_path / "runs" / "sweeps").glob("quick-*/*.log"))
    assert len(logs) == 2 and all("epoch 2/2" in log.read_text() for log in logs)

    again = sweep(*QUICK, "--seeds", "2")
    assert again.code == 0, again.err
    assert "2 cells: 2 finished" in again.out and "nothing to do: every cell of sweep" in again.out
    assert "queued" not in again.out and "Ray" not in again.out

    status = sweep(*QUICK, "--seeds", "2", "--status", "--format", "json")
    rows = json.loads(status.out)["cells"]
    assert [(r["run"], r["status"], r["resumes"]) for r in rows] == [(1, "finished", 0), (2, "finished", 0)]
    assert all(r["clean"] is not None for r in rows)
    table = sweep(*QUICK, "--seeds", "2", "--status").out
    assert "flaky blobs l_inf 0.01 seed 0" in table and "sweep quick-" in table and "2 finished" in table


def test_a_run_started_by_hand_with_the_same_request_is_the_cells_run(sweep, harness_cli):
    by_hand = harness_cli("run", *QUICK, "--seed", "1", plugins=[BlobsPlugin()])
    assert by_hand.code == 0, by_hand.err
    r = sweep(*QUICK, "--seeds", "1,2")
    assert "1 finished" in r.out and "1 new" in r.out and r.out.count(": queued") == 1


def test_a_failed_cell_is_retried_from_its_checkpoint_then_finishes(sweep, monkeypatch):
    monkeypatch.setattr(Flaky, "failures", 1)
    r = sweep(*QUICK, "--seeds", "0,")
    assert r.code == 0, r.out + r.err
    assert "failed: run 1: RuntimeError: flaky failed on purpose" in r.out
    assert "retrying: run 1, retry 1 of 2" in r.out
    assert "finished: run 1" in r.out
    status = json.loads(sweep(*QUICK, "--seeds", "0,", "--status", "--format", "json").out)["cells"]
    assert status[0]["status"] == "finished" and status[0]["resumes"] == 1


def test_a_cell_that_keeps_failing_is_given_up_after_its_retries_and_retry_failed_tries_once_more(sweep, monkeypatch):
    monkeypatch.setattr(Flaky, "failures", 100)
    r = sweep(*QUICK, "--seeds", "0,", "--retries", "1")
    assert r.code == 1
    assert r.out.count("failed: run 1") == 2 and "retrying: run 1, retry 1 of 1" in r.out
    assert r.err.strip().splitlines()[-1].startswith("error: 1 cells of sweep quick-")

    again = sweep(*QUICK, "--seeds", "0,", "--retries", "1")
    assert again.code == 1 and "1 failed (gave up)" in again.out and "--retry-failed tries it again" in again.out
    assert "queued" not in again.out

    monkeypatch.setattr(Flaky, "failures", 0)
    retried = sweep(*QUICK, "--seeds", "0,", "--retries", "1", "--retry-failed")
    assert retried.code == 0, retried.out + retried.err
    assert "queued to retry run 1" in retried.out and "finished: run 1" in retried.out


def test_a_retry_that_fails_before_its_run_is_resumed_is_still_counted(sweep, monkeypatch):
    """A retry that fails before the store counts a resume (an unreadable checkpoint, data gone) must not be retried forever."""
    from harness import execution
    from harness.errors import HarnessError

    monkeypatch.setattr(Flaky, "failures", 1)
    calls = []

    def unreadable(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            pytest.fail("retried without end")
        raise HarnessError("checkpoint unreadable")

    monkeypatch.setattr(execution, "_last_checkpoint", unreadable)
    r = sweep(*QUICK, "--seeds", "0,", "--retries", "2")
    assert r.code == 1 and len(calls) == 2, r.out
    assert r.out.count("failed: run 1: checkpoint unreadable") == 2 and "retry 2 of 2" in r.out


def test_an_interrupted_sweep_stops_and_the_next_one_resumes_its_cell(sweep, monkeypatch):
    monkeypatch.setattr(Flaky, "interrupts", 1)
    r = sweep(*QUICK, "--seeds", "2")
    assert r.code == 130
    assert "interrupted: run 1" in r.out and r.out.count(": queued") == 2 and "finished: run" not in r.out  # the sweep stopped
    assert "interrupted: sweep quick-" in r.err and "rerun it to resume its cells" in r.err
    again = sweep(*QUICK, "--seeds", "2")
    assert again.code == 0, again.out + again.err
    assert "1 to resume" in again.out and "1 new" in again.out and "queued to resume run 1 (interrupted:" in again.out
    cells = json.loads(sweep(*QUICK, "--seeds", "2", "--status", "--format", "json").out)["cells"]
    assert [(c["run"], c["status"], c["resumes"]) for c in cells] == [(1, "finished", 1), (2, "finished", 0)]


def test_every_cell_is_planned_before_anything_runs(sweep, tmp_path):
    r = sweep("--plugin", "flaky", "--dataset", "blobs", "--eps", "0.01,0.02", "--set", "trainer.lrr=0.1")
    assert r.code == 2
    assert r.err.strip().startswith("error: cell flaky blobs l_inf 0.01 trainer.lrr=0.1:") and "'lrr'" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    r = sweep("--plugin", "flaky", "--dataset", "blobs", "--eps", "0.01", "--preset", "quick")
    assert r.code == 2 and "cell flaky blobs l_inf 0.01 quick" in r.err


def test_two_cells_that_are_the_same_run_in_other_words_are_refused(sweep, tmp_path):
    """An option set to its default is the same run: two of them would be two runs of one seed (two "seeds" on the leaderboard)."""
    (tmp_path / "s.toml").write_text('plugins = ["flaky"]\ndatasets = ["blobs"]\neps = 0.01\nseeds = [0]\n'
                                     '[[extra]]\nplugin = "flaky"\ndataset = "blobs"\nset = ["trainer.lr=0.1"]\n')
    r = sweep("s.toml")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "cells 'flaky blobs l_inf 0.01 seed 0' and 'flaky blobs l_inf 0.01 seed 0 trainer.lr=0.1' are the same run" in r.err
    assert not (tmp_path / "runs").exists()


def test_a_second_driver_of_a_running_sweep_is_refused_and_one_killed_leaves_no_lock(sweep, tmp_path):
    """Two drivers at once would both start the cells neither has seen started: two runs of one seed."""
    import os
    from types import SimpleNamespace

    from harness.sweep.driver import _one_driver

    (tmp_path / "s.toml").write_text('name = "twice"\nplugins = ["flaky"]\ndatasets = ["blobs"]\neps = 0.01\nseeds = 1\n'
                                     'certifiers = ["interval"]\nattacks = ["pgd"]\n')
    with _one_driver(tmp_path / "runs" / "sweeps" / "twice", SimpleNamespace(name="twice")):  # a driver running now
        r = sweep("s.toml")
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
        assert f"error: sweep twice is already running (pid {os.getpid()} on " in r.err
        assert sweep("s.toml", "--dry-run").code == 0 and "1 not started" in sweep("s.toml", "--status").out
    r = sweep("s.toml")  # its driver gone (however it ended): the lock went with it
    assert r.code == 0 and "1 finished (1 now)" in r.out, r.out + r.err


def test_the_quick_form_and_a_spec_file_exclude_each_other(sweep, tmp_path):
    (tmp_path / "s.toml").write_text('plugins = ["flaky"]\ndatasets = ["blobs"]\neps = 0.01\n')
    r = sweep("s.toml", "--seeds", "2")
    assert r.code == 2 and "--seeds is a quick-form option" in r.err
    r = sweep("--dataset", "blobs")
    assert r.code == 2 and "give a spec file (harness sweep SPEC.toml) or the quick form's --plugin" in r.err


def test_dry_run_shows_the_plan_and_runs_nothing(sweep, tmp_path):
    (tmp_path / "s.toml").write_text('name = "dry"\nplugins = ["flaky"]\ndatasets = ["blobs"]\neps = 0.01\nseeds = 2\n'
                                     'certifiers = ["interval"]\n')
    r = sweep("s.toml", "--dry-run")
    assert r.code == 0, r.err
    assert "sweep dry (s.toml) in results.db: 2 cells:" in r.out and "no GPU-hours estimate" in r.out
    assert "cell flaky blobs l_inf 0.01 seed 1: new (no run yet)" in r.out and "dry run: 2 cells would run" in r.out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results.db").exists()  # nothing created
    status = sweep("s.toml", "--status")
    assert status.code == 0 and "2 cells: 2 not started" in status.out and not (tmp_path / "results.db").exists()


def test_a_cluster_address_without_ray_installed_is_one_line(sweep, tmp_path):
    r = sweep(*QUICK, "--address", "10.0.0.1:6379")
    assert r.code == 2
    assert r.err.strip() == "error: --address 10.0.0.1:6379 needs Ray, which is not installed: pip install 'harness-bench[ray]'"


def test_a_retried_task_takes_over_its_own_run_on_another_node_and_leaves_others_alone(sweep, harness_catalog, tmp_path, monkeypatch):
    """A run alive by its heartbeat on another host: only the Ray task that started it (retried there) resumes it at once."""
    from harness.store import open_store
    from harness.sweep.cell import CellJob, run_cell
    from harness.sweep.spec import quick_spec

    monkeypatch.setattr(Flaky, "interrupts", 1)
    assert sweep(*QUICK, "--seeds", "0,").code == 130  # run 1 interrupted after its first checkpoint
    store = open_store(str(tmp_path / "results.db"))
    # As if a worker on host "node-b" resumed it under Ray task T1, then the node was lost: running, heartbeat fresh.
    store.resume_run(1, {"host": "node-b", "pid": 4242, "launcher": {"ray_task": "T1"}})
    store.close()
    spec = quick_spec(plugins="flaky", datasets="blobs", eps="0.01", norm=None, presets=None, seeds="0,", overrides=["attacker.pgd.steps=2"],
                      attacks=["pgd"], certifiers=["interval"], gpus=0.0, cpus=1.0, name=None, epochs=None, train_samples=None,
                      eval_samples=None)
    job = CellJob(cell=spec.cells[0], sweep=spec.name, db=str(tmp_path / "results.db"), save_dir=tmp_path / "runs",
                  log=tmp_path / "cell.log")
    catalog = harness_catalog(BlobsPlugin())
    other = run_cell(job, catalog=catalog, versions={}, launcher={"ray_task": "T2"})
    assert other.status == "skipped" and other.reason == "run 1 is running elsewhere (pid 4242 on node-b)"
    ours = run_cell(job, catalog=catalog, versions={}, launcher={"ray_task": "T1"})
    assert ours.status == "finished", ours.reason
    assert ours.run_id == 1 and ours.resumed
    log = (tmp_path / "cell.log").read_text()
    assert "was running under this task's earlier attempt (its node or worker was lost): taking it over" in log
    assert "resumed from epoch 1" in log
    store = open_store(str(tmp_path / "results.db"), readonly=True)
    run = store.get_run(1)
    store.close()
    assert run.status == "finished" and run.resumes == 2 and run.info.environment["launcher"]["ray_task"] == "T1"


def test_cells_that_need_more_gpus_than_the_machine_has_are_refused_before_running(sweep, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    r = sweep(*QUICK, "--gpus", "1")
    assert r.code == 2
    assert r.err.strip() == "error: the cells need 1 GPUs per run; this machine has 0 (lower --gpus, or install Ray and give --address)"
    assert not list((tmp_path / "runs").glob("run-*")) and not list((tmp_path / "runs").rglob("*.log"))  # only the sweep's lock


def test_a_multi_process_cell_launches_harness_run_resume_and_a_retried_task_takes_over_its_run(
        sweep, harness_catalog, tmp_path, monkeypatch):
    """nproc 2: the cell starts ``harness run --resume ID --nproc 2`` (launch faked here; tests/sweep/test_sweep_nproc.py
    runs it), the database and the task's facts in the environment; its own run, alive on another node, is marked
    interrupted first (the ranks resume only a run that is not alive); ranks that die leave no run ``running``."""
    import dataclasses

    from harness import distributed
    from harness.store import open_store
    from harness.sweep.cell import CellJob, run_cell
    from harness.sweep.spec import Resources, quick_spec

    monkeypatch.setattr(Flaky, "interrupts", 1)
    assert sweep(*QUICK, "--seeds", "0,").code == 130  # run 1 interrupted after its first checkpoint
    db = str(tmp_path / "results.db")
    store = open_store(db)
    store.resume_run(1, {"host": "node-b", "pid": 4242, "launcher": {"ray_task": "T1"}})  # alive on node-b under task T1
    store.close()
    spec = quick_spec(plugins="flaky", datasets="blobs", eps="0.01", norm=None, presets=None, seeds="0,", overrides=["attacker.pgd.steps=2"],
                      attacks=["pgd"], certifiers=["interval"], gpus=0.0, cpus=2.0, name=None, epochs=None, train_samples=None,
                      eval_samples=None, nproc=2)
    cell = spec.cells[0]
    assert cell.resources == Resources(cpus=2.0, nproc=2)
    job = CellJob(cell=cell, sweep=spec.name, db=db, save_dir=tmp_path / "runs", log=tmp_path / "cell.log", plugins=["flaky"])
    launched = []

    def fake_launch(nproc, args, *, batch_stats="exact", stdout=None, env=None, grace_s=30.0):
        rank0 = open_store(db)
        status = rank0.get_run(1).status
        rank0.resume_run(1, {"host": "here", "pid": 4343})  # as rank 0 resumes it, then is killed: run 1 left running
        rank0.close()
        launched.append((nproc, list(args), batch_stats, dict(env or {}), status))
        print("rank 0 says hello", file=stdout, flush=True)
        return 137

    monkeypatch.setattr(distributed, "launch", fake_launch)
    other = run_cell(job, catalog=harness_catalog(BlobsPlugin()), versions={}, launcher={"ray_task": "T2"})
    assert other.status == "skipped" and not launched
    ours = run_cell(job, catalog=harness_catalog(BlobsPlugin()), versions={}, launcher={"ray_task": "T1", "ray_node": "N"})
    ((nproc, args, batch_stats, env, status),) = launched
    assert (nproc, args, batch_stats) == (2, ["run", "--resume", "1", "--device", "cpu", "--nproc", "2"], "exact")
    assert status == "interrupted"  # taken over before the launch
    assert env["HARNESS_DB"] == db and env["HARNESS_ONLY_PLUGINS"] == "flaky" and env["OMP_NUM_THREADS"] == "1"
    assert json.loads(env["HARNESS_LAUNCHER"]) == {"ray_task": "T1", "ray_node": "N", "sweep": spec.name, "cell": cell.id}
    assert ours.status == "failed" and ours.run_id == 1 and ours.retryable and ours.resumed
    assert ours.reason == "run 1 failed: its 2 processes ended with status 137 and left it running"
    log = (tmp_path / "cell.log").read_text()
    assert "training in 2 processes: harness run --resume 1" in log and "rank 0 says hello" in log
    store = open_store(db, readonly=True)
    assert store.get_run(1).status == "failed"  # a bounded retry, not a run that looks alive
    store.close()

    # Processes that end before resuming it (a mistake on their command line, say): a retry would not count, so none.
    monkeypatch.setattr(distributed, "launch", lambda nproc, args, **kwargs: 2)
    retried = run_cell(dataclasses.replace(job, retry=True), catalog=harness_catalog(BlobsPlugin()), versions={}, launcher={})
    assert retried.status == "failed" and not retried.retryable and retried.run_id == 1
    assert retried.reason == "its 2 processes ended with status 2 before resuming run 1 (the log says why)"


def test_each_submission_of_a_cell_is_its_own_ray_task_though_ray_task_ids_repeat(monkeypatch, tmp_path):
    """Ray task ids repeat from one local Ray instance to the next: a run "running under this task" (taken over at
    once, alive or not) must name the submission, which only Ray's own retry of that submission shares."""
    from types import SimpleNamespace

    from harness.runner import RunRequest
    from harness.sweep import driver
    from harness.sweep.cell import CellJob, Outcome
    from harness.sweep.spec import Cell

    context = SimpleNamespace(get_task_id=lambda: "c8ef45ccd0112571ffffffffffffffffffffffff01000000", get_node_id=lambda: "node")
    calls: list[tuple] = []

    class Remote:
        def options(self, **kwargs):
            return SimpleNamespace(remote=lambda *args: calls.append(args) or len(calls))

    fake = SimpleNamespace(is_initialized=lambda: True, remote=lambda fn: Remote(), get_runtime_context=lambda: context)
    monkeypatch.setitem(sys.modules, "ray", fake)
    launchers = []
    monkeypatch.setattr(driver, "run_cell", lambda job, launcher, threads: launchers.append(launcher) or Outcome(job.cell.id, "finished"))
    job = CellJob(cell=Cell(RunRequest(trainer="flaky", dataset="blobs")), sweep="s", db="x.db", save_dir=tmp_path, log=tmp_path / "l")
    on_ray = driver.OnRay(None, 2, print)
    on_ray.submit(job)  # this sweep's submission
    on_ray.submit(job)  # another sweep's, on another local instance: the same Ray task id
    for args in (calls[0], calls[0], calls[1]):  # the first submission run twice (Ray retried it), then the other
        driver._ray_task(*args)
    assert launchers[0] == launchers[1] and launchers[0]["ray_task"] != launchers[2]["ray_task"]
    assert launchers[0]["ray_task"].startswith("c8ef45ccd0112571ffffffffffffffffffffffff01000000")


def test_a_task_gets_the_sqlite_file_as_an_absolute_path(sweep, monkeypatch, tmp_path):
    """A Ray worker's directory is not the driver's: a relative --db would record the cells' runs in another database."""
    from harness.sweep import driver

    assert driver.absolute_db("r.db") == str(tmp_path / "r.db")
    assert driver.absolute_db("sqlite:///r.db") == f"sqlite:///{tmp_path / 'r.db'}"
    assert driver.absolute_db("postgresql://u:pw@h/db") == "postgresql://u:pw@h/db"
    jobs = []
    real = driver.run_cell
    monkeypatch.setattr(driver, "run_cell", lambda job, **kwargs: jobs.append(job) or real(job, **kwargs))
    r = sweep(*QUICK, "--seeds", "0,", "--db", "sub.db")
    assert r.code == 0, r.out + r.err
    assert [j.db for j in jobs] == [str(tmp_path / "sub.db")]


def test_a_save_dir_that_cannot_be_written_is_one_line(sweep, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = sweep(*QUICK, "--seeds", "0,", "--save-dir", str(tmp_path / "file" / "runs"))
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "cannot write the sweep's logs under" in r.err, r.err
