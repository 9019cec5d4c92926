"""CRM presets follow the code (shared/notes §5.8); a tiny l2 run through the CLI lands on the l2 leaderboard."""

import json

import pytest

from harness.presets import select_preset
from harness.threat import parse_eps

# The code's README commands and ablation scripts (shared/notes/original-implementations.md §5.8).
CODE = {
    ("mnist", "paper-1.58"): dict(arch="4c3f", epochs=400, lr=1e-3, lr_decay_epoch=25, lr_min=1e-6, batch_size=512,
                                  lam=30.0, r0=2.2, temperature=5.0, power_iterations=10, robust_start_epoch=10),
    ("cifar10", "paper-36/255"): dict(arch="6c2f", epochs=400, lr=1e-3, lr_decay_epoch=200, lr_min=1e-6, batch_size=512,
                                      lam=15.0, r0=0.2, temperature=5.0, power_iterations=5, robust_start_epoch=10),
    ("cifar10", "code-36/255"): dict(arch="6c2f", epochs=400, lr=1e-3, lr_decay_epoch=200, lr_min=1e-6, batch_size=512,
                                     lam=15.0, r0=0.2, temperature=5.0, power_iterations=5, robust_start_epoch=10),
    ("tinyimagenet", "paper-36/255"): dict(arch="8c2f", epochs=300, lr=1e-4, lr_decay_epoch=100, lr_min=1e-7, batch_size=256,
                                           lam=150.0, r0=0.2, temperature=12.0, power_iterations=5, robust_start_epoch=10),
}


def test_paper_presets_are_the_codes_settings(catalog):
    presets = {(p.dataset, p.name): p for p in catalog.presets_for("crm")}
    assert set(CODE) <= set(presets)
    for key, want in CODE.items():
        p = presets[key]
        assert p.paper and p.norm == "2" and p.source
        got = {"arch": p.model_options["arch"], **{k: p.trainer_options[k] for k in want if k != "arch"}}
        assert got == want, key


def test_the_two_cifar_conventions():
    """The paper's 36/255 in pixels, and the code's 0.141 in [-1, 1] units, which is 18/255 in pixels."""
    from harness.testing import make_catalog

    presets = make_catalog().presets_for("crm")
    pixel = select_preset(presets, trainer="crm", dataset="cifar10", name=None, norm="2", eps=parse_eps("36/255"))
    code = select_preset(presets, trainer="crm", dataset="cifar10", name=None, norm="2", eps=parse_eps("18/255"))
    assert pixel.name == "paper-36/255" and pixel.trainer_options["radius_units"] == "pixel"
    assert code.name == "code-36/255" and code.trainer_options["radius_units"] == "model-input"
    assert code.eps == pytest.approx(0.141 / 2, abs=1e-3)
    for p in (pixel, code):
        assert p.model_options["input_range"] == "symmetric"  # the code's Normalize(0.5, 0.5)
    default = select_preset(presets, trainer="crm", dataset="mnist", name=None, norm="2", eps=None)
    assert default.name == "paper-1.58" and default.eps == 1.58


def test_a_tiny_l2_run_is_certified_by_liplt_naive_and_crown(harness_cli, shared_data):
    r = harness_cli("run", "--plugin", "crm", "--dataset", "mnist", "--norm", "2", "--eps", "0.5", "--preset", "quick",
                    "--epochs", "2", "--train-samples", "2000", "--eval-samples", "60", "--set", "model.channel_scale=0.125",
                    "--set", "trainer.robust_start_epoch=1", "--set", "attacker.pgd-l2.steps=20", "--attack", "pgd-l2",
                    "--set", "certifier.crown.max_samples=10", "--data-dir", str(shared_data), "--no-save")
    assert r.code == 0, r.err
    shown = json.loads(harness_cli("show", "1", "--format", "json", "--samples", "60").out)
    r = shown["result"]
    by_name = {c["name"]: c for c in r["certifiers"]}
    assert {"liplt", "lipschitz-naive", "crown"} <= set(by_name)
    assert [a["name"] for a in r["attacks"]] == ["pgd-l2"]  # the l_inf attack does not run under l2
    assert by_name["crown"]["samples"] == 10 and by_name["liplt"]["samples"] == 60
    assert by_name["liplt"]["accuracy"] >= by_name["lipschitz-naive"]["accuracy"]
    for s in shown["samples"]:
        liplt, liplt_radius = s["certificates"]["liplt"]
        naive, naive_radius = s["certificates"]["lipschitz-naive"]
        assert liplt_radius >= naive_radius * (1 - 1e-9)  # LipLT never looser
        assert liplt == (liplt_radius > 0.5)
    out = harness_cli("leaderboard", "--norm", "2").out
    assert "l_2" in out and "crm" in out and "liplt" in out and "crown" in out and "(of 10)" in out
