"""Multi-process runs (one process per GPU): the process group, the collectives the harness needs, the launcher.

``harness run --nproc N`` starts N copies of itself (:func:`launch`, the way
``torchrun`` does: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT`` in each one's environment); ``torchrun --nproc-per-node N -m
harness.cli run ...`` does the same. A process that finds ``WORLD_SIZE`` > 1
in its environment joins the group (:func:`init`): NCCL for CUDA tensors (rank r on
``cuda:LOCAL_RANK``), gloo for CPU tensors.

What the processes share, and how (see README "Multi-GPU runs"):

* the data order: every rank draws each global batch (and its augmentation)
  from the same seeded generator, exactly as one process does, and keeps its
  slice (:func:`shard`);
* the gradient: each rank's loss is weighted by its share of the global batch
  (``n_rank / n_batch``) and the gradients are summed over the ranks, so the
  step is the global batch's mean gradient, uneven last batch included;
* batch statistics (the l_p-dist layers' mean shift, :func:`batch_mean`):
  ``exact`` (default) all-reduces the batch mean, forward and backward, so N
  processes compute what one process computes; ``local`` is the original
  code's DDP behaviour: each rank shifts by its own slice's mean, and the
  running means (every buffer) follow rank 0's;
* rank 0 alone touches the store and writes checkpoints and weights.

Plugins may call :func:`batch_mean` and :func:`current` (a public module).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any

import torch

from harness.errors import UsageError

#: How batch statistics are computed across processes (``--batch-stats``).
BATCH_STATS = ("exact", "local")
#: Environment variable that carries ``--batch-stats`` to the processes (set by :func:`launch`).
BATCH_STATS_ENV = "HARNESS_BATCH_STATS"


@dataclass(frozen=True)
class World:
    """This process's place in a multi-process run."""

    rank: int
    size: int
    local_rank: int
    backend: str
    batch_stats: str = "exact"

    @property
    def main(self) -> bool:
        """Rank 0: the one that records, saves and prints."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What a run records about it (``config["distributed"]``)."""
        return {"world_size": self.size, "backend": self.backend, "batch_stats": self.batch_stats}


_world: World | None = None  # the joined group (init)
_training: World | None = None  # set while a distributed fit runs (batch_mean all-reduces only then)


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset); UsageError if it is malformed."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        raise UsageError(f"WORLD_SIZE={text!r} is not a whole number") from None
    if size < 1:
        raise UsageError(f"WORLD_SIZE={text!r} must be >= 1")
    return size


def current() -> World | None:
    """The group this process joined (``None``: a single-process run)."""
    return _world


def init(device: str, batch_stats: str | None = None, init_method: str | None = None) -> World | None:
    """Join the group described by the environment (``torchrun``'s variables); ``None`` when WORLD_SIZE is 1 or unset.

    ``device`` is the ``--device`` choice: ``cuda`` (or ``auto`` with GPUs)
    uses NCCL and ``cuda:LOCAL_RANK``; ``cpu`` uses gloo. ``init_method``: torch's
    rendezvous (default ``env://``: ``MASTER_ADDR`` and ``MASTER_PORT``; ``file://PATH`` needs no port).
    """
    global _world
    size = env_world_size()
    if size == 1:
        return None
    if _world is not None:
        return _world
    stats = batch_stats or os.environ.get(BATCH_STATS_ENV) or "exact"
    if stats not in BATCH_STATS:
        raise UsageError(f"batch statistics {stats!r} are not one of {', '.join(BATCH_STATS)}")
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise UsageError(f"WORLD_SIZE={size} but RANK={os.environ.get('RANK')!r}: start the processes with harness run --nproc or torchrun") from None
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"rank {rank} needs cuda:{local_rank}, but this machine has {torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(local_rank)
    # CUDA runs: NCCL for tensors on the GPU (gradients, batch statistics), gloo for those on the CPU (evaluation
    # outcomes, small objects); every collective runs where its tensor is.
    backend = "nccl" if cuda else "gloo"
    import torch.distributed as dist

    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=size,
                            timeout=timedelta(minutes=30))
    _world = World(rank=rank, size=size, local_rank=local_rank, backend=backend, batch_stats=stats)
    return _world


def use_batch_stats(batch_stats: str) -> World | None:
    """Switch the joined group's batch statistics (a resumed run keeps those it started with); the group."""
    global _world
    if _world is not None and batch_stats in BATCH_STATS:
        _world = dataclasses.replace(_world, batch_stats=batch_stats)
    return _world


def shutdown() -> None:
    """Leave the group (at the end of a process's run, from a ``finally``).

    With no exception in flight (the run succeeded), every rank first waits for the others: a gloo peer that
    closes its connections while another still finishes its last collective can abort that one ("terminate
    called without an active exception", seen on a loaded 2-core machine). With one in flight it leaves at
    once: a failed peer would never arrive, and the launcher stops the others."""
    global _world
    if _world is not None:
        import torch.distributed as dist

        if sys.exc_info()[1] is None:
            with contextlib.suppress(Exception):
                dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        _world = None


def run_device(world: World | None, device: torch.device) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for a CUDA run, else ``device``."""
    if world is not None and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


# -- collectives ------------------------------------------------------------------------------------


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over every rank (a new tensor on ``t``'s device); ``t`` itself when single-process."""
    world = _world
    if world is None:
        return t
    import torch.distributed as dist

    work = t.detach().clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return work


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (in place) with rank ``src``'s values, in one coalesced broadcast per dtype."""
    world = _world
    if world is None or not tensors:
        return
    import torch.distributed as dist

    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=src)
        offset = 0
        for t in group:
            n = t.numel()
            with torch.no_grad():
                t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def sum_gradients_(params: Sequence[torch.Tensor]) -> None:
    """Replace every parameter's gradient by its sum over the ranks (one coalesced all-reduce per dtype)."""
    world = _world
    if world is None:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled: small things only, a run id or a run record)."""
    if _world is None:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if _world is None:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * _world.size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _world is not None:
        import torch.distributed as dist

        dist.barrier()


# -- training ---------------------------------------------------------------------------------------


def shard(n: int, world: World) -> slice:
    """This rank's rows of a global batch of ``n``: contiguous, sizes differing by at most one, rank order."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


@contextlib.contextmanager
def training(world: World | None) -> Iterator[None]:
    """While a distributed fit runs: :func:`batch_mean` reduces over the ranks (in ``exact`` mode)."""
    global _training
    before, _training = _training, world
    try:
        yield
    finally:
        _training = before


class _SumOverRanks(torch.autograd.Function):
    """The sum over the ranks, forward and backward (the gradient of a sum shared by every rank is the ranks' sum)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def batch_mean(y: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """The mean of ``y`` over ``dims`` across the whole global batch (a batch-statistics layer's training forward).

    Single process, or ``--batch-stats local``: ``y.mean(dims)`` (this rank's
    slice). ``exact``: the sum and the count are all-reduced (with autograd:
    the backward sums the gradient over the ranks too), so the mean, the
    normalised activations and the gradients are those of one process with
    the global batch, up to float rounding.
    """
    world = _training
    if world is None or world.batch_stats != "exact":
        return y.mean(dim=list(dims))
    count = 1
    for d in dims:
        count *= y.shape[d]
    sums = y.sum(dim=list(dims))
    packed = torch.cat([sums.reshape(-1), sums.new_full((1,), float(count))])
    total = _SumOverRanks.apply(packed)
    return (total[:-1] / total[-1]).view_as(sums)


# -- the launcher -----------------------------------------------------------------------------------


def _supervise(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """Wait for every rank. When one fails, stop the others: at once (SIGTERM) if it failed, after ``grace_s`` if it
    was interrupted (status 130: the others see the stop at their next step, or are stuck in a collective); SIGKILL
    ``grace_s`` after the SIGTERM."""
    failed_at: float | None = None
    terminated_at: float | None = None
    while any(p.poll() is None for p in procs):
        codes = [p.poll() for p in procs]
        now = time.monotonic()
        bad = [c for c in codes if c not in (None, 0)]
        if bad and failed_at is None:
            failed_at = now
        if failed_at is not None and terminated_at is None and (any(c != 130 for c in bad) or now - failed_at > grace_s):
            terminated_at = now
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.send_signal(signal.SIGTERM)
        if terminated_at is not None and now - terminated_at > grace_s:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)


def _die_with_parent() -> Any:
    """A ``preexec_fn`` that has the kernel SIGKILL a rank when this process dies (Linux's PR_SET_PDEATHSIG); ``None`` elsewhere.

    A launcher killed outright (a sweep's Ray worker lost, OOM-killed) must not
    leave its ranks training on: a retried task would resume their run
    beside them. Everything the child calls is resolved here, before the fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, kill = os.getpid(), int(signal.SIGKILL)
    getppid, exit_ = os.getppid, os._exit

    def preexec() -> None:
        prctl(1, kill, 0, 0, 0)  # PR_SET_PDEATHSIG
        if getppid() != parent:  # it died before the call: the kernel will not tell
            exit_(1)

    return preexec


def launch(nproc: int, args: Sequence[str], *, batch_stats: str = "exact", grace_s: float = 30.0, stdout: IO[Any] | None = None,
           env: Mapping[str, str] | None = None) -> int:
    """Run ``harness`` with ``args`` in ``nproc`` processes on this machine; their exit status (rank 0's first).

    Rank 0's output is this process's (``stdout``: an open file for both its
    stdout and stderr instead, e.g. a sweep cell's log); the others' stderr is
    kept in a temporary file and printed (to ``sys.stderr``) only if that rank
    fails. ``env``: variables added to the ranks' environment. A SIGINT,
    SIGTERM or SIGHUP here (in the main thread) is passed to every rank (each
    finishes its step and rank 0 writes the checkpoint); when one rank fails
    the others are stopped (:func:`_supervise`).
    """
    from torch.distributed import TCPStore

    # The rendezvous store lives here, on a port the OS picked (no race for a "free" port); the ranks join it as
    # clients, as under torchrun's agent.
    store = TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    base = dict(os.environ)
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                TORCHELASTIC_USE_AGENT_STORE="True")
    base[BATCH_STATS_ENV] = batch_stats
    base.update(env or {})

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    previous = {s: signal.signal(s, forward) for s in handled}
    if stdout is not None:
        stdout.flush()
    die_with_us = _die_with_parent()
    try:
        for rank in range(nproc):
            rank_env = base | {"RANK": str(rank), "LOCAL_RANK": str(rank)}
            log = None if rank == 0 else tempfile.TemporaryFile()
            logs.append(log)
            # Each rank in its own process group: a terminal's Ctrl-C reaches them once, through forward().
            procs.append(subprocess.Popen([sys.executable, "-m", "harness.cli", *args], env=rank_env, process_group=0,
                                          stdout=subprocess.DEVNULL if rank else stdout, stderr=log if rank else stdout,
                                          preexec_fn=die_with_us))
        _supervise(procs, grace_s)
    except BaseException:
        for p in procs:  # not a signal forward() handled (an exception here): no rank outlives the launch
            if p.poll() is None:
                p.kill()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        del store
    codes = [int(p.returncode) for p in procs]
    for rank, (code, log) in enumerate(zip(codes, logs)):
        if log is not None:
            # A rank's own failure (not the stop that rank 0's failure, or a signal, sent it): say what it said.
            if code != 0 and (codes[0] == 0 or code not in (130, -signal.SIGTERM, -signal.SIGKILL)):
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
                print(f"rank {rank} ended with status {code}" + "".join(f"\n  {line}" for line in tail), file=sys.stderr)
            log.close()
    status = lambda c: c if c > 0 else 128 - c  # noqa: E731  # killed by signal s: 128 + s, as a shell says
    if codes[0] != 0:
        return status(codes[0])
    return next((status(c) for c in codes if c != 0), 0)


__all__ = [
    "BATCH_STATS",
    "World",
    "all_reduce",
    "barrier",
    "batch_mean",
    "broadcast_",
    "broadcast_object",
    "current",
    "gather_objects",
    "init",
    "launch",
    "run_device",
    "shard",
    "shutdown",
    "sum_gradients_",
    "training",
    "use_batch_stats",
]
