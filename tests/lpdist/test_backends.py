"""The fast paths: which backend runs, that it agrees with the reference, that the p schedule does
not recompile, that memory stays bounded, and the convolutional form."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from harness_plugins.lib.lpdist import inf_dist_bounds_conv, lp_dist, lp_dist_conv, ops

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
FAST = [
    pytest.param(("cpu", "native", torch.float32), id="native-f32"),
    pytest.param(("cpu", "compiled", torch.float32), id="compiled-f32"),
    pytest.param(("cpu", "compiled", torch.float64), id="compiled-f64"),
    pytest.param(("cuda", "triton", torch.float32), id="triton-f32", marks=GPU),
]


def identity_init_inputs(b=64, i=96, o=128, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = ((torch.rand(b, i, generator=g) - 0.13) / 0.31).to(dtype)
    w = torch.randn(o, i, generator=g).to(dtype)
    w[torch.arange(o), torch.arange(o) % i] = -10.0
    grad = torch.randn(b, o, generator=g).to(dtype)
    return x.to(device).requires_grad_(), w.to(device).requires_grad_(), grad.to(device)


def run_with(backend, monkeypatch, x, w, grad, p):
    monkeypatch.setenv(ops.BACKEND_ENV, backend)
    y = lp_dist(x, w, p)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    return y, gx, gw


def test_cpu_tensors_use_the_native_backend_and_a_bad_choice_is_named(monkeypatch):
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    assert ops.backend_name(torch.zeros(2, 2)) == "native"
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    assert ops.backend_name(torch.zeros(2, 2)) == "reference"
    monkeypatch.setenv(ops.BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="'fastest'; valid: auto, reference, native, compiled, triton"):
        ops.backend_name(torch.zeros(2, 2))


def _no_compiler(monkeypatch):
    from harness_plugins.lib.lpdist import _native

    monkeypatch.setattr(_native.shutil, "which", lambda name: None)
    monkeypatch.setattr(_native, "library", lambda: _native._compiler())  # the build's first step, uncached
    monkeypatch.setattr(ops, "_broken", set())  # retiring a backend must not outlive the test
    return _native


def test_without_a_compiler_the_native_backend_retires_with_a_warning_and_compiled_takes_over(monkeypatch):
    _no_compiler(monkeypatch)
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    x, w = torch.rand(5, 7), torch.randn(3, 7)
    with pytest.warns(UserWarning, match=r"backend 'native' cannot run here \(no C\+\+ compiler found.*using 'compiled'"):
        y = lp_dist(x, w, 8.0)
    torch.testing.assert_close(y, (x[:, None] - w[None]).abs().pow(8).sum(-1).pow(1 / 8))
    assert ops.backend_name(x) == "compiled"


def test_forcing_a_backend_that_cannot_build_raises(monkeypatch):
    native = _no_compiler(monkeypatch)
    monkeypatch.setenv(ops.BACKEND_ENV, "native")
    with pytest.raises(native.BuildError, match="no C\\+\\+ compiler found"):
        lp_dist(torch.rand(2, 3), torch.rand(4, 3), 8.0)


@pytest.mark.parametrize("p", [8.0, 9.5, math.inf])
def test_native_hands_what_it_cannot_take_to_the_compiled_kernels(monkeypatch, p):
    """float64, and inputs holding inf (its log2 reads float bits), give the reference's answer."""
    x, w, grad = identity_init_inputs(b=9, i=11, o=6)
    bad = x.detach().clone()
    bad[0, 3], bad[1, 0] = math.inf, -math.inf
    for xs, ws in ((bad, w.detach()), (x.detach().double(), w.detach().double())):
        monkeypatch.setenv(ops.BACKEND_ENV, "native")
        y = lp_dist(xs, ws, p)
        monkeypatch.setenv(ops.BACKEND_ENV, "reference")
        torch.testing.assert_close(y, lp_dist(xs, ws, p), equal_nan=True)


@pytest.mark.parametrize("p", [1.0, 2.0, 8.0, 8.7, 64.0, 1000.0, math.inf])
@pytest.mark.parametrize("target", FAST)
def test_fast_paths_agree_with_reference(monkeypatch, p, target):
    device, backend, dtype = target
    # Shapes that are not multiples of any tile, with several tiles and input blocks per output.
    x, w, grad = identity_init_inputs(b=70, i=203, o=150, dtype=dtype, device=device)
    y, gx, gw = run_with(backend, monkeypatch, x, w, grad, p)
    ry, rx, rw = run_with("reference", monkeypatch, x, w, grad, p)
    if math.isinf(p):  # exact, and the same argmax
        assert torch.equal(y, ry) and torch.equal(gx, rx) and torch.equal(gw, rw)
    else:
        tol = (1e-12 if dtype == torch.float64 else 2e-6) * max(1.0, p)
        torch.testing.assert_close(y, ry, rtol=tol, atol=tol)
        torch.testing.assert_close(gx, rx, rtol=tol, atol=tol * 10)
        torch.testing.assert_close(gw, rw, rtol=tol, atol=tol * 10)
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()


def _uniform_inputs(b=37, i=203, o=61, seed=3):
    """No dominant coordinate: every |x − w| counts at every p, and gradients cancel."""
    g = torch.Generator().manual_seed(seed)
    x, w = torch.rand(b, i, generator=g), torch.rand(o, i, generator=g)
    return x.requires_grad_(), w.requires_grad_(), torch.randn(b, o, generator=g)


def _errors_in_eps(x, w, grad, p, y, gx, gw, ry, rx, rw):
    """Max errors in float32 eps: y relative to itself, each gradient element relative to the sum of
    its terms' magnitudes, Σ |g|·(|d|/y)^(p−1) (a cancelling sum cannot be rounded better than that),
    beyond 2^-40·Σ |g| (where most vectors of terms are negligible the kernels skip those below 2^-40·|g|).
    Elements whose terms all lie near float32's underflow (sum < 2^-90; the native kernels flush
    terms below 2^-126 to zero) are left out."""
    eps = torch.finfo(torch.float32).eps
    d = (x.detach().double()[:, None] - w.detach().double()[None]).abs()
    g = grad.double().abs()[:, :, None]
    terms = g * (d / ry.double()[:, :, None]) ** (p - 1)
    return [((y.double() - ry.double()).abs() / ry.double()).max().item() / eps] + [
        (((got.double() - ref.double()).abs() - 2.0**-40 * skippable).clamp_min(0) / size)[size > 2.0**-90].max().item() / eps
        for got, ref, size, skippable in ((gx, rx, terms.sum(1), g.sum(1)), (gw, rw, terms.sum(0), g.sum(0)))
    ]


@pytest.mark.parametrize("p", [8.5, 9.5, 23.9, 47.99])
@pytest.mark.parametrize("inputs", [identity_init_inputs, _uniform_inputs], ids=["identity-init", "uniform"])
def test_native_table_power_is_as_accurate_as_float32_arithmetic(monkeypatch, p, inputs):
    """Where the native kernels raise terms by tables and a polynomial (AVX-512, 8 <= p < 64), the
    forward and both gradients are as close to float64 as the float32 formula itself is."""
    from harness_plugins.lib.lpdist import _native

    route = _native.power_route(p)
    if not route.startswith("table"):
        pytest.skip(f"p = {p} takes the {route} route on this CPU")
    x, w, grad = inputs()
    exact = run_with("reference", monkeypatch, x.detach().double().requires_grad_(), w.detach().double().requires_grad_(), grad.double(), p)
    native = _errors_in_eps(x, w, grad, p, *run_with("native", monkeypatch, x, w, grad, p), *exact)
    float32 = _errors_in_eps(x, w, grad, p, *run_with("reference", monkeypatch, x, w, grad, p), *exact)
    for name, ours, theirs in zip(("y", "grad x", "grad w"), native, float32):
        assert ours <= 1.25 * theirs + 4, f"{name}: {ours:.1f} eps against float32's {theirs:.1f}"


def test_power_route_names_how_each_p_is_raised():
    from harness_plugins.lib.lpdist import _native

    assert _native.power_route(8.0) == "p8"
    assert _native.power_route(1000.0) == "log2/exp2"
    assert _native.power_route(3.0) == "log2/exp2"
    if _native.vector_width() == 16:  # AVX-512: its permutes hold the tables
        assert _native.power_route(9.5) == "table, degree 4"
        assert _native.power_route(63.9).startswith("table, degree ")
        assert _native.power_route(64.0) == "log2/exp2"
    else:
        assert _native.power_route(9.5) == "log2/exp2"


@pytest.mark.parametrize("backend", ["native", "compiled"])
def test_p8_fast_path_falls_back_when_its_sums_would_overflow(monkeypatch, backend):
    x, w, grad = identity_init_inputs()
    big_x, big_w = (x.detach() * 1e5).requires_grad_(), (w.detach() * 1e5).requires_grad_()  # |d|^8 ~ 1e48
    y, gx, gw = run_with(backend, monkeypatch, big_x, big_w, grad, 8.0)
    ry, rx, rw = run_with("reference", monkeypatch, big_x, big_w, grad, 8.0)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ry, rtol=2e-5, atol=0)
    torch.testing.assert_close(gx, rx, rtol=2e-4, atol=1e-4)


def test_the_p_schedule_does_not_recompile(monkeypatch):
    """The exponential relaxation calls a new p every step and the last batch is smaller:
    after the first calls, neither triggers a compilation."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv(ops.BACKEND_ENV, "compiled")
    x, w, grad = identity_init_inputs()
    for p in (8.0, 9.3, math.inf):  # warm every variant once
        torch.autograd.grad(lp_dist(x, w, p), (x, w), grad)
    before = counters["stats"]["unique_graphs"]
    for step, p in enumerate(8 * (1000 / 8) ** torch.linspace(0, 1, 25)):
        rows = 64 if step % 5 else 37  # a smaller last batch now and then
        torch.autograd.grad(lp_dist(x[:rows], w, float(p)), (x, w), grad[:rows])
    assert counters["stats"]["unique_graphs"] == before


@pytest.mark.parametrize("backend", ["native", "compiled"])
def test_fast_cpu_paths_never_build_the_full_difference_tensor(backend):
    """B×O×I would be 1 GiB here; the peak resident memory of the process must grow far less."""
    code = textwrap.dedent(
        """
        import resource, torch, math
        from harness_plugins.lib.lpdist import lp_dist
        b, i, o = 256, 1024, 1024
        x = torch.rand(b, i, requires_grad=True); w = torch.randn(o, i, requires_grad=True)
        for p in (8.0, 9.5, math.inf):  # compile first, so compiler memory is not counted
            lp_dist(x[:8], w[:8], p).sum().backward()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for p in (8.0, 9.5, math.inf):
            lp_dist(x, w, p).sum().backward()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
        """
    )
    env = {**os.environ, ops.BACKEND_ENV: backend}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600, env=env)
    grown = int(out.stdout.strip().splitlines()[-1])
    assert grown < 256 * 2**20, grown  # the full tensor alone is 1024 MiB


def naive_conv(x, w, p, k, stride, padding):
    patches = F.unfold(x, k, padding=padding, stride=stride).transpose(1, 2)  # B × L × C·k·k
    d = (patches[:, :, None, :] - w[None, None, :, :]).abs()
    y = d.amax(-1) if math.isinf(p) else d.pow(p).sum(-1).pow(1 / p)
    out = (x.shape[2] + 2 * padding - k) // stride + 1
    return y.transpose(1, 2).reshape(x.shape[0], w.shape[0], out, -1)


@pytest.mark.parametrize("p", [2.0, 8.0, math.inf])
@pytest.mark.parametrize("k, stride, padding", [(3, 1, 1), (4, 2, 1), (1, 1, 0)])
def test_conv_form_matches_a_naive_unfold(p, k, stride, padding):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 2, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 2 * k * k, generator=g, dtype=torch.float64, requires_grad=True)
    y = lp_dist_conv(x, w, p, k, stride, padding)
    ref = naive_conv(x, w, p, k, stride, padding)
    torch.testing.assert_close(y, ref)
    if not math.isinf(p):  # gradients agree too (the naive one is exact for finite p)
        g_out = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, w), g_out)
        want = torch.autograd.grad(ref, (x, w), g_out)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_conv_bounds_contain_sampled_points():
    g = torch.Generator().manual_seed(2)
    centre = torch.rand(2, 3, 6, 6, generator=g)
    lower, upper = (centre - 0.1).clamp(0, 1), (centre + 0.1).clamp(0, 1)
    w = torch.rand(4, 3 * 9, generator=g)
    low, high = inf_dist_bounds_conv(lower, upper, w, 3, 1, 1)
    for _ in range(20):
        y = lp_dist_conv(lower + torch.rand(lower.shape, generator=g) * (upper - lower), w, math.inf, 3, 1, 1)
        assert bool((low <= y).all() and (y <= high).all())


def test_bench_dist_prints_the_documented_records(harness_cli):
    import json

    r = harness_cli("bench", "dist", "--shape", "16,20,24", "--p", "8", "--p", "1000", "--p", "inf", "--repeat", "1", "--json")
    assert r.code == 0, r.err
    records = json.loads(r.out)
    assert {(rec["impl"], rec["p"]) for rec in records} == {(i, p) for i in ("harness", "cdist", "naive") for p in (8.0, 1000.0, "inf")}
    for rec in records:
        assert {"impl", "p", "batch", "in", "out", "device", "fwd_s", "fwdbwd_s", "finite"} <= set(rec)
        assert (rec["batch"], rec["in"], rec["out"]) == (16, 20, 24) and rec["fwd_s"] > 0 and rec["fwdbwd_s"] > 0
        # Only this module stays finite at p = 1000 (|x − w| ≈ 10 under the identity init).
        assert rec["finite"] == (rec["impl"] == "harness" or rec["p"] != 1000.0)
    table = harness_cli("bench", "dist", "--shape", "16,20,24", "--p", "9.5", "--p", "inf", "--repeat", "1")
    assert "harness [native]" in table.out and "G pairs/s" in table.out
    # The native kernels' rates against this CPU's measured ceiling, and the route each finite p took.
    assert "this CPU's peak for the forward's arithmetic alone" in table.out
    assert "B=16 20→24 p=inf forward (with the argmax a backward needs):" in table.out and "% of peak" in table.out
    assert "finite p raised by: p=9.5 " in table.out


def test_bench_dist_step_times_each_phase(harness_cli):
    import json

    r = harness_cli("bench", "dist-step", "--device", "cpu", "--depth", "3", "--width", "16", "--input", "20", "--batch", "8", "--repeat", "1",
                    "--json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    assert [row["p"] for row in rows] == ["8", "general", "inf"] and all(row["seconds"] > 0 for row in rows)
    assert all(row["original_rtx3090_s"] is None for row in rows)  # published times are for the paper's net only


def test_bench_rejects_bad_arguments(harness_cli):
    for args in (("--p", "0.5"), ("--shape", "1,2")):
        r = harness_cli("bench", "dist", *args)
        assert r.code == 2 and r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1
