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
    assert r.out.startswith("no problems: 11 plugins") and "29 presets" in r.out and "16 reported results" in r.out


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
    assert lines[1].startswith("model 'no_such_net' (plugin 'BrokenPresets'): no loaded plugin registers it, but preset 'unknown-model'")
    assert lines[2] == (
        "dataset 'mnsit' (plugin 'BrokenPresets'): no loaded plugin registers it, but preset 'unknown-dataset' of 'linf_v2' for 'mnsit' "
        "in broken.toml names it; correct the name (did you mean 'mnist'?), or install or enable the plugin that registers it"
    )
    as_json = json.loads(harness_cli("plugins", "--check", "--format", "json", plugins=[broken_presets]).out)
    assert [p["subject"] for p in as_json] == [
        "preset 'typo-option' of 'linf_v2' for 'mnist' in broken.toml", "model 'no_such_net'", "dataset 'mnsit'"]
    assert all(p["plugin"] == "BrokenPresets" and p["fix"] for p in as_json)


MALFORMED = """
trainer = "linf_v2"

[[presets]]
name = "number-for-dataset"
dataset = 5
eps = 0.3
source = "test"

[[presets]]
name = "string-for-options"
dataset = "mnist"
eps = 0.3
source = "test"
model_options = "x"

[[presets]]
name = "text-seed"
dataset = "mnist"
eps = 0.3
seed = "abc"
source = "test"

[[presets]]
name = "eps-out-of-range"
dataset = "mnist"
eps = 5
source = "test"

[[presets]]
name = "text-flag"
dataset = "mnist"
eps = 0.3
paper = "no"
source = "test"

[[presets]]
name = "good"
dataset = "fashion-mnist"
eps = 0.2
source = "test"
"""

MALFORMED_REPORTED = """
[[results]]
label = "text accuracy"
dataset = "mnist"
eps = 0.3
clean = "high"
source = "test"

[[results]]
label = "certified above clean"
dataset = "mnist"
eps = 0.3
clean = 90.0
certified = 95.0
source = "test"

[[results]]
label = "text epochs"
dataset = "mnist"
eps = 0.3
epochs = "many"
source = "test"

[[results]]
label = "good"
dataset = "mnist"
eps = 0.3
certified = 50.0
source = "test"
"""


def test_malformed_values_are_one_problem_each_and_the_good_rows_load(tmp_path, harness_cli, harness_store):
    presets, reported = tmp_path / "malformed.toml", tmp_path / "reported.toml"
    presets.write_text(MALFORMED)
    reported.write_text(MALFORMED_REPORTED)

    class Malformed:
        @hookimpl
        def register_presets(self):
            return [presets]

        @hookimpl
        def register_reported_results(self):
            return [reported]

    catalog = make_catalog(Malformed())
    messages = [str(p) for p in catalog.problems]
    assert messages == [
        "preset 'number-for-dataset' in malformed.toml (plugin 'Malformed'): 'dataset' must be a non-empty string, got 5; correct malformed.toml",
        "preset 'string-for-options' in malformed.toml (plugin 'Malformed'): 'model_options' must be a table ([...model_options]), "
        "got 'x'; correct malformed.toml",
        "preset 'text-seed' in malformed.toml (plugin 'Malformed'): 'seed' must be an integer, got 'abc'; correct malformed.toml",
        "preset 'eps-out-of-range' in malformed.toml (plugin 'Malformed'): eps 5 is out of range for the l_inf norm; valid: 0 < eps <= 1; "
        "correct malformed.toml",
        "preset 'text-flag' in malformed.toml (plugin 'Malformed'): 'paper' must be true or false, got 'no'; correct malformed.toml",
        "reported result 'text accuracy' in reported.toml (plugin 'Malformed'): 'clean' must be a finite number, got 'high'; correct reported.toml",
        "reported result 'certified above clean' in reported.toml (plugin 'Malformed'): certified > clean (95 > 90); correct reported.toml",
        "reported result 'text epochs' in reported.toml (plugin 'Malformed'): 'epochs' must be an integer, got 'many'; correct reported.toml",
    ]
    assert any(p.name == "good" and p.plugin == "Malformed" for p in catalog.presets)
    assert any(r.label == "good" for r in catalog.reported)
    # and every command still works, naming the problems
    assert harness_cli("leaderboard", plugins=[Malformed()]).code == 0
    assert harness_cli("plugins", "--check", plugins=[Malformed()]).code == 1


def test_a_third_partys_preset_never_displaces_the_trainers_own(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('trainer = "linf_v2"\n[[presets]]\nname = "quick"\ndataset = "mnist"\neps = 0.1\nsource = "s"\n'
                    '[[presets]]\nname = "mine"\ndataset = "mnist"\neps = 0.1\ndefault = true\nsource = "s"\n')

    class AAA:  # sorts before linf_v2: its files are read first
        @hookimpl
        def register_presets(self):
            return [path]

    catalog = make_catalog(AAA())
    (quick,) = [p for p in catalog.presets_for("linf_v2", "mnist") if p.name == "quick"]
    assert quick.plugin == "linf_v2" and quick.eps == 0.3
    assert [str(p) for p in catalog.problems] == [
        "preset 'quick' of 'linf_v2' for 'mnist' in mine.toml (plugin 'AAA'): is defined twice: also in linf_v2.toml "
        "(plugin 'linf_v2'), which is kept; rename it in mine.toml",
        "preset 'mine' of 'linf_v2' for 'mnist' in mine.toml (plugin 'AAA'): is a second default for 'mnist': 'paper-0.3' in "
        "linf_v2.toml (plugin 'linf_v2') is kept; drop 'default = true' in mine.toml",
    ]


def test_a_broken_preset_is_not_listed_and_running_it_names_the_plugins_bug(harness_cli, broken_presets):
    listed = harness_cli("plugins", plugins=[broken_presets]).out
    assert "fashion-mnist/fine" in listed and "typo-option" not in listed and "3 problem(s)" in listed
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "typo-option", plugins=[broken_presets])
    assert r.code == 1 and r.err.startswith("plugin error: preset 'typo-option' is unavailable: ") and "lrr" in r.err
    assert len(r.err.strip().splitlines()) == 1
