"""harness.checkpoint: atomic writes, loads that never run code, RNG states, and Checkpointing's checks."""

from __future__ import annotations

import math
import os
import pickle
import random

import numpy as np
import pytest
import torch

from harness.checkpoint import (
    CHECKPOINT_KEYS,
    FORMAT,
    VERSION,
    Checkpointing,
    CheckpointNotSaved,
    load_checkpoint,
    load_file,
    load_weights,
    restore_rng,
    rng_state,
    save_atomic,
    save_weights,
    sha256_file,
)
from harness.errors import HarnessError, UnreadableFile, UsageError


def one_line_naming(error: BaseException, path) -> str:
    message = str(error)
    assert "\n" not in message and str(path) in message and isinstance(error, HarnessError)
    return message


# -- writing --------------------------------------------------------------------------------------


def test_save_atomic_writes_the_file_and_returns_its_size(tmp_path):
    path = tmp_path / "x.pt"
    size = save_atomic({"a": torch.arange(10), "b": [1, "two", None, math.inf]}, path)
    assert size == path.stat().st_size > 0
    loaded = load_file(path)
    assert torch.equal(loaded["a"], torch.arange(10)) and loaded["b"] == [1, "two", None, math.inf]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]  # no temporary file left


def test_save_atomic_fsyncs_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_atomic({"a": 1}, tmp_path / "x.pt")
    assert len(synced) == 2
    if isinstance(synced[1], str):
        assert synced[0].endswith(f".x.pt.{os.getpid()}.tmp") and synced[1] == str(tmp_path.resolve())


class Exploding:
    """Pickles to half a file, then fails, as a full disk would."""

    def __reduce__(self):
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file data/0: file write failed")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_save_leaves_the_old_file_and_no_temporary_one_and_re_raises(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"old": torch.ones(3)}, path)
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"partial bytes")
        raise error("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(error, match="disk full"):
        save_atomic({"new": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_save_weights_and_load_weights_round_trip_and_a_bare_state_dict_loads_too(tmp_path):
    state = {"fc.weight": torch.randn(2, 3), "fc.bias": torch.zeros(2)}
    save_weights(tmp_path / "model.pt", state, {"seed": 3})
    loaded, config = load_weights(tmp_path / "model.pt")
    assert config == {"seed": 3} and all(torch.equal(loaded[k], v) for k, v in state.items())
    torch.save(state, tmp_path / "bare.pt")
    loaded, config = load_weights(tmp_path / "bare.pt")
    assert config is None and loaded.keys() == state.keys()
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UnreadableFile) as caught:
        load_weights(tmp_path / "list.pt")
    assert "holds no state dict" in one_line_naming(caught.value, tmp_path / "list.pt")


def test_sha256_of_a_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# -- reading: never runs code, one line for every failure ---------------------------------------------


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_file_whose_pickle_would_run_code_is_refused_in_one_line_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"model": RunsCode(marker)}))
    else:
        torch.save({"format": FORMAT, "model": RunsCode(marker)}, path)
    for load in (load_file, load_checkpoint, load_weights):
        with pytest.raises(UnreadableFile) as caught:
            load(path)
        message = one_line_naming(caught.value, path)
        assert "holds objects other than tensors and plain data" in message and "nothing in it ran" in message
    assert not marker.exists()
    # the file is the real thing: unpickled without weights_only, it runs its code
    if how == "pickle":
        pickle.loads(path.read_bytes())  # noqa: S301
        assert marker.exists()
    else:
        assert "(it names posix.system)" in message


def test_truncated_empty_missing_and_foreign_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"a": torch.ones(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "text.pt"
    text.write_text("hello")
    cases = {
        truncated: "it is truncated or not a torch file",
        empty: "it is truncated or not a torch file",
        tmp_path / "missing.pt": "no such file",
        tmp_path: "it is a directory",
        text: "it is not a readable torch file",
    }
    for path, reason in cases.items():
        with pytest.raises(UnreadableFile) as caught:
            load_checkpoint(path)
        message = one_line_naming(caught.value, path)
        assert message.startswith(f"cannot read checkpoint {str(path)!r}: {reason}"), message
        assert isinstance(caught.value, UsageError)


def checkpoint_like(**changes):
    contents = {key: None for key in CHECKPOINT_KEYS} | {"format": FORMAT, "version": VERSION}
    return contents | changes


@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ({"a": 1}, "is not a harness checkpoint (no format 'harness-checkpoint')"),
        ([1, 2], "is not a harness checkpoint"),
        (checkpoint_like(version=2), "has version 2; this harness reads version 1"),
        (checkpoint_like(version="abc"), "has version 'abc'; this harness reads version 1"),
        ({k: v for k, v in checkpoint_like().items() if k not in ("rng", "history")}, "lacks rng, history"),
    ],
)
def test_a_file_of_the_wrong_format_or_version_is_refused(tmp_path, contents, expected):
    path = tmp_path / "checkpoint.pt"
    torch.save(contents, path)
    with pytest.raises(UnreadableFile) as caught:
        load_checkpoint(path)
    assert expected in one_line_naming(caught.value, path)


# -- RNG states -------------------------------------------------------------------------------------


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), random.random()


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn(1)  # leaves a cached Gaussian in numpy's state
    state = rng_state()
    save_atomic(state, tmp_path / "rng.pt")
    expected = draws()
    assert draws() != expected  # the generators moved on
    restore_rng(load_file(tmp_path / "rng.pt"))
    assert draws() == expected


def test_reading_the_rng_states_draws_nothing():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expected = draws()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    rng_state()
    assert draws() == expected


# -- Checkpointing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"every_epochs": 0}, "every_epochs 0 is out of range; it must be an integer >= 1"),
        ({"every_epochs": 1.5}, "every_epochs 1.5 is out of range"),
        ({"every_seconds": 0}, "every_seconds 0 is out of range; it must be > 0 (inf: never by time)"),
        ({"every_seconds": math.nan}, "every_seconds nan is out of range"),
    ],
)
def test_checkpointing_refuses_bad_intervals(tmp_path, kwargs, expected):
    with pytest.raises(UsageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Checkpointing(tmp_path, **kwargs)


def test_checkpointing_saves_tells_the_callback_and_reports_a_write_it_could_not_do(tmp_path):
    told = []
    checkpoints = Checkpointing(tmp_path / "runs" / "run-1", on_saved=told.append)
    contents = checkpoint_like(position={"epoch": 1, "index": 0, "steps": 3, "epochs": 2, "step": 3}, seconds=1.5, saved_at="now")
    info = checkpoints.save(contents)
    assert checkpoints.path == tmp_path / "runs" / "run-1" / "checkpoint.pt" and checkpoints.path.is_file()
    assert told == [info] and checkpoints.last == info
    assert {k: info[k] for k in ("epoch", "step", "index", "path", "bytes", "saved_at", "train_seconds")} == {
        "epoch": 1, "step": 3, "index": 0, "path": str(checkpoints.path), "bytes": checkpoints.path.stat().st_size,
        "saved_at": "now", "train_seconds": 1.5,
    }
    assert info["seconds"] >= 0
    assert load_checkpoint(checkpoints.path)["position"]["step"] == 3
    blocked = Checkpointing(checkpoints.path / "below-a-file")  # its directory cannot be made
    with pytest.raises(CheckpointNotSaved, match="not saved"):
        blocked.save(contents)
    assert blocked.last is None


def test_request_stop_only_sets_attributes():
    checkpoints = Checkpointing("somewhere")
    assert not checkpoints.stop_requested
    checkpoints.request_stop("SIGTERM")
    assert checkpoints.stop_requested and checkpoints.stop_reason == "SIGTERM"
