from datetime import UTC, datetime

from harness import leaderboard, render
from harness.reported import ReportedResult
from harness.results import AttackResult, CertifierResult, EvaluationResult
from harness.store import EvaluationRecord, RunInfo, RunRecord


def run(run_id, certified, clean=0.9, eps=8 / 255, dataset="cifar10", preset="quick", crown_error=None):
    info = RunInfo(trainer="m", dataset=dataset, norm="inf", eps=eps, preset=preset, seed=0, epochs=3,
                   config={}, device="cpu", environment={})
    certifiers = [CertifierResult("interval", accuracy=certified, samples=10000)]
    if crown_error is not None:
        certifiers.append(CertifierResult("crown", error=crown_error))
    result = EvaluationResult(
        samples=10000, clean_accuracy=clean, robust_accuracy=certified + 0.05, certified_accuracy=certified,
        attacks=(AttackResult("pgd", label="PGD-100", accuracy=certified + 0.05, attacked=9000),), certifiers=tuple(certifiers),
    )
    evaluation = EvaluationRecord(id=run_id, run_id=run_id, created_at=datetime.now(UTC), seconds=1.0, config={}, environment={}, result=result)
    return RunRecord(id=run_id, info=info, status="finished", created_at=datetime.now(UTC), finished_at=None,
                     train_seconds=10.0, error=None, evaluations=[evaluation], best=evaluation)


PAPER = ReportedResult(
    label="paper", dataset="cifar10", norm="inf", eps=0.0313725, certified=0.40, clean=0.54, pgd=0.42, source="Table 2", attack="PGD-100"
)


def test_runs_are_ranked_by_certified_and_reported_rows_are_not_ranked():
    (group,) = leaderboard.build([run(1, 0.30), run(2, 0.45), run(3, 0.30, clean=0.95)], [PAPER])
    assert [(r.kind, r.run_id, r.rank) for r in group.rows] == [
        ("measured", 2, 1), ("reported", None, None), ("measured", 3, 2), ("measured", 1, 3)]


def test_threat_models_group_apart_and_eps_written_two_ways_groups_together():
    groups = leaderboard.build([run(1, 0.3), run(2, 0.3, eps=2 / 255), run(3, 0.9, eps=0.3, dataset="mnist")], [PAPER])
    assert leaderboard.build([], [PAPER]) == [] and len(leaderboard.build([], [PAPER], reported_rows="all")) == 1
    expected = [("cifar10", round(2 / 255, 6), 1), ("cifar10", round(8 / 255, 6), 2), ("mnist", 0.3, 1)]
    assert [(g.dataset, round(g.eps, 6), len(g.rows)) for g in groups] == expected
    assert {r.kind for r in leaderboard.build([run(1, 0.3)], [PAPER], eps=0.0313725)[0].rows} == {"measured", "reported"}
    assert [r.kind for r in leaderboard.build([run(1, 0.3)], [PAPER], reported_rows="none")[0].rows] == ["measured"]


def test_rendering_shows_percentages_labels_and_sources():
    groups = leaderboard.build([run(1, 0.3)], [PAPER])
    table = render.leaderboard(groups, "table")
    assert "cifar10  l_inf  eps=8/255" in table and "30.00" in table and "35.00 PGD-100" in table and "reported: Table 2" in table
    assert render.leaderboard(groups, "markdown").startswith("### cifar10  l_inf  eps=8/255\n\n| rank |")
    csv_lines = render.leaderboard(groups, "csv").splitlines()
    assert csv_lines[0].startswith("dataset,norm,eps,kind,rank") and len(csv_lines) == 3
    assert render.leaderboard([], "table").startswith("no finished runs")


def test_a_failed_certifier_shows_as_an_error_and_the_row_says_so():
    groups = leaderboard.build([run(1, 0.3, crown_error="raised ValueError: boom")], [])
    row = groups[0].rows[0]
    assert row.errors == ["certifier 'crown': raised ValueError: boom"]
    table = render.leaderboard(groups, "table")
    assert "crown ERROR" in table and "interval 30.00" in table and "m (errors)" in table
