"""The sweep spec: TOML and the quick form expand into the same cells; every mistake is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.runner import RunRequest
from harness.sweep.spec import Cell, Resources, build_spec, cell_key, quick_spec, read_spec, with_where

SPEC = """
name = "grid"
plugins = ["linf_v2", "linf_v1"]
datasets = ["mnist"]
eps = [0.1, "8/255"]
presets = ["quick"]
seeds = 2
epochs = 1
eval_samples = 50
set = ["attacker.pgd.steps=5"]
set_by_plugin = {linf_v2 = ["model.width=64"]}

[resources]
cpus = 2

[[exclude]]
plugin = "linf_v1"
eps = "8/255"

[[extra]]
plugin = "crm"
dataset = "mnist"
norm = "2"
eps = 1.58
seed = 7
"""


def quick(**given):
    options = dict(plugins="linf_v2", datasets="mnist", eps=None, norm=None, presets=None, seeds=None, overrides=(), attacks=(),
                   certifiers=(), gpus=0.0, cpus=1.0, name=None, epochs=None, train_samples=None, eval_samples=None)
    return quick_spec(**(options | given))


def test_a_spec_file_expands_its_matrix_with_excludes_and_extras(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(SPEC)
    spec = read_spec(path)
    assert spec.name == "grid"
    labels = [c.label for c in spec.cells]
    # 2 plugins x 2 radii x 2 seeds, minus linf_v1 at 8/255 (2 cells), plus one crm cell
    assert len(labels) == 7
    assert labels[0] == "linf_v2 mnist l_inf 0.1 quick seed 0 attacker.pgd.steps=5 model.width=64"
    assert "linf_v1 mnist l_inf 8/255 quick seed 0 attacker.pgd.steps=5" not in labels
    assert labels[-1] == "crm mnist l_2 1.58 seed 7 attacker.pgd.steps=5"
    first = spec.cells[0]
    assert first.request == RunRequest(trainer="linf_v2", dataset="mnist", eps=0.1, preset="quick", seed=0, epochs=1, eval_samples=50,
                                       overrides=("attacker.pgd.steps=5", "model.width=64"))
    assert all(c.resources == Resources(gpus=0, cpus=2) for c in spec.cells)


def test_the_quick_form_is_the_same_matrix_as_its_spec_file(tmp_path):
    (tmp_path / "q.toml").write_text('plugins = ["linf_v2", "linf_v1"]\ndatasets = ["mnist"]\neps = [0.1, 0.3]\nseeds = 3\npresets = ["quick"]\n')
    from_file = read_spec(tmp_path / "q.toml")
    from_flags = quick(plugins="linf_v2,linf_v1", eps="0.1,0.3", seeds="3", presets="quick")
    assert [c.key for c in from_flags.cells] == [c.key for c in from_file.cells]
    assert len(from_flags.cells) == 12
    assert from_flags.name.startswith("quick-") and from_flags.name == quick(plugins="linf_v2,linf_v1", eps="0.1,0.3", seeds="3",
                                                                               presets="quick").name
    assert [c.request.seed for c in quick(seeds="1,2,5").cells] == [1, 2, 5]
    assert [c.request.seed for c in quick(seeds="5,").cells] == [5]
    assert [c.request.seed for c in quick().cells] == [None]  # the preset's own seed


def test_a_cells_identity_leaves_out_where_it_runs():
    cell = Cell(RunRequest(trainer="linf_v2", dataset="mnist", eps=0.3, seed=1))
    placed = with_where(cell, data_dir=Path("data"), save_dir=Path("runs"), device="cuda")
    assert placed.data_dir == Path("data").absolute() and placed.device == "cuda"
    placed.checkpoint_every = 5
    assert cell_key(placed) == cell.key
    assert cell_key(json.loads(json.dumps(cell_key_source(placed)))) == cell.key  # as stored with the run
    other = Cell(RunRequest(trainer="linf_v2", dataset="mnist", eps=0.3, seed=2))
    assert other.key != cell.key and other.id != cell.id
    assert Cell(cell.request, Resources(gpus=1)).resources.device == "cuda" and cell.resources.device == "cpu"


def cell_key_source(request):
    from harness.runner import request_json

    return request_json(request)


@pytest.mark.parametrize(("spec", "message"), [
    ({"datasets": ["mnist"]}, "'plugins' is missing"),
    ({"plugins": ["a"], "datasets": ["mnist"], "sedes": 3}, "unknown key 'sedes'; did you mean 'seeds'?"),
    ({"plugins": ["a", "a"], "datasets": ["mnist"]}, "'plugins' names 'a' twice"),
    ({"plugins": ["a"], "datasets": ["mnist"], "seeds": 0}, "seeds 0 must be a count >= 1"),
    ({"plugins": ["a"], "datasets": ["mnist"], "seeds": [1, 1]}, "seeds [1, 1] repeats a seed"),
    ({"plugins": ["a"], "datasets": ["mnist"], "eps": ["big"]}, "eps 'big' is not a number"),
    ({"plugins": ["a"], "datasets": ["mnist"], "eps": ["8/255", 0.0313725]}, "a threat model is given twice: l_inf eps 8/255 and 0.0313725"),
    ({"plugins": ["a"], "datasets": ["mnist"], "eps": [0.1, 0.1]}, "a threat model is given twice: l_inf eps 0.1 and 0.1"),
    ({"plugins": ["a"], "datasets": ["mnist"], "threats": [{"norm": "inf", "eps": 0.1}, {"eps": 0.1}]}, "given twice: l_inf eps 0.1"),
    ({"plugins": ["a"], "datasets": ["mnist"], "eps": ["nan"]}, "eps 'nan' is not a finite number"),
    ({"plugins": ["a"], "datasets": ["mnist"], "norm": "3", "eps": 0.1}, "unknown norm '3'; valid norms: inf, 2"),
    ({"plugins": ["a"], "datasets": ["mnist"], "epochs": 0}, "epochs 0 must be an integer >= 1"),
    ({"plugins": ["a"], "datasets": ["mnist"], "resources": {"gpu": 1}}, "unknown key of [resources] 'gpu'; did you mean 'gpus'?"),
    ({"plugins": ["a"], "datasets": ["mnist"], "resources": {"gpus": -1}}, "resources: gpus -1 must be a number >= 0"),
    ({"plugins": ["a"], "datasets": ["mnist"], "set_by_plugin": {"b": []}}, "unknown plugin in set_by_plugin 'b'"),
    ({"plugins": ["a"], "datasets": ["mnist"], "exclude": [{"plugin": "a"}]}, "the sweep has no cells"),
    ({"plugins": ["a"], "datasets": ["mnist"], "name": "a b"}, "name 'a b' must be letters, digits"),
])
def test_spec_mistakes_are_one_line_naming_the_value(spec, message):
    with pytest.raises(UsageError) as error:
        build_spec(spec, default_name="s")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_spec_file_that_is_not_toml_or_missing_is_one_line(tmp_path):
    (tmp_path / "bad.toml").write_text("plugins = [")
    with pytest.raises(UsageError, match=r"sweep spec '.*bad.toml' is not TOML"):
        read_spec(tmp_path / "bad.toml")
    with pytest.raises(UsageError, match=r"cannot read sweep spec '.*none.toml'"):
        read_spec(tmp_path / "none.toml")
    with pytest.raises(UsageError, match=r"--seeds 'x' must be a count"):
        quick(seeds="x")
