"""The example plugin, installed the way a third party's plugin is: into a fresh virtual environment.

One environment per module, in a temporary directory, built with its own pip
(the project's environment is never touched): torch 2.13.0, this repository
installed *non-editable* from a copy of it (so the installed ``harness``,
``harness_plugins`` and ``harness_registry`` data files are what a wheel
ships, and the checkout gets no ``build/``), torchattacks and auto-lirpa with
``--no-deps`` as ``scripts/setup-venv.sh`` installs them, pytest, and
``examples/harness-example-plugin``. Then the example's own tests run with
that environment's pytest, and its ``harness`` trains the example's trainer on
a little MNIST, ranks it on the leaderboard and lists the plugin.

About 45 s on a 2-core CPU, most of it pip, whether pip's cache is empty or
not: torch 2.13.0 comes from a local wheel on the development machines, and
the rest are small downloads. A machine that fetches torch from PyPI pays that
download on its first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = Path("examples") / "harness-example-plugin"
#: What a copy of the checkout leaves out: git, environments, build outputs, caches; at the top, results and data.
ANYWHERE = shutil.ignore_patterns(".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache",
                                  ".ruff_cache", "*.db")
TOP = {"runs", "data", ".whl"}


def not_copied(folder: str, names: list[str]) -> set[str]:
    return ANYWHERE(folder, names) | (TOP & set(names) if Path(folder) == REPO else set())


class Environment:
    """A virtual environment and the commands run in it (each checked, with its output on failure)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        leaks = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")  # would reach into the project's environment
        self.env = {k: v for k, v in os.environ.items() if k not in leaks and not k.startswith("HARNESS_")}
        self.env["PATH"] = f"{self.bin}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        # Tiny models: one thread each is faster than two contending for a shared 2-core machine.
        self.env.setdefault("OMP_NUM_THREADS", "1")

    def run(self, *args: str | Path, cwd: Path | None = None, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(a) for a in args], cwd=cwd or self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def pip(self, *args: str | Path) -> subprocess.CompletedProcess:
        # --no-compile: torch's 5,000 .pyc files would double the install time; imports compile what they use.
        return self.run(self.bin / "python", "-m", "pip", "install", "-q", "--no-compile", *args)

    def harness(self, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
        return self.run(self.bin / "harness", *args, cwd=cwd, timeout=600, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Environment]:
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "harness-bench"
    shutil.copytree(REPO, source, ignore=not_copied)
    env = Environment(root)
    env.run(sys.executable, "-m", "venv", root / "venv")
    env.pip("torch==2.13.0")
    env.pip(source, "pytest")
    env.pip("--no-deps", "torchattacks==3.5.1", "auto-lirpa==0.3")
    env.pip(source / EXAMPLE)
    yield env
    # Nearly a gigabyte in 20,000 files: pytest would keep it for three sessions, and unlinking them once they are on
    # disk takes 40 s or more on a busy CI disk (measured), so a detached rm deletes it while the suite goes on.
    subprocess.run(["sh", "-c", 'rm -rf "$1" >/dev/null 2>&1 &', "sh", str(root)], check=True)


def test_the_repository_installs_non_editable_with_its_plugins_and_data_files(installed):
    probe = (
        "import harness, harness_plugins.lib.liplt, harness_registry, harness_example\n"
        "from importlib.resources import files\n"
        "print(harness.__file__)\n"
        "print(*sorted(p.name for p in files('harness_registry').joinpath('presets').iterdir()))\n"
        "print(*sorted(p.name for p in files('harness_registry').joinpath('reported').iterdir()))\n"
        "print(*sorted(p.name for p in files('harness_example').iterdir() if p.name.endswith('.toml')))\n"
    )
    module, presets, reported, example = installed.run(installed.bin / "python", "-c", probe).stdout.splitlines()
    assert Path(module).is_relative_to(installed.root / "venv"), module
    shipped = " ".join(sorted(p.name for p in (REPO / "registry" / "presets").glob("*.toml")))
    assert presets == shipped and reported == " ".join(sorted(p.name for p in (REPO / "registry" / "reported").glob("*.toml")))
    assert example == "presets.toml reported.toml"


def test_the_examples_own_tests_pass(installed):
    # Its own --basetemp: in the shared one, pytest would spend minutes deleting old sessions' folders (and may delete ours).
    done = installed.run(installed.bin / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", installed.root / "pytest",
                         "tests", cwd=installed.root / "harness-bench" / EXAMPLE, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout


def test_harness_plugins_lists_it_and_finds_no_problems(installed, tmp_path):
    listed = installed.harness("plugins", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    lines = listed.stdout.splitlines()
    start = lines.index("example 0.1.0 (harness-example-plugin)")
    block = " ".join(lines[start:start + 7])
    for kind, name in [("model", "relu_mlp"), ("trainer", "lmt"), ("certifier", "global-lipschitz"), ("attacker", "fgsm")]:
        assert f"{kind:<9} {name} " in block, block
    assert "presets: mnist/quick" in block
    builtin = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["entry-points"]["harness"]
    check = installed.harness("plugins", "--check", cwd=tmp_path)
    assert check.returncode == 0 and check.stdout.startswith(f"no problems: {len(builtin) + 1} plugins"), check.stdout + check.stderr


def test_a_little_mnist_run_reaches_the_leaderboard(installed, shared_data, tmp_path):
    run = installed.harness("run", "--plugin", "lmt", "--dataset", "mnist", "--preset", "quick", "--epochs", "1",
                            "--train-samples", "2000", "--eval-samples", "200", "--data-dir", shared_data, "--no-save", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "run 1 finished" in run.stdout and "global-lipschitz" in run.stdout
    board = installed.harness("leaderboard", "--dataset", "mnist", cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    rows = board.stdout.splitlines()
    assert any(row.startswith("1 ") and " lmt " in row and " quick " in row for row in rows), board.stdout
    assert any("LMT ReLU MLP (example: its quick preset, measured)" in row for row in rows), board.stdout
