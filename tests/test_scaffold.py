"""The training scaffold: its loop, its hooks, its progress and its stop at a non-finite loss."""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import DatasetInfo, ThreatModel, TrainingDiverged, hookimpl
from harness.errors import HarnessError
from harness.scaffold import BatchLoss, EpochTrainer, Step
from harness.schedules import cosine_annealing
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
