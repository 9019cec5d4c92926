"""Runs that differ only by seed are one leaderboard row: what counts as "only by seed", the statistics, every format,
--per-seed, and the n of reported numbers."""

import copy
import csv
import io
import json
from datetime import UTC, datetime

import pytest

from harness import leaderboard, render
from harness.reported import read_reported
from harness.results import AttackResult, CertifierResult, EvaluationResult
from harness.store import EvaluationRecord, RunInfo, RunRecord


def config(seed=0):
    """A run's stored configuration, shaped as :meth:`harness.runner.Plan.config` writes it."""
    evaluation = {
        "samples": 100, "subset_seed": 0, "batch_size": 500,
        "attackers": [{"name": "pgd", "plugin": "torchattacks", "label": "PGD-10", "options": {"steps": 10, "restarts": 1}}],
        "certifiers": [{"name": "interval", "plugin": "certifiers", "options": {}}],
        "not_applicable": {"crown": "LinfDistNet has what auto_LiRPA cannot bound: LpDistLinear"},
    }
    return {
        "trainer": {"name": "linf_v2", "plugin": "linf_v2", "options": {"epochs": 3, "lr": 0.03, "batch_size": 512}},
        "dataset": "mnist",
        "threat": {"norm": "inf", "eps": 0.3},
        "preset": "quick",
        "preset_source": "harness: paper-0.3 scaled down",
        "seed": seed,
        "device": {"requested": "auto", "used": "cpu"},
        "model": {"name": "linf_dist_net", "plugin": "lpdist", "options": {"depth": 3, "width": 64}},
        "train_samples": 2000,
        "evaluation": evaluation,
        "overrides": ["model.width=64"],
        "request": {
            "trainer": "linf_v2", "dataset": "mnist", "eps": None, "norm": None, "preset": "quick", "no_preset": False, "model": None,
            "epochs": 3, "seed": seed, "device": "auto", "eval_samples": 100, "eval_batch_size": 500, "train_samples": 2000,
            "attacks": None, "certifiers": None, "overrides": ["model.width=64"], "data_dir": "/data", "save_dir": None, "checkpoint_every": 1,
        },
    }


def run(run_id, certified, *, seed=0, clean=0.9, robust=None, cfg=None, crown=None, origin="trained", eps=0.3):
    cfg = config(seed) if cfg is None else cfg
    info = RunInfo(trainer="linf_v2", dataset="mnist", norm="inf", eps=eps, preset="quick", seed=seed, epochs=3, config=cfg,
                   device="cpu", environment={}, origin=origin)
    certifiers = [CertifierResult("interval", accuracy=certified, samples=100)]
    if crown is not None:
        certifiers.append(CertifierResult("crown", error=crown) if isinstance(crown, str) else CertifierResult("crown", accuracy=crown, samples=100))
    robust = certified + 0.05 if robust is None else robust
    result = EvaluationResult(
        samples=100, clean_accuracy=clean, robust_accuracy=robust, certified_accuracy=certified,
        attacks=(AttackResult("pgd", label="PGD-10", accuracy=robust, attacked=90),), certifiers=tuple(certifiers),
    )
    evaluation = EvaluationRecord(id=run_id, run_id=run_id, created_at=datetime.now(UTC), seconds=1.0, config=cfg.get("evaluation", {}),
                                  environment={}, result=result)
    return RunRecord(id=run_id, info=info, status="finished", created_at=datetime.now(UTC), finished_at=None,
                     train_seconds=10.0 * run_id, error=None, evaluations=[evaluation], best=evaluation)


def changed(path, value, seed=1):
    """A configuration that differs from ``config()`` at ``path`` (and, unless 0, in seed)."""
    cfg = config(seed)
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node[key]
    node[last] = value
    return cfg


def rows(runs, **kwargs):
    (group,) = leaderboard.build(runs, [], **kwargs)
    return group.rows


# -- what counts as "only by seed" --------------------------------------------------------------------------


@pytest.mark.parametrize("path, value", [
    ("device.used", "cuda:0"),                        # where it ran
    ("device.requested", "cuda"),
    ("request.device", "cuda"),
    ("request.data_dir", "/elsewhere"),
    ("request.save_dir", "/runs"),
    ("request.checkpoint_every", 5),
    ("sweep", {"name": "grid", "cell": "linf_v2/mnist/0.3"}),  # sweep bookkeeping
    ("request.preset", None),                          # the same preset, chosen by default rather than named
    ("overrides", ["model.width=64.0"]),               # an override spelled differently, resolved the same
    ("request.overrides", ["model.width=64.0"]),
    ("preset_source", "edited wording"),
    ("evaluation.not_applicable", {}),                 # why other certifiers did not apply: not a choice
])
def test_runs_that_differ_only_by_seed_or_where_they_ran_are_one_row(path, value):
    (row,) = rows([run(1, 0.30), run(2, 0.34, seed=1, cfg=changed(path, value))])
    assert row.n == 2 and row.seeds == [0, 1] and [r.run_id for r in row.runs] == [1, 2]
    assert leaderboard.seed_group_key(run(1, 0.3)) == leaderboard.seed_group_key(run(2, 0.3, seed=1, cfg=changed(path, value)))


@pytest.mark.parametrize("path, value", [
    ("trainer.options.lr", 0.01),                      # a trainer option
    ("trainer.options.epochs", 4),                     # epochs
    ("trainer.name", "linf_v1"),                       # another trainer
    ("trainer.plugin", "fork"),                        # the same name from another plugin
    ("model.options.width", 128),                      # a model option
    ("model.name", "other_net"),
    ("preset", "paper"),
    ("train_samples", 1000),
    ("evaluation.samples", 200),                       # evaluation components and their settings
    ("evaluation.batch_size", 100),
    ("evaluation.attackers", []),
    ("evaluation.attackers.0.options.steps", 20),
    ("evaluation.certifiers", []),
    ("new_setting", 2),                                # a key a later harness records counts until ignored
])
def test_runs_that_differ_in_anything_else_are_rows_of_their_own(path, value):
    if path == "evaluation.attackers.0.options.steps":
        cfg = config(1)
        cfg["evaluation"]["attackers"][0]["options"]["steps"] = value
    else:
        cfg = changed(path, value)
    assert [r.n for r in rows([run(1, 0.30), run(2, 0.34, seed=1, cfg=cfg)])] == [1, 1]


def test_an_exact_multi_process_run_groups_with_single_process_runs_a_local_one_does_not():
    """Exact batch statistics train what one process trains: world size and backend are where it ran. Local ones
    shift by each process's slice: another model, and another one for each world size."""
    def ddp(seed, size=2, stats="exact", backend="gloo"):
        cfg = config(seed)
        cfg["distributed"] = {"world_size": size, "backend": backend, "batch_stats": stats}
        return cfg

    exact = [run(1, 0.30), run(2, 0.34, seed=1, cfg=ddp(1)), run(3, 0.32, seed=2, cfg=ddp(2, size=4, backend="nccl"))]
    assert [r.n for r in rows(exact)] == [3]
    local = [run(1, 0.30), run(2, 0.34, seed=1, cfg=ddp(1, stats="local")), run(3, 0.32, seed=2, cfg=ddp(2, size=4, stats="local")),
             run(4, 0.31, seed=3, cfg=ddp(3, stats="local", backend="nccl"))]
    assert sorted(r.n for r in rows(local)) == [1, 1, 2]


def test_two_runs_of_one_seed_are_one_sample_the_newest():
    """A seed run twice (by hand, or by two sweeps at once) is one sample repeated: n counts seeds, not runs."""
    (row,) = rows([run(1, 0.30), run(2, 0.34, seed=1), run(3, 0.31)])
    assert row.n == 2 and row.seeds == [0, 1] and [r.run_id for r in row.runs] == [3, 2]
    assert row.certified == pytest.approx(0.325)
    assert sorted(r.run_id for r in rows([run(1, 0.30), run(2, 0.34, seed=1), run(3, 0.31)], per_seed=True)) == [1, 2, 3]


def test_the_evaluation_compared_is_the_one_the_row_shows():
    """A run evaluated again more completely (harness eval) shows that evaluation: it no longer matches its seed siblings."""
    again = run(2, 0.34, seed=1)
    more = copy.deepcopy(again.best)
    more.id, more.config = 3, {**more.config, "samples": 1000}
    again.evaluations.append(more)
    again.best = more
    assert [r.n for r in rows([run(1, 0.30), again])] == [1, 1]


def test_a_radius_typed_two_ways_is_the_same_configuration_and_external_models_never_group():
    typed = changed("threat.eps", 0.0313725)
    exact = changed("threat.eps", 8 / 255, seed=0)
    assert leaderboard.configuration_key(typed) == leaderboard.configuration_key(exact)
    assert leaderboard.configuration_key(config(0)) != leaderboard.configuration_key(changed("threat.eps", 0.1))
    # evaluation={} compares the training configuration alone (a run before and after its evaluation, say).
    other_evaluation = changed("evaluation.samples", 5)
    assert leaderboard.configuration_key(other_evaluation) != leaderboard.configuration_key(config(0))
    assert leaderboard.configuration_key(other_evaluation, {}) == leaderboard.configuration_key(config(0), {})
    external = [run(1, 0.3, origin="external"), run(2, 0.3, origin="external")]
    assert [r.n for r in rows(external)] == [1, 1]
    bare = [run(1, 0.3, cfg={}), run(2, 0.3, cfg={})]  # no stored configuration: nothing to compare
    assert [r.n for r in rows(bare)] == [1, 1]


# -- the statistics --------------------------------------------------------------------------------------------


def test_mean_sample_std_and_n_and_ranking_by_the_mean():
    seeds = [run(1, 0.30, seed=0, clean=0.90), run(2, 0.32, seed=1, clean=0.91), run(3, 0.34, seed=2, clean=0.95)]
    single = run(4, 0.33, seed=7, cfg=changed("trainer.options.lr", 0.01, seed=7))
    best, grouped = rows([*seeds, single])
    assert (best.run_id, best.n, best.rank, best.certified_std, best.statistic) == (4, 1, 1, None, None)  # n = 1: its own number
    assert (grouped.rank, grouped.n, grouped.statistic, grouped.run_id) == (2, 3, "mean", None)
    assert grouped.certified == pytest.approx(0.32) and grouped.certified_std == pytest.approx(0.02)  # sample std (n - 1)
    assert grouped.clean == pytest.approx(0.92) and grouped.clean_std == pytest.approx(0.026457513, rel=1e-6)
    assert grouped.robust == pytest.approx(0.37) and grouped.robust_std == pytest.approx(0.02)
    assert grouped.train_seconds == pytest.approx(20.0)
    assert [(r.seed, r.run_id, r.certified) for r in grouped.runs] == [(0, 1, 0.30), (1, 2, 0.32), (2, 3, 0.34)]
    cell = grouped.by_certifier["interval"]
    assert (cell.accuracy, cell.n) == (pytest.approx(0.32), 3) and cell.std == pytest.approx(0.02)


def test_a_certifier_that_failed_in_some_seeds_is_averaged_over_the_others_and_says_so():
    group = [run(1, 0.3, seed=0, crown=0.1), run(2, 0.3, seed=1, crown=0.3), run(3, 0.3, seed=2, crown="raised ValueError: boom")]
    (row,) = rows(group)
    crown = row.by_certifier["crown"]
    assert (crown.accuracy, crown.n, crown.error) == (pytest.approx(0.2), 2, None) and crown.std == pytest.approx(0.141421356)
    assert row.errors == ["run 3 (seed 2): certifier 'crown': raised ValueError: boom"]
    table = render.leaderboard(leaderboard.build(group, []), "table")
    assert "crown 20.00 ± 14.14 (2 of 3)" in table and "linf_v2 (errors)" in table
    (all_failed,) = rows([run(1, 0.3, seed=0, crown="boom"), run(2, 0.3, seed=1, crown="boom")])
    assert all_failed.by_certifier["crown"].error == "boom" and "crown ERROR" in render.leaderboard(
        leaderboard.build([run(1, 0.3, seed=0, crown="boom"), run(2, 0.3, seed=1, crown="boom")], []), "table")


def test_a_number_missing_or_not_finite_in_one_seed_says_over_how_many_the_mean_is():
    """The mean leaves out a run without the number (its attack failed) or with a NaN; the count shown must agree."""
    import dataclasses
    import math

    failed = run(2, 0.34, seed=1)
    result = dataclasses.replace(failed.best.result, robust_accuracy=None, attacks=(AttackResult("pgd", label="PGD-10", error="boom"),))
    evaluation = dataclasses.replace(failed.best, result=result)
    failed = dataclasses.replace(failed, evaluations=[evaluation], best=evaluation)
    (row,) = rows([run(1, 0.30, robust=0.40), failed, run(3, math.nan, seed=2, robust=math.nan)])
    assert row.n == 3 and row.robust == 0.40 and row.certified == 0.32
    table = render.leaderboard(leaderboard.build([run(1, 0.30, robust=0.40), failed, run(3, math.nan, seed=2, robust=math.nan)], []),
                               "table")
    assert "40.00 (1 of 3)" in table and "32.00 ± 2.83 (2 of 3)" in table
    groups = leaderboard.build([run(1, 0.30, robust=0.40), failed, run(3, math.nan, seed=2, robust=math.nan)], [])
    strict = json.loads(render.leaderboard(groups, "json"), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert [r["certified"] for r in strict[0]["rows"][0]["runs"]] == [0.30, 0.34, None]
    assert "NaN" not in render.leaderboard(groups, "csv")


def test_spread_formatting():
    assert render.spread(0.9333, 0.0008, 8) == "93.33 ± 0.08 (8)"
    assert render.spread(0.9333, None, 1, of=1) == "93.33"
    assert render.spread(0.4, None, 1, of=3) == "40.00 (1 of 3)"
    assert render.spread(0.4, 0.01, 2, of=3) == "40.00 ± 1.00 (2 of 3)"
    assert render.spread(0.932, None, 8, statistic="median") == "93.20 (median of 8)"
    assert render.spread(None, None, 0, of=2) == "—"
    assert render.spread(0.932, None, None) == "93.20"


# -- every format, and --per-seed ---------------------------------------------------------------------------------


SEEDS = [run(1, 0.30, seed=0), run(2, 0.32, seed=1), run(3, 0.34, seed=2)]


def test_table_and_markdown_show_mean_std_n_seeds_and_runs():
    groups = leaderboard.build(SEEDS, [])
    table = render.leaderboard(groups, "table")
    header, _, line = table.splitlines()[1:4]
    assert "seeds" in header and "samples" in header
    assert "32.00 ± 2.00 (3)" in line and "37.00 ± 2.00 (3) PGD-10" in line and "90.00 ± 0.00 (3)" in line
    assert " 0,1,2 " in line and line.rstrip().endswith("1,2,3") and "interval 32.00 ± 2.00 (3)" in line
    md = render.leaderboard(groups, "markdown")
    assert "| 1 | linf_v2 | quick (train 2000) | 0,1,2 | 90.00 ± 0.00 (3) | 37.00 ± 2.00 (3) PGD-10 | 32.00 ± 2.00 (3) |" in md


def test_json_and_csv_carry_every_seed_besides_the_aggregates():
    groups = leaderboard.build(SEEDS, [])
    (row,) = json.loads(render.leaderboard(groups, "json"))[0]["rows"]
    assert (row["n"], row["statistic"], row["seeds"], row["run_id"]) == (3, "mean", [0, 1, 2], None)
    assert row["certified"] == pytest.approx(0.32) and row["certified_std"] == pytest.approx(0.02)
    assert [(r["seed"], r["run_id"], r["evaluation_id"], r["certified"]) for r in row["runs"]] == [(0, 1, 1, 0.3), (1, 2, 2, 0.32), (2, 3, 3, 0.34)]
    assert row["runs"][0]["by_certifier"]["interval"]["accuracy"] == 0.3 and row["by_certifier"]["interval"]["n"] == 3
    (line,) = csv.DictReader(io.StringIO(render.leaderboard(groups, "csv")))
    assert (line["n"], line["statistic"], json.loads(line["seeds"]), json.loads(line["run_ids"])) == ("3", "mean", [0, 1, 2], [1, 2, 3])
    assert float(line["certified"]) == pytest.approx(0.32) and float(line["certified_std"]) == pytest.approx(0.02)
    assert [r["certified"] for r in json.loads(line["runs"])] == [0.3, 0.32, 0.34]
    assert list(line)[:20] == ["dataset", "norm", "eps", "kind", "rank", "trainer", "label", "preset", "clean", "robust", "attack", "certified",
                               "by_certifier", "epochs", "train_seconds", "eval_samples", "train_samples", "run_id", "source", "errors"]


def test_per_seed_shows_every_run_apart_as_before():
    per = rows(SEEDS, per_seed=True)
    assert [(r.run_id, r.rank, r.n, r.seeds, r.certified_std) for r in per] == [(3, 1, 1, [2], None), (2, 2, 1, [1], None), (1, 3, 1, [0], None)]
    table = render.leaderboard(leaderboard.build(SEEDS, [], per_seed=True), "table")
    assert "±" not in table and "34.00" in table


# -- reported numbers keep their own n -----------------------------------------------------------------------------


def test_reported_rows_carry_the_papers_n_statistic_and_std(tmp_path):
    path = tmp_path / "reported.toml"
    path.write_text("""
[[results]]
label = "median row"
dataset = "mnist"
eps = 0.3
certified = 93.20
runs = 8
statistic = "median"
source = "a paper, Table 2"

[[results]]
label = "mean row"
dataset = "mnist"
eps = 0.3
clean = 98.59
certified = 93.33
certified_std = 0.08
runs = 8
statistic = "mean"
source = "logs"

[[results]]
label = "no n"
dataset = "mnist"
eps = 0.3
certified = 90.0
source = "another"
""")
    found = read_reported(path, "p")
    assert found.problems == []
    median, mean, plain = found.rows
    assert (median.runs, median.statistic, median.certified_std) == (8, "median", None)
    assert (mean.runs, mean.statistic) == (8, "mean") and mean.certified_std == pytest.approx(0.0008)
    assert (plain.runs, plain.statistic) == (None, None)
    group = leaderboard.build([run(1, 0.3)], found.rows)[0]
    by_label = {r.label: r for r in group.rows}
    assert (by_label["median row"].n, by_label["median row"].statistic) == (8, "median") and by_label["no n"].n is None
    table = render.leaderboard([group], "table")
    assert "93.20 (median of 8)" in table and "93.33 ± 0.08 (8)" in table and "98.59 (mean of 8)" in table
    data = json.loads(render.leaderboard([group], "json"))[0]["rows"]
    assert {r["label"]: (r["n"], r["statistic"], r["certified_std"]) for r in data if r["kind"] == "reported"} == {
        "median row": (8, "median", None), "mean row": (8, "mean", pytest.approx(0.0008)), "no n": (None, None, None)}


@pytest.mark.parametrize("extra, problem", [
    ("runs = 0", "'runs' must be >= 1, got 0"),
    ("runs = 8\nstatistic = \"max\"", "'statistic' must be one of median, mean, got 'max'"),
    ("certified_std = 0.3", "'certified_std' needs 'runs' >= 2"),
    ("runs = 1\nstatistic = \"mean\"", "'statistic' needs 'runs' >= 2"),
    ("runs = 8\npgd_std = 101", "'pgd_std' is 101.0, not a percentage"),
])
def test_a_reported_row_with_a_bad_n_is_a_problem_naming_it(tmp_path, extra, problem):
    path = tmp_path / "reported.toml"
    path.write_text(f'[[results]]\nlabel = "x"\ndataset = "mnist"\neps = 0.3\ncertified = 90.0\nsource = "s"\n{extra}\n')
    found = read_reported(path, "p")
    assert found.rows == [] and len(found.problems) == 1 and problem in found.problems[0][1]


def test_the_registered_papers_state_n_only_where_the_paper_does(catalog):
    by = {(r.plugin, r.label, r.dataset, round(r.eps, 4)): r for r in catalog.reported}
    v2 = [r for r in catalog.reported if r.trainer == "linf_v2"]
    assert v2 and all((r.runs, r.statistic) == (8, "median") and "Section 5.1" in r.source for r in v2)  # ICLR 2022 §5.1
    table1 = [r for r in catalog.reported if r.trainer in ("linf_v1", "linf_mlp") and "Table 1" in r.source]
    assert len(table1) == 6 and all((r.runs, r.statistic) == (8, "median") and "Appendix D" in r.source for r in table1)
    tiny = by[("linf_mlp", "l_inf-dist net + MLP", "tinyimagenet", round(1 / 255, 4))]
    assert tiny.runs is None  # Table 2: Appendix D states the 8 runs for Table 1 only
    assert all(r.runs is None and r.certified_std is None for r in catalog.reported if r.trainer == "crm")


# -- through the CLI, on real runs ---------------------------------------------------------------------------------


def test_the_leaderboard_command_groups_real_runs_by_seed_and_per_seed_splits_them(harness_cli, harness_tiny_data, tmp_path):
    tiny = ["run", "--plugin", "linf_v2", "--dataset", "tiny", "--no-preset", "--eps", "0.1", "--train-samples", "100", "--eval-samples", "10",
            "--set", "model.width=8", "--set", "model.depth=2", "--attack", "pgd", "--set", "attacker.pgd.steps=1", "--certifier", "interval",
            "--no-save"]
    for extra in (["--seed", "0", "--epochs", "1"],
                  ["--seed", "1", "--epochs", "1", "--device", "cpu", "--data-dir", str(tmp_path / "elsewhere")],  # where it ran: ignored
                  ["--seed", "0", "--epochs", "2"]):  # another number of epochs: another row
        r = harness_cli(*tiny, *extra, plugins=[harness_tiny_data])
        assert r.code == 0, r.err
    board = json.loads(harness_cli("leaderboard", "--format", "json", plugins=[harness_tiny_data]).out)
    measured = sorted(([r["n"], r["seeds"], [s["run_id"] for s in r["runs"]], r["epochs"]] for g in board for r in g["rows"]
                       if r["kind"] == "measured"), key=lambda row: row[3])
    assert measured == [[2, [0, 1], [1, 2], 1], [1, [0], [3], 2]]
    table = harness_cli("leaderboard", plugins=[harness_tiny_data]).out
    assert " 0,1 " in table and "(2)" in table and "1,2" in table
    per_seed = json.loads(harness_cli("leaderboard", "--per-seed", "--format", "json", plugins=[harness_tiny_data]).out)
    assert sorted(r["run_id"] for g in per_seed for r in g["rows"] if r["kind"] == "measured") == [1, 2, 3]
    assert "--per-seed" in harness_cli("leaderboard", "--help").out
