"""lp_dist and inf_dist_bounds against direct float64 references, ties, chunking and large p."""

from __future__ import annotations

import math

import pytest
import torch

from harness_plugins.lib.lpdist import LpDistLinear, inf_dist_bounds, lp_dist, ops
from harness_plugins.lib.lpdist import _reference as ref_backend

FINITE_P = [1.0, 1.5, 2.0, 8.0, 8.7, 64.0, 1000.0]
ALL_P = FINITE_P + [math.inf]
SHAPES = [(1, 1, 1), (1, 5, 3), (4, 1, 7), (3, 4, 1), (6, 5, 9), (17, 13, 33)]  # (B, O, I)
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
# (device, backend): every backend is held to the same float64 reference.
DEVICES = [
    pytest.param(("cpu", "reference"), id="cpu-reference"),
    pytest.param(("cpu", "native"), id="cpu-native"),
    pytest.param(("cpu", "compiled"), id="cpu-compiled"),
    pytest.param(("cuda", "reference"), id="cuda-reference", marks=GPU),
    pytest.param(("cuda", "triton"), id="cuda-triton", marks=GPU),
]


@pytest.fixture
def device(request, monkeypatch) -> str:
    """The device of a (device, backend) parameter, with that backend forced for the test."""
    dev, backend = request.param
    monkeypatch.setenv(ops.BACKEND_ENV, backend)
    return dev


@pytest.fixture
def reference_backend(monkeypatch) -> None:
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")


def tolerance(dtype: torch.dtype, p: float) -> float:
    # pow(r, p − 1) turns a relative error δ in r into about (p − 1)·δ, so float32 at p = 1000
    # legitimately carries ~1e-4 relative error; float64 stays far below these bounds.
    eps = 1e-12 if dtype == torch.float64 else 2e-6
    return eps * max(1.0, p)


def reference_dist(x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    """||x_b − w_o||_p in float64 by broadcasting, differentiable; max-scaled so large p stays finite."""
    d = x.double()[:, None, :] - w.double()[None, :, :]
    # The detached scale m makes m·||d/m||_p equal to ||d||_p as a function too, so autograd
    # through vector_norm gives the exact gradient.
    m = d.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-300)
    return m.squeeze(-1) * torch.linalg.vector_norm(d / m, ord=p, dim=-1)


def reference_with_grads(x, w, g, p):
    """reference_dist on float64 copies of x and w, with the float64 gradients of <y, g>."""
    xr = x.detach().double().requires_grad_()
    wr = w.detach().double().requires_grad_()
    y = reference_dist(xr, wr, p)
    gx, gw = torch.autograd.grad(y, (xr, wr), g.double())
    return y.detach(), gx, gw


def reference_inf_grads(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first-argmax rule spelt out: each (b, o) sends g·sign to its first maximiser only."""
    grad_x, grad_w = torch.zeros_like(x, dtype=torch.float64), torch.zeros_like(w, dtype=torch.float64)
    for b in range(x.shape[0]):
        for o in range(w.shape[0]):
            d = x[b] - w[o]
            a = d.abs()
            first = int(torch.nonzero(a == a.max())[0])
            s = float(g[b, o]) * float(torch.sign(d[first]))
            grad_x[b, first] += s
            grad_w[o, first] -= s
    return grad_x, grad_w


def inputs(shape, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    b, o, i = shape
    gen = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(b, i, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)
    w = (scale * torch.randn(o, i, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)
    g = torch.randn(b, o, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    return x.requires_grad_(), w.requires_grad_(), g


# --------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", FINITE_P)
def test_finite_p_matches_the_float64_reference(p, shape, dtype, device):
    x, w, g = inputs(shape, dtype, device, seed=shape[2])
    y = lp_dist(x, w, p)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    ref, rx, rw = reference_with_grads(x, w, g, p)
    tol = tolerance(dtype, p)
    assert y.dtype == dtype and y.shape == shape[:2]
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(gx.double(), rx, rtol=tol, atol=tol)
    torch.testing.assert_close(gw.double(), rw, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_inf_is_exact_and_its_gradient_follows_the_first_argmax(shape, dtype, device):
    x, w, g = inputs(shape, dtype, device, seed=shape[2])
    y = lp_dist(x, w, math.inf)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    direct = (x[:, None, :] - w[None, :, :]).abs().amax(dim=-1)  # same dtype: same roundings
    assert torch.equal(y, direct)
    rx, rw = reference_inf_grads(x.detach().cpu(), w.detach().cpu(), g.cpu())
    # Same entries receive gradient; values differ only by the accumulation dtype.
    assert torch.equal(gx.cpu() != 0, rx != 0) and torch.equal(gw.cpu() != 0, rw != 0)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(gx.double().cpu(), rx, rtol=tol, atol=tol)
    torch.testing.assert_close(gw.double().cpu(), rw, rtol=tol, atol=tol)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 8.0, 8.7, 64.0, math.inf])
def test_gradcheck_in_float64(p):
    gen = torch.Generator().manual_seed(1)
    # Values on a grid with gaps ≥ 0.05 keep every |x − w| away from 0 and from ties.
    x = (torch.randperm(24, generator=gen)[:8].double() * 0.05 + 0.01).view(2, 4).requires_grad_()
    w = (-torch.randperm(24, generator=gen)[:12].double() * 0.07 - 0.02).view(3, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: lp_dist(a, b, p), (x, w), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradient_only_for_inputs_that_need_it():
    x, w, g = inputs((3, 4, 5))
    x.requires_grad_(False)
    for p in (8.0, math.inf):
        y = lp_dist(x, w, p)
        (gw,) = torch.autograd.grad(y, (w,), g)
        assert gw.shape == w.shape


def test_zero_distance_has_zero_value_and_gradient():
    x = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    w = torch.tensor([[1.0, -2.0, 3.0], [0.0, -2.0, 3.0]], requires_grad=True)
    for p in (1.0, 2.0, 8.0, 1000.0, math.inf):
        y = lp_dist(x, w, p)
        assert y[0, 0] == 0  # exactly (the native kernels' exp2 polynomial may put the 1 an ulp off)
        torch.testing.assert_close(y[0, 1].detach(), torch.tensor(1.0))
        gx, gw = torch.autograd.grad(y[0, 0], (x, w))
        assert not gx.any() and not gw.any(), p


def test_rejects_bad_arguments():
    x, w = torch.zeros(2, 3), torch.zeros(4, 3)
    for p in (0.5, 0.0, -1.0, -math.inf, math.nan):
        with pytest.raises(ValueError, match="p must be"):
            lp_dist(x, w, p)
    with pytest.raises(ValueError, match="features"):
        lp_dist(x, torch.zeros(4, 2), 2.0)
    with pytest.raises(ValueError, match="dtype"):
        lp_dist(x, w.double(), 2.0)
    with pytest.raises(ValueError, match="B×I"):
        lp_dist(x[None], w, 2.0)


# --------------------------------------------------------------------------- ties at p = ∞


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_inf_ties_send_the_whole_gradient_to_the_first_maximiser(device):
    x = torch.zeros(2, 5, device=device, requires_grad=True)
    w = torch.tensor(
        [
            [0.0, 3.0, -3.0, 3.0, 1.0],  # |x − w| = 0 3 3 3 1: ties at 1, 2, 3 → index 1, sign −
            [-2.0, 2.0, 2.0, 2.0, 2.0],  # every coordinate ties → index 0, sign +
            [1.0, 0.5, -4.0, 0.0, 4.0],  # tie at 2 (sign +) and 4 (sign −) → index 2, sign +
        ],
        device=device,
        requires_grad=True,
    )
    with torch.no_grad():
        x[1, 4] = 1.0  # row 1 of x breaks the all-tie for w[1]: |.| = 2 2 2 2 1
    g = torch.tensor([[1.0, 10.0, 100.0], [1000.0, 10000.0, 100000.0]], device=device)
    y = lp_dist(x, w, math.inf)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    expected_index = [[1, 0, 2], [1, 0, 2]]
    expected_sign = [[-1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]]
    ex, ew = torch.zeros_like(x), torch.zeros_like(w)
    for b in range(2):
        for o in range(3):
            i, s = expected_index[b][o], expected_sign[b][o]
            ex[b, i] += g[b, o] * s
            ew[o, i] -= g[b, o] * s
    assert torch.equal(gx, ex) and torch.equal(gw, ew)
    # torch.amax would split the gradient evenly over the tie (1/3 each for (0, 0)): not the rule.
    spread = torch.autograd.grad((x[:1, None] - w[None, :1]).abs().amax(-1).sum(), x)[0]
    assert torch.allclose(spread[0, 1:4].abs().cpu(), torch.full((3,), 1 / 3))


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_inf_ties_across_input_blocks_keep_the_first(monkeypatch, device):
    monkeypatch.setattr(ref_backend, "CHUNK_ELEMENTS", 4)  # I = 10 is split into [0:4], [4:8], [8:10]
    x = torch.zeros(1, 10, device=device, requires_grad=True)
    w = torch.zeros(1, 10, device=device)
    w[0, [2, 7, 9]] = torch.tensor([-5.0, 5.0, -5.0], device=device)
    w.requires_grad_()
    (gx,) = torch.autograd.grad(lp_dist(x, w, math.inf).sum(), x)
    assert gx[0, 2] == 1 and gx.count_nonzero() == 1


@pytest.mark.parametrize("device", DEVICES, indirect=True)
def test_inf_long_rows_of_ties_pick_index_zero(device):
    # Parallel reductions (vectorised on CPU, tree-shaped on CUDA) must still return the first maximiser.
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(0, 2, (6, 3000), generator=gen).float() * 2 - 1  # |x − w| = 1 everywhere
    w[:, 0] = -1.0  # so that every output sends +1 to x[:, 0]
    w = w.to(device).requires_grad_()
    x = torch.zeros(4, 3000, device=device, requires_grad=True)
    gx, gw = torch.autograd.grad(lp_dist(x, w, math.inf).sum(), (x, w))
    assert gx[:, 0].eq(6).all() and gx[:, 1:].eq(0).all()
    assert gw[:, 0].eq(-4).all() and gw[:, 1:].eq(0).all()


# --------------------------------------------------------------------------- cdist


def test_cdist_is_exact_at_inf_and_used_without_grad():
    x, w, _ = inputs((9, 11, 21))
    direct = (x[:, None, :] - w[None, :, :]).abs().amax(dim=-1)
    assert torch.equal(torch.cdist(x.detach(), w.detach(), p=math.inf), direct)
    with torch.no_grad():
        assert torch.equal(lp_dist(x, w, math.inf), direct)
    assert torch.equal(lp_dist(x, w, math.inf).detach(), direct)


def test_p_1000_with_the_identity_init_stays_finite_where_cdist_overflows():
    torch.manual_seed(0)
    layer = LpDistLinear(49, 64, identity_value=10.0)  # in ≤ out: w[i, i mod 49] = −10
    images = torch.rand(8, 49)
    x = ((images - 0.1307) / 0.3081).requires_grad_()  # MNIST normalisation: |x − w| ≈ 10–13
    w = layer.weight
    y = lp_dist(x, w, 1000.0)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    ref, rx, rw = reference_with_grads(x, w, g, 1000.0)
    assert torch.isfinite(y).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    assert (y > 9).all()
    tol = tolerance(torch.float32, 1000.0)
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(gx.double(), rx, rtol=tol, atol=tol)
    torch.testing.assert_close(gw.double(), rw, rtol=tol, atol=tol)
    # Why lp_dist does not use cdist for finite p: it sums |x − w|^p unscaled, and 10^1000
    # overflows float32 (and float64), so every output is inf.
    assert torch.isinf(torch.cdist(x.detach(), w.detach(), p=1000.0)).all()


# --------------------------------------------------------------------------- chunking


def test_plan_respects_the_budget(monkeypatch):
    for budget in (1, 7, 64, 1000, 2**22):
        monkeypatch.setattr(ref_backend, "CHUNK_ELEMENTS", budget)
        for b, o, i in [(1, 1, 1), (3, 5, 7), (256, 1024, 784), (5, 3, 5000), (512, 5120, 5120)]:
            bc, oc, ic = ref_backend._plan(b, o, i)
            assert bc * oc * ic <= budget and 1 <= bc <= b and 1 <= oc <= o and 1 <= ic <= i


@pytest.mark.parametrize("p", [1.0, 2.0, 8.0, 8.7, 1000.0, math.inf])
@pytest.mark.parametrize("shape", [(7, 11, 13), (3, 5, 100)])  # I = 100 > 64 splits the inputs too
def test_chunked_equals_unchunked(monkeypatch, reference_backend, p, shape):
    x, w, g = inputs(shape, seed=3, scale=5.0)
    y = lp_dist(x, w, p)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    monkeypatch.setattr(ref_backend, "CHUNK_ELEMENTS", 64)
    assert ref_backend._plan(*shape) != shape
    yc = lp_dist(x, w, p)
    gxc, gwc = torch.autograd.grad(yc, (x, w), g)
    if math.isinf(p):
        assert torch.equal(y, yc) and torch.equal(gx, gxc) and torch.equal(gw, gwc)
    else:  # only the summation order changes
        torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gxc, gx, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gwc, gw, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("p", [8.0, math.inf])
def test_cuda_peak_memory_is_one_block_not_the_full_tensor(monkeypatch, reference_backend, p):
    monkeypatch.setattr(ref_backend, "CHUNK_ELEMENTS", 2**20)
    b, o, i = 64, 512, 1024  # the full difference tensor would be 128 MiB in float32
    x = torch.randn(b, i, device="cuda", requires_grad=True)
    w = torch.randn(o, i, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    lp_dist(x, w, p).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - start
    assert extra < 8 * 4 * 2**20  # a few blocks of 4 MiB plus the B×O, B×I and O×I tensors


# --------------------------------------------------------------------------- interval bounds


def boxes(seed: int, b: int = 5, o: int = 4, i: int = 6):
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(b, i, generator=gen, dtype=torch.float64)
    radius = torch.rand(b, i, generator=gen, dtype=torch.float64)
    radius[radius < 0.25] = 0  # some coordinates degenerate (l == u)
    radius[-1] = 0  # one degenerate box
    w = torch.randn(o, i, generator=gen, dtype=torch.float64)
    w[0] = centre[0]  # unit 0 lies inside sample 0's box in every coordinate
    w[1, :3] = centre[1, :3] + 0.5 * radius[1, :3]  # inside in some coordinates only
    return centre - radius, centre + radius, w


@pytest.mark.parametrize("seed", range(4))
def test_bounds_contain_sampled_points(seed):
    lower, upper, w = boxes(seed)
    low, high = inf_dist_bounds(lower, upper, w)
    gen = torch.Generator().manual_seed(100 + seed)
    t = torch.rand(2000, *lower.shape, generator=gen, dtype=torch.float64)
    points = torch.minimum(torch.maximum(lower + t * (upper - lower), lower), upper)  # stay inside despite rounding
    dist = (points[:, :, None, :] - w[None, None]).abs().amax(dim=-1)  # samples × B × O
    assert (dist >= low).all() and (dist <= high).all()
    assert low[0, 0] == 0 and (low <= high).all()
    degenerate = (lower[-1:] - w).abs().amax(-1)
    assert torch.equal(low[-1], degenerate) and torch.equal(high[-1], degenerate)


@pytest.mark.parametrize("seed", range(4))
def test_bounds_are_attained(seed):
    lower, upper, w = boxes(seed)
    low, high = inf_dist_bounds(lower, upper, w)
    lo, up, ww = lower[:, None, :], upper[:, None, :], w[None]  # B × O × I
    corner = torch.where((lo - ww).abs() >= (up - ww).abs(), lo, up)  # the farthest corner per (b, o)
    assert torch.equal((corner - ww).abs().amax(-1), high)
    # Per coordinate, the nearest distance from w_i to [l_i, u_i] is 0 inside, else to the closer end.
    inside = (lo <= ww) & (ww <= up)
    per_coordinate = torch.where(inside, torch.zeros(()), torch.minimum((lo - ww).abs(), (up - ww).abs()))
    assert torch.equal(per_coordinate.amax(-1), low)
    nearest = torch.minimum(torch.maximum(ww, lo), up)  # the point of the box closest to w
    assert torch.equal((nearest - ww).abs().amax(-1), low)


def test_bounds_chunked_equal_unchunked_and_reject_inverted_boxes(monkeypatch):
    lower, upper, w = boxes(7, b=6, o=9, i=20)
    expected = inf_dist_bounds(lower, upper, w)
    monkeypatch.setattr(ref_backend, "CHUNK_ELEMENTS", 8)
    got = inf_dist_bounds(lower, upper, w)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    with pytest.raises(ValueError, match="lower <= upper"):
        inf_dist_bounds(upper + 1, upper, w)


@pytest.mark.parametrize("shape", [(5, 4, 6), (7, 5, 13), (33, 17, 100)])
def test_native_bounds_are_the_reference_bits(shape, monkeypatch):
    """float32 bounds from the native kernel equal the reference's bit for bit (same subtractions, exact maxima),
    over boxes with degenerate coordinates, units inside a box and shapes that fill no tile or vector."""
    b, o, i = shape
    lower, upper, w = (t.float() for t in boxes(11, b=b, o=o, i=i))
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    expected = inf_dist_bounds(lower, upper, w)
    monkeypatch.setenv(ops.BACKEND_ENV, "native")
    assert ops.backend_name(lower) == "native"
    got = inf_dist_bounds(lower, upper, w)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert (got[0] <= got[1]).all() and got[0][0, 0] == 0
