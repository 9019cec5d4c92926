"""``harness --help`` (and the help of every command) imports neither torch nor the plugins' components."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from harness.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

HEAVY = ("torch", "numpy", "sqlalchemy", "torchattacks", "pyautoattack", "auto_LiRPA", "scipy", "PIL")


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["bench", "--help"], ["bench", "dist", "--help"], ["bench", "step", "--help"],
                                  ["leaderboard", "--help"], ["export", "html", "--help"]])
def test_help_imports_nothing_heavy(args, builtin_env, tmp_path):
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=builtin_env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    loaded = set(report["modules"])
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}, sorted(m for m in loaded if m.split(".")[0] in HEAVY)[:5]
    # The built-in plugins are loaded (their commands are in the help), their components are not.
    assert "harness_plugins.lpdist" in loaded and "harness_plugins.lpdist.models" not in loaded
    assert not any(m.startswith("harness_plugins.lib") for m in loaded)
