"""ruff (lint and import order, over the whole repository) and mypy (over harness/) are clean.

Both are configured in pyproject.toml and pinned in the ``test`` extra, so the
README's test command runs them with everything else.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tool(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]' (scripts/setup-venv.sh does)")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ruff_finds_nothing():
    done = tool("ruff", "check", ".", "--output-format", "concise", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing_in_the_host():
    done = tool("mypy", "--no-incremental")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
