"""Checked at start-up: ``harness plugins --check`` over the built-in plugins, and a broken preset caught as the plugin's bug."""

import json

import pytest

from harness import hookimpl
from harness.runner import RunRequest, plan_run
from harness.testing import make_catalog

CATALOG = make_catalog()


def test_the_builtin_plugins_check_clean(harness_cli):
    r = harness_cli("plugins", "--check")
    assert r.code == 0, r.out
    assert r.out.startswith("no problems: 10 plugins") and "29 presets" in r.out and "16 reported results" in r.out


@pytest.mark.parametrize("preset", CATALOG.presets, ids=lambda p: f"{p.trainer}/{p.dataset}/{p.name}")
def test_every_builtin_preset_plans_a_run(preset):
    plan = plan_run(CATALOG, RunRequest(trainer=preset.trainer, dataset=preset.dataset, preset=preset.name, device="cpu"))
    assert plan.preset == preset and plan.threat.norm == preset.norm and plan.threat.eps == preset.eps
    assert plan.key(plan.model) == (preset.model or CATALOG.get("trainer", preset.trainer).model)
    assert plan.certifiers and plan.attackers  # every built-in threat model has both


@pytest.mark.parametrize("result", CATALOG.reported, ids=lambda r: f"{r.file}/{r.label}/{r.dataset}")
def test_every_reported_row_names_a_known_dataset_norm_and_trainer(result):
    assert result.dataset in CATALOG.names("dataset") and result.norm in ("inf", "2")
    assert result.trainer is None or result.trainer in CATALOG.names("trainer")
    assert all(0 <= v <= 1 for v in (result.clean, result.pgd, result.certified) if v is not None)


BROKEN = """
trainer = "linf_v2"

[[presets]]
name = "typo-option"
dataset = "mnist"
eps = 0.3
source = "test"
[presets.trainer_options]
lrr = 0.1

[[presets]]
name = "unknown-model"
dataset = "mnist"
eps = 0.3
source = "test"
model = "no_such_net"

[[presets]]
name = "unknown-dataset"
dataset = "mnsit"
eps = 0.3
source = "test"

[[presets]]
name = "fine"
dataset = "fashion-mnist"
eps = 0.1
source = "test"
"""


@pytest.fixture
def broken_presets(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)

    class BrokenPresets:
        @hookimpl
        def register_presets(self):
            return [path]

    return BrokenPresets()


def test_check_prints_every_broken_preset_on_one_line_and_fails(harness_cli, broken_presets):
    r = harness_cli("plugins", "--check", plugins=[broken_presets])
    assert r.code == 1
    lines = r.out.strip().splitlines()
    assert len(lines) == 3, r.out
    assert lines[0].startswith("preset 'typo-option' of 'linf_v2' for 'mnist' in broken.toml (plugin 'BrokenPresets'): ")
    assert "has no option 'lrr'; did you mean 'lr'?" in lines[0] and lines[0].endswith("correct broken.toml")
    assert "names model 'no_such_net'" in lines[1] and "names dataset 'mnsit': unknown dataset 'mnsit'; did you mean 'mnist'?" in lines[2]
    as_json = json.loads(harness_cli("plugins", "--check", "--format", "json", plugins=[broken_presets]).out)
    assert len(as_json) == 3


def test_a_broken_preset_is_not_listed_and_running_it_names_the_plugins_bug(harness_cli, broken_presets):
    listed = harness_cli("plugins", plugins=[broken_presets]).out
    assert "fashion-mnist/fine" in listed and "typo-option" not in listed and "3 problem(s)" in listed
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "typo-option", plugins=[broken_presets])
    assert r.code == 1 and r.err.startswith("plugin error: preset 'typo-option' is unavailable: ") and "lrr" in r.err
    assert len(r.err.strip().splitlines()) == 1
