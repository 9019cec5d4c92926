"""Make auto_LiRPA 0.3 import and trace on current torch and numpy.

auto_LiRPA 0.3 is the only release on the package registry. It declares
``torch<1.13`` and was written against APIs that have since gone; the harness
installs it with ``--no-deps`` and applies three small patches before the first
import. Each patch is a no-op where the API still exists, and each has its own
test (``tests/lirpa/test_compat.py``). Nothing is downloaded or installed here.

1. ``torch.onnx.symbolic_helper._set_opset_version`` (imported by
   ``auto_LiRPA.parse_graph``) is gone: we provide one that sets the ONNX
   exporter's global opset version, which is all it did.
2. ``torch._C.Node.__getitem__`` (``node[attr]``, used by ``parse_graph`` to
   read node attributes) is gone: we provide it through the typed accessors,
   ``getattr(node, node.kindOf(attr))(attr)``.
3. ``numpy.lib.arraysetops`` (``from numpy.lib.arraysetops import isin`` in
   ``auto_LiRPA.operators.base``) is gone in numpy 2: we register a module
   with ``isin``.
4. ``nn.Module._named_members`` gained a ``remove_duplicate`` argument, which
   ``BoundedModule``'s override does not accept, so ``parameters()`` fails:
   we wrap the override to accept it (it already removes duplicates).
   Applied right after the import.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
import warnings
from typing import Any

import numpy
import torch

#: Where torch keeps the ONNX exporter's globals, newest first.
_GLOBALS_MODULES = ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals")


def _exporter_globals() -> Any:
    for name in _GLOBALS_MODULES:
        try:
            return importlib.import_module(name).GLOBALS
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"cannot find torch's ONNX exporter globals (looked in {', '.join(_GLOBALS_MODULES)})")


def _set_opset_version(opset_version: int) -> None:
    _exporter_globals().export_onnx_opset_version = opset_version


def _node_getitem(node: torch._C.Node, attr: str) -> Any:
    return getattr(node, node.kindOf(attr))(attr)


def patch_opset_version() -> bool:
    """Patch 1; returns whether anything was patched."""
    import torch.onnx.symbolic_helper as symbolic_helper

    if hasattr(symbolic_helper, "_set_opset_version"):
        return False
    symbolic_helper._set_opset_version = _set_opset_version
    return True


def patch_node_getitem() -> bool:
    """Patch 2; returns whether anything was patched."""
    if hasattr(torch._C.Node, "__getitem__"):
        return False
    torch._C.Node.__getitem__ = _node_getitem
    return True


def patch_arraysetops() -> bool:
    """Patch 3; returns whether anything was patched."""
    try:
        importlib.import_module("numpy.lib.arraysetops")
        return False
    except ImportError:
        pass
    module = types.ModuleType("numpy.lib.arraysetops", "auto_LiRPA compatibility: numpy 2 removed this module")
    module.isin = numpy.isin
    sys.modules["numpy.lib.arraysetops"] = module
    numpy.lib.arraysetops = module
    return True


def patch_named_members(bounded_module_class: type) -> bool:
    """Patch 4 on ``auto_LiRPA.BoundedModule``; returns whether anything was patched."""
    original = bounded_module_class._named_members
    if getattr(original, "_harness_compat", False) or "remove_duplicate" in inspect.signature(original).parameters:
        return False

    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
        # The override yields each member once, which is what remove_duplicate=True asks for.
        return original(self, get_members_fn, prefix=prefix, recurse=recurse)

    _named_members._harness_compat = True
    bounded_module_class._named_members = _named_members
    return True


def apply() -> None:
    """Apply the patches needed before the import (idempotent)."""
    patch_opset_version()
    patch_node_getitem()
    patch_arraysetops()


def _quiet_jit_script(show: Any) -> Any:
    def showwarning(message, category, *args, **kwargs):
        if not (issubclass(category, DeprecationWarning) and "torch.jit.script" in str(message)):
            show(message, category, *args, **kwargs)

    return showwarning


INSTALL_HINT = "pip install --no-deps auto-lirpa==0.3 (scripts/setup-venv.sh does this)"


def import_auto_lirpa() -> types.ModuleType:
    """``auto_LiRPA``, imported after the patches.

    :raises harness.errors.UsageError: naming the install command when it is missing.
    """
    from harness.errors import UsageError

    apply()
    try:
        with warnings.catch_warnings():
            # auto_LiRPA decorates helpers with torch.jit.script, which torch now deprecates. It
            # also resets the warning filters while importing, so drop that one message at display.
            warnings.showwarning = _quiet_jit_script(warnings.showwarning)
            module = importlib.import_module("auto_LiRPA")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "auto_LiRPA":
            raise UsageError(f"auto_LiRPA is not installed; install it with: {INSTALL_HINT}") from None
        raise
    patch_named_members(module.BoundedModule)
    return module
