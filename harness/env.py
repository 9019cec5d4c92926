"""What produced a run: versions, code commit, hardware."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.errors import UsageError

DISTRIBUTION = "harness-bench"


def harness_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout the harness runs from, with ``-dirty`` if it has changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(choice: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cuda`` without CUDA is a user error."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {choice!r} asked for, but this torch ({torch.__version__}) sees no CUDA device; valid: auto, cpu")
        device = torch.device(choice)
        # With an explicit index, so it compares equal to the devices of tensors and generators.
        return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    raise UsageError(f"unknown device {choice!r}; valid: auto, cpu, cuda")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timer read next measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()} ({torch.get_num_threads()} threads)"


#: Who launched the runs this process starts (set by :func:`launched_by`); recorded in their environment.
_launcher: dict[str, Any] = {}


@contextmanager
def launched_by(**facts: Any) -> Iterator[None]:
    """Record ``facts`` (a sweep's name and cell, its Ray task and node) as the ``launcher`` of runs started or resumed in the block.

    A run's environment is replaced when it is resumed, so this always says who runs it now:
    a retried Ray task recognises the run its lost attempt was running.
    """
    previous = dict(_launcher)
    _launcher.clear()
    _launcher.update(facts)
    try:
        yield
    finally:
        _launcher.clear()
        _launcher.update(previous)


#: Environment variable that carries :func:`launched_by`'s facts (JSON) to a run started in other processes
#: (a sweep's cell that trains in several: its rank 0 records them).
LAUNCHER_ENV = "HARNESS_LAUNCHER"


def launcher_variable() -> dict[str, str]:
    """The environment that gives a ``harness`` subprocess this process's :func:`launched_by` facts (empty if none)."""
    return {LAUNCHER_ENV: json.dumps(_launcher, sort_keys=True, default=str)} if _launcher else {}


def _inherited_launcher() -> dict[str, Any]:
    text = os.environ.get(LAUNCHER_ENV)
    if not text:
        return {}
    try:
        facts = json.loads(text)
    except ValueError:
        return {"unreadable": text[:200]}
    return facts if isinstance(facts, dict) else {"unreadable": text[:200]}


def environment(plugin_versions: dict[str, str | None]) -> dict[str, Any]:
    facts = dict(_launcher) or _inherited_launcher()  # this process's own launched_by block first
    launcher = {"launcher": facts} if facts else {}
    return {
        "harness": harness_version(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "pid": os.getpid(),
        "commit": git_commit(),
        "plugins": plugin_versions,
    } | launcher
