"""A third-party package adds a method without touching this repository.

The test writes a small package with its own pyproject and a ``harness`` entry
point (a linear model, a trainer, and a CLI command), pip-installs it into
this environment, runs it with ``harness run`` and finds it on the leaderboard.
"""

import csv
import subprocess
import sys
import textwrap

import pytest

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "harness-toy-plugin"
version = "0.7.1"
dependencies = ["harness-bench"]

[project.entry-points.harness]
toy = "harness_toy"
"""

MODULE = '''
"""A toy third-party plugin: a linear classifier trained with cross-entropy."""
from dataclasses import dataclass

import click
import torch
from torch import nn

from harness import Model, Source, Trainer, hookimpl
from harness.train import cosine_lr


class LinearNet(nn.Module):
    """z = W x + b on raw pixels; every logit is ||W_k||_1-Lipschitz under l_inf."""

    def __init__(self, info):
        super().__init__()
        self.fc = nn.Linear(info.input_size, info.num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))

    def lipschitz_constant(self, norm):
        if norm != "inf":
            return None
        return self.fc.weight.abs().sum(1).max().item()


class ToyModel(Model):
    name = "toy_linear"
    description = "a linear classifier"
    source = Source(title="a toy for the plugin test")

    def build(self, data):
        return LinearNet(data)


@dataclass(frozen=True)
class ToyOptions:
    epochs: int = 1
    lr: float = 0.1


class ToyTrainer(Trainer):
    name = "toy"
    description = "cross-entropy on a linear model"
    model = "toy_linear"
    Options = ToyOptions

    def fit(self, model, data, ctx):
        opt = torch.optim.SGD(model.parameters(), lr=self.options.lr)
        for epoch in range(self.options.epochs):
            with ctx.progress.task(f"toy epoch {epoch + 1}", total=data.steps_per_epoch(128)) as task:
                for x, y in data.batches(128, ctx.generator):
                    loss = nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    task.advance(1, loss=loss.item())
        model.eval()


@hookimpl
def register_models():
    return [ToyModel]


@hookimpl
def register_trainers():
    return [ToyTrainer]


@hookimpl
def register_commands(cli):
    @cli.command("toy-hello")
    def toy_hello():
        """Say hello from the toy plugin.

        Example: harness toy-hello
        """
        click.echo("hello from toy")
'''


@pytest.fixture(scope="module")
def toy_installed(tmp_path_factory):
    src = tmp_path_factory.mktemp("harness-toy-plugin")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "harness_toy.py").write_text(textwrap.dedent(MODULE))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(src)], check=True)
    yield
    subprocess.run([*pip, "uninstall", "-y", "harness-toy-plugin"], check=True)


def harness(exe, *args, cwd):
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_third_party_plugin_runs_and_reaches_the_leaderboard(toy_installed, harness_exe, shared_data, tmp_path):
    listed = harness(harness_exe, "plugins", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "toy 0.7.1 (harness-toy-plugin)" in listed.stdout
    assert "trainer   toy" in listed.stdout and "model     toy_linear" in listed.stdout

    ran = harness(
        harness_exe, "run", "--plugin", "toy", "--dataset", "mnist", "--eps", "0.01", "--train-samples", "3000",
        "--eval-samples", "100", "--set", "attacker.pgd.steps=5", "--data-dir", str(shared_data), "--no-save", cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert "toy epoch 1" in ran.stderr  # the plugin's own progress
    board = harness(harness_exe, "leaderboard", "--dataset", "mnist", "--format", "csv", cwd=tmp_path)
    rows = list(csv.reader(board.stdout.splitlines()))[1:]
    (toy_row,) = [r for r in rows if r[5] == "toy"]
    assert toy_row[3] == "measured" and float(toy_row[7]) > 0.5  # clean accuracy of a linear model after one epoch
    # The certifier that needs only a Lipschitz bound applied to the third party's model too.
    assert "lipschitz-margin" in toy_row[11]

    hello = harness(harness_exe, "toy-hello", cwd=tmp_path)
    assert hello.returncode == 0 and hello.stdout.strip() == "hello from toy"
