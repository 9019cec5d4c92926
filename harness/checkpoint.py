"""Checkpoints: files written atomically, read without running code, and the RNG states they hold.

* :func:`save_atomic` writes any weights-only object (tensors, dicts, lists,
  str, int, float, bool, None) to a temporary file beside its destination,
  flushes and fsyncs it, renames it over the destination and fsyncs the
  directory: a reader sees the old file or the new one, never a part, and a
  failure (a full disk, Ctrl-C) leaves no temporary file behind.
  :func:`save_weights` writes a trained model's ``model.pt`` that way.
* :func:`load_file` reads with ``torch.load(weights_only=True,
  map_location="cpu")``; whatever fails (a pickle holding code, a truncated
  file, a directory) is an :class:`~harness.errors.UnreadableFile`, one line
  naming the file, and nothing in the file is executed. :func:`load_checkpoint`
  also checks the format and version; :func:`load_weights` accepts a
  ``model.pt`` or a bare state dict.
* :func:`rng_state` / :func:`restore_rng`: torch's CPU generator, every CUDA
  device's (when CUDA is in use), numpy's (as a tensor) and Python's
  ``random`` (as lists), in weights-only form.
* :class:`Checkpointing` is what the runner hands the training loop
  (``TrainContext.checkpoints``): where to save and how often, the checkpoint to
  resume from, the stop request a signal handler sets, and a callback told of
  every save.

What a checkpoint holds, and when the scaffold writes one, is in
:mod:`harness.scaffold` (:data:`CHECKPOINT_KEYS` here lists the keys).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import torch

from harness.errors import HarnessError, UnreadableFile, UsageError, one_line

#: The ``format`` entry of every checkpoint, and the version this harness writes and reads.
FORMAT = "harness-checkpoint"
VERSION = 1

#: The file name of a run's checkpoint in its directory.
CHECKPOINT_NAME = "checkpoint.pt"

#: Every key a checkpoint of :data:`VERSION` has (the scaffold writes them; :func:`load_checkpoint` checks them).
CHECKPOINT_KEYS = (
    "format",
    "version",
    "trainer",  # the trainer's name
    "options",  # its options (a resumed run must have the same)
    "position",  # {"epoch", "index", "steps", "epochs", "step"}: the next mini-batch, and the optimiser steps taken
    "first_loss",  # the run's first loss (the divergence check measures growth from it), None before the first step
    "model",  # model.state_dict()
    "optimizer",  # optimizer.state_dict()
    "trainer_state",  # Trainer.checkpoint_state()
    "rng",  # rng_state()
    "device",  # the run generator's device type ("cpu", "cuda"): its state fits only a generator of that type
    "generator",  # the run generator's state now
    "epoch_generator",  # its state when the current epoch began (rebuilds the epoch's data order)
    "sums",  # the current epoch's running sums: {"metrics": {...}, "correct": int, "seen": int}
    "history",  # per-epoch metric means so far
    "seconds",  # training seconds so far (every process of the run)
    "saved_at",  # UTC, ISO 8601
)


class CheckpointNotSaved(HarnessError):
    """A checkpoint could not be written (a full disk, a read-only directory); the old one, if any, is intact."""


# -- writing ------------------------------------------------------------------------------------


def save_atomic(obj: Any, path: str | Path) -> int:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (:func:`write_atomic`); return the bytes written.

    ``torch.save`` reports a full disk as a ``RuntimeError``; it is re-raised like any other failure.
    """
    return write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | Path, text: str) -> int:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`); return the bytes written."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> int:
    """Call ``write`` on a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the directory.

    A reader sees the old file or the new one, never a part. The temporary file
    (``.NAME.PID.tmp``) is removed on any failure, Ctrl-C included, and the
    exception re-raised. Returns the bytes written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)
    return size


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable. Some file systems cannot fsync a directory; that is no error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EISDIR):
            raise
    finally:
        os.close(fd)


def save_weights(path: str | Path, state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> int:
    """Write a trained model's weights (``{"state_dict": ..., "config": ...}``) atomically; return the bytes written."""
    return save_atomic({"state_dict": dict(state_dict), "config": dict(config) if config is not None else None}, path)


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# -- reading ------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """Why ``torch.load`` failed, in a few words (torch's own messages run to paragraphs)."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if "Weights only load failed" in text or type(exc).__name__ == "UnpicklingError":
        named = re.search(r"GLOBAL ([\w.]+)", text)
        found = f" (it names {named.group(1)})" if named else ""
        return f"it holds objects other than tensors and plain data{found}; it was not unpickled, nothing in it ran"
    if isinstance(exc, EOFError) or "central directory" in text or "PytorchStreamReader" in text:
        return "it is truncated or not a torch file"
    return f"it is not a readable torch file ({type(exc).__name__}: {one_line(exc)})"


def load_file(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")``, or :class:`UnreadableFile` naming ``path``.

    :param what: how the message names the file (``"checkpoint"``, ``"weights file"``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing them
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # whatever the unpickler raises: a file is never trusted  # noqa: BLE001
        raise UnreadableFile(f"cannot read {what} {str(path)!r}: {_reason(exc)}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :mod:`harness.scaffold` (this :data:`VERSION`), or :class:`UnreadableFile`."""
    data = load_file(path, "checkpoint")
    where = f"checkpoint {str(path)!r}"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UnreadableFile(f"{where} is not a harness checkpoint (no format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise UnreadableFile(f"{where} has version {data.get('version')!r}; this harness reads version {VERSION}")
    missing = [key for key in CHECKPOINT_KEYS if key not in data]
    if missing:
        raise UnreadableFile(f"{where} lacks {', '.join(missing)}")
    return data


def load_weights(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(state_dict, config)`` from a ``model.pt`` (:func:`save_weights`) or a bare state dict (config ``None``)."""
    data = load_file(path, "weights file")
    config = None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        config = data.get("config") if isinstance(data.get("config"), dict) else None
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) for k in data):
        raise UnreadableFile(f"weights file {str(path)!r} holds no state dict (a dict of parameter names to tensors)")
    return data, config


# -- random number generators ------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The global RNG states, weights-only: ``torch`` (CPU), ``cuda`` (a list, one per device, only
    when CUDA is initialised), ``numpy`` (keys as an int64 tensor) and ``python`` (lists).

    Reading them draws nothing: a checkpoint never perturbs the run.
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    numpy = _numpy()
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(numpy.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global RNGs to what :func:`rng_state` returned (CUDA devices: as many as both have)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    numpy = _numpy()
    saved = state.get("numpy")
    if numpy is not None and saved is not None:
        keys = saved["keys"].numpy().astype(numpy.uint32)
        numpy.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]))


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # numpy is optional for torch; without it there is no numpy state to keep
        return None
    return numpy


# -- what the training loop gets -----------------------------------------------------------------


@dataclass
class Checkpointing:
    """Where and how often the training loop saves, what it resumes from, and when it stops.

    :param directory: the run's directory; the checkpoint is ``directory / "checkpoint.pt"``
        (created with its parents on the first save).
    :param every_epochs: save after every this many whole epochs (and always at the end).
    :param every_seconds: save when this much wall time passed since the last save (checked
        after every step; ``math.inf``: never by time).
    :param resume: a checkpoint read with :func:`load_checkpoint` to continue from, or ``None``.
    :param on_saved: called after every save with :attr:`last` (the runner records it: heartbeat,
        checkpoint info in the store). An exception it raises stops training.

    The runner's signal handler calls :meth:`request_stop` (it only sets attributes, so it is
    safe in a handler); the loop finishes the step it is in, saves, and raises
    :class:`harness.errors.TrainingInterrupted`.
    """

    directory: Path
    every_epochs: int = 1
    every_seconds: float = 1800.0
    resume: dict[str, Any] | None = None
    on_saved: Callable[[dict[str, Any]], None] | None = None
    stop_requested: bool = False
    stop_reason: str = ""
    #: What the last save recorded (``None`` before the first): ``epoch`` (whole epochs done),
    #: ``step`` (optimiser steps taken), ``index`` (the next mini-batch in the epoch), ``path``,
    #: ``bytes``, ``saved_at`` (UTC ISO 8601), ``seconds`` (how long the write took) and
    #: ``train_seconds`` (training time so far, every process of the run).
    last: dict[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if isinstance(self.every_epochs, bool) or not isinstance(self.every_epochs, int) or self.every_epochs < 1:
            raise UsageError(f"checkpoint every_epochs {self.every_epochs!r} is out of range; it must be an integer >= 1")
        if not self.every_seconds > 0:
            raise UsageError(f"checkpoint every_seconds {self.every_seconds!r} is out of range; it must be > 0 (inf: never by time)")

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINT_NAME

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop after the current step (with a checkpoint); ``reason`` goes into its message."""
        self.stop_reason = reason
        self.stop_requested = True

    def save(self, contents: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``contents`` (a checkpoint the scaffold assembled) atomically, tell :attr:`on_saved`, return the info.

        :raises CheckpointNotSaved: the file could not be written (what :attr:`on_saved` raises passes through).
        """
        start = time.perf_counter()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            size = save_atomic(dict(contents), self.path)
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
            raise CheckpointNotSaved(f"checkpoint {str(self.path)!r} not saved: {one_line(exc)}") from exc
        position = contents["position"]
        self.last = {
            "epoch": position["epoch"],
            "step": position["step"],
            "index": position["index"],
            "path": str(self.path),
            "bytes": size,
            "saved_at": contents["saved_at"],
            "seconds": time.perf_counter() - start,
            "train_seconds": contents["seconds"],
        }
        if self.on_saved is not None:
            self.on_saved(dict(self.last))
        return dict(self.last)


def utc_now() -> str:
    """Now, in UTC, as ISO 8601 with seconds (what ``saved_at`` holds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
