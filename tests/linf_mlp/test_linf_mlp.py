import math

import pytest
import torch

from harness import FeatureHead, ThreatModel, UsageError
from harness.data import DatasetInfo
from harness.train import TrainContext, TrainData
from harness_plugins.lib.lpdist import LpDistConv2d, lp_layers, set_p
from harness_plugins.linf_mlp.model import LinfDistNetMLP, LinfDistNetMLPOptions
from harness_plugins.linf_mlp.trainer import LinfMLPOptions, LinfMLPTrainer

TINY = DatasetInfo(name="tiny", num_classes=3, shape=(1, 6, 6), mean=(0.5,), std=0.25)
TINY_RGB = DatasetInfo(name="tiny-rgb", num_classes=4, shape=(3, 8, 8), mean=(0.4, 0.5, 0.6), std=0.2)


def eval_at_infinity(net):
    set_p(net, math.inf)
    return net.eval()


def test_fully_connected_backbone_and_head_shapes():
    net = LinfDistNetMLP(TINY, LinfDistNetMLPOptions(depth=3, width=16, hidden=8))
    assert [(m.in_features, m.out_features) for m in net.dense] == [(36, 16), (16, 16), (16, 16)]
    assert all(m.mean_shift and m.bias is None for m in net.dense) and len(net.conv) == 0
    assert [type(m).__name__ for m in net.head] == ["Linear", "Tanh", "Linear"]
    assert (net.head[0].in_features, net.head[0].out_features, net.head[2].out_features) == (16, 8, 3)
    # The code's parametrisation, folded into the init: N(0, 1/fan_in), zero bias.
    big = LinfDistNetMLP(TINY, LinfDistNetMLPOptions(depth=1, width=4096, hidden=512))
    assert big.head[0].weight.std().item() == pytest.approx(1 / 64, rel=0.05) and big.head[0].bias.abs().max() == 0
    assert net(torch.rand(5, 1, 6, 6)).shape == (5, 3)


def test_conv_backbone_follows_table_8_scaled():
    net = LinfDistNetMLP(TINY_RGB, LinfDistNetMLPOptions(backbone="conv", width=12, hidden=8, channel_scale=1 / 32))
    convs = list(net.conv)
    assert [(c.weight.shape[0], c.weight.shape[1], c.stride) for c in convs] == [(4, 3, 1), (4, 4, 1), (8, 4, 2), (8, 8, 1), (8, 8, 1)]
    assert all(isinstance(c, LpDistConv2d) and c.mean_shift for c in convs)
    assert [(m.in_features, m.out_features) for m in net.dense] == [(8 * 4 * 4, 12)]
    assert net(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_input_size_centre_crops_larger_images_only():
    info = DatasetInfo(name="t", num_classes=2, shape=(1, 8, 8), mean=(0.0,), std=1.0)
    net = eval_at_infinity(LinfDistNetMLP(info, LinfDistNetMLPOptions(depth=1, width=4, hidden=4, input_size=6)))
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(net.features(x), net.features(x[..., 1:7, 1:7]))  # test time: centre crop
    with pytest.raises(UsageError, match="input_size 9 is larger than the 8×8 images"):
        LinfDistNetMLP(info, LinfDistNetMLPOptions(depth=1, width=4, hidden=4, input_size=9))


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_feature_bounds_contain_the_features_of_points_in_the_clipped_box(backbone):
    torch.manual_seed(0)
    info = TINY_RGB
    net = LinfDistNetMLP(info, LinfDistNetMLPOptions(backbone=backbone, depth=2, width=10, hidden=6, channel_scale=1 / 32))
    net.train()
    set_p(net, math.inf)
    net(torch.rand(32, 3, 8, 8))  # give the running means some value
    net.eval()
    assert isinstance(net, FeatureHead) and net.supports_feature_bounds("inf")
    x = torch.rand(4, 3, 8, 8)
    x[:, :, :2] = 0.0  # saturated pixels: the box is clipped there
    eps = 0.05
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    low, high = net.feature_bounds(lower, upper)
    for _ in range(50):
        point = lower + (upper - lower) * torch.rand_like(x)
        f = net.features(point)
        assert bool((low <= f + 1e-5).all() and (f <= high + 1e-5).all())
    corners = torch.where(torch.rand_like(x) < 0.5, lower, upper)
    f = net.features(corners)
    assert bool((low <= f + 1e-5).all() and (f <= high + 1e-5).all())


def test_feature_bounds_need_eval_infinity_and_l_inf():
    net = LinfDistNetMLP(TINY, LinfDistNetMLPOptions(depth=2, width=8, hidden=4))
    set_p(net, 8.0)
    assert not net.eval().supports_feature_bounds("inf")
    set_p(net, math.inf)
    assert net.supports_feature_bounds("inf") and not net.supports_feature_bounds("2")
    assert not net.train().supports_feature_bounds("inf")


def test_head_weights_get_lr_over_sqrt_fan_in():
    net = LinfDistNetMLP(TINY, LinfDistNetMLPOptions(depth=2, width=16, hidden=9))
    groups = LinfMLPTrainer(LinfMLPOptions()).parameter_groups(net)
    scales = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert len(scales) == sum(1 for _ in net.parameters())
    assert scales[id(net.head[0].weight)] == pytest.approx(1 / 4) and scales[id(net.head[2].weight)] == pytest.approx(1 / 3)
    assert scales[id(net.head[0].bias)] == 1 and all(scales[id(m.weight)] == 1 for m in lp_layers(net))


def _fit(options, info=TINY, n=96):
    net = LinfDistNetMLP(info, LinfDistNetMLPOptions(depth=2, width=16, hidden=8))
    g = torch.Generator().manual_seed(0)
    c, h, w = info.shape
    data = TrainData(info, torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8), torch.randint(0, info.num_classes, (n,)))
    ctx = TrainContext(ThreatModel("inf", 0.1), torch.device("cpu"), 0, g)
    LinfMLPTrainer(options).fit(net, data, ctx)
    return net


@pytest.mark.parametrize("bound", ["ibp", "crown-ibp"])
def test_fit_trains_through_lirpa_bounds_and_ends_at_infinity(bound, monkeypatch):
    from harness_plugins.lib.lirpa.bounds import LiRPABounds

    calls = []
    real = LiRPABounds.margins

    def spy(self, lower, upper, labels, method, center=None):
        calls.append(method)
        assert torch.allclose(upper - lower, torch.full_like(lower, (upper - lower)[0, 0].item()))  # a cube
        return real(self, lower, upper, labels, method, center=center)

    monkeypatch.setattr(LiRPABounds, "margins", spy)
    options = LinfMLPOptions(epochs=2, p_start_epoch=0.5, p_end_epoch=1.5, eps_warmup_epochs=1, batch_size=32, bound=bound)
    net = _fit(options)
    assert not net.training and all(math.isinf(m.p) for m in lp_layers(net))
    assert "ibp" in calls and (("crown-ibp" in calls) == (bound == "crown-ibp"))
    if bound == "crown-ibp":  # β decays to 0 at the end of the warm-up: CROWN-IBP only during it
        assert calls.count("crown-ibp") < calls.count("ibp")


def test_presets_follow_table_6():
    from harness.testing import make_catalog

    presets = {(p.dataset, p.name): p for p in make_catalog().presets_for("linf_mlp")}
    eps_train = {("mnist", "paper-0.3"): 0.35, ("fashion-mnist", "paper-0.1"): 0.11, ("cifar10", "paper-8/255"): 8.8 / 255,
                 ("cifar10", "paper-conv-8/255"): 8.8 / 255, ("tinyimagenet", "paper-1/255"): 0.005}
    for key, expected in eps_train.items():
        preset = presets[key]
        o = LinfMLPOptions(**preset.trainer_options)
        assert o.eps_train_ratio * preset.eps == pytest.approx(expected)
        assert (o.weight_decay, o.batch_size, o.bound) == (5e-3, 512, "ibp")
        # Table 6: eps warmed up over the first e1 epochs (TinyImageNet's command: 200)
        assert o.eps_warmup_epochs == (200 if preset.dataset == "tinyimagenet" else o.p_start_epoch)
        assert LinfDistNetMLPOptions(**preset.model_options).hidden == (256 if preset.dataset == "mnist" else 512)  # the code's
    tiny = presets[("tinyimagenet", "paper-1/255")]
    assert tiny.trainer_options["lr"] == 0.04 and tiny.trainer_options["crop_size"] == 56 and tiny.model_options["input_size"] == 56
    conv = LinfDistNetMLPOptions(**presets[("cifar10", "paper-conv-8/255")].model_options)
    assert (conv.backbone, conv.channel_scale, conv.width) == ("conv", 0.75, 1024)  # ConvFeature(width=3, hidden=1024)
    assert presets[("mnist", "paper-0.3")].trainer_options["kappa"] == 0.5 and presets[("cifar10", "paper-8/255")].trainer_options["kappa"] == 1.0


def test_a_tiny_run_is_certified_by_every_lirpa_certifier(harness_cli, shared_data):
    """The whole path: train the hybrid, certify its head with ibp / crown-ibp / crown, store per-sample verdicts."""
    import json

    r = harness_cli("run", "--plugin", "linf_mlp", "--dataset", "mnist", "--preset", "quick", "--eps", "0.05",
                    "--epochs", "2", "--train-samples", "3000", "--eval-samples", "100", "--set", "model.width=64",
                    "--set", "model.depth=2", "--set", "model.hidden=32", "--set", "attacker.pgd.steps=10", "--attack", "pgd",
                    "--data-dir", str(shared_data), "--no-save")
    assert r.code == 0, r.err
    shown = json.loads(harness_cli("show", "1", "--format", "json", "--samples", "100").out)
    r = shown["result"]
    assert {c["name"] for c in r["certifiers"]} == {"ibp", "crown-ibp", "crown"}
    # not for a hybrid, and harness show says why
    assert "interval_bounds" in r["not_applicable"]["interval"] and "lipschitz_constant" in r["not_applicable"]["lipschitz-margin"]
    for s in shown["samples"]:
        verdicts = {name: v[0] for name, v in s["certificates"].items()}
        assert verdicts["ibp"] <= verdicts["crown"] and verdicts["ibp"] <= verdicts["crown-ibp"]  # never looser
        if any(verdicts.values()):
            assert s["prediction"] == s["label"] and s["attacks"]["pgd"]
    out = harness_cli("leaderboard", "--dataset", "mnist", "--eps", "0.05").out
    assert "linf_mlp" in out and "crown" in out


def test_schedule_warms_eps_up_and_moves_the_crown_ibp_weight_with_it():
    from harness.scaffold import Step
    from harness_plugins.lib.v1_recipe import V1State

    def values(bound, epoch, index):
        trainer = LinfMLPTrainer(LinfMLPOptions(epochs=10, p_start_epoch=2, p_end_epoch=8, eps_warmup_epochs=4, bound=bound))
        trainer.state = V1State(eps_train=0.5)
        return trainer.schedule(Step(epoch, index, 4, 10))

    assert "beta" not in values("ibp", 0, 0)
    assert [values("crown-ibp", e, i)["beta"] for e, i in ((0, 0), (1, 0), (2, 0), (4, 0), (9, 3))] == [1.0, 0.75, 0.5, 0.0, 0.0]
    assert [values("ibp", e, i)["eps_train"] for e, i in ((0, 0), (1, 2), (4, 0), (9, 3))] == [0.0, 0.5 * 1.5 / 4, 0.5, 0.5]
    assert values("ibp", 1, 3)["p"] == 8 and values("ibp", 8, 0)["p"] == math.inf
