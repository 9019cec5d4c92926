"""The Triton backend without a GPU: its kernels through Triton's interpreter, against the reference.

``TRITON_INTERPRET=1`` only counts when set before triton is imported, so every case runs in one
subprocess (interpreted_triton_cases.py, which holds the cases and their tolerances) and is
reported here as its own test. Skips, with the reason, where triton is not installed or its
interpreter cannot run; a kernel that runs and disagrees fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("interpreted_triton_cases.py")


def _cases_module():
    spec = importlib.util.spec_from_file_location("interpreted_triton_cases", HELPER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


CASES = _cases_module().CASES


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (scripts/setup-venv.sh installs it where it publishes wheels)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("HARNESS_LPDIST_BACKEND", None)
    proc = subprocess.run([sys.executable, str(HELPER)], capture_output=True, text=True, timeout=600, env=env)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        pytest.fail(f"the interpreted cases exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    if lines and "unavailable" in lines[0]:
        pytest.skip(lines[0]["unavailable"])
    return {line["case"]: line for line in lines}


@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_triton_kernels_match_the_reference(results, case):
    assert case in results, f"no result for {case}"
    assert results[case]["ok"], results[case]["message"]
