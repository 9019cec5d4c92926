import math

import pytest
import torch

from harness import ThreatModel
from harness.data import DatasetInfo
from harness.scaffold import Step
from harness.train import TrainContext, TrainData
from harness_plugins.lib.lpdist import lp_layers, set_p
from harness_plugins.lib.v1_recipe import (
    V1State,
    decoupled_weight_decay_,
    hinge_mix,
    lp_decay_direction,
    margins_to_label,
)
from harness_plugins.linf_v1.trainer import LinfV1Options, LinfV1Trainer
from harness_plugins.lpdist.models import LinfDistNet, LinfDistNetOptions

TINY = DatasetInfo(name="tiny", num_classes=3, shape=(1, 2, 2), mean=(0.5,), std=0.25)


def v1_trainer(**options) -> LinfV1Trainer:
    """A trainer as in a run whose eps_train is 1 (in normalised units)."""
    trainer = LinfV1Trainer(LinfV1Options(**options))
    trainer.state = V1State(eps_train=1.0)
    return trainer


def at(trainer: LinfV1Trainer, t: float, steps: int = 1000) -> dict[str, float]:
    """The trainer's scheduled values at progress ``t`` (a multiple of 1/steps)."""
    epoch = math.floor(t)
    return trainer.schedule(Step(epoch, round((t - epoch) * steps), steps, trainer.options.epochs))


def test_schedule_follows_the_v1_code():
    s = v1_trainer(epochs=400, p_start_epoch=50, p_end_epoch=350, p_start=8, p_end=1000, lr=0.02, eps_warmup_epochs=50)
    assert at(s, 0)["p"] == 8 and at(s, 49.99)["p"] == 8
    assert at(s, 200)["p"] == pytest.approx(math.sqrt(8 * 1000))
    assert at(s, 350)["p"] == math.inf and at(s, 399)["p"] == math.inf
    # lr constant while p = 8, then cosine to 0 at T.
    assert at(s, 0)["lr"] == 0.02 and at(s, 49.9)["lr"] == 0.02
    assert at(s, 225)["lr"] == pytest.approx(0.01) and at(s, 400)["lr"] == pytest.approx(0)
    assert at(s, 0)["eps_train"] == 0 and at(s, 25)["eps_train"] == 0.5 and at(s, 60)["eps_train"] == 1
    no_warmup = v1_trainer(epochs=400, p_start_epoch=50, p_end_epoch=350, eps_warmup_epochs=0)
    assert at(no_warmup, 0)["eps_train"] == 1  # eps_train from the first step


def test_an_empty_relaxation_is_at_infinity_from_the_first_step():
    # The v1 code divides by zero when e1 = e3; the harness gives it the v2 code's meaning (p = ∞ at once).
    s = v1_trainer(epochs=10, p_start_epoch=4, p_end_epoch=4)
    assert all(at(s, t)["p"] == math.inf for t in (0, 3.999, 4, 9))
    assert at(s, 3.999)["lr"] == 0.02 and at(s, 7)["lr"] == pytest.approx(0.01)  # the lr is still constant until e1


@pytest.mark.parametrize("p", [2.0, 8.0, 37.5, 1000.0])
def test_lp_decay_is_the_gradient_of_half_the_squared_norm(p):
    rows = torch.randn(5, 7, dtype=torch.float64) * 3
    rows[0, 2] = -10.0  # the identity init's large entry
    # The direction is 1-homogeneous: compute the autograd reference on rows scaled to max 1,
    # where |w|^p cannot overflow even at p = 1000.
    scale = rows.abs().amax(1, keepdim=True)
    w = (rows / scale).requires_grad_(True)
    (0.5 * w.norm(p=p, dim=1).pow(2)).sum().backward()
    assert torch.allclose(lp_decay_direction(rows, p), w.grad * scale, rtol=1e-9, atol=1e-12)


def test_lp_decay_stays_finite_where_the_plain_formula_overflows():
    rows = torch.full((2, 4), 20.0)
    assert math.isinf((rows.abs() ** 1000).sum().item())
    direction = lp_decay_direction(rows, 1000.0)
    assert torch.isfinite(direction).all()
    # all entries tie: each gets (1/4^(1/1000))^998 · w ≈ 0.9972 · w
    assert torch.allclose(direction, rows * 4 ** (-998 / 1000))


def test_lp_decay_at_infinity_decays_only_the_largest_entry():
    rows = torch.tensor([[1.0, -5.0, 3.0], [2.0, 2.0, -1.0]])
    assert torch.equal(lp_decay_direction(rows, math.inf), torch.tensor([[0.0, -5.0, 0.0], [2.0, 0.0, 0.0]]))


def test_weight_decay_uses_each_layers_p_and_plain_decay_elsewhere():
    net = LinfDistNet(TINY, LinfDistNetOptions(depth=3, width=6))
    set_p(net, 8.0)
    with torch.no_grad():
        net.layers[-1].bias.fill_(2.0)
    before = [layer.weight.clone() for layer in lp_layers(net)]
    decoupled_weight_decay_(net, lr=0.1, weight_decay=0.5)
    for layer, w in zip(lp_layers(net), before):
        assert torch.allclose(layer.weight, w - 0.05 * lp_decay_direction(w, 8.0), atol=1e-6)
    assert torch.allclose(net.layers[-1].bias, torch.full((3,), 2.0 * (1 - 0.05)))


def test_hinge_mix_matches_the_code():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 5.0, 0.0]])
    labels = torch.tensor([0, 0])
    worse = (margins_to_label(logits, labels) + 1.0).scatter(1, labels[:, None], 0.0)  # θ = 1
    # row 0: worse = [0, -1, 0.5] → relu [0, 0, 0.5]; row 1: [0, 6, 1] → [0, 6, 1]
    assert hinge_mix(worse, 1.0).item() == pytest.approx((0.5 + 6) / 2)
    assert hinge_mix(worse, 0.0).item() == pytest.approx((0.5 + 7) / 6)
    assert hinge_mix(worse, 0.75).item() == pytest.approx(0.75 * 3.25 + 0.25 * 7.5 / 6)


def test_fit_runs_the_schedule_and_ends_at_infinity_in_eval(monkeypatch):
    seen = []
    real = LinfV1Trainer.loss

    def spy(self, model, images, labels, values):
        seen.append((values["eps_train"], lp_layers(model).__next__().p))
        return real(self, model, images, labels, values)

    monkeypatch.setattr(LinfV1Trainer, "loss", spy)
    net = LinfDistNet(TINY, LinfDistNetOptions(depth=3, width=8))
    data = TrainData(TINY, torch.randint(0, 256, (64, 1, 2, 2), dtype=torch.uint8), torch.randint(0, 3, (64,)))
    ctx = TrainContext(ThreatModel("inf", 0.1), torch.device("cpu"), 0, torch.Generator().manual_seed(0))
    options = LinfV1Options(epochs=4, p_start_epoch=1, p_end_epoch=3, eps_warmup_epochs=2, batch_size=16, crop_padding=0)
    weights = [layer.weight.clone() for layer in lp_layers(net)]
    LinfV1Trainer(options).fit(net, data, ctx)
    ps = [p for _, p in seen]  # 4 steps an epoch
    assert ps[:5] == [8.0] * 5 and 8 < ps[5] < ps[11] < 1000 and all(math.isinf(p) for p in ps[12:])
    eps_train = 1.5 * 0.1 / 0.25
    assert seen[0][0] == 0 and seen[4][0] == pytest.approx(eps_train / 2) and seen[-1][0] == pytest.approx(eps_train)
    assert not net.training and all(math.isinf(layer.p) for layer in lp_layers(net))
    assert any(not torch.equal(w, layer.weight) for w, layer in zip(weights, lp_layers(net)))


def test_presets_follow_table_6():
    from harness.testing import make_catalog

    presets = {(p.dataset, p.name): p for p in make_catalog().presets_for("linf_v1")}
    theta = {("mnist", "paper-0.3"): 0.9, ("fashion-mnist", "paper-0.1"): 0.45, ("cifar10", "paper-8/255"): 80 / 255}
    for key, expected in theta.items():
        preset = presets[key]
        o = LinfV1Options(**preset.trainer_options)
        assert 2 * o.eps_train_ratio * preset.eps == pytest.approx(expected)  # θ = 2·eps_train
        assert (o.lr, o.weight_decay, o.batch_size, o.p_start, o.p_end) == (0.02, 5e-3, 512, 8, 1000)
    assert LinfV1Options(**presets[("cifar10", "paper-8/255")].trainer_options).epochs == 800
    assert presets[("cifar10", "paper-8/255")].model_options == {"depth": 6, "width": 5120, "identity_value": 10.0}
