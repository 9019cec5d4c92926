"""Each auto_LiRPA 0.3 compatibility patch does what the import and the trace need, and only once."""

import importlib.util
import sys

import pytest
import torch
from torch import nn

from harness.errors import UsageError
from harness_plugins.lib.lirpa import compat


@pytest.fixture(scope="module")
def lirpa():
    if importlib.util.find_spec("auto_LiRPA") is None:
        pytest.skip("auto_LiRPA is not installed")
    return compat.import_auto_lirpa()


def test_opset_version_sets_the_exporters_global(lirpa):
    import torch.onnx.symbolic_helper as symbolic_helper

    exporter = compat._exporter_globals()
    before = exporter.export_onnx_opset_version
    try:
        for version in (11, 13):
            symbolic_helper._set_opset_version(version)
            assert exporter.export_onnx_opset_version == version
    finally:
        exporter.export_onnx_opset_version = before


def test_node_getitem_reads_attributes_like_the_typed_accessors(lirpa):
    graph = torch._C.parse_ir(
        """graph(%x : Tensor):
  %i : int = prim::Constant[value=3]()
  %f : float = prim::Constant[value=2.5]()
  %y : Tensor = aten::mul(%x, %f)
  return (%y, %i)"""
    )
    constants = [node for node in graph.nodes() if node.kind() == "prim::Constant"]
    assert [node["value"] for node in constants] == [3, 2.5]
    assert [node["value"] for node in constants] == [constants[0].i("value"), constants[1].f("value")]


def test_arraysetops_has_a_working_isin(lirpa):
    from numpy.lib.arraysetops import isin

    assert isin([1, 2, 3], [2, 5]).tolist() == [False, True, False]


def test_bounded_module_parameters_are_the_modules_own(lirpa):
    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    bounded = lirpa.BoundedModule(module, torch.zeros(1, 4))
    assert {id(p) for p in bounded.parameters()} == {id(p) for p in module.parameters()}
    assert len(list(bounded.named_parameters())) == 4


def test_apply_is_idempotent(lirpa):
    import torch.onnx.symbolic_helper as symbolic_helper

    patched = (symbolic_helper._set_opset_version, torch._C.Node.__getitem__, sys.modules["numpy.lib.arraysetops"])
    compat.apply()
    assert (symbolic_helper._set_opset_version, torch._C.Node.__getitem__, sys.modules["numpy.lib.arraysetops"]) == patched
    assert not any((compat.patch_opset_version(), compat.patch_node_getitem(), compat.patch_arraysetops()))
    assert not compat.patch_named_members(lirpa.BoundedModule)
    assert compat.import_auto_lirpa() is lirpa


def test_a_missing_auto_lirpa_is_a_one_line_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)
    with pytest.raises(UsageError, match="auto_LiRPA is not installed; install it with: pip install --no-deps auto-lirpa==0.3"):
        compat.import_auto_lirpa()
