"""LiRPABounds: sound margin bounds for every method, l_inf and l2, differentiable for training.

Soundness is checked against the true margins at many points of the box or
ball (uniform, corners, the sphere); bounds may be loose by any amount but
must never exceed a sampled margin by more than float32 rounding (``TOL``).
"""

import importlib.util
import math

import pytest
import torch
from torch import nn

from harness_plugins.lib.lirpa.bounds import METHODS, LiRPABounds, margin_matrix

pytestmark = pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="auto_LiRPA is not installed")


#: Relative slack for float32 rounding in the bounds and the forward pass.
TOL = 1e-5
CLASSES = 4
IMAGE = (2, 4, 4)


class Normalised(nn.Module):
    """``body((x - mean) / std)`` with buffers, as the harness's models normalise inside ``forward``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor([0.4, 0.6]).view(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.3, 0.2]).view(1, 2, 1, 1))

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


def head():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, CLASSES))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, CLASSES))


def conv():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16, CLASSES),
    )


NETS = {
    "head": (head, (6,)),
    "mlp": (mlp, IMAGE),
    "normalised-mlp": (lambda: Normalised(mlp()), IMAGE),
    "normalised-conv": (lambda: Normalised(conv()), IMAGE),
}


@pytest.fixture(scope="module")
def nets():
    """Each net (eval mode, fixed seed) with its bounds, built once."""
    built = {}
    for i, (name, (build, shape)) in enumerate(NETS.items()):
        torch.manual_seed(i)
        net = build().eval()
        built[name] = (net, LiRPABounds(net, torch.zeros(1, *shape)), shape)
    return built


def true_margins(net, x, labels):
    with torch.no_grad():
        z = net(x)
    return z.gather(1, labels[:, None]) - z


def worst_in_box(net, lower, upper, labels, g, rounds=200):
    worst = true_margins(net, lower, labels)
    for i in range(rounds):
        u = torch.rand(lower.shape, generator=g)
        point = torch.where(u < 0.5, lower, upper) if i % 2 else lower + u * (upper - lower)
        worst = torch.minimum(worst, true_margins(net, point, labels))
    return worst


def worst_in_ball(net, center, eps, labels, g, rounds=200):
    worst = true_margins(net, center, labels)
    for i in range(rounds):
        d = torch.randn(center.shape, generator=g)
        d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (d.dim() - 1)) * eps
        if i % 2:  # inside the ball as well as on the sphere
            d = d * torch.rand(len(d), *[1] * (d.dim() - 1), generator=g)
        worst = torch.minimum(worst, true_margins(net, center + d, labels))
    return worst


def assert_sound(bound, worst):
    assert bound.shape == worst.shape
    excess = bound - worst - TOL * (1 + worst.abs())
    assert bool((excess <= 0).all()), f"a bound exceeds a sampled margin by {excess.max().item():.3g}"


def sample(shape, n, g, name):
    if name == "head":  # features of any scale, as a dist net gives its head
        center = 4 * torch.randn(n, *shape, generator=g)
        radius = torch.rand(n, *shape, generator=g)
        return center - radius, center + radius
    x = torch.rand(n, *shape, generator=g)
    return (x - 0.08).clamp(0, 1), (x + 0.08).clamp(0, 1)


def test_margin_matrix():
    labels = torch.tensor([0, 2])
    C = margin_matrix(labels, 3)
    assert C.shape == (2, 3, 3)
    assert C[0].tolist() == [[0, 0, 0], [1, -1, 0], [1, 0, -1]]
    assert C[1].tolist() == [[-1, 0, 1], [0, -1, 1], [0, 0, 0]]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NETS)
def test_linf_bounds_are_sound(nets, name, method):
    net, bounds, shape = nets[name]
    g = torch.Generator().manual_seed(1)
    lower, upper = sample(shape, 32, g, name)
    labels = torch.randint(0, CLASSES, (32,), generator=g)
    bound = bounds.margins(lower, upper, labels, method)
    assert bound.gather(1, labels[:, None]).eq(0).all()
    assert_sound(bound, worst_in_box(net, lower, upper, labels, g))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NETS)
def test_l2_bounds_are_sound(nets, name, method):
    net, bounds, shape = nets[name]
    g = torch.Generator().manual_seed(2)
    center = 4 * torch.randn(32, *shape, generator=g) if name == "head" else torch.rand(32, *shape, generator=g)
    labels = torch.randint(0, CLASSES, (32,), generator=g)
    eps = 0.5
    bound = bounds.margins_l2(center, eps, labels, method)
    assert bound.gather(1, labels[:, None]).eq(0).all()
    assert_sound(bound, worst_in_ball(net, center, eps, labels, g))


def test_l2_balls_go_to_auto_lirpa_only_where_its_intervals_carry_them(nets):
    """Its l2 intervals are points after anything but a linear or conv layer: normalisation falls back to the box."""
    assert {name: bounds.l2_native for name, (_, bounds, _) in nets.items()} == {
        "head": True, "mlp": True, "normalised-mlp": False, "normalised-conv": False,
    }


@pytest.mark.parametrize("method", METHODS)
def test_bounds_at_a_point_are_the_margins(nets, method):
    net, bounds, shape = nets["normalised-conv"]
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(8) % CLASSES
    assert torch.allclose(bounds.margins(x, x, labels, method), true_margins(net, x, labels), atol=1e-4)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_gradients_reach_the_modules_parameters(nets, method):
    net, bounds, _ = nets["head"]
    lower = torch.randn(16, 6, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(16) % CLASSES
    loss = nn.functional.cross_entropy(-bounds.margins(lower, lower + 0.5, labels, method), labels)
    loss.backward()
    try:
        for parameter in net.parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    finally:
        net.zero_grad(set_to_none=True)


def test_parameters_keep_their_requires_grad(nets):
    """auto_LiRPA sets requires_grad from its train/eval mode on the parameters it shares; we keep the module's."""
    net, bounds, _ = nets["head"]
    frozen = net[0].weight
    frozen.requires_grad_(False)
    try:
        lower, labels = torch.randn(4, 6), torch.arange(4)
        for method in METHODS:
            bounds.margins(lower, lower + 0.5, labels, method).sum().backward()
            assert frozen.grad is None and [p.requires_grad for p in net.parameters()] == [False, True, True, True]
    finally:
        frozen.requires_grad_(True)
        net.zero_grad(set_to_none=True)


def test_building_leaves_the_modules_mode_and_statistics_alone():
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, CLASSES))
    net.train()
    with torch.no_grad():
        net(torch.rand(16, *IMAGE))  # non-trivial running statistics
    net.eval()
    running = net[2].running_mean.clone()
    bounds = LiRPABounds(net, torch.rand(4, *IMAGE))
    assert not net.training and not any(m.training for m in net.modules())
    assert torch.equal(net[2].running_mean, running)
    x = torch.rand(8, *IMAGE)
    labels = torch.arange(8) % CLASSES
    assert torch.allclose(bounds.margins(x, x, labels, "crown"), true_margins(net, x, labels), atol=1e-4)


def test_an_unknown_method_is_refused(nets):
    _, bounds, shape = nets["head"]
    with pytest.raises(ValueError, match="unknown bound method 'alpha-crown'; valid: ibp, crown-ibp, crown"):
        bounds.margins(torch.zeros(1, *shape), torch.ones(1, *shape), torch.tensor([0]), "alpha-crown")


def test_the_centre_is_the_boxs_midpoint_by_default(nets):
    _, bounds, shape = nets["head"]
    lower, labels = torch.randn(4, *shape), torch.arange(4)
    upper = lower + 1
    for method in METHODS:
        given = bounds.margins(lower, upper, labels, method, center=lower + 0.25)
        assert torch.allclose(bounds.margins(lower, upper, labels, method), given, atol=1e-5)
    assert math.isfinite(given.sum().item())
