import math

import pytest

from harness.errors import HarnessDeprecationWarning, PluginError, UsageError
from harness.presets import Preset, read_presets, select_preset


def preset(name, dataset="mnist", eps=0.3, paper=False, default=False):
    return Preset(trainer="m", name=name, dataset=dataset, norm="inf", eps=eps, source="s", file="f.toml", plugin="p", paper=paper, default=default)


PRESETS = [
    preset("paper-0.1", eps=0.1, paper=True),
    preset("paper-0.3", eps=0.3, paper=True, default=True),
    preset("quick", eps=0.3),
    preset("paper-8/255", dataset="cifar10", eps=8 / 255, paper=True, default=True),
    preset("quick", dataset="cifar10", eps=8 / 255),
]


def select(**kw):
    args = {"trainer": "m", "dataset": "mnist", "name": None, "norm": "inf", "eps": None} | kw
    return select_preset(PRESETS, **args)


def test_eps_selects_the_papers_preset_not_quick():
    assert select(eps=0.3).name == "paper-0.3"
    assert select(eps=0.1).name == "paper-0.1"
    assert select(dataset="cifar10", eps=8 / 255).name == "paper-8/255"


def test_default_and_by_name():
    assert select().name == "paper-0.3"
    assert select(name="quick").dataset == "mnist"
    assert select(name="quick", dataset="cifar10").dataset == "cifar10"


def test_no_preset_at_that_eps_lists_the_presets():
    with pytest.raises(UsageError) as exc:
        select(eps=0.2)
    assert "eps 0.2" in str(exc.value) and "paper-0.3" in str(exc.value) and "--preset" in str(exc.value)


def test_unknown_preset_names_closest_and_all():
    with pytest.raises(UsageError) as exc:
        select(name="quik")
    assert "did you mean 'quick'" in str(exc.value) and "paper-0.1" in str(exc.value)


def test_preset_of_another_dataset_says_so():
    with pytest.raises(UsageError, match="is for cifar10"):
        select(name="paper-8/255")


def test_a_dataset_without_presets_runs_on_the_defaults():
    assert select(dataset="fashion-mnist") is None


def test_a_preset_of_the_other_norm_is_refused():
    with pytest.raises(UsageError, match="preset 'quick' of 'm' is for l_inf, not --norm 2"):
        select(name="quick", norm="2")


def test_trainer_without_presets_runs_with_defaults():
    assert select_preset([], trainer="m", dataset="mnist", name=None, norm="inf", eps=0.3) is None


def test_a_malformed_preset_is_reported_and_the_file_without_a_trainer_refused(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('trainer = "m"\n[[presets]]\nname = "x"\ndataset = "mnist"\neps = 0.3\nsource = "s"\nepochs = 3\n'
                   '[[presets]]\nname = "y"\ndataset = "mnist"\neps = 0.3\nsource = "s"\n')
    found = read_presets(bad, "p")
    assert [p.name for p in found.rows] == ["y"] and found.file == "p.toml"
    assert found.problems == [("x", "unknown key 'epochs'; did you mean 'eps'? (keys: dataset, default, eps, gpu_hours, gpu_hours_source, "
                                    "model, model_options, name, norm, paper, seed, source, trainer_options)")]
    bad.write_text('[[presets]]\nname = "x"\ndataset = "mnist"\neps = 0.3\nsource = "s"\n')
    with pytest.raises(PluginError, match="must name a top-level 'trainer'"):
        read_presets(bad, "p")


# Zhang et al., ICLR 2022, Appendix B Table 3, and the commands' "--epochs 0,0,e1,e1+e2,T".
TABLE_3 = {
    # name: (depth, epochs, p_start_epoch, p_end_epoch, lam0, lam_end, crop_padding, flip)
    "paper-0.1": (5, 450, 25, 400, 0.05, 2e-4, 1, False),
    "paper-0.3": (5, 450, 25, 400, 0.05, 2e-4, 1, False),
    "paper-2/255": (6, 1300, 100, 1250, 0.05, 2e-3, 3, True),
    "paper-8/255": (6, 1300, 100, 1250, 0.1, 5e-4, 3, True),
    "paper-16/255": (6, 1300, 100, 1250, 0.1, 2e-4, 3, True),
}


def test_paper_presets_match_table_3(catalog):
    presets = {p.name: p for p in catalog.presets_for("linf_v2") if p.paper}
    assert set(presets) == set(TABLE_3)
    for name, (depth, epochs, e1, e12, lam0, lam_end, pad, flip) in TABLE_3.items():
        m, t = presets[name].model_options, presets[name].trainer_options
        assert (m["depth"], m["width"], m["identity_value"]) == (depth, 5120, 10.0), name
        assert (t["epochs"], t["p_start_epoch"], t["p_end_epoch"]) == (epochs, e1, e12), name
        assert (t["lam0"], t["lam_end"], t["crop_padding"], t["flip"], t["padding_mode"]) == (lam0, lam_end, pad, flip, "edge"), name
        assert presets[name].seed == 2021


def test_builtin_presets_cover_the_papers_settings(catalog):
    v2 = {(p.dataset, p.name): p for p in catalog.presets_for("linf_v2")}
    assert {("mnist", "paper-0.1"), ("mnist", "paper-0.3"), ("cifar10", "paper-2/255"), ("cifar10", "paper-8/255"),
            ("cifar10", "paper-16/255"), ("mnist", "quick"), ("fashion-mnist", "quick"), ("cifar10", "quick")} <= set(v2)
    # Table 3: θ = 2·eps_train; eps_train_ratio × eps reproduces the commands' eps_train.
    expected_eps_train = {"paper-0.1": 0.3, "paper-0.3": 0.45, "paper-2/255": 0.03922, "paper-8/255": 0.09411, "paper-16/255": 0.15685}
    for (_, name), p in v2.items():
        if name in expected_eps_train:
            assert p.paper and p.source
            assert p.trainer_options["eps_train_ratio"] * p.eps == pytest.approx(expected_eps_train[name], abs=2e-4)
            assert p.trainer_options["batch_size"] == 512 and p.trainer_options["lr"] == 0.03


# -- radii: exact k/255, never the commands' rounded decimals ----------------------------------------


def rounded_k255(x: float) -> int | None:
    """The k ≤ 255 whose k/255 is within 1e-3 relative of ``x`` without being ``x`` (to 1e-12), if any.

    The authors' commands round k/255 radii to 4-5 digits (0.03137 for 8/255, relative error 8e-5);
    such a value in a preset would run a slightly different threat model than the paper's.
    """
    for k in range(1, 256):
        exact = k / 255
        if abs(x - exact) <= 1e-3 * exact and not math.isclose(x, exact, rel_tol=1e-12):
            return k
    return None


def test_the_rounding_check_finds_the_commands_rounded_radii():
    # v2 --eps-test and --eps-train, v1 --eps-train, the v1 hybrid's --eps-train is 8.8/255 (not k/255)
    assert [rounded_k255(x) for x in (0.0078425, 0.03137, 0.06274, 0.03922, 0.09411, 0.15685, 0.1568)] == [2, 8, 16, 10, 24, 40, 40]
    assert rounded_k255(8 / 255) is None and rounded_k255(3 * (8 / 255)) is None and rounded_k255(0.3) is None
    assert rounded_k255(0.03451) is None and rounded_k255(0.11) is None  # 0.11 is 1.8e-3 from 28/255: the tolerance cannot grow


def test_no_preset_or_reported_radius_is_a_rounded_k_over_255(catalog):
    problems = []
    for p in catalog.presets:
        radii = {"eps": p.eps}
        ratio = p.trainer_options.get("eps_train_ratio")
        if ratio is not None:
            radii["eps_train (eps_train_ratio × eps)"] = ratio * p.eps
        for what, value in radii.items():
            if (k := rounded_k255(value)) is not None:
                problems.append(f"preset {p.trainer}/{p.dataset}/{p.name}: {what} {value!r} is {k}/255 rounded")
    for r in catalog.reported:
        if (k := rounded_k255(r.eps)) is not None:
            problems.append(f"reported {r.trainer}/{r.dataset}/{r.label}: eps {r.eps!r} is {k}/255 rounded")
    assert problems == [], "\n".join(problems)
    assert len(catalog.presets) > 20 and len(catalog.reported) > 10  # the check saw the built-in files


def test_the_reported_key_method_still_loads_with_a_deprecation_warning(tmp_path):
    from harness.reported import read_reported

    path = tmp_path / "old.toml"
    path.write_text('[[results]]\nmethod = "linf_v2"\nlabel = "old"\ndataset = "mnist"\neps = 0.3\ncertified = 93.2\nsource = "s"\n')
    with pytest.warns(HarnessDeprecationWarning, match="the key 'method' is deprecated; write trainer = 'linf_v2'"):
        (result,) = read_reported(path, "old-plugin").rows
    assert result.trainer == "linf_v2" and result.certified == pytest.approx(0.932)


def test_the_cli_shows_the_deprecation_on_one_line(tmp_path, harness_cli):
    from harness import hookimpl

    path = tmp_path / "old.toml"
    path.write_text('[[results]]\nmethod = "linf_v2"\nlabel = "old"\ndataset = "mnist"\neps = 0.3\ncertified = 93.2\nsource = "s"\n')

    class Old:
        @hookimpl
        def register_reported_results(self):
            return [path]

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        r = harness_cli("plugins", "--check", plugins=[Old()])
    assert r.code == 0
    assert r.err.strip().splitlines() == [
        "warning: reported result 'old' in old.toml (plugin 'Old'): the key 'method' is deprecated; write trainer = 'linf_v2'"]


def test_a_presets_gpu_hours_come_with_their_source(tmp_path):
    path = tmp_path / "p.toml"
    head = '[[presets]]\nname = "{}"\ndataset = "mnist"\neps = 0.3\nsource = "s"\n'
    path.write_text('trainer = "m"\n' + head.format("timed") + 'gpu_hours = 9.5\ngpu_hours_source = "the paper, Appendix C"\n'
                    + head.format("unsourced") + "gpu_hours = 2\n" + head.format("negative") + 'gpu_hours = -1\ngpu_hours_source = "x"\n'
                    + head.format("untimed"))
    found = read_presets(path, "p")
    assert [(p.name, p.gpu_hours, p.gpu_hours_source) for p in found.rows] == [
        ("timed", 9.5, "the paper, Appendix C"), ("untimed", None, None)]
    assert found.problems == [("unsourced", "'gpu_hours' and 'gpu_hours_source' go together (a time needs its source)"),
                              ("negative", "'gpu_hours' must be > 0, got -1.0")]
