"""The layers, read from the source with ``ast``: plugins stand on the public API and the library, never on each other.

* a plugin (``plugins/NAME``, installed as ``harness_plugins.NAME``) imports the
  public ``harness`` API (:data:`harness.PUBLIC_MODULES`), the library
  (``harness_plugins.lib``), the data files (``harness_registry``) and its own
  modules; never another plugin, never a private ``harness`` module;
* a library module imports the public API and the library only, and registers
  nothing (no hook implementations);
* the example plugin in ``examples/`` (its tests included) imports the public
  API only, as any third-party plugin should.

Imports inside functions count: a lazy import is still an edge.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
from harness import hookspecs

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"
HOOKS = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "harness_spec")}


@dataclass(frozen=True)
class Source:
    """A file as the layering rules see it: its module name and its text."""

    module: str
    text: str
    path: str


def plugin_sources() -> list[Source]:
    sources = []
    for path in sorted(PLUGINS.rglob("*.py")):
        parts = list(path.relative_to(PLUGINS).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        sources.append(Source(".".join(["harness_plugins", *parts]), path.read_text(), str(path.relative_to(REPO))))
    return sources


def example_sources() -> list[Source]:
    root = REPO / "examples"
    return [Source("example", p.read_text(), str(p.relative_to(REPO))) for p in sorted(root.rglob("*.py"))]


def imported_modules(source: Source) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in the file, relative imports resolved against its package."""
    tree = ast.parse(source.text)
    package = source.module if source.path.endswith("__init__.py") else source.module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from harness_plugins import linf_v1`` imports a plugin, ``from harness import runner`` a host module.
            if module in ("harness_plugins", "harness_plugins.lib") or (module == "harness" and node.level == 0):
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if submodule(module, alias.name)]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__"):
            # importlib.import_module("harness_plugins.liplt.certifiers") is an import as well
            found += [(node.lineno, arg.value) for arg in node.args[:1] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    return found


def submodule(package: str, name: str) -> bool:
    """Whether ``package.name`` is a module (not a name the package exports)."""
    if package.startswith("harness_plugins"):
        return True
    return (REPO / "harness" / f"{name}.py").exists() or (REPO / "harness" / name / "__init__.py").exists()


def owner(module: str) -> str | None:
    """The plugin (or ``lib``) a ``harness_plugins`` module belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "harness_plugins" and len(parts) > 1 else None


def public(module: str) -> bool:
    return module in harness.PUBLIC_MODULES


def violations(source: Source) -> list[str]:
    """What ``source`` imports that its layer may not, one line each."""
    mine = "example" if source.module == "example" else owner(source.module)
    problems = []
    for line, module in imported_modules(source):
        top = module.split(".")[0]
        where = f"{source.path}:{line} imports {module}"
        if top == "harness" and not public(module):
            problems.append(f"{where}: a private harness module (public: harness.PUBLIC_MODULES)")
        elif top == "harness_plugins":
            theirs = owner(module)
            if mine == "example":
                problems.append(f"{where}: a third-party plugin imports only the public harness API")
            elif theirs is None:
                continue  # ``import harness_plugins`` itself: the package docstring
            elif mine == "lib" and theirs != "lib":
                problems.append(f"{where}: the library imports no plugin")
            elif mine != "lib" and theirs not in ("lib", mine):
                problems.append(f"{where}: plugin {mine!r} imports plugin {theirs!r}; share the code through harness_plugins.lib")
        elif top == "harness_registry" and mine in ("lib", "example"):
            problems.append(f"{where}: only built-in plugins register the data files")
    return problems


def registrations(source: Source) -> list[str]:
    """Hook implementations in ``source`` (a library module must have none)."""
    found = []
    for node in ast.walk(ast.parse(source.text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            marked = any("hookimpl" in ast.unparse(d) for d in node.decorator_list)
            if marked or node.name in HOOKS:
                found.append(f"{source.path}:{node.lineno} defines {node.name}")
    return found


def test_plugins_import_only_the_public_api_the_library_and_themselves():
    problems = [p for source in plugin_sources() for p in violations(source)]
    assert problems == [], "\n".join(problems)


def test_the_library_registers_nothing():
    library = [s for s in plugin_sources() if owner(s.module) == "lib"]
    assert library, "no library modules found"
    problems = [p for source in library for p in registrations(source)]
    assert problems == [], "\n".join(problems)


def test_the_example_plugin_imports_only_the_public_api():
    sources = example_sources()
    assert any(s.path.endswith("__init__.py") for s in sources), "no example plugin under examples/"
    problems = [p for source in sources for p in violations(source)]
    assert problems == [], "\n".join(problems)


def test_every_public_module_exists():
    import importlib

    for name in harness.PUBLIC_MODULES:
        importlib.import_module(name)


# -- the checker itself fails on the edges this layering replaced ------------------------------------------


@pytest.mark.parametrize(
    ("module", "text", "expected"),
    [
        # linf_mlp used the lirpa plugin's certifier module and linf_v1's trainer
        ("harness_plugins.linf_mlp.trainer", "from harness_plugins.lirpa.certifiers import bounds_for", "imports plugin 'lirpa'"),
        ("harness_plugins.linf_mlp.trainer", "from harness_plugins.linf_v1.trainer import V1Recipe", "imports plugin 'linf_v1'"),
        # crm used the liplt plugin; liplt and lirpa used the certifiers plugin as a library
        ("harness_plugins.crm.trainer", "from harness_plugins.liplt.power import pairwise", "imports plugin 'liplt'"),
        ("harness_plugins.liplt.certifiers", "from harness_plugins.certifiers import full_float32", "imports plugin 'certifiers'"),
        ("harness_plugins.linf_v2.trainer", "from harness_plugins import lpdist", "imports plugin 'lpdist'"),
        ("harness_plugins.crm.model", "from ..liplt.chain import Chain", "imports plugin 'liplt'"),
        ("harness_plugins.crm.model", "def f():\n    import harness_plugins.liplt.chain", "imports plugin 'liplt'"),
        # a private host module, and the library reaching up into a plugin
        ("harness_plugins.lpdist.bench", "from harness.render import text_table", "a private harness module"),
        ("harness_plugins.lpdist.bench", "from harness import runner", "a private harness module"),
        ("harness_plugins.crm.trainer", "import importlib\nimportlib.import_module('harness_plugins.liplt.certifiers')", "imports plugin 'liplt'"),
        ("harness_plugins.lib.margins", "from harness_plugins.certifiers.margins import runner_up", "the library imports no plugin"),
        ("example", "from harness_plugins.lib.margins import runner_up", "only the public harness API"),
    ],
)
def test_the_checker_refuses_cross_plugin_edges(module, text, expected):
    (problem,) = violations(Source(module, text, "x.py"))
    assert expected in problem


def test_the_checker_allows_the_library_own_modules_and_the_public_api():
    text = (
        "from harness import Trainer\nfrom harness.options import doc_field\nfrom harness_plugins.lib.lpdist import set_p\n"
        "from harness_plugins.crm.loss import robust_term\nfrom . import model\nimport torch\nfrom harness_registry import path\n"
    )
    assert violations(Source("harness_plugins.crm.trainer", text, "plugins/crm/trainer.py")) == []


def test_the_checker_finds_registrations():
    text = "from harness import hookimpl\n@hookimpl\ndef register_models():\n    return []\n"
    assert len(registrations(Source("harness_plugins.lib.x", text, "x.py"))) == 1
