"""Fixtures shared by the whole suite: data location, a fresh registry, a CLI runner."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (MNIST, Fashion-MNIST), or $HARNESS_TEST_DATA."""
    path = Path(os.environ.get("HARNESS_TEST_DATA", REPO.parent / "shared" / "data"))
    if not (path / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no MNIST under {path} (set HARNESS_TEST_DATA)")
    return path


@pytest.fixture
def registry():
    """A registry built from a fresh plugin manager (the installed plugins)."""
    from harness.plugins import make_plugin_manager
    from harness.catalog import Catalog

    return Catalog.from_plugin_manager(make_plugin_manager())


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def harness_cli(capsys, monkeypatch, tmp_path) -> Callable[..., CliResult]:
    """Run ``harness ARGS`` in-process, in a temporary working directory; returns code, stdout, stderr."""
    import harness.cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_DB", raising=False)

    def run(*args: str) -> CliResult:
        harness.cli._state = None  # a fresh plugin manager and registry for every call
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            harness.cli.main(list(args))
        captured = capsys.readouterr()
        return CliResult(exc.value.code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def harness_exe() -> str:
    """The installed ``harness`` console script (for subprocess tests)."""
    exe = Path(sys.executable).parent / "harness"
    if not exe.exists():
        pytest.skip("the harness console script is not installed in this environment")
    return str(exe)
