"""LpDistLinear: identity init, mean shift, interval bounds, set_p."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness_plugins.lib.lpdist import LpDistLinear, lp_dist, lp_layers, set_p


def test_identity_init_where_in_le_out():
    torch.manual_seed(0)
    layer = LpDistLinear(3, 7)
    units = torch.arange(7)
    assert (layer.weight[units, units % 3] == -10.0).all()
    assert (layer.weight == -10.0).sum() == 7  # nothing else is touched
    assert LpDistLinear(5, 5).weight.diagonal().eq(-10.0).all()  # in == out applies
    assert (LpDistLinear(2, 4, identity_value=2.5).weight[units[:4], units[:4] % 2] == -2.5).all()
    assert not (LpDistLinear(7, 3).weight == -10.0).any()  # in > out: plain N(0, 1)
    assert not (LpDistLinear(3, 7, identity_value=None).weight == -10.0).any()


def test_defaults_and_weight_distribution():
    torch.manual_seed(0)
    layer = LpDistLinear(300, 200, bias=True)
    assert layer.p == 8.0 and layer.running_mean is None and (layer.bias == 0).all()
    assert abs(layer.weight.std().item() - 1.0) < 0.02 and abs(layer.weight.mean().item()) < 0.02
    assert "running_mean" not in layer.state_dict()
    assert "running_mean" in LpDistLinear(3, 4, mean_shift=True).state_dict()


def test_forward_is_lp_dist_plus_bias():
    torch.manual_seed(0)
    layer = LpDistLinear(6, 4, bias=True)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    x = torch.randn(5, 6)
    for p in (2.0, 8.0, math.inf):
        set_p(layer, p)
        torch.testing.assert_close(layer(x), lp_dist(x, layer.weight, p) + layer.bias)


def test_mean_shift_in_training_and_eval():
    torch.manual_seed(0)
    layer = LpDistLinear(6, 4, mean_shift=True, momentum=0.3, bias=True)
    with torch.no_grad():
        layer.bias.fill_(0.25)
    x1, x2, x3 = torch.randn(8, 6), torch.randn(8, 6), torch.randn(8, 6)
    d1, d2 = lp_dist(x1, layer.weight, 8.0).detach(), lp_dist(x2, layer.weight, 8.0).detach()

    layer.train()
    y1 = layer(x1)
    torch.testing.assert_close(y1, d1 - d1.mean(0) + 0.25)  # order: dist → mean shift → bias
    torch.testing.assert_close(layer.running_mean, 0.3 * d1.mean(0))
    layer(x2)
    torch.testing.assert_close(layer.running_mean, 0.7 * 0.3 * d1.mean(0) + 0.3 * d2.mean(0))
    assert not layer.running_mean.requires_grad

    # The batch mean is part of the graph: every unit's outputs sum to n·bias, so the weights get no gradient.
    layer.weight.grad = None
    layer(x3).sum().backward()
    assert layer.weight.grad.abs().max() < 1e-4 and layer.bias.grad.eq(8.0).all()

    layer.eval()
    running = layer.running_mean.clone()
    d3 = lp_dist(x3, layer.weight, 8.0).detach()
    torch.testing.assert_close(layer(x3), d3 - running + 0.25)
    assert torch.equal(layer.running_mean, running)  # eval does not update it


def test_interval_contains_the_eval_outputs():
    torch.manual_seed(0)
    layer = LpDistLinear(5, 6, mean_shift=True, bias=True)
    layer(torch.randn(16, 5))  # a non-zero running mean
    with torch.no_grad():
        layer.bias.copy_(torch.randn(6))
    layer.eval()
    set_p(layer, math.inf)
    centre = torch.randn(3, 5)
    radius = torch.rand(3, 5) * 0.5
    radius[0, :2] = 0
    lower, upper = centre - radius, centre + radius
    low, high = layer.interval(lower, upper)
    assert low.shape == high.shape == (3, 6) and not low.requires_grad
    t = torch.rand(1000, 3, 5)
    points = torch.minimum(torch.maximum(lower + t * (upper - lower), lower), upper)
    with torch.no_grad():
        out = layer(points.reshape(-1, 5)).reshape(1000, 3, 6)
    slack = 1e-5  # the shift and bias are added in float32 on both sides, possibly in another order
    assert (out >= low - slack).all() and (out <= high + slack).all()
    # At the box centre with zero radius the bounds collapse to the output itself.
    low0, high0 = layer.interval(centre, centre)
    with torch.no_grad():
        torch.testing.assert_close(low0, layer(centre))
        torch.testing.assert_close(high0, layer(centre))


def test_interval_needs_eval_mode_and_p_inf():
    layer = LpDistLinear(3, 4, mean_shift=True)
    box = torch.zeros(2, 3), torch.ones(2, 3)
    set_p(layer, math.inf)
    with pytest.raises(RuntimeError, match="eval"):
        layer.interval(*box)  # training mode
    layer.eval()
    set_p(layer, 8.0)
    with pytest.raises(RuntimeError, match="p = inf"):
        layer.interval(*box)
    set_p(layer, math.inf)
    layer.interval(*box)


def test_set_p_reaches_nested_layers():
    inner = LpDistLinear(4, 4)
    model = nn.Sequential(LpDistLinear(3, 4), nn.Sequential(nn.Identity(), inner), nn.ModuleList([LpDistLinear(4, 2)]))
    assert len(list(lp_layers(model))) == 3
    set_p(model, math.inf)
    assert all(math.isinf(layer.p) for layer in lp_layers(model)) and math.isinf(inner.p)
    set_p(model, 16)
    assert all(layer.p == 16.0 and isinstance(layer.p, float) for layer in lp_layers(model))
    with pytest.raises(ValueError, match="p must be"):
        set_p(model, 0.5)


def test_p_is_in_the_state_dict_and_a_loaded_p_is_checked():
    from harness_plugins.lib.lpdist import LpDistConv2d

    for layer in (LpDistLinear(3, 4), LpDistConv2d(1, 2, 3)):
        set_p(layer, math.inf)
        state = layer.state_dict()
        assert state["_extra_state"] == {"p": math.inf}
        fresh = type(layer)(*((3, 4) if isinstance(layer, LpDistLinear) else (1, 2, 3)))
        assert fresh.p == 8.0
        fresh.load_state_dict(state)
        assert fresh.p == math.inf
        with pytest.raises(ValueError, match=r"l_p-dist layer state \{'p': 0.5\} has no p >= 1"):
            fresh.load_state_dict({**state, "_extra_state": {"p": 0.5}})
