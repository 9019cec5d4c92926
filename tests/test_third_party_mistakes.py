"""What a third-party author hit, tried as a new user would: each case behaves as a user would expect.

Broken and misnamed plugins are left out with one line that names them and the
switch that disables them; a failing certifier or attack is isolated; the
suite itself does not change when other plugins are installed; runs can be
configured without presets, with any model and any certifiers; two plugins can
ship components of the same name.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from harness import Attacker, Certificate, Certifier, Model, ThreatModel, hookimpl
from harness.evaluation import evaluate
from harness.progress import ConsoleProgress
from harness.testing import builtin_plugins, make_catalog
from harness_plugins.torchattacks.pgd import PGD, PGDOptions


def fake_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """An installed-looking distribution on ``root`` (a dist-info with entry points, and its modules)."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[harness]\n{lines}\n")
    for module, text in modules.items():
        (root / f"{module}.py").write_text(text)
    return root


def harness_process(args, *, pythonpath: Path, cwd: Path, env_extra=None):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    env["PYTHONPATH"] = str(pythonpath)
    env.update(env_extra or {})
    code = "import sys; from harness.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# -- a broken plugin ---------------------------------------------------------------------------------------------


BROKEN = "raise ImportError('no module named torchvision')\n"
MISSPELT = """
from harness import hookimpl

@hookimpl
def register_trainer():
    return []
"""


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    return fake_distribution(root, "broken-plugins", {"broken": "broken_plugin", "misspelt": "misspelt_plugin"},
                             {"broken_plugin": BROKEN, "misspelt_plugin": MISSPELT})


@pytest.fixture
def results_db(tmp_path):
    """An empty results.db in ``tmp_path``, where the commands run (a read command never creates one)."""
    from harness.store import open_store

    open_store(str(tmp_path / "results.db")).close()


def test_a_broken_plugin_leaves_help_and_leaderboard_working_and_names_the_switch(broken_site, tmp_path, results_db):
    for args in (["--help"], ["leaderboard"], ["plugins"]):
        r = harness_process(args, pythonpath=broken_site, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
        warnings = r.stderr.strip().splitlines()
        assert len(warnings) == 2 and "Traceback" not in r.stderr, r.stderr
        broken, misspelt = warnings
        assert broken == (
            "warning: plugin 'broken' (from broken-plugins) was not loaded: importing broken_plugin raised ImportError: "
            "no module named torchvision; fix or uninstall it, or disable it with HARNESS_DISABLE_PLUGINS=broken"
        )
        assert "'register_trainer', which is not a harness hook (did you mean 'register_trainers'?" in misspelt
    assert "run" in harness_process(["--help"], pythonpath=broken_site, cwd=tmp_path).stdout


def test_disabling_the_broken_plugins_silences_them_and_check_lists_them(broken_site, tmp_path, results_db):
    quiet = harness_process(["leaderboard"], pythonpath=broken_site, cwd=tmp_path, env_extra={"HARNESS_DISABLE_PLUGINS": "broken,misspelt"})
    assert quiet.returncode == 0 and quiet.stderr == ""
    check = harness_process(["plugins", "--check"], pythonpath=broken_site, cwd=tmp_path)
    assert check.returncode == 1
    assert "plugin 'broken': importing broken_plugin raised ImportError" in check.stdout
    assert len(check.stdout.strip().splitlines()) == 2


# -- the suite does not depend on what else is installed ------------------------------------------------------


THIRD_PARTY = """
import torch
from harness import Attacker, hookimpl

class FGSM(Attacker):
    name = "fgsm"
    description = "a third party's one-step attack"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        return images

class PGD(FGSM):
    name = "pgd"
    description = "a third party's pgd, named like the built-in one"

@hookimpl
def register_attackers():
    return [FGSM, PGD]
"""


def test_another_installed_attacker_changes_nothing_the_suite_sees(tmp_path, monkeypatch, harness_cli):
    site = fake_distribution(tmp_path / "site", "extra-attacks", {"extra": "extra_attacks"}, {"extra_attacks": THIRD_PARTY})
    monkeypatch.syspath_prepend(str(site))
    from harness.plugins import load_plugins

    assert "extra" in load_plugins(only=[*builtin_plugins(), "extra"]).names()  # it is installed; a plain harness would load it
    assert "extra" not in builtin_plugins()
    assert make_catalog().names("attacker") == ["autoattack", "pgd", "pgd-l2"]
    listed = harness_cli("plugins").out
    last = listed.strip().splitlines()[-1]
    assert "fgsm" not in listed and last.startswith("not selected (HARNESS_ONLY_PLUGINS): ") and "extra" in last


def test_two_plugins_attackers_of_one_name_are_addressed_by_plugin(tmp_path, monkeypatch):
    site = fake_distribution(tmp_path / "site", "extra-attacks", {"extra": "extra_attacks"}, {"extra_attacks": THIRD_PARTY})
    monkeypatch.syspath_prepend(str(site))
    from harness.catalog import Catalog
    from harness.plugins import load_plugins

    catalog = Catalog.build(load_plugins(only=[*builtin_plugins(), "extra"], environment=False))
    assert catalog.problems == []
    # The built-in keeps its name (runs record it as before); the third party's is addressed by plugin.
    assert catalog.names("attacker") == ["autoattack", "extra:pgd", "fgsm", "pgd", "pgd-l2"]
    assert catalog.get("attacker", "pgd") is PGD and catalog.get("attacker", "torchattacks:pgd") is PGD
    assert catalog.get("attacker", "extra:pgd").__module__ == "extra_attacks"


# -- a certifier or attack that fails is isolated -------------------------------------------------------------


class Raises(Certifier):
    name = "raises"
    description = "raises (test)"
    norms = ("inf",)

    def certify(self, model, images, labels, threat):
        raise ValueError("my bound diverged")


class WrongShape(Certifier):
    name = "wrong-shape"
    description = "returns one verdict per class (test)"
    norms = ("inf",)

    def certify(self, model, images, labels, threat):
        return Certificate(certified=torch.zeros(len(labels), 3, dtype=torch.bool))


class Escapes(Attacker):
    name = "escapes"
    description = "returns points outside the ball (test)"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        return (images + 2 * threat.eps).clamp(0, 1)


def linear_problem():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the same model whatever ran before (the global generator), which is left as it was
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    images = (torch.rand(100, 1, 4, 4, generator=g) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    return model, images, labels


def test_a_raising_or_malformed_certifier_and_an_escaping_attack_are_recorded_against_themselves():
    from harness_plugins.lirpa.certifiers import IBPCertifier

    model, images, labels = linear_problem()
    result = evaluate(
        model, images, labels, ThreatModel("inf", 0.01), attackers=[PGD(PGDOptions(steps=5)), Escapes()],
        certifiers=[Raises(), WrongShape(), IBPCertifier()], device=torch.device("cpu"),
    ).result
    assert result.errors == [
        "attack 'escapes': perturb() returned points outside the l_inf eps=0.01 ball or [0,1] (largest perturbation 0.02)",
        "certifier 'raises': raised ValueError: my bound diverged",
        "certifier 'wrong-shape': certify() returned verdicts of shape (100, 3) for a batch of 100; expected (100,)",
    ]
    # The others' results stand.
    assert result.clean_accuracy == 1.0 and result.attack("pgd").accuracy is not None and result.certifier("ibp").accuracy > 0
    assert result.robust_accuracy == result.attack("pgd").accuracy and result.certified_accuracy == result.certifier("ibp").accuracy


class Boom(Certifier):
    name = "boom"
    description = "a third party's certifier that raises (test)"
    norms = ("inf",)

    def certify(self, model, images, labels, threat):
        raise RuntimeError("CUDA error: an illegal memory access")


class BoomPlugin:
    @hookimpl
    def register_certifiers(self):
        return [Boom]


def test_a_run_with_a_failing_certifier_finishes_keeps_the_rest_and_exits_1(harness_cli, shared_data):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--epochs", "1", "--train-samples", "500",
                    "--eval-samples", "20", "--set", "model.width=16", "--set", "model.depth=3", "--set", "attacker.pgd.steps=2",
                    "--attack", "pgd", "--data-dir", str(shared_data), "--no-save", plugins=[BoomPlugin()])
    assert r.code == 1 and "Traceback" not in r.err
    assert r.err.strip().splitlines()[-1] == (
        "error: run 1 finished, but 1 of its components failed: certifier 'boom': raised RuntimeError: CUDA error: an illegal memory access"
    )
    assert "run 1 finished" in r.out and "boom ERROR" in r.out and "interval" in r.out
    listed = harness_cli("runs").out
    assert "finished with errors" in listed and "certifier 'boom'" in listed
    assert "boom ERROR" in harness_cli("leaderboard", "--dataset", "mnist").out


# -- progress reports the stored number ------------------------------------------------------------------------


def test_the_attack_progress_line_ends_on_the_stored_robust_accuracy():
    model, images, labels = linear_problem()
    labels[:30] = (labels[:30] + 1) % 3  # misclassified samples are not attacked, and are not robust
    stream = io.StringIO()
    result = evaluate(model, images, labels, ThreatModel("inf", 0.05), attackers=[PGD(PGDOptions(steps=5))], certifiers=[],
                      device=torch.device("cpu"), batch_size=16, progress=ConsoleProgress(stream)).result
    (line,) = [line for line in stream.getvalue().splitlines() if line.startswith("attack: pgd")]
    shown = float(re.search(r"robust ([0-9.]+)%", line).group(1))
    assert shown == pytest.approx(100 * result.attack("pgd").accuracy, abs=0.005)
    assert result.attack("pgd").accuracy < 0.7  # over all 100 samples, not over the 70 attacked


# -- running without presets, with any model, with chosen certifiers -----------------------------------------


def test_a_dataset_without_a_preset_runs_on_the_default_options(harness_cli, shared_data):
    r = harness_cli("run", "--plugin", "crm", "--dataset", "fashion-mnist", "--norm", "2", "--eps", "0.5", "--epochs", "1",
                    "--train-samples", "300", "--eval-samples", "20", "--set", "model.channel_scale=0.125", "--certifier", "liplt",
                    "--attack", "pgd-l2", "--set", "attacker.pgd-l2.steps=2", "--data-dir", str(shared_data), "--no-save")
    assert r.code == 0, r.err
    assert "'crm' has no preset for 'fashion-mnist': training with its default options" in r.err
    shown = json.loads(harness_cli("show", "1", "--format", "json").out)
    assert shown["info"]["preset"] is None and [c["name"] for c in shown["result"]["certifiers"]] == ["liplt"]
    assert shown["info"]["config"]["trainer"]["options"]["lam"] == 30.0  # the trainer's default


def test_no_preset_and_model_choose_what_a_preset_would(harness_cli, shared_data):
    r = harness_cli("run", "--plugin", "linf_v1", "--dataset", "mnist", "--model", "crm_net", "--preset", "quick", "--data-dir", str(shared_data))
    assert r.code == 2 and "--model crm_net differs from the model of preset 'quick' ('linf_dist_net'); add --no-preset" in r.err
    r = harness_cli("run", "--plugin", "linf_mlp", "--dataset", "mnist", "--model", "crm_net", "--no-preset", "--eps", "0.1")
    assert r.code == 2 and "trainer 'linf_mlp' cannot train model 'crm_net'; it trains: linf_dist_net_mlp" in r.err
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--no-preset", "--model", "crm_net", "--eps", "0.1",
                    "--epochs", "1", "--train-samples", "200", "--eval-samples", "10", "--set", "model.channel_scale=0.125",
                    "--certifier", "liplt", "--certifier", "crown", "--attack", "pgd", "--set", "attacker.pgd.steps=2",
                    "--set", "certifier.crown.max_samples=2",
                    "--data-dir", str(shared_data), "--no-save")
    assert r.code == 0, r.err
    shown = json.loads(harness_cli("show", "1", "--format", "json").out)
    assert shown["info"]["config"]["model"]["name"] == "crm_net"
    assert [c["name"] for c in shown["result"]["certifiers"]] == ["crown", "liplt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "pgd", "--norm", "2", "--eps", "0.5", "--no-preset"], "trainer 'linf_v2' trains for norms inf, not '2'"),
        (["--certifier", "intervall"], "unknown certifier 'intervall'; did you mean 'interval'?"),
        (["--certifier", "liplt", "--certifier", "liplt"], "--certifier 'liplt' is given twice"),
        (["--attack", "pgd-l2"], "attack 'pgd-l2' is for l_2; this run is l_inf"),
        (["--preset", "quick", "--no-preset"], "--preset and --no-preset exclude each other"),
        (["--preset", "quick", "--norm", "2"], "preset 'quick' of 'linf_v2' is for l_inf, not --norm 2"),
        (["--set", "certifier.lipschitz-naive.dense_limit=8", "--certifier", "liplt"], "--set certifier.lipschitz-naive"),
    ],
)
def test_choosing_components_is_checked_before_training(harness_cli, args, message):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", *args)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_a_certifier_of_the_other_norm_is_refused(harness_cli):
    r = harness_cli("run", "--plugin", "crm", "--dataset", "mnist", "--certifier", "interval", "--preset", "quick", "--eps", "0.5")
    assert r.code == 2 and r.err == "error: certifier 'interval' certifies l_inf; this run is l_2\n"


def test_plugins_lists_as_json(harness_cli):
    data = json.loads(harness_cli("plugins", "--format", "json").out)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert set(plugins) == set(builtin_plugins()) and data["problems"] == []
    (trainer,) = plugins["linf_v2"]["components"]
    assert (trainer["kind"], trainer["key"], trainer["model"], trainer["source"]["text"].endswith("(ICLR 2022)")) == (
        "trainer", "linf_v2", "linf_dist_net", True)
    assert {"name": "eps_train_ratio", "type": "float", "default": 1.5} in [
        {k: o[k] for k in ("name", "type", "default")} for o in trainer["options"]]
    assert any(p["name"] == "paper-0.3" for p in plugins["linf_v2"]["presets"]) and plugins["linf_v2"]["reported"]


# -- a trainer's models ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Width:
    width: int = 4


class Tiny(Model):
    name = "tiny_net"
    description = "a small MLP (test)"
    Options = Width

    def build(self, data):
        return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, self.options.width), nn.ReLU(), nn.Linear(self.options.width, data.num_classes))


def test_a_preset_naming_a_model_the_trainer_cannot_train_is_a_problem(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('trainer = "linf_mlp"\n[[presets]]\nname = "x"\ndataset = "mnist"\neps = 0.1\nsource = "s"\nmodel = "tiny_net"\n')

    class P:
        @hookimpl
        def register_models(self):
            return [Tiny]

        @hookimpl
        def register_presets(self):
            return [path]

    (problem,) = make_catalog(P()).problems
    assert "names model 'tiny_net', which trainer 'linf_mlp' cannot train (it trains: linf_dist_net_mlp)" in str(problem)


class InPlace(Attacker):
    name = "in-place"
    description = "writes its adversarial points into the clean batch (test)"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        images.add_(2 * threat.eps).clamp_(0, 1)
        return images


def test_an_attack_that_writes_into_the_clean_batch_cannot_hide_its_points_outside_the_ball():
    model, images, labels = linear_problem()
    result = evaluate(model, images, labels, ThreatModel("inf", 0.01), attackers=[InPlace()], certifiers=[], device=torch.device("cpu")).result
    assert result.errors == [
        "attack 'in-place': perturb() returned points outside the l_inf eps=0.01 ball or [0,1] (largest perturbation 0.02)"
    ]


class BadLabel(Attacker):
    name = "bad-label"
    description = "its label() raises (test)"
    norms = ("inf",)

    def label(self):
        raise KeyError("steps")

    def perturb(self, model, images, labels, threat):
        return images


@pytest.mark.parametrize("limit", [0, -5, 2.5, "10"])
def test_a_malformed_sample_limit_is_that_certifiers_error(limit):
    class Limited(Certifier):
        name = "limited"
        description = "a malformed sample_limit() (test)"
        norms = ("inf",)

        def sample_limit(self, model, threat):
            return limit

        def certify(self, model, images, labels, threat):
            return Certificate(certified=torch.zeros(len(labels), dtype=torch.bool))

    model, images, labels = linear_problem()
    result = evaluate(model, images, labels, ThreatModel("inf", 0.01), attackers=[], certifiers=[Limited()], device=torch.device("cpu")).result
    assert result.errors == [f"certifier 'limited': sample_limit() returned {limit!r}; expected None (all samples) or a positive integer"]


def test_a_raising_label_is_that_attacks_error_and_the_run_is_recorded(harness_cli, shared_data):
    class P:
        @hookimpl
        def register_attackers(self):
            return [BadLabel]

    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick", "--epochs", "1", "--train-samples", "300",
                    "--eval-samples", "10", "--set", "model.width=16", "--set", "model.depth=3", "--set", "attacker.pgd.steps=2",
                    "--attack", "bad-label", "--attack", "pgd", "--data-dir", str(shared_data), "--no-save", plugins=[P()])
    assert r.code == 1 and "Traceback" not in r.err
    assert r.err.strip().splitlines()[-1].endswith("attack 'bad-label': label() raised KeyError: 'steps'")
    shown = json.loads(harness_cli("show", "1", "--format", "json").out)
    assert [a["name"] for a in shown["result"]["attacks"]] == ["bad-label", "pgd"] and shown["result"]["robust_accuracy"] is not None


class TrainsTheModel(Certifier):
    name = "a-meddler"  # sorts first: every certifier and attack after it would see its damage
    description = "leaves the model in training mode and zeroes a weight (test)"
    norms = ("inf",)

    def certify(self, model, images, labels, threat):
        model.train()
        with torch.no_grad():
            next(model.parameters()).zero_()
        return Certificate(certified=torch.zeros(len(labels), dtype=torch.bool))


def test_a_certifier_that_changes_the_model_is_an_error_and_the_model_is_restored():
    from harness_plugins.lirpa.certifiers import IBPCertifier

    model, images, labels = linear_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threat = ThreatModel("inf", 0.01)
    clean = evaluate(model, images, labels, threat, attackers=[PGD(PGDOptions(steps=5))], certifiers=[IBPCertifier()],
                     device=torch.device("cpu")).result
    torch.manual_seed(0)
    result = evaluate(model, images, labels, threat, attackers=[PGD(PGDOptions(steps=5))], certifiers=[TrainsTheModel(), IBPCertifier()],
                      device=torch.device("cpu")).result
    assert result.errors == [
        "certifier 'a-meddler': it changed the model (its modes or attributes and its weights); the model was restored and this "
        "component's results discarded"
    ]
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert result.certifier("ibp").accuracy == clean.certifier("ibp").accuracy and result.not_applicable == {}


def test_a_plugins_command_does_not_outlive_the_plugin(harness_cli):
    import click

    class Greeter:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("greet")
            def greet():
                """Say hello (test). Example: harness greet"""
                click.echo("hello")

    assert harness_cli("greet", plugins=[Greeter()]).out == "hello\n"
    assert harness_cli("greet").code == 2  # the next start without the plugin has no such command
    assert "bench" in harness_cli("--help").out and "dist" in harness_cli("bench", "--help").out
