"""The site's three kinds of page, as HTML text: the index, a board (one leaderboard group), a run.

File names are decided in :mod:`harness.site.export`; these functions take the links they need.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from harness.leaderboard import Group
from harness.render import duration, percent, title
from harness.results import AttackResult, CertifierResult, Cost, EvaluationResult
from harness.site.board import Board, masking_text
from harness.site.html import Cell, Column, esc, facts, page, table
from harness.store import EvaluationRecord, RunRecord
from harness.threat import format_eps

INDEX = "index.html"


def board_title(group: Group) -> str:
    return f"{group.dataset} · l_{group.norm} · eps = {format_eps(group.eps)}"


def index_page(boards: Sequence[tuple[Board, str]], runs: Sequence[RunRecord], run_page: Callable[[int], str]) -> str:
    """Every board with its size and best certified row, then every run."""
    columns = [Column("board", "threat model"), Column("measured", "measured rows", numeric=True),
               Column("runs", "runs", numeric=True), Column("reported", "reported rows", numeric=True),
               Column("best", "best certified %", numeric=True), Column("flagged", "rows flagged by the masking check", numeric=True)]
    rows = []
    for board, href in boards:
        g = board.group
        measured = [r for r in g.rows if r.kind == "measured"]
        best = max((r.certified for r in measured if r.certified is not None), default=None)
        rows.append(([Cell(board_title(g), title(g), href=href), Cell(str(len(measured)), len(measured), css="num"),
                      Cell(str(sum(len(r.runs) for r in measured)), sum(len(r.runs) for r in measured), css="num"),
                      Cell(str(len(g.rows) - len(measured)), len(g.rows) - len(measured), css="num"),
                      Cell(percent(best), best, css="num"), Cell(str(board.unreliable), board.unreliable, css="num")],
                     href, ""))
    run_columns = [Column("id", "run", numeric=True), Column("trainer", "trainer"), Column("threat", "threat model"),
                   Column("preset", "preset"), Column("seed", "seed", numeric=True), Column("certified", "certified %", numeric=True),
                   Column("created", "created (UTC)")]
    run_rows = []
    for run in runs:
        r = run.result
        run_rows.append(([Cell(str(run.id), run.id, href=run_page(run.id), css="num"), Cell(_trainer(run), _trainer(run)),
                          Cell(_threat(run), _threat(run)), Cell(run.info.preset or "—", run.info.preset),
                          Cell(str(run.info.seed), run.info.seed, css="num"),
                          Cell(percent(r.certified_accuracy if r else None), r.certified_accuracy if r else None, css="num"),
                          Cell(f"{run.created_at:%Y-%m-%d %H:%M}", run.created_at.isoformat())], f"run-{run.id}", ""))
    body = ('<p class="legend">One board per threat model (dataset, norm, radius): measured runs beside the numbers their '
            "papers report. Click a column header to sort. Accuracies are percentages of the evaluated test samples.</p>"
            + "<h2>Boards</h2>" + (table(columns, rows) if rows else "<p>No finished runs.</p>")
            + "<h2>Runs</h2>" + (table(run_columns, run_rows) if run_rows else "<p>No finished runs.</p>"))
    return page("Certified robustness: the board", body)


def board_page(board: Board, *, radius: str | None, tradeoff: str | None, radius_runs: int = 0) -> str:
    """The board's table, its legend, the papers' sources and its figures (``radius``, ``tradeoff``: file names, if drawn)."""
    g = board.group
    sources = sorted({r.source for r in g.rows if r.source})
    legend = [
        "Rows are ranked by mean certified accuracy; click a header to sort by another column (again: the other way).",
        "A row of several runs (seeds) shows mean ± sample standard deviation (n); a reported row the paper's own n.",
        "Δ certified, Δ clean: the measured number minus the paper's reported one for the same trainer, in percentage points.",
        "Per certifier: certified % of the samples it ran on; t/o and err count samples it timed out or failed on "
        "(never certified).",
        "(paper protocol): a paper's own evaluation that is not a sound certificate; an estimate, never counted as certified.",
        "masking “!”: the gradient-free Square attack broke points every gradient attack missed (RobustBench's "
        "“unreliable” check); the robust accuracy may overstate robustness.",
    ]
    body = (table(board.columns, board.rows)
            + '<div class="legend"><ul>' + "".join(f"<li>{esc(line)}</li>" for line in legend) + "</ul></div>")
    if sources:
        body += "<h2>Reported numbers</h2><ul>" + "".join(f"<li>{esc(s)}</li>" for s in sources) + "</ul>"
    if radius is not None:
        body += (f'<h2>Certified accuracy against the radius</h2><p class="legend">One line per run: the {radius_runs} '
                 "run(s) of the best-ranked rows; stars: the papers' reported numbers; crosses: each run's attacked accuracy at its eps.</p>"
                 f'<figure><img src="{esc(radius)}" alt="certified accuracy against the radius, {esc(board_title(g))}"></figure>')
    if tradeoff is not None:
        body += (f'<h2>Clean against certified accuracy</h2><figure><img src="{esc(tradeoff)}" '
                 f'alt="clean against certified accuracy, {esc(board_title(g))}"></figure>')
    return page(board_title(g), body, crumbs=[("index", INDEX), (board_title(g), None)])


def run_page(run: RunRecord, boards: Mapping[str, str], radius: str | None) -> str:
    """A run: what it is, where it came from, each evaluation's results and cost, its radius curve, its configuration."""
    info = run.info
    env = info.environment
    about = [
        ("status", esc(run.status) + (f' <span class="err">{esc(run.error)}</span>' if run.error else "")),
        ("trainer", esc(_trainer(run))),
        ("threat model", esc(_threat(run))),
        ("preset", esc(info.preset or "—")),
        ("seed", esc(info.seed)),
        ("epochs", esc(info.epochs if info.epochs is not None else "—")),
        ("device", esc(info.device)),
        ("created", esc(f"{run.created_at:%Y-%m-%d %H:%M:%S} UTC")),
        ("finished", esc(f"{run.finished_at:%Y-%m-%d %H:%M:%S} UTC" if run.finished_at else "—")),
        ("training time", esc(duration(run.train_seconds))),
        ("evaluation time", esc(duration(run.eval_seconds))),
    ]
    provenance = [
        ("harness", esc(env.get("harness", "—"))),
        ("torch", esc(env.get("torch", "—"))),
        ("python", esc(env.get("python", "—"))),
        ("code commit", esc(env.get("commit") or "unknown")),
        ("plugins", esc(", ".join(f"{k} {v}" for k, v in sorted(env.get("plugins", {}).items())) or "—")
         if isinstance(env.get("plugins"), dict) else esc(env.get("plugins", "—"))),
        ("host", esc(env.get("host", "—"))),
    ]
    if run.weights is not None:
        provenance += [("weights", esc(run.weights.path)), ("weights sha256", f"<code>{esc(run.weights.sha256)}</code>"),
                       ("weights size", esc(f"{run.weights.bytes:,} bytes"))]
    else:
        provenance.append(("weights", "not saved"))
    links = [(label, href) for label, href in boards.items()]
    crumbs: list[tuple[str, str | None]] = [("index", INDEX), *[(label, href) for label, href in links[:1]], (f"run {run.id}", None)]
    body = facts(about) + "<h2>Provenance</h2>" + facts(provenance)
    if links:
        body += "<p>On the board" + ("s " if len(links) > 1 else " ") + ", ".join(f'<a href="{esc(h)}">{esc(t)}</a>' for t, h in links) + ".</p>"
    if radius is not None:
        body += (f'<h2>Certified accuracy against the radius</h2><figure><img src="{esc(radius)}" '
                 f'alt="certified accuracy against the radius, run {run.id}"></figure>')
    for evaluation in reversed(run.evaluations):
        body += _evaluation(run, evaluation)
    body += "<h2>Configuration</h2><pre>" + esc(json.dumps(info.config, indent=2, sort_keys=True, default=str)) + "</pre>"
    body += "<h2>Environment</h2><pre>" + esc(json.dumps(env, indent=2, sort_keys=True, default=str)) + "</pre>"
    return page(f"Run {run.id}: {_trainer(run)} on {_threat(run)}", body, crumbs=crumbs)


def _evaluation(run: RunRecord, evaluation: EvaluationRecord) -> str:
    r = evaluation.result
    best = " (the board's: the most complete)" if run.best is not None and run.best.id == evaluation.id else ""
    head = (f'<h2 id="evaluation-{evaluation.id}">Evaluation {evaluation.id}{esc(best)}</h2>'
            + facts([("when", esc(f"{evaluation.created_at:%Y-%m-%d %H:%M:%S} UTC, {duration(evaluation.seconds)}")),
                     ("samples", esc(r.samples)),
                     ("clean accuracy", esc(f"{percent(r.clean_accuracy)} %")),
                     ("robust accuracy", esc(f"{percent(r.robust_accuracy)} %" + (f" (worst case over {r.attack_label()})"
                                                                                 if r.attack_label() else ""))),
                     ("certified accuracy", esc(f"{percent(r.certified_accuracy)} % (any sound certifier)")),
                     ("gradient masking", esc(masking_text(r.masking) if r.masking is not None else "not checked"))]))
    return head + _components(r)


def _components(r: EvaluationResult) -> str:
    columns = [Column("kind", "kind"), Column("name", "name"), Column("result", "result"), Column("timeouts", "time-outs", numeric=True),
               Column("errors", "errors", numeric=True), Column("radius", "radius"), Column("seconds", "time", numeric=True),
               Column("rate", "samples/s", numeric=True), Column("memory", "peak memory", numeric=True)]
    rows: list[tuple[list[Cell], str, str]] = []
    for a in r.attacks:
        rows.append(([Cell("attack", "attack"), Cell(a.label or a.name, a.name), _attack_result(a), Cell("—"), Cell("—"), Cell("—"),
                      *_cost(a.cost, a.seconds)], f"attack-{a.name}", ""))
    for c in r.certifiers:
        name = c.name + ("" if c.sound else " (paper protocol, an estimate)")
        rows.append(([Cell("certifier", "certifier"), Cell(name, c.name), _certifier_result(c),
                      Cell(str(c.timeouts), c.timeouts, css="num"), Cell(str(c.errors), c.errors, css="num", title=c.sample_error),
                      Cell(_radius(c)), *_cost(c.cost, c.seconds)], f"certifier-{c.name}", ""))
    for name, reason in sorted(r.not_applicable.items()):
        rows.append(([Cell("certifier", "certifier"), Cell(name, name), Cell(f"did not apply: {reason}"), Cell("—"), Cell("—"),
                      Cell("—"), Cell("—"), Cell("—"), Cell("—")], f"not-applicable-{name}", "muted"))
    return table(columns, rows)


def _attack_result(a: AttackResult) -> Cell:
    if a.error:
        return Cell(f"ERROR: {a.error}", css="err")
    text = f"robust {percent(a.accuracy)} % (attacked {a.attacked})"
    if a.stages:
        text += "; after " + ", ".join(f"{stage} {percent(acc)}" for stage, acc in a.stages.items())
    return Cell(text, a.accuracy)


def _certifier_result(c: CertifierResult) -> Cell:
    if c.error:
        return Cell(f"ERROR: {c.error}", css="err")
    if not c.sound:  # a paper's protocol: its verdicts are an estimate, never "certified"
        return Cell(f"estimate {percent(c.accuracy)} % of {c.samples} (not certified)", c.accuracy)
    return Cell(f"certified {percent(c.accuracy)} % of {c.samples}", c.accuracy)


def _radius(c: CertifierResult) -> str:
    if c.radius is None:
        return "—"
    how = "" if c.radius_method is None else f" ({c.radius_method}" + (
        f", tolerance {c.radius_tolerance:g})" if c.radius_tolerance is not None else ")")
    return f"mean {c.radius.mean:.4g}, median {c.radius.median:.4g}{how}"


def _cost(cost: Cost, seconds: float | None) -> list[Cell]:
    seconds = cost.seconds if cost.seconds is not None else seconds
    rate = cost.samples_per_second
    memory = cost.peak_memory_bytes
    return [
        Cell(duration(seconds), seconds, css="num"),
        Cell("—" if rate is None else f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}", rate, css="num"),  # 3,750 / 69.8 / 0.818
        Cell("—" if memory is None else f"{memory / 2**20:,.0f} MiB ({cost.memory_kind})", memory, css="num"),
    ]


def _trainer(run: RunRecord) -> str:
    if run.info.origin == "external":
        model = run.info.config.get("model") if isinstance(run.info.config, dict) else None
        return f"external {model.get('name') if isinstance(model, dict) else 'model'}"
    return run.info.trainer


def _threat(run: RunRecord) -> str:
    return f"{run.info.dataset}, l_{run.info.norm} eps={format_eps(run.info.eps)}"
