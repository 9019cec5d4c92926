"""Runs that fail or are interrupted are recorded as such; a certifier's failure (unsoundness included) is isolated."""

import os
import signal
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from harness import Certificate, Certifier, Dataset, DatasetInfo, Model, Splits, Trainer, hookimpl
from harness.errors import UsageError
from harness.execution import execute
from harness.runner import RunRequest, build_model, check_sample_counts, plan_run
from harness.store import open_store
from harness.testing import make_catalog


class Blobs(Dataset):
    name = "blobs"
    description = "two Gaussian blobs as 1×2×2 images (test data)"
    info = DatasetInfo(name="blobs", num_classes=2, shape=(1, 2, 2), mean=(0.5,), std=0.25)

    def load(self, root, *, download=True):
        g = torch.Generator().manual_seed(0)

        def make(n):
            labels = torch.randint(0, 2, (n,), generator=g)
            centre = torch.where(labels[:, None] == 1, 200.0, 55.0)
            images = (centre + 20 * torch.randn(n, 4, generator=g)).clamp(0, 255).to(torch.uint8)
            return images.view(n, 1, 2, 2), labels

        return Splits(*make(256), *make(64))


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


class LinearModel(Model):
    name = "linear"
    description = "a linear classifier (test)"

    def build(self, data):
        return Linear()


@dataclass(frozen=True)
class Epochs:
    epochs: int = 1


class Fit(Trainer):
    name = "fit"
    description = "a few steps of cross-entropy (test)"
    model = "linear"
    Options = Epochs
    fail_with: BaseException | None = None

    def fit(self, model, data, ctx):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(self.options.epochs):
            for x, y in data.batches(64, ctx.generator):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if self.fail_with is not None:
                    raise self.fail_with
        model.eval()


class Boom(Fit):
    name = "boom"
    fail_with = RuntimeError("boom")


class CtrlC(Fit):
    name = "ctrl-c"
    fail_with = KeyboardInterrupt()


class SigTerm(Fit):
    name = "sigterm"

    def fit(self, model, data, ctx):
        os.kill(os.getpid(), signal.SIGTERM)


class Liar(Certifier):
    name = "liar"
    description = "certifies everything (an unsound certifier, for the test)"
    norms = ("inf",)

    def certify(self, model, images, labels, threat):
        return Certificate(certified=torch.ones(len(labels), dtype=torch.bool))


class BlobsPlugin:
    def __init__(self, certifiers=()):
        self.certifiers = list(certifiers)

    @hookimpl
    def register_datasets(self):
        return [Blobs]

    @hookimpl
    def register_models(self):
        return [LinearModel]

    @hookimpl
    def register_trainers(self):
        return [Fit, Boom, CtrlC, SigTerm]

    @hookimpl
    def register_certifiers(self):
        return self.certifiers


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "r.db"))
    yield s
    s.close()


@pytest.fixture
def any_store(db):
    """A store on each backend (SQLite, PostgreSQL): what a run records does not depend on it."""
    s = open_store(db)
    yield s
    s.close()


def run(store, trainer, certifiers=(), **kw):
    catalog = make_catalog(BlobsPlugin(certifiers))
    plan = plan_run(catalog, RunRequest(trainer=trainer, dataset="blobs", eps=0.01, device="cpu", attacks=["pgd"], **kw))
    return execute(plan, store)


def test_a_finished_run_then_a_failed_one(any_store):
    store = any_store
    first = run(store, "fit", epochs=3)
    before = store.samples(first)
    with pytest.raises(RuntimeError, match="boom"):
        run(store, "boom")
    failed = store.list_runs(status="failed")
    assert len(failed) == 1 and failed[0].error == "RuntimeError: boom" and failed[0].result is None
    assert store.get_run(first).status == "finished"
    assert store.samples(first) == before
    assert store.get_run(first).result.clean_accuracy > 0.9


def test_an_interrupted_run_is_recorded_as_interrupted(any_store):
    store = any_store
    with pytest.raises(KeyboardInterrupt):
        run(store, "ctrl-c")
    (record,) = store.list_runs()
    assert record.status == "interrupted" and "interrupted" in record.error


def test_an_unsound_certificate_is_recorded_as_that_certifiers_error_and_counts_for_nothing(store):
    run_id = run(store, "fit", certifiers=[Liar], epochs=1, eval_samples=64)
    record = store.get_run(run_id)
    liar = record.result.certifier("liar")
    assert record.status == "finished" and liar.accuracy is None and liar.samples == 0
    assert liar.error.startswith("UNSOUND certificate: certified") and "misclassified samples (e.g. test index" in liar.error
    assert record.result.errors == [f"certifier 'liar': {liar.error}"]
    # None of its verdicts count: the other certifiers' numbers stand (crown etc. certify this linear model
    # too), and no sample records it.
    assert record.result.certified_accuracy <= record.result.robust_accuracy <= record.result.clean_accuracy < 1
    assert all("liar" not in s.certificates for s in store.samples(run_id))


def test_sigterm_during_training_is_recorded_through_the_cli(harness_cli, monkeypatch, tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    try:
        r = harness_cli("run", "--plugin", "sigterm", "--dataset", "blobs", "--eps", "0.01", "--no-save", plugins=[BlobsPlugin()])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert r.code == 130 and "interrupted" in r.err
    assert "interrupted" in harness_cli("runs").out


# -- values that are only wrong once the data or the model exists ------------------------------------------------


def test_sample_counts_up_to_the_split_sizes_are_accepted_and_beyond_refused():
    splits = Blobs().load(None)  # 256 training and 64 test samples
    check_sample_counts(splits, "blobs", train_samples=256, eval_samples=64)
    with pytest.raises(UsageError, match=r"^--eval-samples 65 exceeds the 64 test samples of 'blobs'; give at most 64 \(or leave it out"):
        check_sample_counts(splits, "blobs", eval_samples=65)
    with pytest.raises(UsageError, match=r"^--train-samples 257 exceeds the 256 training samples of 'blobs'; give at most 256"):
        check_sample_counts(splits, "blobs", train_samples=257)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
                      "allocate 313600000000000 bytes. Error code 12 (Cannot allocate memory)"),
         "not enough memory (one of its tensors needs 313,600.0 GB)"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "not enough memory"),
        (MemoryError(), "not enough memory"),
        (OverflowError("Python int too large to convert to C long"), "its sizes overflow"),
    ],
)
def test_a_model_too_big_to_build_is_a_usage_error(monkeypatch, error, reason):
    def build(self, data):
        raise error

    monkeypatch.setattr(LinearModel, "build", build)
    plan = plan_run(make_catalog(BlobsPlugin()), RunRequest(trainer="fit", dataset="blobs", eps=0.01, device="cpu"))
    with pytest.raises(UsageError) as caught:
        build_model(plan, Blobs.info)
    assert str(caught.value).startswith(f"model 'linear' cannot be built on cpu: {reason}")
    assert str(caught.value).endswith("; give smaller sizes (--set model.KEY=VALUE)")


def test_a_models_bug_while_building_stays_a_bug(monkeypatch):
    def build(self, data):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x4 and 5x2)")

    monkeypatch.setattr(LinearModel, "build", build)
    plan = plan_run(make_catalog(BlobsPlugin()), RunRequest(trainer="fit", dataset="blobs", eps=0.01, device="cpu"))
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        build_model(plan, Blobs.info)


def test_counting_a_models_parameters_first_leaves_its_initial_weights_as_they_were(harness_tiny_data):
    from harness.testing import tiny_info

    request = RunRequest(trainer="linf_v2", dataset="tiny", eps=0.1, no_preset=True, device="cpu", overrides=["model.width=16"])
    plan = plan_run(make_catalog(harness_tiny_data), request)
    torch.manual_seed(3)
    built, next_draw = build_model(plan, tiny_info()).state_dict(), torch.rand(1)
    torch.manual_seed(3)
    plain, plain_next_draw = plan.model.build(tiny_info()).state_dict(), torch.rand(1)
    assert built.keys() == plain.keys()
    assert all(torch.equal(built[k], plain[k]) if isinstance(plain[k], torch.Tensor) else built[k] == plain[k] for k in plain)
    assert torch.equal(next_draw, plain_next_draw)  # the random state after building is the same, too
