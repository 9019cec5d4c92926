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

from harness_plugins.lib.lpdist.ops import backend_name, lp_dist

CPU_SHAPES = [(256, 784, 1024), (256, 1024, 1024)]  # (batch, in, out)
PAPER_SHAPES = [(512, 784, 5120), (512, 3072, 5120), (512, 5120, 5120), (512, 5120, 10)]
# 9.5: the relaxation's first epochs, where no term is small enough to skip; 24: on these identity-init inputs the
# largest p at which too few vectors are negligible to skip (48 % are), so every term is raised, by a longer
# polynomial than at 9.5 in the native kernels.
P_VALUES = [8.0, 9.5, 24.0, 64.0, 1000.0, math.inf]
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


#: A call slower than this is timed once, not ``repeat`` times (cdist at the paper's shapes).
SLOW_CALL_S = 5.0


def _median_time(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()  # warm-up (and compilation)
    _sync(device)
    if time.perf_counter() - start > SLOW_CALL_S:
        repeat = 1
    else:
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
    from harness.commands import text_table

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


def p8_ratios(records: list[Record]) -> str:
    """Per shape, each p's forward+backward time over p = 8's, measured in this run (the harness's own rows)."""
    lines = []
    mine = [r for r in records if r.impl == "harness" and r.fwdbwd_s]
    for shape in dict.fromkeys((r.batch, r.in_, r.out) for r in mine):
        rows = {r.p: r for r in mine if (r.batch, r.in_, r.out) == shape}
        base = rows.get(8.0)
        if base is None or len(rows) < 2:
            continue
        parts = [f"p={p} {r.fwdbwd_s / base.fwdbwd_s:.2f}×" for p, r in rows.items() if p != 8.0]
        finite = [r for p, r in rows.items() if p not in (8.0, "inf")]
        worst = max(finite, key=lambda r: r.fwdbwd_s, default=None)
        summary = f"; slowest finite p: {worst.fwdbwd_s / base.fwdbwd_s:.2f}× p=8" if worst else ""
        lines.append(f"B={shape[0]} {shape[1]}→{shape[2]}, fwd+bwd over p=8: " + ", ".join(parts) + summary)
    return "\n".join(lines)


def native_peaks(device: torch.device) -> dict[float, float] | None:
    """This CPU's arithmetic ceiling (pairs/s) for the native p = 8 and p = ∞ forwards: their inner loops on operands
    held in registers. Measured before any timing, while torch's OpenMP workers are not spinning on the cores (they
    stay busy for a while after each parallel operation, and measured right after the bench the ceiling came out
    a third lower). None where the native kernels would not run."""
    if device.type != "cpu" or backend_name(torch.zeros(1)) != "native":
        return None
    from harness_plugins.lib.lpdist import _native

    return {p: _native.peak_pairs_per_second(p) for p in (8.0, math.inf)}


def peak_lines(records: list[Record], peaks: dict[float, float] | None) -> str:
    """Each native forward's rate as a share of this CPU's ceiling (:func:`native_peaks`), and how each finite p was
    raised (the native kernels' route). Empty where the native kernels did not run."""
    mine = [r for r in records if r.impl == "harness" and r.backend == "native" and r.fwd_s]
    if not mine or not peaks:
        return ""
    from harness_plugins.lib.lpdist import _native

    lines = [f"this CPU's peak for the forward's arithmetic alone ({torch.get_num_threads()} threads, operands in registers): "
             f"p=8 {peaks[8.0] / 1e9:.1f} G pairs/s, p=inf {peaks[math.inf] / 1e9:.1f} G pairs/s"]
    for r in mine:
        peak = peaks.get(math.inf if r.p == "inf" else r.p)
        if peak:
            rate = r.batch * r.in_ * r.out / r.fwd_s
            what = "with the argmax a backward needs" if r.p == "inf" else "the sum"
            lines.append(f"B={r.batch} {r.in_}→{r.out} p={r.p} forward ({what}): {rate / 1e9:.1f} G pairs/s, {100 * rate / peak:.0f} % of peak")
    finite = sorted({r.p for r in mine if isinstance(r.p, float) and r.p != 8.0})
    if finite:
        lines.append("finite p raised by: " + ", ".join(f"p={p} {_native.power_route(p)}" for p in finite))
    return "\n".join(lines)


def to_json(records: list[Record]) -> str:
    return json.dumps([r.json() for r in records], indent=2)


# --------------------------------------------------------------------------- one training step

#: The original kernels' published time of one training iteration of the 6×5120 CIFAR-10 net
#: (batch 512) on an RTX 3090: zbh2047/L_inf-dist-net-v2 README.
ORIGINAL_STEP_S = {"8": 0.11, "general": 0.19, "inf": 0.08}


def training_step(device: torch.device, depth: int, width: int, inp: int, classes: int, batch: int, repeat: int) -> list[dict]:
    """Median time of one SGD step (forward, backward, Adam) of an l_inf-dist net at p = 8, 9.5, ∞."""
    from torch import nn

    from harness_plugins.lib.lpdist.layers import LpDistLinear, set_p

    torch.manual_seed(0)
    sizes = [inp] + [width] * (depth - 1)
    layers = [LpDistLinear(i, o, mean_shift=True) for i, o in zip(sizes[:-1], sizes[1:])]
    net = nn.Sequential(*layers, LpDistLinear(width, classes, bias=True)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-10)
    x = torch.rand(batch, inp, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        loss = nn.functional.cross_entropy(-net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = []
    for key, p in (("8", 8.0), ("general", 9.5), ("inf", math.inf)):
        set_p(net, p)
        seconds = _median_time(step, device, repeat)
        rows.append({"p": key, "seconds": seconds, "original_rtx3090_s": ORIGINAL_STEP_S[key], "device": str(device),
                     "backend": backend_name(x), "depth": depth, "width": width, "batch": batch})
    return rows
