import math

import pytest
import torch

from harness.data import DatasetInfo
from harness.scaffold import Step
from harness_plugins.lib.lpdist import set_p
from harness_plugins.linf_v2.trainer import LinfV2Options, LinfV2Trainer, clipped_hinge
from harness_plugins.lpdist.models import LinfDistNet, LinfDistNetOptions

MNIST = DatasetInfo(name="mnist", num_classes=10, shape=(1, 28, 28), mean=(0.1307,), std=0.3081)
CIFAR = DatasetInfo(name="cifar10", num_classes=10, shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=0.2009)


def at(trainer: LinfV2Trainer, t: float, steps: int = 1000) -> dict[str, float]:
    """The trainer's scheduled values at progress ``t`` (a multiple of 1/steps)."""
    epoch = math.floor(t)
    return trainer.schedule(Step(epoch, round((t - epoch) * steps), steps, trainer.options.epochs))


def test_schedule_follows_the_paper():
    s = LinfV2Trainer(LinfV2Options(epochs=450, p_start_epoch=25, p_end_epoch=400, lam0=0.05, lam_end=2e-4, lr=0.03))
    assert at(s, 0)["p"] == 8 and at(s, 24.99)["p"] == 8
    assert at(s, 212.5)["p"] == pytest.approx(math.sqrt(8 * 1000))  # exponential: geometric mean half-way
    assert at(s, 399.999)["p"] == pytest.approx(1000, rel=1e-3)
    assert at(s, 400)["p"] == math.inf and at(s, 449)["p"] == math.inf
    assert at(s, 10)["lam"] == 0.05 and at(s, 212.5)["lam"] == pytest.approx(math.sqrt(0.05 * 2e-4))
    assert at(s, 420)["lam"] == pytest.approx(2e-4)
    assert at(s, 0)["lr"] == 0.03 and at(s, 225)["lr"] == pytest.approx(0.015) and at(s, 449.999)["lr"] == pytest.approx(0)


def test_an_empty_relaxation_runs_at_infinity_from_the_first_step_as_the_code():
    # cal_ratio returns 1 when epoch_p_end <= epoch_p_start: p = ∞ and λ = λ_end from the first step.
    s = LinfV2Trainer(LinfV2Options(epochs=10, p_start_epoch=4, p_end_epoch=4, lam0=0.05, lam_end=2e-4))
    for t in (0, 3.999, 4, 9.5):
        assert at(s, t)["p"] == math.inf and at(s, t)["lam"] == 2e-4


def test_clipped_hinge():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 5.0, 0.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    # θ = 1: row 0: max_{j≠y}(z_j − z_y)/θ + 1 = 0.5; row 1: 6 → clipped to 1; row 2: 0 → 0.
    assert clipped_hinge(logits, labels, theta=1.0).item() == pytest.approx((0.5 + 1 + 0) / 3)


def test_paper_models_have_the_logged_parameter_counts():
    # The v2 logs: MNIST depth 5 has 82,708,491 and CIFAR depth 6 has 120,637,451 parameters,
    # counting the trainer's learnable logit scale (one scalar), which lives in the trainer here.
    mnist = LinfDistNet(MNIST, LinfDistNetOptions(depth=5, width=5120))
    assert sum(p.numel() for p in mnist.parameters()) + 1 == 82_708_491
    del mnist
    cifar = LinfDistNet(CIFAR, LinfDistNetOptions(depth=6, width=5120))
    assert sum(p.numel() for p in cifar.parameters()) + 1 == 120_637_451


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    net = LinfDistNet(MNIST, LinfDistNetOptions(depth=4, width=64))
    net.train()
    set_p(net, 8.0)
    for _ in range(3):  # populate the mean-shift running means
        net(torch.rand(32, 1, 28, 28))
    return net


def test_guarantees_hold_only_at_infinity_in_eval(small_net):
    assert small_net.lipschitz_constant("inf") is None and not small_net.supports_interval_bounds()
    set_p(small_net, math.inf)
    assert small_net.lipschitz_constant("inf") is None  # still training mode: batch statistics
    small_net.eval()
    assert small_net.lipschitz_constant("inf") == pytest.approx(1 / 0.3081)
    assert small_net.lipschitz_constant("2") is None
    assert small_net.supports_interval_bounds()


def test_lipschitz_bound_holds_on_random_pairs(small_net):
    set_p(small_net, math.inf)
    small_net.eval()
    L = small_net.lipschitz_constant("inf")
    x = torch.rand(64, 1, 28, 28)
    delta = (torch.rand_like(x) * 2 - 1) * 0.3
    with torch.no_grad():
        change = (small_net(x) - small_net(x + delta)).abs().amax(1)
    assert bool((change <= L * delta.flatten(1).abs().amax(1) + 1e-4).all())


def test_interval_bounds_contain_sampled_points_and_clip_to_the_image_range(small_net):
    set_p(small_net, math.inf)
    small_net.eval()
    x = torch.rand(8, 1, 28, 28)
    x[:, :, :10] = 0  # saturated background, as in MNIST
    lower, upper = (x - 0.3).clamp(0, 1), (x + 0.3).clamp(0, 1)
    low, high = small_net.interval_bounds(lower, upper)
    with torch.no_grad():
        for _ in range(20):
            z = small_net(lower + torch.rand_like(x) * (upper - lower))
            assert bool((low <= z).all() and (z <= high).all())
        corners = small_net(torch.where(torch.rand_like(x) < 0.5, lower, upper))
        assert bool((low <= corners).all() and (corners <= high).all())
    # Clipping to [0, 1] gives bounds at least as tight as the unclipped box.
    low2, high2 = small_net.interval_bounds(x - 0.3, x + 0.3)
    assert bool((low2 <= low + 1e-5).all() and (high <= high2 + 1e-5).all())


def test_fit_uses_the_papers_optimiser_and_a_separate_scale_lr(monkeypatch):
    from harness import ThreatModel
    from harness.train import TrainContext, TrainData
    from harness_plugins.lib.lpdist import lp_layers
    from harness_plugins.linf_v2.trainer import LinfV2Trainer

    made = []
    real_adam = torch.optim.Adam

    def spy(groups, **kw):
        optimizer = real_adam(groups, **kw)
        made.append((kw, optimizer))
        return optimizer

    monkeypatch.setattr(torch.optim, "Adam", spy)
    info = DatasetInfo(name="tiny", num_classes=2, shape=(1, 2, 2), mean=(0.5,), std=0.25)
    net = LinfDistNet(info, LinfDistNetOptions(depth=3, width=8))
    g = torch.Generator().manual_seed(0)
    data = TrainData(info, torch.randint(0, 256, (64, 1, 2, 2), dtype=torch.uint8), torch.randint(0, 2, (64,)))
    ctx = TrainContext(threat=ThreatModel("inf", 0.1), device=torch.device("cpu"), seed=0, generator=g)
    trainer = LinfV2Trainer(LinfV2Options(epochs=2, p_start_epoch=0.5, p_end_epoch=1.5, batch_size=16, lr=0.03))
    trainer.fit(net, data, ctx)
    (kw, optimizer), = made
    assert kw == {"betas": (0.9, 0.99), "eps": 1e-10}
    model_group, scale_group = optimizer.param_groups
    assert len(model_group["params"]) == sum(1 for _ in net.parameters()) and model_group["weight_decay"] == 0
    (scale,) = scale_group["params"]
    assert scale.shape == () and scale_group["lr"] == pytest.approx(model_group["lr"] / 5)
    assert scale is trainer.state.scale and scale.item() != 1.0  # the run's scale is trained
    assert trainer.state.theta == pytest.approx(2 * 1.5 * 0.1 / 0.25)
    assert not net.training and all(math.isinf(layer.p) for layer in lp_layers(net))


def test_a_schedule_that_ends_below_p_100_does_not_switch_to_infinity():
    s = LinfV2Trainer(LinfV2Options(epochs=10, p_start_epoch=1, p_end_epoch=5, p_end=50))
    assert at(s, 6)["p"] == 50
