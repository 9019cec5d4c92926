"""LpDistConv2d against a float64 brute force: values, gradients, identity init, mean shift, interval bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness_plugins.lib.lpdist import LpDistConv2d, LpDistLinear, lp_dist_conv, lp_layers, set_p

GEOMETRY = [(1, 0), (1, 1), (2, 0), (2, 1)]  # (stride, padding)


def reference_conv(x: torch.Tensor, w: torch.Tensor, p: float, stride: int, padding: int) -> torch.Tensor:
    """``||patch − w_o||_p`` window by window in float64, differentiable; max-scaled so large p stays finite."""
    x, w = x.double(), w.double()
    out_c, _, k, _ = w.shape
    padded = F.pad(x, [padding] * 4)  # zeros, as F.unfold pads
    out_h = (padded.shape[2] - k) // stride + 1
    out_w = (padded.shape[3] - k) // stride + 1
    rows = w.reshape(1, out_c, -1)
    columns = []
    for i in range(out_h):
        row = []
        for j in range(out_w):
            patch = padded[:, :, i * stride : i * stride + k, j * stride : j * stride + k].reshape(x.shape[0], 1, -1)
            d = (patch - rows).abs()  # B×O×(C·k·k)
            if math.isinf(p):
                row.append(d.amax(-1))
            else:
                # The detached scale keeps m·||d/m||_p equal to ||d||_p as a function too.
                m = d.detach().amax(-1, keepdim=True).clamp(min=1e-300)
                row.append(m.squeeze(-1) * torch.linalg.vector_norm(d / m, ord=p, dim=-1))
        columns.append(torch.stack(row, -1))
    return torch.stack(columns, -2)  # B×O×H'×W'


def layer_and_input(stride: int, padding: int, *, seed: int = 0, dtype=torch.float32, **kwargs):
    torch.manual_seed(seed)
    layer = LpDistConv2d(3, 5, 3, stride=stride, padding=padding, **kwargs).to(dtype)
    x = torch.randn(2, 3, 7, 6, dtype=dtype)  # not square: height and width are not mixed up
    return layer, x


# --------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("stride", "padding"), GEOMETRY)
@pytest.mark.parametrize("p", [8.0, 1000.0, math.inf])
def test_forward_matches_the_float64_reference(p, stride, padding, dtype):
    layer, x = layer_and_input(stride, padding, dtype=dtype)  # identity init: |x − w| ≈ 10 at the centre
    set_p(layer, p)
    with torch.no_grad():
        y = layer(x)
    ref = reference_conv(x, layer.weight, p, stride, padding)
    out_h, out_w = (7 + 2 * padding - 3) // stride + 1, (6 + 2 * padding - 3) // stride + 1
    assert y.shape == (2, 5, out_h, out_w) and y.dtype == dtype
    assert torch.isfinite(y).all()  # p = 1000 with |x − w| ≈ 10 would overflow without normalisation
    # float32: pow(r, p − 1) turns a relative error δ into about p·δ (see test_ops.tolerance).
    tol = (1e-12 if dtype == torch.float64 else 2e-6) * (1.0 if math.isinf(p) else p)
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(("stride", "padding"), GEOMETRY)
def test_gradcheck_at_p8_in_float64(stride, padding):
    layer, x = layer_and_input(stride, padding, dtype=torch.float64, identity_value=None)
    x = x[:1, :, :5, :5].clone().requires_grad_()  # small: gradcheck perturbs every entry
    w = layer.weight.detach().clone().requires_grad_()

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": b}, (a,))

    assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("stride", "padding"), GEOMETRY)
@pytest.mark.parametrize("p", [8.0, math.inf])
def test_gradients_match_the_reference(p, stride, padding):
    layer, x = layer_and_input(stride, padding, dtype=torch.float64)
    set_p(layer, p)
    x.requires_grad_()
    y = layer(x)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, layer.weight), g)
    xr, wr = x.detach().clone().requires_grad_(), layer.weight.detach().clone().requires_grad_()
    rx, rw = torch.autograd.grad(reference_conv(xr, wr, p, stride, padding), (xr, wr), g)
    # Random data has no ties, so at p = ∞ the first-argmax rule and amax's gradient agree.
    assert gw.shape == layer.weight.shape and gx.abs().sum() > 0 and gw.abs().sum() > 0
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)


def test_float32_gradients_flow_to_x_and_w():
    layer, x = layer_and_input(2, 1)
    x.requires_grad_()
    layer(x).square().sum().backward()
    xr, wr = x.detach().double().requires_grad_(), layer.weight.detach().double().requires_grad_()
    reference_conv(xr, wr, 8.0, 2, 1).square().sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.weight.grad.double(), wr.grad, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- init and mean shift


def test_identity_init_at_the_centre_pixel_where_in_le_out():
    torch.manual_seed(0)
    layer = LpDistConv2d(3, 7, 3)
    assert layer.weight.shape == (7, 3, 3, 3)
    units = torch.arange(7)
    assert (layer.weight[units, units % 3, 1, 1] == -10.0).all()
    assert (layer.weight == -10.0).sum() == 7  # nothing else is touched
    five = LpDistConv2d(2, 4, 5, identity_value=2.5)
    assert (five.weight[units[:4], units[:4] % 2, 2, 2] == -2.5).all() and (five.weight == -2.5).sum() == 4
    assert LpDistConv2d(4, 4, 1).weight[:, :, 0, 0].diagonal().eq(-10.0).all()  # in == out applies
    assert not (LpDistConv2d(7, 3, 3).weight == -10.0).any()  # in > out: plain N(0, 1)
    assert not (LpDistConv2d(3, 7, 3, identity_value=None).weight == -10.0).any()


def test_defaults_and_weight_distribution():
    torch.manual_seed(0)
    layer = LpDistConv2d(40, 30, 3, bias=True)
    assert layer.p == 8.0 and layer.running_mean is None and (layer.bias == 0).all()
    assert abs(layer.weight.std().item() - 1.0) < 0.02 and abs(layer.weight.mean().item()) < 0.02
    assert "running_mean" not in layer.state_dict()
    assert "running_mean" in LpDistConv2d(3, 4, 3, mean_shift=True).state_dict()
    assert "stride=1, padding=0" in repr(layer)
    with pytest.raises(ValueError, match="B×40×H×W"):
        layer(torch.randn(2, 3, 5, 5))


def test_mean_shift_over_batch_and_pixels_in_training_and_eval():
    layer, x1 = layer_and_input(2, 1, mean_shift=True, momentum=0.3, bias=True)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.25, -1.0, 0.5, 2.0, 0.0]))
    bias = layer.bias.detach().view(-1, 1, 1)
    x2, x3 = torch.randn_like(x1), torch.randn_like(x1)
    rows = layer.weight.detach().view(5, -1)
    d1, d2, d3 = (lp_dist_conv(x, rows, 8.0, 3, 2, 1) for x in (x1, x2, x3))
    m1, m2 = d1.mean((0, 2, 3)), d2.mean((0, 2, 3))

    layer.train()
    torch.testing.assert_close(layer(x1), d1 - m1.view(-1, 1, 1) + bias)  # order: dist → mean shift → bias
    torch.testing.assert_close(layer.running_mean, 0.3 * m1)
    layer(x2)
    torch.testing.assert_close(layer.running_mean, 0.7 * 0.3 * m1 + 0.3 * m2)
    assert not layer.running_mean.requires_grad

    # The batch mean is part of the graph: each channel's outputs sum to n·bias, so w gets no gradient.
    layer.weight.grad = None
    y = layer(x3)
    y.sum().backward()
    assert layer.weight.grad.abs().max() < 1e-4 and layer.bias.grad.eq(y[:, 0].numel()).all()

    layer.eval()
    running = layer.running_mean.clone()
    torch.testing.assert_close(layer(x3), d3 - running.view(-1, 1, 1) + bias)
    assert torch.equal(layer.running_mean, running)  # eval does not update it


# --------------------------------------------------------------------------- interval bounds


def certifiable(stride: int, padding: int, seed: int = 0) -> LpDistConv2d:
    """An eval-mode p = ∞ layer with a non-zero running mean and bias."""
    layer, x = layer_and_input(stride, padding, seed=seed, mean_shift=True, bias=True)
    layer(x)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(5))
    layer.eval()
    set_p(layer, math.inf)
    return layer


@pytest.mark.parametrize(("stride", "padding"), GEOMETRY)
def test_interval_contains_the_outputs_of_points_in_the_box(stride, padding):
    layer = certifiable(stride, padding)
    centre = torch.randn(3, 3, 7, 6)
    radius = torch.rand(3, 3, 7, 6) * 0.5
    radius[0, :, :2] = 0  # some coordinates are fixed
    lower, upper = centre - radius, centre + radius
    low, high = layer.interval(lower, upper)
    assert low.shape == high.shape == layer(centre).shape and not low.requires_grad and (low <= high).all()

    n = 300
    t = torch.rand(n, *lower.shape)
    t[: n // 3] = t[: n // 3].round()  # a third of the points are corners of the box
    t[0], t[1] = 0, 1  # including the lower and the upper corner
    points = torch.minimum(torch.maximum(lower + t * (upper - lower), lower), upper)
    with torch.no_grad():
        out = layer(points.reshape(-1, 3, 7, 6)).reshape(n, *low.shape)
    slack = 1e-5  # the shift and bias are added in float32 on both sides, possibly in another order
    assert (out >= low - slack).all() and (out <= high + slack).all()
    # Per neuron the upper bound is attained at a corner: half of all corners attain it, so one
    # of the 100 sampled does (but for a chance of 2^−100).
    torch.testing.assert_close(out.amax(0), high, rtol=0, atol=slack)


@pytest.mark.parametrize(("stride", "padding"), GEOMETRY)
def test_interval_is_exact_for_degenerate_boxes(stride, padding):
    layer = certifiable(stride, padding)
    x = torch.randn(4, 3, 7, 6)
    low, high = layer.interval(x, x)
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(low, y, rtol=0, atol=1e-6)
    torch.testing.assert_close(high, y, rtol=0, atol=1e-6)


def test_padding_is_a_constant_zero_not_an_interval():
    padded = certifiable(2, 1, seed=3)
    unpadded = LpDistConv2d(3, 5, 3, stride=2, padding=0, mean_shift=True, bias=True)
    unpadded.load_state_dict(padded.state_dict())
    unpadded.eval()
    set_p(unpadded, math.inf)
    lower = torch.randn(2, 3, 7, 6)
    upper = lower + torch.rand(2, 3, 7, 6)
    low, high = padded.interval(lower, upper)
    # Same as bounding the explicitly zero-padded box, whose border has lower = upper = 0.
    ref_low, ref_high = unpadded.interval(F.pad(lower, [1] * 4), F.pad(upper, [1] * 4))
    assert torch.equal(low, ref_low) and torch.equal(high, ref_high)


def test_interval_needs_eval_mode_and_p_inf():
    layer = LpDistConv2d(3, 4, 3, mean_shift=True)
    box = torch.zeros(2, 3, 5, 5), torch.ones(2, 3, 5, 5)
    set_p(layer, math.inf)
    with pytest.raises(RuntimeError, match="eval"):
        layer.interval(*box)  # training mode
    layer.eval()
    set_p(layer, 8.0)
    with pytest.raises(RuntimeError, match="p = inf"):
        layer.interval(*box)
    set_p(layer, math.inf)
    low, high = layer.interval(*box)
    assert low.shape == high.shape == (2, 4, 3, 3)


def test_set_p_reaches_conv_and_linear_layers():
    conv = LpDistConv2d(3, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.Sequential(nn.Identity(), LpDistConv2d(4, 4, 3)), nn.Flatten(), LpDistLinear(4 * 6 * 6, 2))
    assert [type(m) for m in lp_layers(model)] == [LpDistConv2d, LpDistConv2d, LpDistLinear]
    set_p(model, math.inf)
    assert all(math.isinf(layer.p) for layer in lp_layers(model)) and math.isinf(conv.p)
    set_p(model, 16)
    assert all(layer.p == 16.0 and isinstance(layer.p, float) for layer in lp_layers(model))
    with pytest.raises(ValueError, match="p must be"):
        set_p(model, 0.5)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 2)
