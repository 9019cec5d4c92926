"""docs/plugins.md, the plugin author's guide, keeps up with the code.

Every hook of ``harness/hookspecs.py``, every ``runtime_checkable`` protocol of
``harness.components`` and every fixture of ``harness.testing`` has a section
whose heading names it and whose code block uses it; every module of
``harness.PUBLIC_MODULES`` is named. The examples parse, and what they import
from harness (or from the example plugin) exists and is public.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import harness
from harness import components, hookspecs, testing

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"
EXAMPLE_SRC = REPO / "examples" / "harness-example-plugin" / "src"

HOOKS = sorted(name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "harness_spec"))
PROTOCOLS = sorted(
    (obj for obj in vars(components).values() if inspect.isclass(obj) and getattr(obj, "_is_runtime_protocol", False)),
    key=lambda p: p.__name__,
)
FIXTURES = sorted(name for name in vars(testing) if name.startswith("harness_"))


@dataclass
class Section:
    heading: str
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (language, code)


def sections(text: str) -> list[Section]:
    """The document split at its headings (lines starting with '#' outside code blocks), with each part's code blocks."""
    found = [Section("")]
    fence: tuple[str, list[str]] | None = None
    for line in text.splitlines():
        if fence is not None:
            if line.startswith("```"):
                found[-1].blocks.append((fence[0], "\n".join(fence[1])))
                fence = None
            else:
                fence[1].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), [])
        elif line.startswith("#"):
            found.append(Section(line.lstrip("#").strip()))
    return found


def members(protocol: type) -> list[str]:
    """What a model implements to satisfy ``protocol``: its methods and attributes."""
    return sorted({name for name in vars(protocol) if not name.startswith("_")} | set(getattr(protocol, "__annotations__", {})))


def undocumented(text: str, name: str, uses: list[str]) -> str | None:
    """Why ``name`` is not documented: no heading names it, or no code block under such a heading uses each of ``uses``."""
    named = [s for s in sections(text) if f"`{name}`" in s.heading]
    if not named:
        return f"{name}: no heading of docs/plugins.md names `{name}`"
    if not any(all(use in code for use in uses) for s in named for _, code in s.blocks):
        return f"{name}: no code block under its heading uses {', '.join(uses)}"
    return None


def text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_the_readme_points_to_the_guide_and_the_example():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/plugins.md" in readme and "examples/harness-example-plugin" in readme


def test_the_kit_is_found():
    assert "register_models" in HOOKS and len(HOOKS) == 8
    assert [p.__name__ for p in PROTOCOLS] == ["FeatureHead", "IntervalBounded", "LipschitzBounded"]
    assert {"harness_catalog", "harness_cli", "harness_store", "harness_tiny_data"} <= set(FIXTURES)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_with_an_example(hook):
    assert undocumented(text(), hook, [f"def {hook}("]) is None


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_every_protocol_has_a_section_with_an_example_implementing_it(protocol):
    assert undocumented(text(), protocol.__name__, members(protocol)) is None


@pytest.mark.parametrize("fixture", FIXTURES)
def test_every_fixture_has_a_section_with_an_example(fixture):
    assert undocumented(text(), fixture, [fixture]) is None


def test_every_public_module_is_named():
    missing = [module for module in harness.PUBLIC_MODULES if f"`{module}`" not in text()]
    assert missing == []


def test_the_checker_notices_a_missing_section_or_example():
    doc = text()
    start = doc.index("### `register_commands`")
    without = doc[:start] + doc[doc.index("## Components and their metadata"):]
    assert undocumented(without, "register_commands", ["def register_commands("]) is not None
    assert undocumented(doc.replace("def lipschitz_constant(", "def bound("), "LipschitzBounded", ["lipschitz_constant"]) is not None


# -- the examples are correct against the code ---------------------------------------------------------------------


def blocks(language: str) -> list[str]:
    return [code for s in sections(text()) for lang, code in s.blocks if lang == language]


def test_the_python_and_toml_examples_parse():
    assert len(blocks("python")) >= 15 and len(blocks("toml")) >= 3
    for code in blocks("python"):
        ast.parse(code)
    for code in blocks("toml"):
        tomllib.loads(code)


def example_names(module: str) -> set[str]:
    """Top-level names (and submodules) of a module of the example plugin, read from its source."""
    base = EXAMPLE_SRC.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    names |= {p.stem for p in base.glob("*.py")} if base.is_dir() else set()
    return names


def test_what_the_examples_import_exists_and_is_public():
    problems = []
    for code in blocks("python"):
        for node in ast.walk(ast.parse(code)):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            names = [alias.name for alias in node.names]
            top = node.module.split(".")[0]
            if top == "harness":
                if node.module not in harness.PUBLIC_MODULES:
                    problems.append(f"{node.module} is not public")
                    continue
                module = importlib.import_module(node.module)
                problems += [f"{node.module} has no {name}" for name in names if not hasattr(module, name)]
            elif top == "harness_example":
                problems += [f"{node.module} has no {name}" for name in names if name not in example_names(node.module)]
            elif top == "harness_plugins":
                problems.append(f"an example imports {node.module}: plugins import only the public API")
    assert problems == []


def test_the_reported_row_shown_is_the_examples_own():
    shown = [tomllib.loads(code) for code in blocks("toml") if "[[results]]" in code]
    filed = tomllib.loads((EXAMPLE_SRC / "harness_example" / "reported.toml").read_text(encoding="utf-8"))
    assert shown == [filed]


def test_the_example_preset_shown_agrees_with_the_file():
    (shown,) = [tomllib.loads(code) for code in blocks("toml") if "[[presets]]" in code]
    filed = tomllib.loads((EXAMPLE_SRC / "harness_example" / "presets.toml").read_text(encoding="utf-8"))
    (preset,), (quick,) = shown["presets"], filed["presets"]
    assert shown["trainer"] == filed["trainer"]
    for key, value in preset.items():
        assert quick[key] == value if not isinstance(value, dict) else value.items() <= quick[key].items(), key


def test_headings_are_unique_anchors():
    headings = [re.sub(r"[^\w\- ]", "", s.heading.lower()).replace(" ", "-") for s in sections(text())[1:]]
    assert len(headings) == len(set(headings))
