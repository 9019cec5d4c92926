"""``harness bench dist``: this module's l_p-dist against torch.cdist and the naive broadcast.

Times the forward (inputs requiring grad, as in training) and forward+backward
of each implementation, side by side in one process, as the median of several
calls after warm-up (compilation is not timed). An implementation runs only
where it fits in memory; ``finite`` says whether its outputs and gradients
were all finite (cdist and the naive broadcast overflow at large p).

Pair operations: one (sample, unit, input) triple. ``pairs/s`` is B·O·I divided
by the time of the forward, or of the whole forward+backward step.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from harness_plugins.lpdist.ops import backend_name, lp_dist

CPU_SHAPES = [(256, 784, 1024), (256, 1024, 1024)]  # (batch, in, out)
PAPER_SHAPES = [(512, 784, 5120), (512, 3072, 5120), (512, 5120, 5120), (512, 5120, 10)]
P_VALUES = [8.0, 64.0, 1000.0, math.inf]
IMPLS = ("harness", "cdist", "naive")


@dataclass
class Record:
    impl: str
    p: float | str
    batch: int
    in_: int
    out: int
    device: str
    fwd_s: float | None
    fwdbwd_s: float | None
    finite: bool | None
    backend: str | None = None

    def json(self) -> dict:
        data = asdict(self)
        data["in"] = data.pop("in_")
        return data


def _naive(x: Tensor, w: Tensor, p: float) -> Tensor:
    d = (x[:, None, :] - w[None, :, :]).abs()
    return d.amax(-1) if math.isinf(p) else d.pow(p).sum(-1).pow(1 / p)


def _impl(name: str) -> Callable[[Tensor, Tensor, float], Tensor]:
    return {"harness": lp_dist, "cdist": lambda x, w, p: torch.cdist(x, w, p=p), "naive": _naive}[name]


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def _fits(name: str, batch: int, inp: int, out: int, device: torch.device) -> bool:
    if name != "naive":
        return True
    # The broadcast keeps a few B×O×I float32 tensors alive for its backward.
    return 4 * 4 * batch * inp * out < 0.5 * _available_bytes(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    fn()  # warm-up (and compilation)
    fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    name: str, p: float, batch: int, inp: int, out: int, device: torch.device, repeat: int = 5, seed: int = 0
) -> Record:
    """Time one implementation on one shape (the −10 identity init of a dist layer, MNIST-like inputs)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.rand(batch, inp, generator=g).sub_(0.13).div_(0.31).to(device).requires_grad_()
    w = torch.randn(out, inp, generator=g)
    if inp <= out:
        units = torch.arange(out)
        w[units, units % inp] = -10.0
    w = w.to(device).requires_grad_()
    grad = torch.randn(batch, out, generator=g).to(device)
    label = "inf" if math.isinf(p) else p
    record = Record(name, label, batch, inp, out, str(device), None, None, None)
    if not _fits(name, batch, inp, out, device):
        return record
    fn = _impl(name)
    if name == "harness":
        record.backend = backend_name(x)
    try:
        y = fn(x, w, p)
        gx, gw = torch.autograd.grad(y, (x, w), grad)
        record.finite = bool(torch.isfinite(y).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all())
        del y, gx, gw
        record.fwd_s = _median_time(lambda: fn(x, w, p), device, repeat)
        record.fwdbwd_s = _median_time(lambda: torch.autograd.grad(fn(x, w, p), (x, w), grad), device, repeat)
    except torch.OutOfMemoryError:
        record.fwd_s = record.fwdbwd_s = record.finite = None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def run(
    shapes: list[tuple[int, int, int]],
    p_values: list[float],
    device: torch.device,
    repeat: int,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Record]:
    records = []
    for batch, inp, out in shapes:
        for p in p_values:
            for name in IMPLS:
                progress(f"{name} p={p} B={batch} {inp}->{out}")
                records.append(measure(name, p, batch, inp, out, device, repeat))
    return records


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1000 * seconds:.1f}"


def _rate(record: Record, seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{record.batch * record.in_ * record.out / seconds / 1e9:.2f}"


def table(records: list[Record]) -> str:
    """One row per (shape, p, impl), with the harness's speed-up over each peer on the same row."""
    from harness.render import text_table

    header = ["B", "in→out", "p", "impl", "fwd ms", "fwd+bwd ms", "G pairs/s fwd", "G pairs/s step", "finite", "harness ×"]
    rows = []
    mine = {(r.batch, r.in_, r.out, r.p): r for r in records if r.impl == "harness"}
    for r in records:
        ours = mine.get((r.batch, r.in_, r.out, r.p))
        speedup = "—"
        if r.impl != "harness" and ours and ours.fwdbwd_s and r.fwdbwd_s:
            speedup = f"{r.fwdbwd_s / ours.fwdbwd_s:.1f} (fwd {r.fwd_s / ours.fwd_s:.1f})"
        impl = r.impl + (f" [{r.backend}]" if r.backend else "")
        finite = "—" if r.finite is None else ("yes" if r.finite else "NO")
        rows.append([str(r.batch), f"{r.in_}→{r.out}", str(r.p), impl, _ms(r.fwd_s), _ms(r.fwdbwd_s),
                     _rate(r, r.fwd_s), _rate(r, r.fwdbwd_s), finite, speedup])
    return text_table(header, rows)


def to_json(records: list[Record]) -> str:
    return json.dumps([r.json() for r in records], indent=2)
