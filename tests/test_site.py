"""The static HTML board (``harness export html``): its pages and links without a browser, then in a real
headless Chromium (Debian's, driven by Playwright; skipped only where no chromium binary exists)."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.reported import ReportedResult
from harness.results import AttackResult, CertifierResult, Cost, EvaluationResult, GradientMasking, RadiusStats, SampleResult
from harness.site import export_site
from harness.site.export import board_file
from harness.store import EvaluationRecord, RunInfo, RunRecord, WeightsFile

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def make_run(run_id: int, *, trainer: str = "linf_v2", seed: int = 0, clean: float = 0.98, certified: float = 0.90,
             dataset: str = "mnist", norm: str = "inf", eps: float = 0.3, unreliable: bool = False, timeouts: int = 0,
             errors: int = 0, train_seconds: float = 100.0) -> RunRecord:
    info = RunInfo(trainer=trainer, dataset=dataset, norm=norm, eps=eps, preset="quick", seed=seed, epochs=3,
                   config={"trainer": {"name": trainer, "lr": 0.02}, "dataset": dataset, "seed": seed},
                   device="cpu", environment={"harness": "0.14", "torch": "2.13.0", "python": "3.11.7", "commit": "abc123",
                                              "plugins": {trainer: "0.1"}, "host": "box"})
    def cost(seconds: float) -> Cost:
        return Cost(seconds=seconds, samples_per_second=100 / seconds, peak_memory_bytes=300 * 2**20, memory_kind="rss")

    result = EvaluationResult(
        samples=100, clean_accuracy=clean, robust_accuracy=certified + 0.02, certified_accuracy=certified,
        attacks=(AttackResult("pgd", label="PGD-100", accuracy=certified + 0.03, attacked=98, seconds=2.0, cost=cost(2.0)),
                 AttackResult("autoattack", label="AutoAttack", accuracy=certified + 0.02, attacked=98, seconds=8.0, cost=cost(8.0),
                              stages={"apgd-ce": 0.95, "apgd-t": 0.94, "fab-t": 0.94, "square": certified + 0.02})),
        certifiers=(CertifierResult("interval", accuracy=certified, samples=100, seconds=1.0, cost=cost(1.0), timeouts=timeouts,
                                    errors=errors, sample_error="raised ValueError: boom" if errors else None,
                                    radius=RadiusStats(0.31, 0.32), radius_method="bisection", radius_tolerance=0.001),
                    CertifierResult("liplt-estimate", accuracy=certified + 0.01, samples=100, seconds=0.5, cost=cost(0.5), sound=False)),
        masking=GradientMasking(zero_gradient_fraction=0.0, gradient_free_breaks=3 if unreliable else 0, unreliable=unreliable),
    )
    evaluation = EvaluationRecord(id=run_id, run_id=run_id, created_at=NOW, seconds=14.0, config={}, environment={}, result=result)
    return RunRecord(id=run_id, info=info, status="finished", created_at=NOW, finished_at=NOW, train_seconds=train_seconds, error=None,
                     weights=WeightsFile(f"/runs/{run_id}/model.pt", "ab" * 32, 123456), evaluations=[evaluation], best=evaluation)


def make_samples(certified: float, n: int = 100) -> list[SampleResult]:
    """Per-sample results: the first ``certified`` fraction certified by interval at growing radii."""
    out = []
    for i in range(n):
        ok = i < certified * n
        out.append(SampleResult(index=i, label=i % 10, prediction=i % 10, attacks={"pgd": ok, "autoattack": ok},
                                certificates={"interval": (ok, 0.3 + 0.001 * i if ok else 0.1)},
                                outcomes={"interval": "certified" if ok else "not-certified"}))
    return out


PAPER = ReportedResult(label="l_inf-dist net v2 (paper)", dataset="mnist", norm="inf", eps=0.3, certified=0.932, clean=0.9856,
                       pgd=0.9473, source="Zhang et al., ICLR 2022, Table 2", trainer="linf_v2", attack="PGD-100", runs=8,
                       statistic="median")
RUNS = [
    make_run(1, seed=0, certified=0.90, timeouts=3, errors=1),
    make_run(2, seed=1, certified=0.92),
    make_run(3, trainer="crm", certified=0.80, clean=0.99, unreliable=True, train_seconds=50.0),
    make_run(4, trainer="crm", dataset="cifar10", norm="2", eps=36 / 255, certified=0.40, clean=0.60),
]


class Links(HTMLParser):
    """Every href and src of a page, and the scripts and style sheets it loads from a file rather than inline."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.scripts_with_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("href", "src"):
            if values.get(key):
                self.targets.append(values[key] or "")
        if tag in ("script", "link") and (values.get("src") or values.get("href")):
            self.scripts_with_src.append(tag)


def parse(path: Path) -> Links:
    links = Links()
    links.feed(path.read_text())
    return links


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("site")
    samples = {r.id: make_samples(r.result.certified_accuracy) for r in RUNS}
    export_site(directory, RUNS, [PAPER], samples=lambda run: samples[run.id])
    return directory


def test_every_run_and_board_has_a_page_and_every_link_resolves_to_a_file(site):
    pages = sorted(p.name for p in site.glob("*.html"))
    assert {f"run-{r.id}.html" for r in RUNS} <= set(pages) and "index.html" in pages
    boards = [p for p in pages if p.startswith("board-")]
    assert boards == ["board-cifar10-l2-eps36_255.html", "board-mnist-linf-eps0.3.html"]
    for name in pages:
        links = parse(site / name)
        assert links.scripts_with_src == [], f"{name} loads a script or style sheet from elsewhere"
        for target in links.targets:
            assert not re.match(r"[a-z]+:", target), f"{name} links outside the site: {target}"
            assert (site / target.split("#")[0]).is_file(), f"{name} links to {target}, which is not in the site"
    index = parse(site / "index.html").targets
    assert set(boards) <= set(index) and {f"run-{r.id}.html" for r in RUNS} <= set(index)


def row_cells(page: str, key: str) -> dict[str, str]:
    """The cells of the row ``data-key=key``, by column key (read from the header), as text."""
    header = re.findall(r'<th class="[^"]*" data-key="([^"]+)"', page)
    row = re.search(rf'<tr data-key="{re.escape(key)}"[^>]*>(.*?)</tr>', page, re.S)
    assert row is not None, key
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]
    return dict(zip(header, cells, strict=True))


def test_the_board_shows_seeds_gaps_certifiers_estimates_masking_and_cost(site):
    page = (site / "board-mnist-linf-eps0.3.html").read_text()
    seeds = row_cells(page, "runs-1-2")
    assert seeds["certified"] == "91.00 ± 1.41 (2)" and seeds["seeds"] == "0,1" and seeds["run_id"] == "1, 2"
    assert seeds["gap_certified"] == "-2.20" and seeds["gap_clean"] == "-0.56"  # 91.00 − 93.20, 98.00 − 98.56
    assert seeds["certifier:interval"] == "91.00 ± 1.41 (2) (t/o 3, err 1)"
    assert seeds["estimate:liplt-estimate"] == "92.00 ± 1.41 (2)" and "certifier:liplt-estimate" not in seeds
    assert seeds["masking"] == "ok" and seeds["train_seconds"] == "100s" and seeds["eval_seconds"] == "14s"
    assert seeds["timeouts"] == "3 / 1"
    crm = row_cells(page, "runs-3")
    assert crm["masking"] == "!" and crm["robust"].endswith(" !") and crm["gap_certified"] == "—" and crm["trainer"] == "crm"
    reported = row_cells(page, "reported-1")
    assert reported["rank"] == "reported" and reported["certified"] == "93.20 (median of 8)"
    assert "liplt-estimate (paper protocol)" in page and "Zhang et al., ICLR 2022, Table 2" in page


def test_the_board_shows_certified_accuracy_at_another_radius_from_the_stored_radii(tmp_path):
    samples = {r.id: make_samples(r.result.certified_accuracy) for r in RUNS}
    export_site(tmp_path, RUNS, [PAPER], samples=lambda run: samples[run.id], at_eps=0.35, figures=False)
    page = (tmp_path / "board-mnist-linf-eps0.3.html").read_text()
    assert "certified at 0.35" in page
    assert row_cells(page, "runs-1-2")["certified_at"] == "40.00 ± 1.41 (2)"  # radii above 0.35: samples 51-89 and 51-91


def test_a_run_page_has_configuration_provenance_and_cost(site):
    page = (site / "run-1.html").read_text()
    for text in ("abab" * 16, "2.13.0", "abc123", "123,456 bytes", "300 MiB (rss)", "bisection, tolerance 0.001",
                 "apgd-ce 95.00", "paper protocol, an estimate", "&quot;lr&quot;: 0.02", 'href="board-mnist-linf-eps0.3.html"'):
        assert text in page, text
    # The estimate's result never reads "certified": it is a paper's protocol, not a certificate.
    assert row_cells(page, "certifier-liplt-estimate")["result"] == "estimate 91.00 % of 100 (not certified)"
    assert row_cells(page, "certifier-interval")["result"] == "certified 90.00 % of 100"


def test_text_from_runs_is_escaped(tmp_path):
    run = make_run(7, trainer="<script>alert(1)</script>")
    run = replace(run, info=replace(run.info, config={"note": "</pre><img src=x>"}))
    export_site(tmp_path, [run], [], samples=lambda _: [], figures=False)
    for page in tmp_path.glob("*.html"):
        text = page.read_text()
        assert "<script>alert" not in text and "<img src=x>" not in text


def test_a_file_in_the_folder_s_place_is_a_usage_error(tmp_path):
    from harness.errors import UsageError

    (tmp_path / "site").write_text("")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        export_site(tmp_path / "site", RUNS, [], samples=lambda _: [])


def test_a_page_that_cannot_be_written_is_a_usage_error(tmp_path):
    from harness.errors import UsageError

    (tmp_path / "index.html").mkdir()  # a folder where the page goes: the write fails whoever runs the test (root too)
    with pytest.raises(UsageError, match=r"cannot write '.*index.html': Is a directory"):
        export_site(tmp_path, RUNS, [], samples=lambda _: [], figures=False)


def test_board_file_names_are_safe():
    from harness.leaderboard import Group

    assert board_file(Group("cifar10", "inf", 8 / 255, [])) == "board-cifar10-linf-eps8_255.html"


# -- in a real browser ----------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Debian's chromium as root, with no background networking (on a closed network it floods refused connections).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium); the browser tests need it")
    from playwright.sync_api import sync_playwright  # in the test extra: a missing one fails, it is not a reason to skip

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def column(page, key: str) -> list[str]:
    """The board table's ``data-sort`` values of column ``key``, in the order the rows are shown."""
    return page.evaluate(
        """key => { const t = document.querySelector('table.sortable');
                   const i = [...t.tHead.rows[0].cells].findIndex(th => th.dataset.key === key);
                   return [...t.tBodies[0].rows].map(r => r.cells[i].getAttribute('data-sort')); }""", key)


def open_page(browser, path: Path):
    """A new page showing ``path``, and the list its console errors and warnings, script errors and requests for
    anything but the site's own files are collected into as it is used."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith("file://") else problems.append(f"request {r.url}"))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, problems


def test_the_board_loads_cleanly_sorts_on_click_and_renders_in_chromium(site, browser, tmp_path):
    page, problems = open_page(browser, site / "board-mnist-linf-eps0.3.html")
    assert problems == []
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert page.evaluate("document.images.length") == 2  # the radius curves and the trade-off

    keys = lambda: page.eval_on_selector_all("table.sortable tbody tr", "rows => rows.map(r => r.dataset.key)")  # noqa: E731
    assert keys() == ["reported-1", "runs-1-2", "runs-3"]  # the leaderboard's ranking: certified, descending
    page.click("th[data-key=clean] button")
    clean = [float(v) for v in column(page, "clean")]
    assert clean == sorted(clean) and keys() == ["runs-1-2", "reported-1", "runs-3"]
    assert page.get_attribute("th[data-key=clean]", "aria-sort") == "ascending"
    page.click("th[data-key=clean] button")
    assert keys() == ["runs-3", "reported-1", "runs-1-2"]
    page.click("th[data-key=gap_certified] button")  # the reported and crm rows have no gap: last, whichever way
    assert keys()[0] == "runs-1-2"
    page.click("th[data-key=gap_certified] button")
    assert keys()[0] == "runs-1-2" and page.get_attribute("th[data-key=gap_certified]", "aria-sort") == "descending"
    page.click("th[data-key=trainer] button")  # as text: "crm" < "l_inf-dist net v2 (paper)" < "linf_v2"
    assert keys() == ["runs-3", "reported-1", "runs-1-2"]

    shot = tmp_path / "board.png"
    page.screenshot(path=str(shot), full_page=True)
    from PIL import Image

    with Image.open(shot) as image:
        grey = image.convert("L")
        assert image.size[0] >= 1400  # the viewport, or the table's width where wider
        dark = sum(grey.histogram()[:128]) / (grey.size[0] * grey.size[1])
        assert 0.002 < dark < 0.5, dark  # text and figures on a light background: neither blank nor a black page
    assert problems == []
    page.close()


# -- the commands -------------------------------------------------------------------------------------------------


def record(store, run: RunRecord, samples: list[SampleResult]) -> int:
    """``run`` written through the store, as ``harness run`` writes it."""
    run_id = store.create_run(run.info)
    store.record_training(run_id, train_seconds=run.train_seconds, weights=run.weights, training={}, config=run.info.config)
    store.record_evaluation(run_id, result=run.result, samples=samples, config={}, environment={}, seconds=14.0, finish=True)
    return run_id


@pytest.fixture
def recorded(harness_store):
    """The database ``harness_cli`` finds by default, holding three of :data:`RUNS`."""
    for run in RUNS[:2] + RUNS[3:]:
        record(harness_store, run, make_samples(run.result.certified_accuracy))
    return harness_store


def test_export_html_writes_the_site_from_the_database_and_chromium_browses_it(recorded, harness_cli, tmp_path, request):
    only = harness_cli("export", "html", "mnist", "--dataset", "mnist", "--no-figures")
    assert only.code == 0 and only.out.startswith("wrote 4 pages and 0 figures")
    assert not list((tmp_path / "mnist").glob("board-cifar10*")) and not (tmp_path / "mnist" / "run-3.html").exists()
    result = harness_cli("export", "html", "board")
    assert result.code == 0, result.err
    assert result.out.startswith("wrote 6 pages and 7 figures") and "board/index.html" in result.out
    site = tmp_path / "board"
    assert {p.name for p in site.glob("*.html")} == {
        "index.html", "run-1.html", "run-2.html", "run-3.html", "board-mnist-linf-eps0.3.html", "board-cifar10-l2-eps36_255.html"}
    assert {p.name for p in site.glob("*.png")} == {"radius-1.png", "radius-2.png", "radius-3.png", "radius-mnist-linf-eps0.3.png",
                                                   "radius-cifar10-l2-eps36_255.png", "tradeoff-mnist-linf-eps0.3.png",
                                                   "tradeoff-cifar10-l2-eps36_255.png"}
    # What the store keeps reaches the pages: cost, time-outs and errors, radius method, stages, the estimate apart.
    run = (site / "run-1.html").read_text()
    for text in ("300 MiB (rss)", "bisection, tolerance 0.001", "apgd-ce 95.00", "paper protocol, an estimate"):
        assert text in run, text
    assert row_cells((site / "board-mnist-linf-eps0.3.html").read_text(), "runs-1-2")["certifier:interval"].endswith("(t/o 3, err 1)")

    page, problems = open_page(request.getfixturevalue("browser"), site / "index.html")  # skips here without chromium
    page.click("text=mnist · l_inf · eps = 0.3")
    assert page.url.endswith("/board-mnist-linf-eps0.3.html")
    page.click("tr[data-key=runs-1-2] a >> text=2")  # the row of runs 1 and 2 (seeds 0 and 1): run 2's page
    assert page.url.endswith("/run-2.html") and "Run 2: linf_v2" in page.title()
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert problems == []
    page.close()


def test_export_html_without_a_database_writes_an_empty_board(harness_cli, tmp_path):
    result = harness_cli("export", "html", "board")
    assert result.code == 0 and result.out.startswith("wrote 1 pages and 0 figures")
    assert "No finished runs." in (tmp_path / "board" / "index.html").read_text()


def test_export_html_onto_a_file_is_one_line_and_exit_2(recorded, harness_cli, tmp_path):
    (tmp_path / "taken").write_text("")
    result = harness_cli("export", "html", "taken")
    assert result.code == 2 and result.err.strip().count("\n") == 0 and "'taken' is a file, not a folder" in result.err


@pytest.mark.parametrize("fmt", ["markdown", "csv", "json"])
@pytest.mark.parametrize("options", [["--reported", "all"], ["--dataset", "mnist", "--at-eps", "0.35"]])
def test_file_exports_carry_the_leaderboard_s_columns(recorded, harness_cli, tmp_path, fmt, options):
    shown = harness_cli("leaderboard", "--format", fmt, *options)
    written = harness_cli("export", fmt, "out", *options)
    assert written.code == 0 and shown.code == 0 and written.out.startswith(f"wrote the leaderboard ({fmt}")
    assert (tmp_path / "out").read_text() == shown.out
    assert harness_cli("export", fmt, "-", *options).out == shown.out
