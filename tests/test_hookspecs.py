"""Meta-tests: every hook is documented and implemented somewhere."""

import inspect

from harness import hookspecs
from harness.plugins import load_plugins
from harness.testing import builtin_plugins

HOOKS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "harness_spec")]


def test_there_are_hooks_for_every_component_kind():
    kinds = ("models", "trainers", "certifiers", "attackers", "datasets", "commands")
    assert {f"register_{kind}" for kind in kinds} <= set(HOOKS)


def test_every_hook_is_typed_and_documented():
    for name in HOOKS:
        f = getattr(hookspecs, name)
        doc = inspect.getdoc(f) or ""
        assert doc.startswith("Called when"), name
        assert ":returns:" in doc or ":param" in doc, name
        assert "return" in f.__annotations__, name


def test_every_hook_but_commands_is_implemented_by_a_builtin_plugin():
    pm = load_plugins(only=builtin_plugins()).manager
    implemented = {name for name in HOOKS if getattr(pm.hook, name).get_hookimpls()}
    # register_commands is exercised by the third-party plugin test.
    assert set(HOOKS) - {"register_commands"} <= implemented
