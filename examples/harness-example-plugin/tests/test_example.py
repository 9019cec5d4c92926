"""The example plugin's own tests, written on the fixtures and checks harness ships for plugin authors.

``harness_catalog``, ``harness_cli`` and ``harness_tiny_data`` come from
:mod:`harness.testing` through its pytest entry point: installing harness is
enough. Each catalog and CLI run sees the built-in plugins and the plugins a
test passes, nothing else that is installed.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import harness_example
from harness import ThreatModel, UsageError
from harness.testing import check_attacker_in_ball, check_certifier_sound, check_resumes, make_catalog, tiny_info, train_tiny
from harness_example import bounds
from harness_example.attacks import FGSM
from harness_example.certifiers import GlobalLipschitz
from harness_example.models import ReluMLP, ReluMLPOptions
from harness_example.trainer import LMTOptions, LMTTrainer

EPS = 0.1
#: The plugin's name when a test passes the module itself (installed, its entry point says "example").
PLUGIN = "harness_example"


def test_the_catalog_has_every_component_preset_and_reported_row_and_no_problems(harness_catalog):
    catalog = harness_catalog(harness_example)
    assert catalog.problems == []
    registered = {(entry.kind, entry.key) for entry in catalog.entries_of(PLUGIN)}
    assert registered == {("model", "relu_mlp"), ("trainer", "lmt"), ("attacker", "fgsm"), ("certifier", "global-lipschitz")}
    assert [(p.trainer, p.dataset, p.name) for p in catalog.presets if p.plugin == PLUGIN] == [("lmt", "mnist", "quick")]
    assert [(r.trainer, r.dataset) for r in catalog.reported if r.plugin == PLUGIN] == [("lmt", "mnist")]


# -- the bound both components rest on ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_the_bound_holds_between_random_pairs_of_inputs(norm):
    torch.manual_seed(0)
    model = ReluMLP(ReluMLPOptions(width=16, depth=2)).build(tiny_info())
    x = torch.rand(256, 1, 4, 4)
    x2 = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        lipschitz = bounds.lipschitz_bound(model, norm)
        change = (model(x) - model(x2)).norm(p=float(norm), dim=1)
    distance = (x - x2).flatten(1).norm(p=float(norm), dim=1)
    assert bool((change <= lipschitz * distance * (1 + 1e-5)).all())


def test_the_l_inf_bound_is_exact_for_one_linear_layer():
    torch.manual_seed(0)
    model = ReluMLP(ReluMLPOptions(depth=0)).build(tiny_info())
    weight = model[1].weight.detach()
    k = int(weight.abs().sum(1).argmax())
    x = torch.full((1, 1, 4, 4), 0.5)
    step = 0.1 * weight[k].sign().view(1, 1, 4, 4)  # the worst direction for logit k
    with torch.no_grad():
        change = (model(x + step) - model(x))[0, k].abs()
        assert torch.isclose(change, 0.1 * bounds.lipschitz_bound(model, "inf"), rtol=1e-5)


# -- the certifier and the attacker on a model the trainer trained -------------------------------------------------


@pytest.fixture(scope="module", params=["inf", "2"])
def trained(request):
    threat = ThreatModel(request.param, EPS)
    trainer = LMTTrainer(LMTOptions(epochs=20, batch_size=32, warmup_epochs=5.0))
    return threat, train_tiny(trainer, ReluMLP(ReluMLPOptions(width=32)), threat)


def test_the_trained_model_is_accurate_and_in_eval_mode(trained):
    _, run = trained
    assert not run.model.training
    with torch.no_grad():
        assert (run.model(run.images).argmax(1) == run.labels).float().mean() > 0.95


def test_the_certifier_keeps_its_promise(trained):
    threat, run = trained
    pgd = make_catalog().get("attacker", "pgd" if threat.norm == "inf" else "pgd-l2")()  # the built-in attack, by name
    certified = check_certifier_sound(GlobalLipschitz(), run.model, run.images, run.labels, threat, attackers=[FGSM(), pgd],
                                      min_certified=0.5)
    assert certified.any()


def test_fgsm_stays_in_the_ball_and_attacks(trained):
    threat, run = trained
    check_attacker_in_ball(FGSM(), run.model, run.images, run.labels, threat)
    strong = ThreatModel(threat.norm, 0.5 if threat.norm == "inf" else 2.0)  # beyond what the model resists
    adversarial = check_attacker_in_ball(FGSM(), run.model, run.images, run.labels, strong)
    with torch.no_grad():
        assert (run.model(adversarial).argmax(1) == run.labels).float().mean() < 0.5


def test_the_certifier_says_why_it_does_not_apply():
    certifier, threat = GlobalLipschitz(), ThreatModel("inf", EPS)
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    assert certifier.not_applicable_reason(tanh, threat) == "layer 2 is a Tanh; only Flatten, Linear and ReLU are bounded"
    assert certifier.not_applicable_reason(nn.Linear(16, 3), threat) == "Linear is not a plain nn.Sequential"


def test_the_trainer_refuses_a_model_it_cannot_bound_in_one_line():
    class Tanh(ReluMLP):
        def build(self, data):
            return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, 8), nn.Tanh(), nn.Linear(8, data.num_classes))

    with pytest.raises(UsageError, match=r"^trainer 'lmt' needs a ReLU MLP: layer 2 is a Tanh; .*; train --model relu_mlp$"):
        train_tiny(LMTTrainer(), Tanh(), ThreatModel("inf", EPS))


# -- end to end, through the command line -------------------------------------------------------------------------


def test_a_tiny_run_end_to_end(harness_cli, harness_tiny_data):
    plugins = [harness_example, harness_tiny_data]
    r = harness_cli("run", "--plugin", "lmt", "--dataset", "tiny", "--no-preset", "--eps", str(EPS), "--no-save",
                    "--set", "model.width=32", "--set", "trainer.epochs=20", "--set", "trainer.batch_size=32",
                    "--set", "trainer.warmup_epochs=5", plugins=plugins)
    assert r.code == 0, r.err
    result = json.loads(harness_cli("show", "1", "--format", "json", plugins=plugins).out)["result"]
    attacks = {a["name"]: a for a in result["attacks"]}
    certifiers = {c["name"]: c for c in result["certifiers"]}
    assert {"fgsm", "pgd"} <= set(attacks) and all(a["error"] is None for a in attacks.values())
    # Its own certifier and the built-in ones that read a plain ReLU MLP all ran, and none was unsound.
    assert {"global-lipschitz", "liplt", "lipschitz-naive", "ibp", "crown-ibp", "crown"} <= set(certifiers)
    assert all(c["error"] is None for c in certifiers.values())
    assert certifiers["global-lipschitz"]["accuracy"] > 0.5 and result["clean_accuracy"] > 0.95
    # lipschitz-naive's pairwise constants are at most the global c·L, so it certifies at least as much.
    assert certifiers["lipschitz-naive"]["accuracy"] >= certifiers["global-lipschitz"]["accuracy"]
    board = harness_cli("leaderboard", "--dataset", "tiny", plugins=plugins).out
    assert "lmt" in board and "global-lipschitz" in board


def test_the_reported_row_is_on_the_leaderboard(harness_cli, harness_store):
    # harness_store: an empty results.db where harness_cli runs (a read command never creates one)
    board = harness_cli("leaderboard", "--reported", "all", "--dataset", "mnist", plugins=[harness_example]).out
    assert "LMT ReLU MLP (example: its quick preset, measured)" in board


def test_a_stopped_run_resumes_exactly(tmp_path):
    # tiny has 600 training images: 19 steps an epoch at batch 32; stopped at epoch 1's end and in epoch 2
    trainer = lambda: LMTTrainer(LMTOptions(epochs=2, batch_size=32, warmup_epochs=1))  # noqa: E731
    check_resumes(trainer, ReluMLP(ReluMLPOptions(width=32)), ThreatModel("inf", 0.1), tmp_path, stops=[19, 25])
