"""Executing a planned run: train (or resume), save the model, evaluate, record; nothing lost on the way.

:func:`execute` loads the data, records the run as ``running`` (or takes a
resumed run back), trains with checkpoints in the run's directory, saves the
trained weights atomically with their sha256, evaluates, and records the
evaluation. What can go wrong on the way, and what happens:

* a signal (SIGTERM, SIGINT, SIGHUP) during training: the current step
  finishes, a checkpoint is written, the run is recorded ``interrupted`` and
  ``harness run --resume ID`` continues it;
* the process is killed (SIGKILL, out of memory, power): the run stays
  ``running`` until its heartbeat goes stale; then it is resumable the same way;
* training diverges (a non-finite loss, gradient or weight): training stops at
  once and the run is recorded ``failed`` with the reason;
* the weights cannot be saved (a full disk): a warning, no partial file, and
  the evaluation still runs and is recorded;
* the database cannot take the results (locked past the busy timeout, a full
  disk, deleted or replaced during the run): the write is retried, then the
  results go to ``results.json`` in the run's directory, which
  ``harness import`` records later.

A multi-process run (``world``, :mod:`harness.distributed`) is executed by
every rank with the same plan: rank 0 alone records the run (its id is
broadcast), heartbeats, writes checkpoints and weights, and records the
results; every rank trains on its slice of each global batch and evaluates
its share of the test batches (merged on every rank). The run records
``config["distributed"]`` (world size, backend, batch statistics) and
``environment["world_size"]``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness import distributed
from harness.checkpoint import Checkpointing, load_checkpoint, save_weights, sha256_file, write_text_atomic
from harness.distributed import World
from harness.env import device_name, environment, synchronize
from harness.errors import HarnessError, TrainingDiverged, TrainingInterrupted, UsageError, one_line
from harness.evaluation import Evaluation, eval_indices, evaluate
from harness.liveness import Heartbeat, StopRequest, stop_on_signals
from harness.progress import Progress, SilentProgress
from harness.results_file import FILENAME, PendingResults, write_pending
from harness.runner import Plan, build_model, check_sample_counts, prepare_save_dir
from harness.store import FAILED, INTERRUPTED, RunInfo, RunRecord, Store, StoreGone, StoreUnavailable, WeightsFile
from harness.train import TrainContext, TrainData

#: Attempts, and the pause before each retry, of the final write of a run's results.
RECORD_RETRIES_S = (2.0, 5.0, 15.0, 30.0)
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"


def execute(
    plan: Plan,
    store: Store | None,
    *,
    progress: Progress | None = None,
    resume: RunRecord | None = None,
    stop: StopRequest | None = None,
    world: World | None = None,
) -> int:
    """Train (or resume ``resume``), evaluate and record one run; return its id.

    A certifier or attack that fails is recorded against it (see
    :mod:`harness.evaluation`); the run still finishes, and its result's
    ``errors`` say what failed. ``stop`` is set by the caller's signal handler
    (:func:`harness.liveness.stop_on_signals`); without one, signals are
    handled here. ``world``: this process is one rank of a multi-process run
    (every rank calls this; ``store`` is ``None`` except on rank 0).
    """
    world = world if world is not None and world.size > 1 else None
    if world is not None and not world.main:
        progress = SilentProgress()
    progress = progress or SilentProgress()
    if world is None or world.main:
        if store is None:
            raise ValueError("execute() needs the store (only ranks other than 0 of a multi-process run have none)")
    if stop is None:
        stop = StopRequest()
        with stop_on_signals(stop, progress.log):
            return _execute(plan, store, progress, resume, stop, world)
    return _execute(plan, store, progress, resume, stop, world)


def _execute(plan: Plan, store: Store | None, progress: Progress, resume: RunRecord | None, stop: StopRequest, world: World | None) -> int:
    if world is not None:
        plan = dataclasses.replace(plan, device=distributed.run_device(world, plan.device))
    for note in plan.notes:
        progress.log(note)
    splits = plan.dataset.load(plan.data_dir)
    check_sample_counts(splits, plan.key(plan.dataset), train_samples=plan.request.train_samples, eval_samples=plan.request.eval_samples)
    info = plan.dataset.info
    train_index = eval_indices(splits.train_images.shape[0], plan.request.train_samples)
    test_index = eval_indices(splits.test_images.shape[0], plan.request.eval_samples)
    save_dir = prepare_save_dir(plan.request.save_dir)
    save_dir = save_dir.absolute() if save_dir is not None else None  # recorded paths work from any directory

    torch.manual_seed(plan.seed)
    generator = torch.Generator(device=plan.device).manual_seed(plan.seed)
    model = build_model(plan, info).to(plan.device)
    data = TrainData(info, splits.train_images[train_index].to(plan.device), splits.train_labels[train_index].to(plan.device))
    config = _config(plan, world)
    env = environment(plan.plugin_versions)
    if world is not None:
        env["world_size"] = world.size
    run_info = RunInfo(
        trainer=plan.key(plan.trainer),
        dataset=plan.key(plan.dataset),
        norm=plan.threat.norm,
        eps=plan.threat.eps,
        preset=plan.preset.name if plan.preset else None,
        seed=plan.seed,
        epochs=plan.epochs,
        config=config,
        device=device_name(plan.device) if world is None else f"{world.size} × {device_name(plan.device)}",
        environment=env,
    )
    checkpoint = _last_checkpoint(resume, save_dir, progress) if resume is not None else None
    if store is not None:
        try:
            if resume is None:
                run_id = store.create_run(run_info)
            else:
                run_id = resume.id
                store.resume_run(run_id, env)
        except BaseException:
            if world is not None:  # the other ranks wait for the run id
                distributed.broadcast_object(None)
            raise
        if world is not None:
            distributed.broadcast_object(run_id)
    else:
        told = distributed.broadcast_object(None)
        if told is None:
            raise HarnessError("rank 0 could not record the run")
        run_id = int(told)
    run_dir = save_dir / f"run-{run_id}" if save_dir is not None else None

    train_seconds: float | None = None
    try:
        with Heartbeat(lambda: _beat(store, run_id), progress.log) if store is not None else _NoHeartbeat() as heartbeat:
            params = sum(p.numel() for p in model.parameters())
            progress.log(
                f"run {run_id}: {plan.key(plan.trainer)} on {plan.key(plan.dataset)}, {plan.threat}, preset {config['preset']}, "
                f"{plan.epochs} epochs, seed {plan.seed}, {params:,} parameters, {device_name(plan.device)}"
                + (f", resumed from epoch {checkpoint['position']['epoch']}" if checkpoint else "")
            )
            checkpoints = None
            if run_dir is not None:
                # Every rank resumes from it and watches for a stop; only rank 0's loop saves (and records) one.
                checkpoints = Checkpointing(
                    directory=run_dir, resume=checkpoint, every_epochs=plan.request.checkpoint_every,
                    on_saved=(lambda saved: _record_checkpoint(store, run_id, saved, progress)) if store is not None else None,
                )
            ctx = TrainContext(
                threat=plan.threat, device=plan.device, seed=plan.seed, generator=generator, progress=progress,
                checkpoints=checkpoints, world=world,
            )
            start = time.perf_counter()
            stop.checkpoints = checkpoints
            try:
                plan.trainer.fit(model, data, ctx)
            finally:
                stop.checkpoints = None
            synchronize(plan.device)
            # Every process of the run, as the last save counted it (the final save failing: this process, and the resumed one's).
            last = checkpoints.last if checkpoints is not None else None
            train_seconds = last["train_seconds"] if last else (checkpoint or {}).get("seconds", 0.0) + time.perf_counter() - start
            weights = None
            if store is not None:
                weights = _save_model(run_dir, model, config, progress) if run_dir is not None else None
                _write(store, lambda: store.record_training(
                    run_id, train_seconds=train_seconds or 0.0, weights=weights, training={"epochs": ctx.history}, config=config,
                ), progress, "its training record")

            start = time.perf_counter()
            evaluation = _evaluate(plan, model, splits.test_images, splits.test_labels, test_index, progress, world)
            eval_seconds = time.perf_counter() - start
            if store is None:  # another rank records it
                return run_id
            final = _config(plan, world, evaluation.result)
            heartbeat.stop()  # the final write ends the run; a heartbeat after it would be refused
            problem = _record_evaluation(store, run_id, evaluation, final, env, eval_seconds, progress)
            if problem is not None:
                pending = PendingResults(
                    database=store.name, run_id=run_id, run=dataclasses.asdict(run_info) | {"config": final},
                    training={"train_seconds": train_seconds, "weights": dataclasses.asdict(weights) if weights else None,
                              "history": ctx.history},
                    evaluation={"config": final["evaluation"], "environment": env, "seconds": eval_seconds},
                    result=evaluation.result, samples=evaluation.samples, reason=problem,
                )
                path = write_pending((run_dir or Path.cwd()).absolute() / (FILENAME if run_dir else f"results-run-{run_id}.json"), pending)
                raise ResultsNotRecorded(
                    f"run {run_id} finished, but {store.name} could not record it ({problem}); its results are in "
                    f"{path}: record them with `harness import {path}`"
                )
            if run_dir is not None and run_dir.is_dir():
                try:
                    _write_config(run_dir, final)
                except OSError as exc:
                    progress.log(f"warning: run {run_id}'s final configuration could not be saved: {one_line(exc)}")
    except ResultsNotRecorded:
        raise
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        what = one_line(exc) if isinstance(exc, TrainingInterrupted) else f"interrupted by {stop.describe()}"
        resumable = "; resume with harness run --resume " + str(run_id) if run_dir is not None else ""
        _mark(store, run_id, INTERRUPTED, what + resumable, train_seconds)
        raise KeyboardInterrupt(f"run {run_id} interrupted{resumable}") from None
    except TrainingDiverged as exc:
        _mark(store, run_id, FAILED, one_line(exc), train_seconds)
        raise
    except BaseException as exc:
        _mark(store, run_id, FAILED, f"{type(exc).__name__}: {one_line(exc)}", train_seconds)
        raise
    return run_id


class ResultsNotRecorded(HarnessError):
    """A run finished but the store could not take its results; they are in a results file (exit status 1)."""


def _write(store: Store, write: Callable[[], object], progress: Progress, what: str) -> str | None:
    """Do one write to the store, retrying while the store is unavailable (a gone store is not retried); why it failed, or None."""
    problem = None
    for attempt, pause in enumerate((0.0, *RECORD_RETRIES_S)):
        if attempt:
            progress.log(f"retrying in {pause:.0f} s (attempt {attempt + 1} of {len(RECORD_RETRIES_S) + 1})")
            time.sleep(pause)
        try:
            store.check_alive()
            write()
            return None
        except StoreGone as exc:
            progress.log(f"warning: could not record {what}: {exc}")
            return one_line(exc)
        except StoreUnavailable as exc:
            progress.log(f"warning: could not record {what}: {exc}")
            problem = one_line(exc)
    return problem


def _record_evaluation(
    store: Store, run_id: int, evaluation: Evaluation, final: dict[str, Any], env: dict[str, Any], seconds: float, progress: Progress,
) -> str | None:
    def write() -> None:
        store.record_evaluation(
            run_id, result=evaluation.result, samples=evaluation.samples, config=final["evaluation"], environment=env,
            seconds=seconds, run_config=final, finish=True,
        )

    return _write(store, write, progress, "the results")


def _config(plan: Plan, world: World | None, result: Any = None) -> dict[str, Any]:
    """The run's configuration, with ``distributed`` (world size, backend, batch statistics) for a multi-process run."""
    config = plan.config(result)
    if world is not None:
        config["distributed"] = world.describe()
    return config


class _NoHeartbeat:
    """The heartbeat of a rank other than 0: none (rank 0's tells the store the run is alive)."""

    def __enter__(self) -> _NoHeartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def stop(self) -> None:
        pass


def _evaluate(
    plan: Plan, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, progress: Progress,
    world: World | None = None,
) -> Evaluation:
    evaluation = evaluate(
        model,
        images[index],
        labels[index],
        plan.threat,
        attackers=plan.attackers,
        certifiers=plan.certifiers,
        device=plan.device,
        indices=index,
        batch_size=plan.request.eval_batch_size,
        progress=progress,
        names=plan.key,
        world=world,
        budgets=plan.request.certifier_budget,
    )
    if plan.request.certifiers is not None:
        for name, reason in sorted(evaluation.result.not_applicable.items()):
            progress.log(f"warning: certifier {name!r}, asked for with --certifier, did not apply: {reason}")
    return evaluation


def _last_checkpoint(record: RunRecord, save_dir: Path | None, progress: Progress) -> dict[str, Any] | None:
    """The resumed run's last checkpoint, read safely; ``None`` (training starts over, same seed) if there is none."""
    path = Path(record.checkpoint["path"]) if record.checkpoint and record.checkpoint.get("path") else None
    if path is None and save_dir is not None:
        path = save_dir / f"run-{record.id}" / CHECKPOINT_FILE
    if path is None or not path.exists():
        progress.log(f"run {record.id} has no checkpoint: training starts over (the same seed gives the same run)")
        return None
    return load_checkpoint(path)


def _beat(store: Store, run_id: int, checkpoint: dict[str, Any] | None = None) -> None:
    """A heartbeat, only into the database the run started in (a deleted SQLite file must not be created again, empty)."""
    store.check_alive()
    store.heartbeat(run_id, checkpoint=checkpoint)


def _record_checkpoint(store: Store, run_id: int, saved: dict[str, Any], progress: Progress) -> None:
    try:
        _beat(store, run_id, saved)
    except HarnessError as exc:  # the checkpoint is on disk; the store learns of it at the next one
        progress.log(f"warning: checkpoint {saved.get('path')} written, but not recorded: {one_line(exc)}")


def _save_model(run_dir: Path, model: torch.nn.Module, config: dict[str, Any], progress: Progress) -> WeightsFile | None:
    """The trained weights (with the configuration) written atomically; ``None``, with a warning, if they cannot be.

    A failure here (a full disk: torch.save raises RuntimeError) never costs the evaluation, and leaves no partial file.
    """
    path = run_dir / MODEL_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        size = save_weights(path, model.state_dict(), config)
        weights = WeightsFile(path=str(path.absolute()), sha256=sha256_file(path), bytes=size)
        _write_config(run_dir, config)
    except (OSError, RuntimeError) as exc:
        progress.log(f"warning: the trained weights could not be saved to {path}: {one_line(exc)}; the evaluation goes on")
        return None
    return weights


def _write_config(directory: Path, config: dict[str, Any]) -> None:
    write_text_atomic(directory / "config.json", json.dumps(config, indent=2) + "\n")


def _mark(store: Store | None, run_id: int, status: str, error: str, train_seconds: float | None) -> None:
    if store is None:  # rank 0 records how the run ended
        return
    try:
        store.mark_ended(run_id, status, error, train_seconds=train_seconds)
    except Exception:  # the original error matters more than a failed bookkeeping write  # noqa: BLE001, S110
        pass




__all__ = ["ResultsNotRecorded", "UsageError", "execute"]
