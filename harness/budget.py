"""A certifier's time budget in an evaluation (``--certifier-budget``).

:class:`Budgets` says how many seconds each certifier may take (one for all,
and per name). :class:`Deadline` is one certifier's: once it has passed, the
samples it has not certified yet are time-outs. A call running when it passes
is interrupted where the process can do that (``SIGALRM`` through
``setitimer``, in the main thread only, and only while no one else uses the
real-time timer); elsewhere the deadline is checked between calls, so a call
may overrun it.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from harness.errors import UsageError


class BudgetExceeded(BaseException):
    """Raised inside a certifier's call when its budget runs out.

    A BaseException, as KeyboardInterrupt is, so that a certifier's own ``except Exception`` does not swallow it.
    """


@dataclass(frozen=True)
class Budgets:
    """Seconds per certifier: ``per_certifier`` by name, else ``default`` (``None``: no limit)."""

    default: float | None = None
    per_certifier: Mapping[str, float] = field(default_factory=dict)

    def of(self, name: str) -> float | None:
        return self.per_certifier.get(name, self.default)

    def to_json(self) -> dict[str, Any] | None:
        """As the evaluation's configuration stores it (``None`` without any budget)."""
        if self.default is None and not self.per_certifier:
            return None
        return {"default": self.default, "per_certifier": dict(sorted(self.per_certifier.items()))}

    def to_args(self) -> list[str]:
        """The ``--certifier-budget`` values that parse back to these budgets."""
        default = [] if self.default is None else [repr(float(self.default))]
        return default + [f"{name}={float(seconds)!r}" for name, seconds in sorted(self.per_certifier.items())]

    @classmethod
    def parse(cls, values: list[str] | tuple[str, ...]) -> Budgets:
        """``--certifier-budget`` values: ``SECONDS`` (every certifier) or ``NAME=SECONDS``; UsageError naming a bad one."""
        default: float | None = None
        per: dict[str, float] = {}
        for value in values:
            name, _, seconds = value.rpartition("=")
            number = _seconds(value, seconds)
            if name:
                per[name] = number
            else:
                default = number
        return cls(default, per)

    def check_names(self, names: list[str]) -> None:
        """Every certifier named is one that runs: UsageError naming the first other one and the valid names."""
        for name in self.per_certifier:
            if name not in names:
                valid = ", ".join(sorted(names)) or "none"
                raise UsageError(f"--certifier-budget {name}=...: {name!r} is not a certifier of this evaluation (valid: {valid})")


def _seconds(value: str, text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise UsageError(f"--certifier-budget {value!r}: give SECONDS or NAME=SECONDS, with SECONDS a positive number")
    return number


class Deadline:
    """One certifier's deadline, ``seconds`` from now (``None``: never)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def passed(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end

    def remaining(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    @contextmanager
    def interrupting(self) -> Iterator[None]:
        """Run the block, raising :class:`BudgetExceeded` in it when the deadline passes (where the process allows that)."""
        remaining = self.remaining()
        if remaining is None:
            yield
            return
        if remaining <= 0:
            raise BudgetExceeded
        if not _can_alarm():
            yield
            return

        armed = [True]

        def alarm(signum: int, frame: FrameType | None) -> None:
            if armed[0]:  # not once the block is over: the alarm then has nobody to interrupt
                raise BudgetExceeded

        previous = signal.signal(signal.SIGALRM, alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, remaining)
            yield
        finally:
            armed[0] = False
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
            finally:
                signal.signal(signal.SIGALRM, previous)


def _can_alarm() -> bool:
    """SIGALRM interrupts only the main thread, exists only on POSIX, and belongs to whoever set the timer first."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
