"""Multi-process runs on the CPU (gloo, 2 processes): the same training and evaluation as one process.

In-process (torch.multiprocessing, the ``tiny`` data): two ranks train the
l_inf-dist net v2 with a global batch split 50/49 (uneven last batch 3/3) and
end with the single process's weights to float rounding (``exact`` batch
statistics); the split evaluation gives exactly the single process's
per-sample results; a diverging step stops both ranks at the same step with the same
message. Through the CLI (MNIST): ``harness run --nproc 2`` is
one recorded run; stopped with SIGTERM it writes one checkpoint and resumes
under torchrun to exactly the uninterrupted multi-process run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

#: Largest |weight difference| allowed between 2 processes (exact batch statistics) and 1 process, relative to the
#: largest |weight|. Measured on this CPU: in-process (tiny, 3 epochs, 21 steps) 3.05e-4 on 10.1, 3e-5 relative; the
#: CLI run (MNIST, 3 epochs, 30 steps) 5.3e-3 on 10.3, 5e-4 relative; local batch statistics 0.223, 2e-2 relative.
#: The difference is float sums in another order, which Adam amplifies (eps 1e-10 divides by the root of tiny second
#: moments): with trainer.adam_eps=1e-2 the same in-process run differs by 1.9e-6 (2e-7 relative).
WEIGHT_TOLERANCE = 1e-3


def _components(epochs: int = 3) -> tuple[Any, Any]:
    from harness_plugins.linf_v2.trainer import LinfV2Options, LinfV2Trainer
    from harness_plugins.lpdist.models import LinfDistNetModel, LinfDistNetOptions

    trainer = LinfV2Trainer(LinfV2Options(epochs=epochs, batch_size=99, p_start_epoch=1, p_end_epoch=2, lr=0.01))
    return trainer, LinfDistNetModel(LinfDistNetOptions(depth=3, width=32))


def _train(world: Any) -> torch.nn.Module:
    from harness.testing import tiny_info, tiny_splits
    from harness.threat import ThreatModel
    from harness.train import TrainContext, TrainData

    trainer, model = _components()
    splits = tiny_splits()
    torch.manual_seed(0)
    network = model.build(tiny_info())
    ctx = TrainContext(threat=ThreatModel("inf", 0.1), device=torch.device("cpu"), seed=0,
                       generator=torch.Generator().manual_seed(0), world=world)
    trainer.fit(network, TrainData(tiny_info(), splits.train_images, splits.train_labels), ctx)
    return network


def _evaluate(network: torch.nn.Module, world: Any) -> Any:
    from harness.evaluation import evaluate
    from harness.testing import tiny_splits
    from harness.threat import ThreatModel
    from harness_plugins.certifiers.margins import IntervalCertifier, LipschitzMargin
    from harness_plugins.torchattacks.pgd import PGD, PGDOptions

    splits = tiny_splits()
    return evaluate(network, splits.test_images, splits.test_labels, ThreatModel("inf", 0.1),
                    attackers=[PGD(PGDOptions(steps=5, random_start=False))], certifiers=[IntervalCertifier(), LipschitzMargin()],
                    device=torch.device("cpu"), batch_size=16, world=world)


def _rank(rank: int, rendezvous: str, batch_stats: str, out: str, reference: str) -> None:
    """One rank: train, then evaluate the single process's model split over the ranks; rank 0 saves both."""
    from harness import distributed
    from harness.testing import tiny_info

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    world = distributed.init("cpu", batch_stats, init_method=rendezvous)
    try:
        network = _train(world)
        single = _components()[1].build(tiny_info())
        single.load_state_dict(torch.load(reference, weights_only=True))
        single.eval()
        evaluation = _evaluate(single, world)
        if rank == 0:
            torch.save({"weights": network.state_dict(), "evaluation": json.dumps(_plain(evaluation))}, out)
    finally:
        distributed.shutdown()


def _plain(evaluation: Any) -> Any:
    import dataclasses

    result = dataclasses.asdict(evaluation.result)
    for part in (*result["attacks"], *result["certifiers"]):
        part["seconds"] = part["cost"] = None  # times and memory differ from run to run
    return {"result": result, "samples": [dataclasses.asdict(s) for s in evaluation.samples]}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Any, Path]:
    """One process: the trained weights, and their evaluation."""
    network = _train(None)
    path = tmp_path_factory.mktemp("single") / "weights.pt"
    torch.save(network.state_dict(), path)
    return network.state_dict(), json.loads(json.dumps(_plain(_evaluate(network, None)))), path


def _two_ranks(tmp_path: Path, reference: Path, batch_stats: str) -> dict[str, Any]:
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    rendezvous = f"file://{tmp_path / 'rendezvous'}"  # no port to race for on a shared machine
    mp.start_processes(_rank, args=(rendezvous, batch_stats, str(out), str(reference)), nprocs=2, start_method="spawn")
    return torch.load(out, weights_only=True)


def _largest_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    floats = [k for k, v in a.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert floats and a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in floats)
    return diff, max(a[k].abs().max().item() for k in floats)


def test_two_processes_train_the_single_process_weights_and_split_evaluation_is_exact(single, tmp_path):
    weights, evaluation, reference = single
    ranks = _two_ranks(tmp_path, reference, "exact")
    diff, largest = _largest_difference(ranks["weights"], weights)
    print(f"exact batch statistics: largest |weight difference| {diff:.3g} (largest |weight| {largest:.3g})")
    assert diff <= WEIGHT_TOLERANCE * largest  # the running means (the all-reduced batch means) included
    # The split evaluation (batches 0, 2, 4, ... on rank 0; 1, 3, 5, ... on rank 1) of the same model: every number.
    assert json.loads(ranks["evaluation"]) == evaluation


def _diverging_rank(rank: int, rendezvous: str, out: str) -> None:
    """One rank of a run whose first Adam step (lr 1e21) throws the weights past 2^64: what it raised, in a file."""
    from harness import distributed
    from harness.errors import TrainingDiverged
    from harness.testing import tiny_info, tiny_splits
    from harness.threat import ThreatModel
    from harness.train import TrainContext, TrainData
    from harness_plugins.linf_v2.trainer import LinfV2Options, LinfV2Trainer

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    world = distributed.init("cpu", init_method=rendezvous)
    try:
        trainer = LinfV2Trainer(LinfV2Options(epochs=1, batch_size=99, p_start_epoch=1, p_end_epoch=1, lr=1e21))
        torch.manual_seed(0)
        network = _components()[1].build(tiny_info())
        splits = tiny_splits()
        ctx = TrainContext(threat=ThreatModel("inf", 0.1), device=torch.device("cpu"), seed=0,
                           generator=torch.Generator().manual_seed(0), world=world)
        try:
            trainer.fit(network, TrainData(tiny_info(), splits.train_images, splits.train_labels), ctx)
            said = "trained"
        except TrainingDiverged as exc:
            said = str(exc)
        Path(out, f"rank{rank}.txt").write_text(said)
    finally:
        distributed.shutdown()


def test_a_diverging_step_stops_every_rank_at_the_same_step(tmp_path):
    import torch.multiprocessing as mp

    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_diverging_rank, args=(rendezvous, str(tmp_path)), nprocs=2, start_method="spawn")
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert said[0] == said[1]
    assert said[0].startswith("training diverged: largest |parameter| after the step") and "step 1/7" in said[0], said[0]


@pytest.mark.slow
def test_local_batch_statistics_train_a_different_model(single, tmp_path):
    """The original code's DDP: each rank's own batch mean; the running means follow rank 0's slices."""
    weights, _, reference = single
    ranks = _two_ranks(tmp_path, reference, "local")
    diff, largest = _largest_difference(ranks["weights"], weights)
    print(f"local batch statistics: largest |weight difference| {diff:.3g} (largest |weight| {largest:.3g})")
    assert diff > WEIGHT_TOLERANCE * largest
    assert all(math.isfinite(v.abs().max().item()) for v in ranks["weights"].values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def test_shards_cover_every_row_once_and_tiny_batches_are_refused():
    from harness.distributed import World, shard
    from harness.errors import UsageError
    from harness.scaffold import _check_shards

    for n in (1, 2, 7, 99, 512):
        for size in (1, 2, 3, 8):
            if n < size:
                continue
            parts = [shard(n, World(rank, size, rank, "gloo")) for rank in range(size)]
            rows = [i for p in parts for i in range(n)[p]]
            assert rows == list(range(n)) and max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    _check_shards(600, 99, World(0, 2, 0, "gloo"))
    with pytest.raises(UsageError, match="2 processes need at least 2 samples in every batch, but with 595 training samples"):
        _check_shards(595, 99, World(0, 2, 0, "gloo"))


# -- through the CLI --------------------------------------------------------------------------------------------------

TINY = [
    "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--train-samples", "990", "--eval-samples", "40",
    "--eval-batch-size", "16", "--set", "model.width=64", "--set", "model.depth=3", "--set", "trainer.batch_size=99",
    "--set", "attacker.pgd.steps=5", "--attack", "pgd", "--device", "cpu", "--epochs", "3",
]


def _run(cwd: Path, env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _row(db: Path, sql: str) -> Any:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, shared_data) -> Path:
    """``harness run --nproc 2``, 3 epochs, never interrupted (the reference of both CLI tests)."""
    from harness.testing import builtin_plugins

    cwd = tmp_path_factory.mktemp("whole")
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_DB"} | {"HARNESS_ONLY_PLUGINS": ",".join(builtin_plugins())}
    done = _run(cwd, env, "run", *TINY, "--data-dir", str(shared_data), "--nproc", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("run 1 finished") == 1 and "run 2" not in done.stdout
    return cwd


def test_a_two_process_run_is_one_recorded_run_with_the_single_process_weights(whole, tmp_path, builtin_env, shared_data):
    ((status, device, config, environment),) = _row(whole / "results.db", "SELECT status, device, config, environment FROM runs")
    assert status == "finished" and device.startswith("2 × ")
    assert json.loads(config)["distributed"] == {"world_size": 2, "backend": "gloo", "batch_stats": "exact"}
    assert json.loads(environment)["world_size"] == 2
    assert _row(whole / "results.db", "SELECT count(*) FROM samples") == [(40,)]
    one = _run(tmp_path, builtin_env, "run", *TINY, "--data-dir", str(shared_data))
    assert one.returncode == 0, one.stderr
    diff, largest = _largest_difference(_weights(whole / "runs" / "run-1"), _weights(tmp_path / "runs" / "run-1"))
    print(f"harness run --nproc 2 vs 1 process: largest |weight difference| {diff:.3g} (largest |weight| {largest:.3g})")
    assert diff <= WEIGHT_TOLERANCE * largest


def _checkpoint_epoch(db: Path) -> int | None:
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
            row = conn.execute("SELECT checkpoint FROM runs WHERE id = 1").fetchone()
    except sqlite3.Error:
        return None
    return json.loads(row[0]).get("epoch") if row and row[0] else None


def test_a_stopped_two_process_run_resumes_under_torchrun_to_the_uninterrupted_run(whole, tmp_path, builtin_env, shared_data):
    args = ["run", *TINY, "--data-dir", str(shared_data), "--nproc", "2"]
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=stopped, env=builtin_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _checkpoint_epoch(stopped / "results.db") is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to the launcher: it passes it to both ranks
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with harness run --resume 1" in err
    assert _row(stopped / "results.db", "SELECT status FROM runs") == [("interrupted",)]

    # torchrun, as on a cluster node; --resume takes the stored process count (here the same, from WORLD_SIZE).
    resumed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "harness.cli", "run", "--resume", "1", "--data-dir", str(shared_data)],
        cwd=stopped, env=builtin_env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from epoch" in resumed.stdout + resumed.stderr
    ((status, resumes, config),) = _row(stopped / "results.db", "SELECT status, resumes, config FROM runs")
    assert status == "finished" and resumes == 1 and json.loads(config)["distributed"]["world_size"] == 2
    ours, theirs = _weights(stopped / "runs" / "run-1"), _weights(whole / "runs" / "run-1")
    for key in theirs:  # gloo on the CPU is deterministic: bit for bit
        assert torch.equal(ours[key], theirs[key]) if isinstance(theirs[key], torch.Tensor) else ours[key] == theirs[key], key
    per_sample = "SELECT idx, prediction FROM samples ORDER BY idx"
    assert _row(stopped / "results.db", per_sample) == _row(whole / "results.db", per_sample)


def test_resume_starts_as_many_processes_as_the_run_recorded(whole, tmp_path, harness_cli, monkeypatch):
    """``harness run --resume ID`` of a 2-process run launches 2 processes (and its batch statistics); --nproc 1 one."""
    import shutil

    from harness import distributed

    shutil.copy(whole / "results.db", tmp_path / "results.db")
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("UPDATE runs SET status = 'interrupted' WHERE id = 1")
    launched: list[tuple[int, list[str], str]] = []
    monkeypatch.setattr(distributed, "launch", lambda n, args, batch_stats, **kw: launched.append((n, list(args), batch_stats)) or 0)
    done = harness_cli("run", "--resume", "1")
    assert done.code == 0, done.err
    assert launched == [(2, ["run", "--resume", "1", "--nproc", "2"], "exact")]
    other = harness_cli("run", "--resume", "1", "--nproc", "3")
    assert other.code == 0 and launched[-1][0] == 3  # another count is allowed (exact statistics: only rounding changes)


def test_resume_keeps_the_batch_statistics_and_with_local_ones_the_process_count(whole, tmp_path, harness_cli, monkeypatch):
    """A resumed run trained with exact statistics cannot go on with local ones (nor the other way round), nor a local one
    in another number of processes (its statistics depend on it); --batch-stats without processes is refused too."""
    import shutil

    from harness import distributed

    shutil.copy(whole / "results.db", tmp_path / "results.db")
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("UPDATE runs SET status = 'interrupted' WHERE id = 1")
    launched: list[int] = []
    monkeypatch.setattr(distributed, "launch", lambda n, args, batch_stats, **kw: launched.append(n) or 0)
    refused = harness_cli("run", "--resume", "1", "--batch-stats", "local")
    assert refused.code == 2 and not launched
    assert refused.err.strip() == ("error: run 1 trained with --batch-stats exact in 2 processes: resume it with those "
                                   "(leave --batch-stats out)")
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("UPDATE runs SET config = json_set(config, '$.distributed.batch_stats', 'local') WHERE id = 1")
    assert harness_cli("run", "--resume", "1", "--batch-stats", "exact").code == 2 and not launched
    one = harness_cli("run", "--resume", "1", "--nproc", "1")  # no launcher: this process is the run, and refuses
    assert one.code == 2 and "run 1 trained with --batch-stats local in 2 processes, which they depend on: resume it with --nproc 2" in one.err
    assert harness_cli("run", "--resume", "1").code == 0 and launched == [2]
    fresh = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--batch-stats", "local")
    assert fresh.code == 2 and fresh.err.strip() == "error: --batch-stats local needs a multi-process run: --nproc N with N > 1 (or torchrun)"


def test_more_processes_than_gpus_is_one_line_before_any_process_starts(harness_cli, monkeypatch):
    from harness import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed, "launch", lambda *args, **kwargs: pytest.fail("launched"))
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--nproc", "2", "--device", "cuda")
    assert r.code == 2 and r.err.strip() == ("error: --nproc 2 --device cuda needs 2 GPUs (one per process); this machine has 1 "
                                             "(lower --nproc, or --device cpu)")


@pytest.mark.gpu
def test_two_gpus_train_the_single_gpu_weights(tmp_path, builtin_env, shared_data):
    """NCCL (never run where these tests were written: no GPU there). Two GPUs against one, same tolerance."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    args = [a if a != "cpu" else "cuda" for a in TINY]
    one = _run(tmp_path, builtin_env, "run", *args, "--data-dir", str(shared_data), "--db", "one.db", "--save-dir", "one")
    assert one.returncode == 0, one.stderr
    two = _run(tmp_path, builtin_env, "run", *args, "--data-dir", str(shared_data), "--db", "two.db", "--save-dir", "two",
               "--nproc", "2")
    assert two.returncode == 0, two.stderr
    ((config,),) = _row(tmp_path / "two.db", "SELECT config FROM runs")
    assert json.loads(config)["distributed"]["backend"] == "nccl"
    diff, largest = _largest_difference(_weights(tmp_path / "two" / "run-1"), _weights(tmp_path / "one" / "run-1"))
    print(f"2 GPUs vs 1: largest |weight difference| {diff:.3g} (largest |weight| {largest:.3g})")
    assert diff <= WEIGHT_TOLERANCE * largest


def test_the_ranks_get_the_database_through_their_environment_not_their_command_line(harness_cli, monkeypatch):
    """A URL's password must not show in ``ps``: the launcher takes ``--db`` off the ranks' arguments."""
    from harness import distributed

    launched: list[tuple[list[str], dict | None]] = []
    monkeypatch.setattr(distributed, "launch", lambda n, args, batch_stats, env=None, **kw: launched.append((list(args), env)) or 0)
    url = "postgresql://harness:s3cret@127.0.0.1:1/harness"
    for given in (["--db", url], [f"--db={url}"]):
        r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", *given, "--nproc", "2", "--device", "cpu")
        assert r.code == 0, r.err
        args, env = launched.pop()
        assert env == {"HARNESS_DB": url} and "s3cret" not in " ".join(args)
        assert args == ["run", "--plugin", "linf_v2", "--dataset", "mnist", "--nproc", "2", "--device", "cpu"]
