"""The figures (harness.plots) and `harness plot`: each figure's data, and the files it renders to."""

import json
import struct
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from matplotlib.image import imread

from harness import curves, leaderboard, plots
from harness.errors import UsageError
from harness.reported import ReportedResult
from harness.results import AttackResult, CertifierResult, EvaluationResult, SampleResult
from harness.store import EvaluationRecord, RunInfo, RunRecord, open_store

EPS = 0.3


def samples(radii, certified_without_radius=0, wrong=0):
    """Correctly classified samples with these interval radii (certified where >= EPS), then some certified by a certifier
    without radii, then misclassified ones."""
    rows = [SampleResult(i, 1, 1, {"pgd": r >= EPS}, {"interval": (r >= EPS, r)}) for i, r in enumerate(radii)]
    n = len(rows)
    rows += [SampleResult(n + i, 1, 1, {"pgd": True}, {"crown": (True, None)}) for i in range(certified_without_radius)]
    n = len(rows)
    rows += [SampleResult(n + i, 1, 0, {"pgd": False}, {}) for i in range(wrong)]
    return rows


def result_of(rows, robust=None):
    n = len(rows)
    certified = sum(any(ok for ok, _ in s.certificates.values()) for s in rows) / n
    return EvaluationResult(
        samples=n, clean_accuracy=sum(s.label == s.prediction for s in rows) / n,
        robust_accuracy=robust if robust is not None else sum(all(s.attacks.values()) for s in rows) / n, certified_accuracy=certified,
        attacks=(AttackResult("pgd", label="PGD-100", accuracy=robust, attacked=n),),
        certifiers=(CertifierResult("interval", accuracy=certified, samples=n), CertifierResult("crown", accuracy=0.0, samples=n)),
    )


def record(run_id, rows, *, trainer="linf_v2", norm="inf", seed=0, robust=None):
    info = RunInfo(trainer=trainer, dataset="mnist", norm=norm, eps=EPS, preset="quick", seed=seed, epochs=3, config={"trainer": trainer},
                   device="cpu", environment={})
    evaluation = EvaluationRecord(id=run_id, run_id=run_id, created_at=datetime.now(UTC), seconds=2.0, config={}, environment={},
                                  result=result_of(rows, robust))
    return RunRecord(id=run_id, info=info, status="finished", created_at=datetime.now(UTC), finished_at=None, train_seconds=10.0,
                     error=None, evaluations=[evaluation], best=evaluation)


PAPER = [
    ReportedResult(label="l_inf-dist net v2", dataset="mnist", norm="inf", eps=0.1, certified=0.9795, clean=0.9893, pgd=0.9803,
                   source="Table 2", trainer="linf_v2"),
    ReportedResult(label="l_inf-dist net v2", dataset="mnist", norm="inf", eps=0.3, certified=0.932, clean=0.9856, pgd=0.9473,
                   source="Table 2", trainer="linf_v2"),
    ReportedResult(label="another method", dataset="mnist", norm="inf", eps=0.3, certified=0.5, clean=0.6, pgd=0.55, source="X",
                   trainer="crm"),
]


# -- radius ---------------------------------------------------------------------------------------------------


def test_the_radius_figure_draws_each_runs_curve_its_attack_mark_and_its_papers_points():
    first = samples([0.1, 0.35, 0.5, 0.0], certified_without_radius=1, wrong=1)
    second = samples([0.32, 0.4, 0.45, 0.2], wrong=2)
    runs = [(record(1, first, robust=0.8), first), (record(2, second, seed=1), second)]
    figure = plots.radius_figure(runs, PAPER)
    (ax,) = figure.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["run 1: linf_v2 (quick, seed 0)", "run 1: PGD-100 at eps 0.3", "run 2: linf_v2 (quick, seed 1)",
                           "run 2: PGD-100 at eps 0.3", "l_inf-dist net v2 (reported)"]  # the other method's paper is not drawn
    curve = curves.certified_curve(first, EPS, ["interval", "crown"])
    xs, ys = curve.steps()
    run1 = lines["run 1: linf_v2 (quick, seed 0)"]
    assert list(run1.get_xdata()) == xs and list(run1.get_ydata()) == pytest.approx([100 * y for y in ys])
    assert run1.get_drawstyle() == "steps-post"
    # At eps the curve is the stored certified accuracy (2 by radius + 1 without radius, of 6), and drops after it.
    assert xs.count(EPS) == 2 and ys[xs.index(EPS)] == pytest.approx(3 / 6) and ys[xs.index(EPS) + 1] == pytest.approx(2 / 6)
    mark = lines["run 1: PGD-100 at eps 0.3"]
    assert (list(mark.get_xdata()), list(mark.get_ydata())) == ([EPS], [pytest.approx(80.0)])
    assert (mark.get_marker(), mark.get_fillstyle()) == (lines["run 1: linf_v2 (quick, seed 0)"].get_marker(), "top")
    paper = lines["l_inf-dist net v2 (reported)"]
    assert list(paper.get_xdata()) == [0.1, 0.3] and list(paper.get_ydata()) == pytest.approx([97.95, 93.2])
    # Readable in greyscale: the run lines differ in line style and marker, not only in colour.
    run2 = lines["run 2: linf_v2 (quick, seed 1)"]
    assert run1.get_linestyle() != run2.get_linestyle() and run1.get_marker() != run2.get_marker()
    assert ax.get_xlabel().startswith("radius (l_inf") and ax.get_ylabel() == "certified accuracy (%)"
    assert ax.get_ylim() == (0, 100) and ax.get_xlim()[1] >= 0.5


def test_radius_figure_refuses_mixed_norms_and_runs_without_an_evaluation():
    rows = samples([0.4])
    with pytest.raises(UsageError, match="different norms"):
        plots.radius_figure([(record(1, rows), rows), (record(2, rows, norm="2"), rows)])
    bare = record(3, rows)
    bare.best, bare.evaluations, bare.status = None, [], "running"
    with pytest.raises(UsageError, match="run 3 has no evaluation"):
        plots.radius_figure([(bare, [])])


def test_a_run_without_a_sound_certifier_standing_has_no_curve_not_a_line_at_zero():
    rows = samples([0.1, 0.35, 0.5])
    run = record(1, rows, robust=0.5)
    failed = (CertifierResult("interval", samples=3, error="UNSOUND certificate: ..."), CertifierResult("crown", samples=3, error="boom"))
    run.best.result = EvaluationResult(samples=3, clean_accuracy=1.0, robust_accuracy=0.5, certifiers=failed,
                                       attacks=(AttackResult("pgd", label="PGD-100", accuracy=0.5, attacked=3),))
    (ax,) = plots.radius_figure([(run, rows)]).axes
    assert [line.get_label() for line in ax.get_lines()] == ["run 1: PGD-100 at eps 0.3"]  # the attack's mark only


def test_a_near_infinite_radius_runs_flat_to_the_frame():
    rows = samples([0.1, 0.35, 1.7976931348623157e308])  # what the evaluation stores for an infinite closed-form radius
    (ax,) = plots.radius_figure([(record(1, rows), rows)]).axes
    (line,) = ax.get_lines()[:1]
    assert max(line.get_xdata()) == 2.0 and ax.get_xlim()[1] == pytest.approx(0.35 * 1.05)
    assert line.get_ydata()[-2] == pytest.approx(100 / 3)  # certified beyond every radius drawn


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_the_figures_render_to_png_svg_and_pdf_with_their_content(tmp_path):
    rows = samples([0.1, 0.35, 0.5, 0.0])
    figure = plots.radius_figure([(record(1, rows), rows)], PAPER)
    png = plots.save(figure, tmp_path / "radius.png")
    assert png_size(png) == (1050, 675)  # 7 x 4.5 inches at 150 dpi
    pixels = imread(png)[..., :3]
    dark = (pixels.mean(axis=2) < 0.3).mean()
    assert 0.005 < dark < 0.5  # lines and text drawn on a white background, not blank, not filled
    svg = plots.save(figure, tmp_path / "radius.svg").read_text()
    assert "run 1: linf_v2 (quick, seed 0)" in svg and "certified accuracy (%)" in svg and "l_inf-dist net v2 (reported)" in svg
    assert plots.save(figure, tmp_path / "radius.pdf").read_bytes().startswith(b"%PDF")


def test_an_output_file_type_other_than_png_svg_pdf_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(UsageError, match=r"unknown file type '\.jpg'; valid: \.png, \.svg, \.pdf"):
        plots.output_path(tmp_path / "f.jpg", "x.png")
    assert plots.output_path(None, "radius-1.png").name == "radius-1.png"
    assert plots.default_name("tradeoff", "cifar10", "linf", "8/255") == "tradeoff-cifar10-linf-8-255.png"


# -- trade-off ------------------------------------------------------------------------------------------------


def test_the_tradeoff_figure_has_one_point_per_row_with_seed_error_bars_and_hollow_reported_points():
    runs = []
    for run_id, (certified_radii, seed) in enumerate([([0.4, 0.4, 0.1, 0.1], 0), ([0.4, 0.1, 0.1, 0.1], 1), ([0.4, 0.4, 0.4, 0.1], 2)], 1):
        runs.append(record(run_id, samples(certified_radii, wrong=1), seed=seed))
    (group,) = leaderboard.build(runs, PAPER[1:2])
    figure = plots.tradeoff_figure(group)
    (ax,) = figure.axes
    points = {c.get_label(): c for c in ax.containers}  # in the leaderboard's order: the paper's 93.2 first
    assert list(points) == ["l_inf-dist net v2 (reported)", "linf_v2 (quick, runs 1,2,3, mean of 3 seeds)"]
    measured, reported = points["linf_v2 (quick, runs 1,2,3, mean of 3 seeds)"], points["l_inf-dist net v2 (reported)"]
    data, (_, ybars) = measured.lines[0], measured.lines[2]  # the point; its (x, y) bars
    assert list(data.get_xdata()) == pytest.approx([80.0]) and list(data.get_ydata()) == pytest.approx([40.0])
    # Clean accuracy is the same in every seed (std 0); certified 2, 1 and 3 of 5: std 20 points.
    (segment,) = ybars.get_segments()
    assert [y for _, y in segment] == pytest.approx([20.0, 60.0])
    assert reported.lines[0].get_markerfacecolor() == "white" and list(reported.lines[0].get_xdata()) == pytest.approx([98.56])
    assert reported.lines[0].get_marker() != measured.lines[0].get_marker()  # apart in greyscale too
    assert ax.get_xlabel() == "clean accuracy (%)" and ax.get_ylabel() == "certified accuracy (%)" and "eps 0.3" in ax.get_title()


# -- the commands ---------------------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path):
    """A SQLite database with two finished runs of one configuration (seeds 0, 1), their per-sample radii stored."""
    url = str(tmp_path / "results.db")
    store = open_store(url)
    for seed, radii in ((0, [0.1, 0.35, 0.5, 0.0]), (1, [0.32, 0.4, 0.45, 0.2])):
        rows = samples(radii, wrong=1)
        info = record(0, rows, seed=seed).info
        run_id = store.create_run(info)
        store.record_training(run_id, train_seconds=10.0, weights=None, training={}, config=info.config)
        store.record_evaluation(run_id, result=result_of(rows), samples=rows, config={}, environment={}, seconds=2.0, finish=True)
    store.close()
    return url


def test_plot_radius_writes_the_figure_it_names(harness_cli, database, tmp_path):
    done = harness_cli("plot", "radius", "1", "2", "--db", database, "--out", str(tmp_path / "r.svg"))
    assert done.code == 0, done.err
    assert done.out.strip() == f"wrote {tmp_path / 'r.svg'}"
    svg = (tmp_path / "r.svg").read_text()
    assert "run 1: linf_v2 (quick, seed 0)" in svg and "run 2: linf_v2 (quick, seed 1)" in svg and "(reported)" in svg
    default = harness_cli("plot", "radius", "1", "--db", database)
    assert default.code == 0 and default.out.strip() == "wrote radius-1.png" and png_size(tmp_path / "radius-1.png")[0] == 1050


def test_plot_commands_refuse_bad_input_in_one_line_with_status_2(harness_cli, database, tmp_path):
    for args, said in (
        (["plot", "radius", "1", "--out", "r.jpg"], "unknown file type '.jpg'; valid: .png, .svg, .pdf"),
        (["plot", "radius", "7"], "7"),
        (["plot", "tradeoff", "--dataset", "mnist", "--eps", "0.1"], "no finished run matches --dataset mnist --eps 0.1"),
        (["plot", "tradeoff", "--dataset", "mnist", "--eps", "0.3", "--out", "t.gif"], "'.gif'"),
        (["plot", "radius", "1", "--out", str(tmp_path / "missing" / "r.png")], "cannot write"),
        (["plot", "tradeoff", "--dataset", "mnist", "--eps", "0.3", "--out", str(tmp_path / "missing" / "t.svg")], "No such file"),
    ):
        done = harness_cli(*args, "--db", database)
        assert done.code == 2 and said in done.err and len(done.err.strip().splitlines()) == 1, (args, done.err)
    assert not list(tmp_path.glob("*.jpg")) and not list(tmp_path.glob("*.gif"))


def test_plot_tradeoff_draws_the_seed_group_as_one_point(harness_cli, database, tmp_path):
    done = harness_cli("plot", "tradeoff", "--dataset", "mnist", "--eps", "0.3", "--db", database)
    assert done.code == 0, done.err
    assert done.out.strip() == "wrote tradeoff-mnist-linf-0.3.png"
    assert png_size(tmp_path / "tradeoff-mnist-linf-0.3.png") == (975, 750)


def test_plot_help_imports_no_matplotlib(builtin_env, tmp_path):
    probe = ("import json, sys\nfrom harness.cli import main\ntry:\n    main(['plot', 'radius', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'torch'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=builtin_env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
