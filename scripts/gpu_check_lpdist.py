"""One prepared check of the l_p-dist Triton backend on a CUDA machine (under 5 minutes on an H100).

1. Correctness of every kernel on the paper's shapes (B = 512; 784→5120, 3072→5120, 5120→5120,
   5120→10) against the reference backend: the forward at p = 8, 9.5, 100, 1000 (float64
   reference) and ∞ (float32 reference: the same max and the same first argmax, exactly); both
   gradients of the fused backward, to the tolerance of tests/lpdist (2e-6·max(1, p), gradients
   10× that absolute); that the backward is bitwise repeatable; the grad_w-only variant (a first
   layer's); and, at p = 100 and 1000, the backward alone against the float64 reference fed the
   same y, on inputs whose differences are exact, beside the bound the interpreter meets
   ((p − 1)·2^-24; GPU log2/exp2 are approximations the interpreter does not reproduce). The
   reference is computed for 64 of the 512 samples (the others get a zero upstream gradient, so
   grad_w is the reference's too); the kernels always run on the whole batch.
   Kernel times (forward, forward+backward; median of 5) are printed beside each shape.
2. The time of one training step (forward, backward, Adam) of the paper's 6×5120 CIFAR-10
   l_inf-dist net (plugins/lpdist/models.py, the paper-8/255 preset of
   registry/presets/linf_v2.toml, batch 512, cross-entropy) at p = 8, 9.5, 100 and ∞, against
   the original CUDA kernels' RTX 3090 times: 0.11 s (p = 8), 0.19 s (general p), 0.08 s (∞).

Prints one line per check and exits 1 if any fails.

    python scripts/gpu_check_lpdist.py            # everything
    python scripts/gpu_check_lpdist.py --no-step  # the kernels only
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import math
import os
import statistics
import sys
import time
import tomllib
import warnings

import torch

from harness_plugins.lib.lpdist import _reference, _triton, lp_dist, ops, set_p
from harness_plugins.lpdist.bench import ORIGINAL_STEP_S, PAPER_SHAPES

P_VALUES = (8.0, 9.5, 100.0, 1000.0, math.inf)
ROWS = 64  # samples the reference is computed for
EPS_PER_P = 2e-6  # tests/lpdist's tolerance per unit of max(1, p)
DEVICE = torch.device("cuda")
failures: list[str] = []


@contextlib.contextmanager
def backend(name: str):
    saved = os.environ.get(ops.BACKEND_ENV)
    os.environ[ops.BACKEND_ENV] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ops.BACKEND_ENV, None)
        else:
            os.environ[ops.BACKEND_ENV] = saved


def report(ok: bool, line: str) -> None:
    print(("ok    " if ok else "FAIL  ") + line, flush=True)
    if not ok:
        failures.append(line)


def median_ms(fn, repeat: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def inputs(batch: int, inp: int, out: int, dyadic: bool = False):
    """Normalised-image-like x, N(0, 1) weights with the −10 identity init where in <= out."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, inp, generator=g) - 0.13) / 0.31
    w = torch.randn(out, inp, generator=g)
    if inp <= out:
        w[torch.arange(out), torch.arange(out) % inp] = -10.0
    if dyadic:  # on a 2^-10 grid, so that every x − w is exact in float32
        x, w = (torch.round(t * 1024) / 1024 for t in (x, w))
    rows = torch.arange(0, batch, batch // ROWS)[:ROWS]
    grad = torch.zeros(batch, out)
    grad[rows] = torch.randn(len(rows), out, generator=g)
    return x.to(DEVICE), w.to(DEVICE), grad.to(DEVICE), rows.to(DEVICE)


def excess(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> float:
    """max |a − b| / (atol + rtol·|b|): at most 1 within tolerance."""
    return float(((a.double() - b.double()).abs() / (atol + rtol * b.double().abs())).max())


def normwise(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-300))


def grads(x, w, grad, p, need_x=True):
    xs = x.clone().requires_grad_(need_x)
    ws = w.clone().requires_grad_()
    y = lp_dist(xs, ws, p)
    got = torch.autograd.grad(y, [t for t in (xs, ws) if t.requires_grad], grad.to(y.dtype))
    return y.detach(), (got[0] if need_x else None), got[-1]


def check_shape(batch: int, inp: int, out: int) -> None:
    x, w, grad, rows = inputs(batch, inp, out)
    target = _triton._target_programs(DEVICE)
    fplan = _triton.plan_forward(batch, out, inp, _triton._FWD[_triton._MODE_GENERAL], target)
    bplan = _triton.plan_backward(batch, out, inp, _triton._BWD, target, _triton.PARTIAL_BYTES_CAP)
    print(f"\nB={batch} {inp}→{out}: forward {fplan.k_slices} input slice(s); backward {bplan.o_slices} output "
          f"slice(s), {bplan.passes(inp)} pass(es) of {bplan.k_per_pass} columns, {bplan.b_groups} grad_w planes", flush=True)
    for p in P_VALUES:
        with backend("triton"):
            y, gx, gw = grads(x, w, grad, p)
            _, gx2, gw2 = grads(x, w, grad, p)
            _, _, gw_only = grads(x, w, grad, p, need_x=False)
            xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
            fwd_ms = median_ms(lambda xs=xs, ws=ws, p=p: lp_dist(xs, ws, p))
            step_ms = median_ms(lambda xs=xs, ws=ws, p=p: torch.autograd.grad(lp_dist(xs, ws, p), (xs, ws), grad))
        name = f"B={batch} {inp}→{out} p={p:g}"
        if math.isinf(p):
            ty, ti = _triton.inf_forward(x, w, True)
            ry, ri = _reference.inf_forward(x[rows], w, True)
            with backend("reference"):
                _, rx, rw = grads(x[rows], w, grad[rows], p)
            same = torch.equal(ty[rows], ry) and torch.equal(ti[rows], ri)
            # The p = ∞ backward is torch's scatter_add (atomics): equal up to the order of its sums.
            close = excess(gx[rows], rx, 1e-6, 1e-6) <= 1 and excess(gw, rw, 1e-6, 1e-6) <= 1
            report(same and close, f"{name}: max and first argmax {'equal' if same else 'DIFFER'}; "
                                   f"gradients {'agree' if close else 'DISAGREE'}; fwd {fwd_ms:.2f} ms, fwd+bwd {step_ms:.2f} ms")
            continue
        with backend("reference"):
            ry, rx, rw = grads(x[rows].double(), w.double(), grad[rows].double(), p)
        tol = EPS_PER_P * max(1.0, p)
        errs = {"y": excess(y[rows], ry, tol, tol), "grad_x": excess(gx[rows], rx, tol, 10 * tol), "grad_w": excess(gw, rw, tol, 10 * tol)}
        others = torch.ones(batch, dtype=torch.bool, device=DEVICE)
        others[rows] = False
        zero_rows = bool((gx[others] == 0).all())
        repeatable = torch.equal(gx, gx2) and torch.equal(gw, gw2)
        w_only = excess(gw_only, rw, tol, 10 * tol) <= 1
        finite = all(bool(torch.isfinite(t).all()) for t in (y, gx, gw))
        ok = finite and zero_rows and repeatable and w_only and max(errs.values()) <= 1
        detail = ", ".join(f"{k} {v:.2g}" for k, v in errs.items())
        norms = f"normwise y {normwise(y[rows], ry):.1e} grad_x {normwise(gx[rows], rx):.1e} grad_w {normwise(gw, rw):.1e}"
        report(ok, f"{name}: error/tolerance {detail} ({norms}); repeatable {repeatable}, grad_w-only agrees {w_only}, "
                   f"finite {finite}; fwd {fwd_ms:.2f} ms, fwd+bwd {step_ms:.2f} ms")


def check_backward_alone(batch: int, inp: int, out: int) -> None:
    x, w, grad, rows = inputs(batch, inp, out, dyadic=True)
    for p in (100.0, 1000.0):
        y = _triton.p_forward(x, w, p)
        gx, gw = _triton.p_backward(x, w, y, grad, p, True, True)
        rx, rw = _reference.p_backward(x[rows].double(), w.double(), y[rows].double(), grad[rows].double(), p, True, True)
        bound = (p - 1) * 2**-24
        ex, ew = normwise(gx[rows], rx), normwise(gw, rw)
        worst = max(ex, ew)
        verdict = "within" if worst <= bound else ("above (GPU math)" if worst <= 4 * bound else "far above")
        report(worst <= 4 * bound, f"backward alone B={batch} {inp}→{out} p={p:g}: normwise grad_x {ex:.1e} grad_w {ew:.1e}; "
                                   f"the interpreter's bound {bound:.1e}: {verdict}")


def training_step(repeat: int = 10) -> None:
    from harness_plugins.datasets.cifar import CIFAR10
    from harness_plugins.lpdist.models import LinfDistNet, LinfDistNetOptions

    presets = tomllib.loads((importlib.resources.files("harness_registry.presets") / "linf_v2.toml").read_text())
    preset = next(p for p in presets["presets"] if p["name"] == "paper-8/255")
    model_options, trainer_options = preset["model_options"], preset["trainer_options"]
    torch.manual_seed(0)
    net = LinfDistNet(CIFAR10.info, LinfDistNetOptions(**model_options)).to(DEVICE)
    opt = torch.optim.Adam(net.parameters(), lr=trainer_options["lr"], betas=(0.9, 0.99), eps=1e-10)
    batch = trainer_options["batch_size"]
    images = torch.rand(batch, *CIFAR10.info.shape, device=DEVICE)
    labels = torch.randint(0, CIFAR10.info.num_classes, (batch,), device=DEVICE)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    chosen = ops.backend_name(images)
    print(f"\nOne training step: {model_options['depth']} × {model_options['width']} l_inf-dist net (CIFAR-10, "
          f"paper-8/255), batch {batch}, backend {chosen}", flush=True)
    report(chosen == "triton", f"the automatic backend for CUDA tensors is {chosen!r}")
    for key, p in (("8", 8.0), ("general", 9.5), ("general", 100.0), ("inf", math.inf)):
        set_p(net, p)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seconds = median_ms(step, repeat) / 1000
        fell_back = [str(c.message) for c in caught if "cannot run here" in str(c.message)]
        original = ORIGINAL_STEP_S[key]
        report(not fell_back, f"p={p:g}: {seconds:.4f} s/step; original kernels on an RTX 3090 {original:.2f} s "
                              f"(original / ours {original / max(seconds, 1e-9):.2f})" + (f"; FELL BACK: {fell_back[0]}" if fell_back else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-step", action="store_true", help="skip the training-step timing")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script checks the Triton kernels on a GPU", file=sys.stderr)
        return 2
    import triton

    start = time.perf_counter()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}; "
          f"target programs {_triton._target_programs(DEVICE)}, tiles fwd {_triton._FWD} bwd {_triton._BWD}", flush=True)
    for batch, inp, out in PAPER_SHAPES:
        check_shape(batch, inp, out)
    print()
    check_backward_alone(512, 5120, 5120)
    if not args.no_step:
        training_step()
    print(f"\n{len(failures)} failure(s); {time.perf_counter() - start:.0f} s", flush=True)
    for line in failures:
        print("  " + line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
