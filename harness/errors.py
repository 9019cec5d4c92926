"""Domain exceptions.

Library code raises these; only the CLI turns them into exit codes. A
:class:`UsageError` is the user's mistake (bad name, bad value, missing file):
the CLI prints its message on one line and exits with status 2, without a
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


class UsageError(HarnessError):
    """Bad input from the user: printed as one line, exit status 2."""

    exit_code = 2


class PluginError(HarnessError):
    """A plugin broke the host's contract (duplicate names, bad metadata)."""


class HarnessDeprecationWarning(FutureWarning):
    """An old form that still works, with what to write instead (a FutureWarning: shown by default)."""


class SoundnessError(HarnessError):
    """A certifier certified a sample that an attack broke: a critical bug."""


class TrainingDiverged(HarnessError):
    """Training met a non-finite or overflowing loss, gradient or parameter, and stopped at once.

    The message is one line naming what diverged, the epoch, the step and the
    scheduled values; ``step`` (a :class:`harness.scaffold.Step`), ``values`` and
    ``what`` (``"loss"``, ``"gradient"`` or ``"parameter"``) keep them for code.
    A loss stops training before it reaches the weights; a gradient or a
    parameter is seen after the optimiser's step, and nothing is saved after it.
    """

    def __init__(self, message: str, *, step: Any = None, values: Mapping[str, float] | None = None, what: str = "loss") -> None:
        super().__init__(message)
        self.step = step
        self.values = dict(values or {})
        self.what = what


class TrainingInterrupted(HarnessError):
    """Training stopped on request (``Checkpointing.request_stop``, a signal) after a whole step.

    ``step`` (a :class:`harness.scaffold.Step`) is where training resumes: the
    next mini-batch (``Step(epochs, 0, ...)`` once every epoch ran);
    ``steps_done`` counts the optimiser steps taken; ``checkpoint`` is what the
    save recorded (epoch, step, path, bytes, saved_at, ...), or ``None`` when
    nothing could be saved (the message says why).
    """

    def __init__(self, message: str, *, step: Any = None, steps_done: int = 0, checkpoint: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.steps_done = steps_done
        self.checkpoint = dict(checkpoint) if checkpoint is not None else None


class UnreadableFile(UsageError):
    """A checkpoint or weights file that cannot be read safely (missing, truncated, holding code, wrong format)."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (white space folded), or its type name."""
    return " ".join(str(error).split()) or type(error).__name__


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to ``name``, if any is reasonably close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UsageError:
    """The error for a lookup that failed: the name, the closest match, every choice."""
    choices = sorted(choices)
    hint = closest(name, choices)
    did_you_mean = f"did you mean {hint!r}? " if hint else ""
    available = ", ".join(choices) if choices else "none"
    return UsageError(f"unknown {kind} {name!r}; {did_you_mean}available: {available}")
