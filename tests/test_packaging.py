"""The explicit package list in pyproject.toml covers every package directory."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {"harness": REPO / "harness", "harness_plugins": REPO / "plugins", "harness_registry": REPO / "registry"}
    assert set(config["package-dir"]) == {"", "harness_plugins", "harness_registry"}
    found = set()
    for name, root in mapping.items():
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and "__pycache__" not in path.parts and any(path.glob("*.py")) | any(path.glob("*.toml")):
                found.add(".".join([name, *path.relative_to(root).parts]))
    assert found == listed
