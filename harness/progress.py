"""Progress shown while training and evaluating.

Trainers and the evaluation report through a :class:`Progress`; the CLI gives
them a :class:`ConsoleProgress` (one updating line per task on a terminal, one
final line per task otherwise), tests give them :class:`SilentProgress`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import IO, Protocol


class Task(Protocol):
    def advance(self, n: int = 1, **metrics: float | str) -> None:
        """Mark ``n`` more units done; ``metrics`` are shown beside the count."""


class Progress(Protocol):
    def task(self, description: str, total: int | None = None) -> AbstractContextManager[Task]:
        """A unit of work with ``total`` steps, reported while it runs and when it ends."""

    def log(self, message: str) -> None:
        """One line of information."""


def _fmt(metrics: dict[str, float | str]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class _ConsoleTask:
    def __init__(self, stream: IO[str], description: str, total: int | None, live: bool) -> None:
        self.stream, self.description, self.total, self.live = stream, description, total, live
        self.done = 0
        self.metrics: dict[str, float | str] = {}
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def advance(self, n: int = 1, **metrics: float | str) -> None:
        self.done += n
        self.metrics.update(metrics)
        now = time.perf_counter()
        if self.live and (now - self._last_draw > 0.2 or self.done == self.total):
            self._last_draw = now
            self.stream.write("\r\033[K" + self._line())
            self.stream.flush()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = ""
        if self.total and 0 < self.done < self.total:
            eta = f"  eta {elapsed / self.done * (self.total - self.done):.0f}s"
        metrics = _fmt(self.metrics)
        return f"{self.description}  {count}  {metrics}  [{elapsed:.1f}s{eta}]".replace("    ", "  ")

    def finish(self) -> None:
        prefix = "\r\033[K" if self.live else ""
        self.stream.write(prefix + self._line() + "\n")
        self.stream.flush()


class ConsoleProgress:
    """Progress on a stream (stderr by default)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[_ConsoleTask]:
        task = _ConsoleTask(self.stream, description, total, self.live)
        try:
            yield task
        finally:
            task.finish()

    def log(self, message: str) -> None:
        self.stream.write(message + "\n")
        self.stream.flush()


class _SilentTask:
    def advance(self, n: int = 1, **metrics: float | str) -> None:
        pass


class SilentProgress:
    """Reports nothing."""

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[_SilentTask]:
        yield _SilentTask()

    def log(self, message: str) -> None:
        pass
