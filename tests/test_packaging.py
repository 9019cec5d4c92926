"""The explicit package list and package data in pyproject.toml cover every package directory and data file."""

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


def test_every_data_file_is_package_data():
    """A file that is not Python (a kernel's source, a preset) ships only if package-data names it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"harness": REPO / "harness", "harness_plugins": REPO / "plugins", "harness_registry": REPO / "registry"}
    shipped = set()
    for package, patterns in config["package-data"].items():
        top, *rest = package.split(".")
        for pattern in patterns:
            shipped.update(roots[top].joinpath(*rest).glob(pattern))
    data = {
        path
        for root in roots.values()
        for path in root.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert sorted(str(p.relative_to(REPO)) for p in data - shipped) == []
