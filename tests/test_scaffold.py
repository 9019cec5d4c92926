"""The training scaffold: its loop, its hooks, its progress, its checkpoints and resume, and its stop when training diverges."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import DatasetInfo, Model, ThreatModel, TrainingDiverged, TrainingInterrupted, hookimpl
from harness.checkpoint import Checkpointing, load_checkpoint
from harness.errors import HarnessError, PluginError, UsageError
from harness.scaffold import BatchLoss, EpochTrainer, Step
from harness.schedules import cosine_annealing
from harness.testing import check_resumes
from harness.train import TrainContext, TrainData

INFO = DatasetInfo(name="blobs", num_classes=2, shape=(1, 2, 2), mean=(0.5,), std=0.25)


def blobs(n: int, seed: int = 0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    centre = torch.where(labels[:, None] == 1, 200.0, 55.0)
    images = (centre + 20 * torch.randn(n, 4, generator=g)).clamp(0, 255).to(torch.uint8).view(n, 1, 2, 2)
    return TrainData(INFO, images, labels)


def context(seed: int = 0, progress=None) -> TrainContext:
    ctx = TrainContext(ThreatModel("inf", 0.1), torch.device("cpu"), seed, torch.Generator().manual_seed(seed))
    if progress is not None:
        ctx.progress = progress
    return ctx


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


# -- a third party's trainer: the module docstring's example, public API only ------------------------


@dataclass(frozen=True)
class CEOptions:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.5


class CETrainer(EpochTrainer):
    name = "ce"
    description = "plain cross-entropy, SGD with a cosine lr (test)"
    model = "linear"
    Options = CEOptions

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.options.lr)

    def schedule(self, step: Step) -> dict[str, float]:
        return {"lr": cosine_annealing(step.t, self.options.lr, self.options.epochs)}

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        logits = model(images)
        return BatchLoss(F.cross_entropy(logits, labels), logits)


def accuracy(model: nn.Module, data: TrainData) -> float:
    with torch.no_grad():
        return (model(data.images.float() / 255).argmax(1) == data.labels).float().mean().item()


def test_a_third_party_trainer_on_the_scaffold_trains_a_tiny_model():
    torch.manual_seed(0)
    model, data = Linear(), blobs(256)
    before = accuracy(model, data)
    CETrainer().fit(model, data, context())
    assert not model.training
    assert accuracy(model, data) > 0.95 and accuracy(model, data) > before


def test_the_same_seed_gives_the_same_weights():
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Linear()
        CETrainer().fit(model, blobs(128), context(seed=3))
        weights.append(model.fc.weight.detach().clone())
    assert torch.equal(*weights)


# -- a recording trainer: what the scaffold calls, and when --------------------------------------------


class Recorder(CETrainer):
    """Records every call; its optimiser has three groups, two with an ``lr_scale``."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.calls: list[str] = []
        self.steps: list[Step] = []
        self.group_lrs: list[list[float]] = []
        self.devices: list[torch.device] = []

    def training_data(self, data, ctx):
        self.calls.append("training_data")
        return TrainData(data.info, data.images[:80], data.labels[:80])

    def start(self, model, data, ctx):
        self.calls.append("start")
        return {"n": len(data)}

    def optimizer(self, model):
        self.calls.append(f"optimizer {self.state}")
        return torch.optim.SGD(
            [
                {"params": [model.fc.weight], "lr_scale": 0.25},
                {"params": [model.fc.bias]},
                {"params": [nn.Parameter(torch.zeros(()))], "lr_scale": 2.0},
            ],
            lr=1.0,
        )

    def schedule(self, step):
        self.steps.append(step)
        return {"lr": 0.1 * (step.epoch + 1) + 0.01 * step.index, "p": 8.0}

    def apply_schedule(self, model, values):
        self.calls.append("apply")

    def loss(self, model, images, labels, values):
        self.devices.append(images.device)
        return super().loss(model, images, labels, values)

    def before_optimizer_step(self, model, values):
        assert model.fc.weight.grad is not None  # after backward()
        self.calls.append("before_step")

    def finish(self, model):
        self.calls.append("finish")
        super().finish(model)


def test_schedules_are_stepped_per_mini_batch_and_the_lr_scaled_per_group(monkeypatch):
    trainer = Recorder(CEOptions(epochs=2, batch_size=32))
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append([group["lr"] for group in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    trainer.fit(Linear(), blobs(256), context())
    # 80 samples after training_data(): 3 batches an epoch (32, 32, 16)
    assert [(s.epoch, s.index, s.steps, s.epochs) for s in trainer.steps] == [(e, i, 3, 2) for e in range(2) for i in range(3)]
    assert [s.t for s in trainer.steps] == [0, 1 / 3, 2 / 3, 1, 1 + 1 / 3, 1 + 2 / 3]
    lrs = [0.1 * (s.epoch + 1) + 0.01 * s.index for s in trainer.steps]
    assert seen == [[lr * 0.25, lr, lr * 2.0] for lr in lrs]
    assert trainer.calls[:2] == ["training_data", "start"] and trainer.calls[2] == "optimizer {'n': 80}"
    assert trainer.calls[3:] == ["apply", "before_step"] * 6 + ["finish"]
    assert trainer.state == {"n": 80}
    assert trainer.devices == [torch.device("cpu")] * 6


class Blowup(CETrainer):
    """Cross-entropy of the logits times a scheduled temperature that is ∞ at one step."""

    name = "blowup"
    bad = (1, 2)  # epoch, index

    def schedule(self, step):
        return {"lr": 0.5, "temperature": math.inf if (step.epoch, step.index) == self.bad else 1.0}

    def loss(self, model, images, labels, values):
        logits = model(images)
        return BatchLoss(F.cross_entropy(logits * values["temperature"], labels), logits)


def test_a_non_finite_loss_stops_training_at_once_with_a_one_line_message(monkeypatch):
    torch.manual_seed(0)
    model = Linear()
    taken = []
    real_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        taken.append(model.fc.weight.detach().clone())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    trainer = Blowup(CEOptions(epochs=3, batch_size=64))
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit(model, blobs(256), context())
    message = str(caught.value)
    assert message == "training diverged: loss nan at epoch 2/3, step 3/4 (lr 0.5, temperature inf)"
    assert isinstance(caught.value, HarnessError) and "\n" not in message
    assert caught.value.step == Step(1, 2, 4, 3) and caught.value.values == {"lr": 0.5, "temperature": math.inf}
    assert len(taken) == 4 + 2  # the bad step never reached the optimiser
    assert torch.isfinite(model.fc.weight).all()


class RecordingProgress:
    def __init__(self) -> None:
        self.tasks: list[tuple[str, int | None, list[dict]]] = []

    @contextmanager
    def task(self, description, total=None):
        advances: list[dict] = []
        self.tasks.append((description, total, advances))

        class Task:
            def advance(self, n=1, **metrics):
                advances.append(metrics)

        yield Task()

    def log(self, message):
        pass


class Metered(CETrainer):
    def schedule(self, step):
        return {"lr": 0.1, "p": 8.0}

    def loss(self, model, images, labels, values):
        logits = torch.zeros(labels.shape[0], 2)
        logits[:, 1] = 1.0  # predicts class 1 for all
        loss = model.fc.bias.sum() * 0 + labels.float().mean()
        return BatchLoss(loss, logits, {"half": labels.float().mean().item() / 2})


def test_progress_shows_running_means_weighted_by_batch_size_and_the_scheduled_values():
    progress = RecordingProgress()
    data = blobs(80)
    Metered(CEOptions(epochs=2, batch_size=32)).fit(Linear(), data, context(progress=progress))
    assert [(d, t) for d, t, _ in progress.tasks] == [("epoch 1/2", 3), ("epoch 2/2", 3)]
    _, _, advances = progress.tasks[0]
    assert len(advances) == 3
    last = advances[-1]
    # each batch's loss is its mean label: the running mean over the epoch is the mean label of all samples
    mean_label = data.labels.float().mean().item()
    assert last["loss"] == pytest.approx(mean_label) and last["half"] == pytest.approx(mean_label / 2)
    assert last["acc"] == f"{mean_label:.2%}" and last["lr"] == 0.1 and last["p"] == 8.0


# -- through the runner and the CLI: the run fails in training, with the one-line message ----------


class BlobsPlugin:
    @hookimpl
    def register_datasets(self):
        from harness import Dataset, Splits

        class Blobs(Dataset):
            name = "blobs"
            description = "two Gaussian blobs as 1×2×2 images (test data)"
            info = INFO

            def load(self, root, *, download=True):
                train, test = blobs(256), blobs(64, seed=1)
                return Splits(train.images, train.labels, test.images, test.labels)

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
        return [Blowup]


def test_a_diverged_run_fails_in_training_and_is_recorded(harness_cli):
    r = harness_cli("run", "--plugin", "blowup", "--dataset", "blobs", "--eps", "0.01", "--no-save", "--set", "trainer.batch_size=64",
                    plugins=[BlobsPlugin()])
    assert r.code == 1
    assert r.err.strip().splitlines()[-1] == "error: training diverged: loss nan at epoch 2/3, step 3/4 (lr 0.5, temperature inf)"
    assert "evaluate" not in r.err and "certify" not in r.err  # it stopped in training, not at the evaluation
    runs = harness_cli("runs").out
    assert "failed" in runs


@dataclass(frozen=True)
class NoBatchSize:
    epochs: int = 1


class Unbatched(CETrainer):
    name = "unbatched"
    Options = NoBatchSize


def test_a_scaffold_trainer_without_batch_size_is_a_startup_problem():
    from harness.testing import make_catalog

    class P:
        @hookimpl
        def register_trainers(self):
            return [Unbatched]

    (problem,) = make_catalog(P(), builtins=False).problems
    assert "Options has no 'batch_size'" in str(problem) and "add integer fields epochs and batch_size" in str(problem)


class NoLr(CETrainer):
    def schedule(self, step):
        return {"rate": 0.1}


def test_a_schedule_without_lr_is_the_plugins_error():
    from harness.errors import PluginError

    with pytest.raises(PluginError, match="schedule\\(\\) returned \\{'rate': 0.1\\}; it must be a dict with a finite 'lr'"):
        NoLr(CEOptions(epochs=1)).fit(Linear(), blobs(64), context())


class HoldsOutEverything(CETrainer):
    def training_data(self, data: TrainData, ctx: TrainContext) -> TrainData:
        return TrainData(data.info, data.images[:0], data.labels[:0])


def test_a_trainer_left_with_no_training_data_is_refused_before_it_starts():
    from harness.errors import UsageError

    trainer = HoldsOutEverything(CEOptions())
    with pytest.raises(UsageError, match=r"^trainer 'ce' has no sample left to train on \(of the 5 it was given\); give more \(--train-samples\)$"):
        trainer.fit(Linear(), blobs(5), context())
    assert trainer.state is None  # start() was never called


# -- checkpoints and resume ----------------------------------------------------------------------------


class Augmented(CETrainer):
    """CE with a random crop and flip drawn from the run's generator for every batch."""

    def augmentation(self, data):
        from harness.data import Augmentation

        return Augmentation(crop_padding=1, flip=True)


class LinearModel(Model):
    name = "linear"
    description = "a linear classifier (test)"

    def build(self, data):
        return Linear()


def blob_data(n: int = 200):
    data = blobs(n)
    return data.info, data.images, data.labels


@pytest.mark.parametrize("stops", [[1, 7], [3, 4], [14, 15]])
def test_a_run_stopped_anywhere_and_resumed_ends_as_one_that_never_stopped(tmp_path, stops):
    # 200 samples, batch 40: 5 steps an epoch, 3 epochs; 15 stops after the last step (resumes into finish())
    trainer = lambda: Augmented(CEOptions(epochs=3, batch_size=40))  # noqa: E731
    check_resumes(trainer, LinearModel(), ThreatModel("inf", 0.1), tmp_path, stops=stops, data=blob_data())


def saves(tmp_path, trainer, **kwargs) -> tuple[list[dict], TrainContext]:
    told: list[dict] = []
    ctx = context()
    ctx.checkpoints = Checkpointing(tmp_path, on_saved=told.append, **kwargs)
    torch.manual_seed(0)
    model = Linear()
    trainer.fit(model, blobs(200), ctx)
    ctx.model = model
    return told, ctx


def test_checkpoints_every_n_epochs_and_at_the_end_with_the_history(tmp_path):
    told, ctx = saves(tmp_path, CETrainer(CEOptions(epochs=5, batch_size=40)), every_epochs=2)
    assert [(t["epoch"], t["index"], t["step"]) for t in told] == [(2, 0, 10), (4, 0, 20), (5, 0, 25)]
    assert all(t["path"] == str(tmp_path / "checkpoint.pt") and t["bytes"] > 0 for t in told)
    assert told[-1]["bytes"] == (tmp_path / "checkpoint.pt").stat().st_size
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["trainer"] == "ce" and saved["position"] == {"epoch": 5, "index": 0, "steps": 5, "epochs": 5, "step": 25}
    assert saved["options"] == {"epochs": 5, "batch_size": 40, "lr": 0.5} and saved["seconds"] > 0
    assert [h["epoch"] for h in ctx.history] == [1, 2, 3, 4, 5] and saved["history"] == ctx.history
    assert set(ctx.history[0]) == {"epoch", "loss", "acc"} and 0 <= ctx.history[-1]["acc"] <= 1
    assert ctx.history[-1]["acc"] > 0.9 and ctx.history[-1]["loss"] < ctx.history[0]["loss"]


def test_checkpoints_by_wall_time_are_checked_after_every_step(tmp_path):
    told, ctx = saves(tmp_path, Augmented(CEOptions(epochs=2, batch_size=40)), every_epochs=100, every_seconds=1e-9)
    assert [t["step"] for t in told] == list(range(1, 11))  # every step; the end is saved already
    torch.manual_seed(0)
    unsaved = Linear()
    Augmented(CEOptions(epochs=2, batch_size=40)).fit(unsaved, blobs(200), context())
    assert torch.equal(unsaved.fc.weight, ctx.model.fc.weight)  # saving draws from no generator
    told, _ = saves(tmp_path, CETrainer(CEOptions(epochs=2, batch_size=40)), every_epochs=100, every_seconds=math.inf)
    assert [t["step"] for t in told] == [10]  # only at the end


def test_a_stop_request_finishes_the_step_saves_and_raises_with_the_position(tmp_path):
    ctx = context()
    ctx.checkpoints = Checkpointing(tmp_path)
    trainer = Augmented(CEOptions(epochs=3, batch_size=40))
    real_loss = trainer.loss
    steps = []

    def loss(model, images, labels, values):
        steps.append(1)
        if len(steps) == 7:
            ctx.checkpoints.request_stop("SIGTERM")  # arrives during step 7
        return real_loss(model, images, labels, values)

    trainer.loss = loss
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.fit(Linear(), blobs(200), ctx)
    stopped = caught.value
    size = (tmp_path / "checkpoint.pt").stat().st_size
    assert str(stopped) == (
        f"training interrupted (SIGTERM) after 7 steps; it resumes at epoch 2/3, step 3/5; "
        f"checkpoint '{tmp_path / 'checkpoint.pt'}' ({size:,} bytes)"
    )
    assert stopped.step == Step(1, 2, 5, 3) and stopped.steps_done == 7 and stopped.checkpoint["step"] == 7
    assert isinstance(stopped, HarnessError) and len(steps) == 7
    assert load_checkpoint(tmp_path / "checkpoint.pt")["position"] == {"epoch": 1, "index": 2, "steps": 5, "epochs": 3, "step": 7}


def test_a_checkpoint_that_cannot_be_written_is_a_warning_and_training_goes_on(tmp_path, monkeypatch):
    import harness.checkpoint

    def full(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(harness.checkpoint, "save_atomic", full)
    progress = RecordingProgress()
    progress.lines = []
    progress.log = progress.lines.append
    ctx = context(progress=progress)
    ctx.checkpoints = Checkpointing(tmp_path)
    model = Linear()
    CETrainer(CEOptions(epochs=2, batch_size=40)).fit(model, blobs(200), ctx)
    assert not model.training and len(ctx.history) == 2  # trained to the end
    warning = f"warning: checkpoint '{tmp_path / 'checkpoint.pt'}' not saved: [Errno 28] No space left on device; training goes on"
    assert progress.lines == [warning] * 2  # after epochs 1 and 2 (the end: the same position, not tried again)
    ctx = context()
    ctx.checkpoints = Checkpointing(tmp_path)
    ctx.checkpoints.request_stop("SIGINT")
    with pytest.raises(TrainingInterrupted, match=r"after 1 steps; it resumes at epoch 1/2, step 2/5; the checkpoint could not be saved$"):
        CETrainer(CEOptions(epochs=2, batch_size=40)).fit(Linear(), blobs(200), ctx)


class Stateful(CETrainer):
    """Per-run state from start(), without saying what to keep of it."""

    def start(self, model, data, ctx):
        return {"n": len(data)}


class KeepsState(Stateful):
    def checkpoint_state(self):
        return {"n": self.state["n"]}

    def restore_state(self, saved):
        self.state["n"] = saved["n"]


class KeepsAnObject(KeepsState):
    def checkpoint_state(self):
        return {"weights": [torch.ones(1), Step(0, 0, 1, 1)]}


def test_resumable_means_no_start_or_both_state_methods():
    from harness import Trainer

    assert CETrainer.resumable() and KeepsState.resumable()
    assert not Stateful.resumable() and not Trainer.resumable()


def test_a_trainer_that_cannot_resume_saves_no_checkpoint_and_says_so_when_stopped(tmp_path):
    progress = RecordingProgress()
    progress.lines = []
    progress.log = progress.lines.append
    ctx = context(progress=progress)
    ctx.checkpoints = Checkpointing(tmp_path)
    ctx.checkpoints.request_stop("SIGTERM")
    with pytest.raises(TrainingInterrupted, match="; no checkpoint: trainer 'ce' cannot resume$") as caught:
        Stateful(CEOptions(epochs=2, batch_size=40)).fit(Linear(), blobs(200), ctx)
    assert caught.value.checkpoint is None and not (tmp_path / "checkpoint.pt").exists()
    assert progress.lines == ["trainer 'ce' cannot resume (see Trainer.resumable): no checkpoints are saved"]


def test_a_trainer_state_that_is_not_weights_only_is_refused_when_saving(tmp_path):
    ctx = context()
    ctx.checkpoints = Checkpointing(tmp_path)
    with pytest.raises(PluginError) as caught:
        KeepsAnObject(CEOptions(epochs=1, batch_size=40)).fit(Linear(), blobs(200), ctx)
    assert str(caught.value) == (
        "trainer 'ce': checkpoint_state()['weights'][1] is a Step; "
        "a checkpoint holds only tensors, dicts, lists, str, int, float, bool and None"
    )


def test_resuming_refuses_another_trainer_other_options_or_other_data(tmp_path):
    ctx = context()
    ctx.checkpoints = Checkpointing(tmp_path, every_epochs=1)
    ctx.checkpoints.request_stop("test")
    with pytest.raises(TrainingInterrupted):
        CETrainer(CEOptions(epochs=2, batch_size=40)).fit(Linear(), blobs(200), ctx)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    where = f"checkpoint {str(tmp_path / 'checkpoint.pt')!r}"
    cases = [
        (Blowup(CEOptions(epochs=2, batch_size=40)), 200, f"{where} was written by trainer 'ce', not 'blowup'"),
        (CETrainer(CEOptions(epochs=2, batch_size=40, lr=0.1)), 200, f"{where} was written with ce option lr=0.5; this run has 0.1"),
        (
            CETrainer(CEOptions(epochs=2, batch_size=40)),
            240,
            f"{where} has 5 steps per epoch and 2 epochs; this run has 6 and 2 (other training data?)",
        ),
    ]
    for trainer, n, message in cases:
        ctx = context()
        ctx.checkpoints = Checkpointing(tmp_path, resume=saved)
        with pytest.raises(HarnessError) as caught:
            trainer.fit(Linear(), blobs(n), ctx)
        assert str(caught.value) == message
    ctx = context()
    ctx.checkpoints = Checkpointing(tmp_path, resume={**saved, "device": "cuda"})
    with pytest.raises(HarnessError, match=f"^{re.escape(where)} was written by a run on cuda; resume it on cuda, not cpu$"):
        CETrainer(CEOptions(epochs=2, batch_size=40)).fit(Linear(), blobs(200), ctx)
    ctx = context()
    ctx.checkpoints = Checkpointing(tmp_path, resume=saved)
    with pytest.raises(UsageError, match="^trainer 'ce' cannot resume a run: it keeps per-run state from start"):
        Stateful(CEOptions(epochs=2, batch_size=40)).fit(Linear(), blobs(200), ctx)


# -- divergence: loss, gradient, parameter -----------------------------------------------------------------


class Diverging(CETrainer):
    """Cross-entropy; at step ``bad`` (epoch, index) one thing goes wrong, as ``how`` says."""

    name = "diverging"
    bad = (1, 1)

    def __init__(self, how: str) -> None:
        super().__init__(CEOptions(epochs=2, batch_size=40))
        self.how = how

    def schedule(self, step):
        bad = (step.epoch, step.index) == self.bad
        return {
            "lr": 1e30 if bad and self.how == "parameter" else 0.1,
            "scale": 1e25 if bad and self.how == "loss" else 1.0,
            "bump": 1e9 if bad and self.how == "growth" else 0.0,
        }

    def loss(self, model, images, labels, values):
        logits = model(images)
        loss = F.cross_entropy(logits * values["scale"], labels) + values["bump"]
        if self.how == "gradient" and values["lr"] == 0.1 and (self._step == self.bad):
            loss = loss + (model.fc.weight - model.fc.weight.detach()).abs().sqrt().sum()  # finite, its gradient is not
        return BatchLoss(loss, logits)

    def apply_schedule(self, model, values):
        pass


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("loss", "training diverged: loss {value} (beyond 2^64 ≈ 1.8e19, where float32 squares overflow) at epoch 2/2, step 2/5 "
                 "(lr 0.1, scale 1e+25, bump 0)"),
        ("growth", "training diverged: loss 1e+09 (at least 2^24 times the run's first loss, {first}: a blow-up) at epoch 2/2, "
                   "step 2/5 (lr 0.1, scale 1, bump 1e+09)"),
        ("gradient", "training diverged: largest |gradient| nan at epoch 2/2, step 2/5 (lr 0.1, scale 1, bump 0)"),
        ("parameter", "training diverged: largest |parameter| after the step {value} (beyond 2^64 ≈ 1.8e19, where float32 squares "
                      "overflow) at epoch 2/2, step 2/5 (lr 1e+30, scale 1, bump 0)"),
    ],
)
def test_a_loss_gradient_or_parameter_that_diverges_stops_training_at_once_and_nothing_is_saved_after_it(tmp_path, how, message):
    trainer = Diverging(how)
    real_schedule = trainer.schedule

    def schedule(step):
        trainer._step = (step.epoch, step.index)
        return real_schedule(step)

    trainer.schedule = schedule
    told: list[dict] = []
    ctx = context()
    ctx.checkpoints = Checkpointing(tmp_path, every_seconds=1e-9, on_saved=told.append)  # a checkpoint after every good step
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit(Linear(), blobs(200), ctx)
    error = caught.value
    assert error.what == ("loss" if how == "growth" else how) and error.step == Step(1, 1, 5, 2) and "\n" not in str(error)
    if how == "growth":
        first = load_checkpoint(tmp_path / "checkpoint.pt")["first_loss"]
        message = message.format(first=f"{first:.4g}")
    if "{value}" in message:
        value = float(str(error).split(" (beyond")[0].split()[-1])
        assert value >= 2.0**64
        message = message.format(value=f"{value:.3g}")
    assert str(error) == message
    assert [t["step"] for t in told] == [1, 2, 3, 4, 5, 6]  # the diverged step 7 was not saved
    assert load_checkpoint(tmp_path / "checkpoint.pt")["position"]["step"] == 6


def test_the_divergence_check_adds_no_synchronisation(monkeypatch):
    # Per step: loss.item() (as before) and one tolist() for the accuracy and both checks, nothing else.
    calls = {"item": 0, "tolist": 0}
    real_item, real_tolist = Tensor.item, Tensor.tolist

    def item(self):
        calls["item"] += 1
        return real_item(self)

    def tolist(self):
        calls["tolist"] += 1
        return real_tolist(self)

    monkeypatch.setattr(Tensor, "item", item)
    monkeypatch.setattr(Tensor, "tolist", tolist)
    CETrainer(CEOptions(epochs=2, batch_size=40)).fit(Linear(), blobs(200), context())
    assert calls == {"item": 10, "tolist": 10}
