"""What a component of the evaluation costs: wall time, samples per second and peak memory.

On a CUDA device the peak is PyTorch's own count of the memory allocated on
that device (``torch.cuda.max_memory_allocated``, its peak reset when the
component starts, so an earlier component's peak does not count; the model and
data already there do): what was in use, not what the caching allocator
happened to hold. On the CPU there is no such count, so a thread
samples the process's resident set (``/proc/self/statm``) every
:data:`SAMPLE_INTERVAL_S` while the component runs; where that file does not
exist, the process's lifetime peak (``ru_maxrss``) is the best there is.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from harness.results import Cost

#: How often the CPU's resident set is sampled while a component runs.
SAMPLE_INTERVAL_S = 0.01
STATM = "/proc/self/statm"
CUDA_ALLOCATED, RSS = "cuda-allocated", "rss"


def rss_bytes() -> int | None:
    """The process's resident set now, from ``/proc/self/statm``; ``None`` where there is no such file."""
    try:
        with open(STATM) as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """The process's peak resident set so far (``ru_maxrss``: kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class _RssSampler:
    """A daemon thread keeping the largest resident set seen until :meth:`stop`."""

    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="harness-rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._see()

    def _see(self) -> None:
        now = rss_bytes()
        if now is not None and (self.peak is None or now > self.peak):
            self.peak = now

    def start(self) -> _RssSampler:
        if self.peak is not None:  # no /proc: nothing to sample
            self._thread.start()
        return self

    def stop(self) -> int:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        self._see()  # the end itself, in case the component finished between two samples
        return self.peak if self.peak is not None else max_rss_bytes()


@dataclass
class Meter:
    """What :func:`measure` measured; ``samples`` is set by the caller (the samples the component ran on)."""

    samples: int = 0
    seconds: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None

    def cost(self) -> Cost:
        rate = self.samples / self.seconds if self.seconds and self.samples else None
        return Cost(seconds=self.seconds, samples_per_second=rate, peak_memory_bytes=self.peak_memory_bytes, memory_kind=self.memory_kind)


@contextmanager
def measure(device: torch.device) -> Iterator[Meter]:
    """Measure the wall time and peak memory of the block, on ``device`` (see the module docstring)."""
    meter = Meter()
    cuda = device.type == "cuda" and torch.cuda.is_available()
    sampler = None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    else:
        sampler = _RssSampler().start()
    start = time.perf_counter()
    try:
        yield meter
    finally:
        meter.seconds = time.perf_counter() - start
        if cuda:
            meter.peak_memory_bytes, meter.memory_kind = int(torch.cuda.max_memory_allocated(device)), CUDA_ALLOCATED
        elif sampler is not None:
            meter.peak_memory_bytes, meter.memory_kind = sampler.stop(), RSS
