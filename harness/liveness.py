"""Is a run alive? Heartbeats while it runs, stale detection afterwards, and the signals that stop it cleanly.

A run's process updates the run's heartbeat in the store every
:data:`HEARTBEAT_INTERVAL_S` (and at every checkpoint). A ``running`` run is
*stale*, and can be resumed, when its process is gone (same host, pid no longer
exists) or, wherever it ran, when its heartbeat is older than
:data:`STALE_AFTER_S`: a run on another machine is never declared dead by a pid
this machine happens not to have.

SIGTERM and SIGHUP (what SLURM, Kubernetes and a closed terminal send) and
SIGINT (Ctrl-C) ask a training run to stop: the current step finishes, a
checkpoint is written and the run is recorded ``interrupted``. A second signal
stops at once (the last checkpoint stays).
"""

from __future__ import annotations

import os
import platform
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.store import RunRecord

#: Seconds between two heartbeats of a running run.
HEARTBEAT_INTERVAL_S = 60.0
#: A running run whose heartbeat is older than this is stale (ten heartbeats missed).
STALE_AFTER_S = 600.0
#: The signals that stop a run cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stale_reason(record: RunRecord, *, now: datetime | None = None) -> str | None:
    """Why a ``running`` run is stale (its process gone, or its heartbeat too old); ``None`` if it may be alive."""
    from harness.store import RUNNING

    if record.status != RUNNING:
        return None
    env = record.info.environment if isinstance(record.info.environment, dict) else {}
    pid, host = env.get("pid"), env.get("host")
    if host == platform.node() and isinstance(pid, int) and not _process_exists(pid):
        return f"its process {pid} on {host} is gone"
    beat = record.heartbeat_at or record.created_at
    age = ((now or datetime.now(UTC)) - beat).total_seconds()
    if age > STALE_AFTER_S:
        return f"no heartbeat for {age / 60:.0f} min (host {host or 'unknown'})"
    return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by another user
        return True
    return True


class Heartbeat:
    """A daemon thread that calls ``beat()`` every ``interval`` seconds until stopped; failures are reported once."""

    def __init__(self, beat: Callable[[], None], warn: Callable[[str], None], interval: float = HEARTBEAT_INTERVAL_S) -> None:
        self._beat = beat
        self._warn = warn
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-heartbeat", daemon=True)
        self._failing = False

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop beating (idempotent): before the run's final write, after which a heartbeat would be refused."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._beat()
                self._failing = False
            except Exception as exc:  # a missed heartbeat must not kill the run  # noqa: BLE001
                if not self._failing:
                    self._warn(f"warning: the run's heartbeat could not be recorded: {' '.join(str(exc).split())}")
                self._failing = True


class StopRequest:
    """Where the signal handler sends a stop: to the training loop while it trains, else an immediate interrupt.

    ``checkpoints`` is set while training runs (anything with
    ``request_stop(reason)``, a :class:`harness.checkpoint.Checkpointing`): the
    first signal asks it to stop after the current step with a checkpoint.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.checkpoints: Any = None

    def describe(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "an interrupt"


@contextmanager
def stop_on_signals(request: StopRequest, log: Callable[[str], None]) -> Iterator[StopRequest]:
    """Route SIGTERM, SIGINT and SIGHUP to ``request`` while the block runs (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if request.checkpoints is not None and request.signal is None:
            request.signal = signum
            request.checkpoints.request_stop(signal.Signals(signum).name)
            log(f"{signal.Signals(signum).name}: finishing the current step, then writing a checkpoint (send it again to stop at once)")
            return
        request.signal = request.signal or signum
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous: dict[int, Any] = {}
    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handle)
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
