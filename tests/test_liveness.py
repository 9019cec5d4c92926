"""Stale runs: a running run whose process is gone (this host) or whose heartbeat is too old (any host)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from harness.liveness import STALE_AFTER_S, stale_reason
from harness.store import RunInfo, RunRecord


def _record(status: str, *, host: str, pid: int, beat_age_s: float) -> RunRecord:
    now = datetime.now(UTC)
    info = RunInfo(trainer="linf_v2", dataset="mnist", norm="inf", eps=0.3, preset="quick", seed=0, epochs=1, config={},
                   device="cpu", environment={"host": host, "pid": pid})
    return RunRecord(id=1, info=info, status=status, created_at=now - timedelta(hours=1), finished_at=None, train_seconds=None,
                     error=None, heartbeat_at=now - timedelta(seconds=beat_age_s))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_run_whose_process_is_gone_on_this_host_is_stale_at_once():
    record = _record("running", host=platform.node(), pid=_dead_pid(), beat_age_s=1)
    assert "is gone" in stale_reason(record)


def test_a_live_process_with_a_recent_heartbeat_is_not_stale():
    assert stale_reason(_record("running", host=platform.node(), pid=os.getpid(), beat_age_s=1)) is None


def test_on_another_host_only_the_heartbeat_decides():
    # The pid means nothing here (it may not exist on this machine): a recent heartbeat keeps the run alive.
    assert stale_reason(_record("running", host="gpu-node-7", pid=_dead_pid(), beat_age_s=STALE_AFTER_S / 2)) is None
    old = stale_reason(_record("running", host="gpu-node-7", pid=os.getpid(), beat_age_s=STALE_AFTER_S + 60))
    assert old is not None and "no heartbeat for 11 min" in old and "gpu-node-7" in old


def test_only_running_runs_can_be_stale():
    for status in ("finished", "failed", "interrupted"):
        assert stale_reason(_record(status, host="elsewhere", pid=1, beat_age_s=10 * STALE_AFTER_S)) is None
