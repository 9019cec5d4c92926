"""The leaderboard's columns beyond accuracy: time-outs and errors, paper-protocol estimates, the gradient-masking
flag, cost, and certified accuracy at another radius (--at-eps), the same in every format."""

import csv
import io
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from harness import leaderboard, render
from harness.results import AttackResult, CertifierResult, EvaluationResult, GradientMasking, SampleResult
from harness.store import EvaluationRecord, RunInfo, RunRecord, open_store

EPS = 0.3


def run(run_id, *, seed=0, timeouts=0, errors=0, estimate=None, masking=None, eval_seconds=30.0, radii=True, certifiers=None):
    info = RunInfo(trainer="linf_v2", dataset="mnist", norm="inf", eps=EPS, preset="quick", seed=seed, epochs=3, config={"seed": seed},
                   device="cpu", environment={})
    if certifiers is None:
        certifiers = [CertifierResult("interval", accuracy=0.5, samples=4, timeouts=timeouts, errors=errors,
                                      radius_method="bisection" if radii else None)]
        if estimate is not None:
            certifiers.append(CertifierResult("liplt-estimate", accuracy=estimate, samples=4, sound=False))
    result = EvaluationResult(samples=4, clean_accuracy=1.0, robust_accuracy=0.75, certified_accuracy=0.5,
                              attacks=(AttackResult("pgd", label="PGD-100", accuracy=0.75, attacked=4),), certifiers=tuple(certifiers),
                              masking=masking)
    evaluation = EvaluationRecord(id=run_id, run_id=run_id, created_at=datetime.now(UTC), seconds=eval_seconds, config={}, environment={},
                                  result=result)
    return RunRecord(id=run_id, info=info, status="finished", created_at=datetime.now(UTC), finished_at=None, train_seconds=600.0,
                     error=None, evaluations=[evaluation], best=evaluation)


def per_sample(radii=True):
    """Four samples: interval radii 0.5 and 0.35 (certified at eps 0.3), 0.1 (not), and a time-out that had proven 0.25."""
    values = [0.5, 0.35, 0.1, 0.25] if radii else [None] * 4
    verdicts = [True, True, False, False]
    outcomes = ["certified", "certified", "not-certified", "timeout"]
    return [SampleResult(i, 0, 0, {"pgd": True}, {"interval": (ok, r)}, outcomes={"interval": o})
            for i, (ok, r, o) in enumerate(zip(verdicts, values, outcomes, strict=True))]


def one_row(runs, **kwargs):
    (group,) = leaderboard.build(runs, [], **kwargs)
    (row,) = group.rows
    return group, row


def test_time_outs_and_errors_show_per_certifier_and_in_their_own_column():
    group, row = one_row([run(1, timeouts=3, errors=1)])
    assert (row.timeouts, row.sample_errors) == (3, 1)
    assert (row.by_certifier["interval"].timeouts, row.by_certifier["interval"].errors) == (3, 1)
    table = render.leaderboard([group], "table")
    assert "interval 50.00 (t/o 3, err 1)" in table and "time-outs / errors" in table and " 3 / 1 " in table
    quiet, clean = one_row([run(1)])
    assert (clean.timeouts, clean.sample_errors) == (0, 0)
    assert "(t/o" not in render.leaderboard([quiet], "table") and " 0 / 0 " in render.leaderboard([quiet], "table")


def test_over_seeds_time_outs_add_up():
    _, row = one_row([run(1, seed=0, timeouts=2), run(2, seed=1, timeouts=5, errors=1)])
    assert (row.n, row.timeouts, row.sample_errors, row.by_certifier["interval"].timeouts) == (2, 7, 1, 7)


def test_an_estimate_is_a_paper_protocol_column_and_never_certified():
    group, row = one_row([run(1, estimate=0.9)])
    assert list(row.by_certifier) == ["interval"] and list(row.estimates) == ["liplt-estimate"] and row.certified == 0.5
    table = render.leaderboard([group], "table")
    header = table.splitlines()[1]
    assert "paper protocol" in header and "liplt-estimate 90.00" in table
    assert "paper protocol: a paper's own evaluation that is an estimate, not a certificate" in table
    assert "paper protocol" not in render.leaderboard(leaderboard.build([run(1)], []), "table")  # only when some row has one


def test_a_run_flagged_by_the_masking_check_is_marked_with_a_legend():
    flagged = run(1, masking=GradientMasking(zero_gradient_fraction=0.4, gradient_free_breaks=12, unreliable=True))
    group, row = one_row([flagged])
    assert (row.unreliable, row.gradient_free_breaks, row.zero_gradient_fraction) == (True, 12, 0.4)
    table = render.leaderboard([group], "table")
    assert "75.00 PGD-100 !" in table and "!: gradient masking suspected" in table
    clear = leaderboard.build([run(2, masking=GradientMasking(0.0, 0, False))], [])
    assert clear[0].rows[0].unreliable is False and "!" not in render.leaderboard(clear, "table")
    _, unchecked = one_row([run(3)])
    assert unchecked.unreliable is None
    _, seeds = one_row([run(4, seed=0, masking=GradientMasking(0.0, 0, False)), run(5, seed=1, masking=GradientMasking(0.1, 9, True))])
    assert (seeds.unreliable, seeds.gradient_free_breaks, seeds.zero_gradient_fraction) == (True, 9, pytest.approx(0.05))


def test_training_and_evaluation_time_are_columns():
    group, row = one_row([run(1, eval_seconds=90.0)])
    assert (row.train_seconds, row.eval_seconds) == (600.0, 90.0)
    table = render.leaderboard([group], "table")
    assert "train time" in table and "eval time" in table and " 10.0m " in table and " 90s " in table


def test_certified_accuracy_at_another_radius_comes_from_the_stored_radii():
    source = {1: per_sample(), 2: per_sample(radii=False)}
    samples = lambda r: source[r.id]  # noqa: E731
    group, row = one_row([run(1)], at_eps=0.2, samples=samples)
    # at 0.2: 0.5 and 0.35 (0.1 is below; the time-out's 0.25 does not count)
    assert (row.at_eps, row.certified_at, row.at_eps_missing) == (0.2, 0.5, None)
    assert one_row([run(1)], at_eps=0.4, samples=samples)[1].certified_at == 0.25
    assert one_row([run(1)], at_eps=0.05, samples=samples)[1].certified_at == 0.75
    table = render.leaderboard([group], "table")
    assert "certified at 0.2" in table.splitlines()[1] and "certified at 0.2: from the stored per-sample radii" in table
    _, bare = one_row([run(2, radii=False)], at_eps=0.2, samples=samples)
    assert (bare.certified_at, bare.at_eps_missing) == (None, "no radii")
    assert "n/a (no radii)" in render.leaderboard(leaderboard.build([run(2, radii=False)], [], at_eps=0.2, samples=samples), "table")
    # At the run's own eps the certificates are known without radii, and equal the stored number.
    assert one_row([run(2, radii=False)], at_eps=EPS, samples=samples)[1].certified_at == 0.5
    # A run whose every certifier failed (or only estimates ran) has no certified accuracy at any radius: n/a, never 0.
    failed = run(3, certifiers=[CertifierResult("interval", samples=4, error="UNSOUND certificate: certified 1 samples that pgd broke"),
                                CertifierResult("liplt-estimate", accuracy=0.75, samples=4, sound=False)])
    best = replace(failed.best, result=replace(failed.result, certified_accuracy=None))
    failed = replace(failed, evaluations=[best], best=best)
    for at in (EPS, 0.2):
        _, none = one_row([failed], at_eps=at, samples=lambda r: per_sample())
        assert (none.certified, none.certified_at, none.at_eps_missing) == (None, None, "no sound certifier without error")
    with pytest.raises(ValueError, match="at_eps needs"):
        leaderboard.build([run(1)], [], at_eps=0.2)


def test_certified_at_another_radius_over_seeds_is_a_mean_with_its_spread():
    more = per_sample()
    more[2] = SampleResult(2, 0, 0, {"pgd": True}, {"interval": (False, 0.25)}, outcomes={"interval": "not-certified"})
    source = {1: per_sample(), 2: more}
    _, row = one_row([run(1, seed=0), run(2, seed=1)], at_eps=0.2, samples=lambda r: source[r.id])
    assert (row.certified_at, row.certified_at_n) == (pytest.approx(0.625), 2) and row.certified_at_std == pytest.approx(0.1767767)
    assert "62.50 ± 17.68 (2)" in render.leaderboard(leaderboard.build([run(1, seed=0), run(2, seed=1)], [], at_eps=0.2,
                                                                       samples=lambda r: source[r.id]), "table")


def test_markdown_csv_and_json_carry_the_same_columns():
    source = {1: per_sample()}
    groups = leaderboard.build([run(1, timeouts=3, estimate=0.9, masking=GradientMasking(0.2, 5, True))], [], at_eps=0.2,
                               samples=lambda r: source[r.id])
    cols = render.columns(groups)
    keys = [c.key for c in cols]
    assert keys == ["rank", "trainer", "preset", "seeds", "clean", "robust", "certified", "certified_at", "by_certifier", "estimates",
                    "timeouts", "epochs", "train_seconds", "eval_seconds", "eval_samples", "run_id"]
    markdown = render.leaderboard(groups, "markdown")
    assert markdown.splitlines()[2] == "| " + " | ".join(c.header for c in cols) + " |"
    (line,) = csv.DictReader(io.StringIO(render.leaderboard(groups, "csv")))
    (row,) = json.loads(render.leaderboard(groups, "json"))[0]["rows"]
    for key in keys:
        assert key in line and key in row, key
    for key in ("sample_errors", "unreliable", "gradient_free_breaks", "zero_gradient_fraction", "at_eps", "at_eps_missing"):
        assert key in line and key in row, key
    assert (line["certified_at"], line["timeouts"], line["unreliable"], line["eval_seconds"]) == ("0.5", "3", "True", "30.0")
    assert (row["certified_at"], row["timeouts"], row["unreliable"], row["estimates"]["liplt-estimate"]["accuracy"]) == (0.5, 3, True, 0.9)
    values = {c.key: c.value(groups[0].rows[0]) for c in cols}
    assert (values["certified_at"], values["timeouts"], values["eval_seconds"], values["rank"]) == (0.5, 3, 30.0, 1)


def test_the_leaderboard_command_takes_at_eps_and_shows_the_new_columns(harness_cli, tmp_path):
    url = str(tmp_path / "results.db")
    store = open_store(url)
    for variant, radii in enumerate((True, False)):
        # Stored as before outcomes were: certified and radius only.
        rows = [SampleResult(s.index, s.label, s.prediction, s.attacks, s.certificates) for s in per_sample(radii)]
        config = {"variant": variant}  # two configurations: two rows
        run_id = store.create_run(RunInfo("linf_v2", "mnist", "inf", EPS, "quick", 0, 3, config, "cpu", {}))
        store.record_training(run_id, train_seconds=600.0, weights=None, training={}, config=config)
        store.record_evaluation(run_id, result=run(1).result, samples=rows, config={}, environment={}, seconds=30.0, finish=True)
    store.close()
    done = harness_cli("leaderboard", "--db", url, "--at-eps", "0.2")
    assert done.code == 0, done.err
    header = done.out.splitlines()[1]
    assert "certified at 0.2" in header and "eval time" in header and "time-outs / errors" in header
    # Stored without outcomes, the fourth sample is a plain not-certified one: its 0.25 counts at 0.2.
    assert "75.00" in done.out and "n/a (no radii)" in done.out
    bad = harness_cli("leaderboard", "--db", url, "--at-eps", "-0.1")
    assert bad.code == 2 and "--at-eps -0.1" in bad.err


def test_at_eps_on_a_real_run_counts_the_samples_whose_stored_radius_exceeds_it(harness_cli, harness_tiny_data):
    tiny = ["run", "--plugin", "linf_v2", "--dataset", "tiny", "--no-preset", "--eps", "0.1", "--train-samples", "100", "--eval-samples", "20",
            "--set", "model.width=8", "--set", "model.depth=2", "--attack", "pgd", "--set", "attacker.pgd.steps=1", "--certifier", "interval",
            "--certifier", "lipschitz-margin", "--no-save", "--seed", "0", "--epochs", "1"]
    assert harness_cli(*tiny, plugins=[harness_tiny_data]).code == 0
    shown = json.loads(harness_cli("show", "1", "--samples", "20", "--format", "json", plugins=[harness_tiny_data]).out)
    radii = [s["certificates"]["lipschitz-margin"][1] if s["label"] == s["prediction"] else 0.0 for s in shown["samples"]]
    assert any(r > 0 for r in radii)  # closed-form radii, stored per sample
    for r in (0.0, 0.03, 0.05):
        board = json.loads(harness_cli("leaderboard", "--at-eps", str(r), "--format", "json", plugins=[harness_tiny_data]).out)
        (row,) = [row for row in board[0]["rows"] if row["kind"] == "measured"]
        at_eps_stored = [s["certificates"]["lipschitz-margin"][0] or s["certificates"]["interval"][0] for s in shown["samples"]]
        expected = sum(radius > r or (ok and r <= 0.1) for radius, ok in zip(radii, at_eps_stored, strict=True)) / 20
        assert row["certified_at"] == pytest.approx(expected), r
    board = json.loads(harness_cli("leaderboard", "--at-eps", "0.1", "--format", "json", plugins=[harness_tiny_data]).out)
    assert board[0]["rows"][0]["certified_at"] == pytest.approx(shown["result"]["certified_accuracy"])  # its own eps: the stored number
