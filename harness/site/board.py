"""One board: a leaderboard group (dataset, norm, eps) as a sortable table's columns and cells.

The numbers come from :func:`harness.leaderboard.build` (the rows, their means and spreads, the ranking) and
from the runs behind each row (cost, time-outs and errors, the gradient-masking check, which certifiers are
estimates); nothing here decides what a number is, only how a cell shows it and how it sorts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness.leaderboard import Group, Row, Spread
from harness.render import duration, percent, spread
from harness.results import CertifierResult, GradientMasking
from harness.site.html import Cell, Column
from harness.store import RunRecord


@dataclass(frozen=True)
class CertifierTotals:
    """One certifier over a row's runs: mean accuracy ± std over the runs it stood in, time-outs and errors summed."""

    accuracy: Spread
    timeouts: int
    errors: int
    samples: int | None
    failed: str | None  # its error, when it failed in every run


def certifier_totals(results: Sequence[CertifierResult]) -> CertifierTotals:
    standing = [c for c in results if c.error is None]
    samples = {c.samples for c in standing}
    return CertifierTotals(
        accuracy=Spread.of(c.accuracy for c in standing),
        timeouts=sum(c.timeouts for c in standing),
        errors=sum(c.errors for c in standing),
        samples=samples.pop() if len(samples) == 1 else None,
        failed=results[0].error if results and not standing else None,
    )


def row_runs(row: Row, runs: Mapping[int, RunRecord]) -> list[RunRecord]:
    """The stored runs a measured row stands for (none for a reported row)."""
    return [runs[r.run_id] for r in row.runs if r.run_id in runs]


def certifier_names(group: Group, runs: Mapping[int, RunRecord]) -> tuple[list[str], list[str]]:
    """The certifiers that ran on the group's runs: (sound ones, estimates), each in order of first appearance."""
    sound: dict[str, None] = {}
    estimate: dict[str, None] = {}
    for row in group.rows:
        for run in row_runs(row, runs):
            for c in run.result.certifiers if run.result else ():
                (sound if c.sound else estimate)[c.name] = None
    return list(sound), list(estimate)


def paper_rows(group: Group, row: Row) -> list[Row]:
    """The reported rows of the paper that ``row`` (measured) reproduces: reported rows with the same trainer."""
    if row.kind != "measured" or row.trainer is None:
        return []
    return [r for r in group.rows if r.kind == "reported" and r.trainer == row.trainer]


def _pct_cell(value: float | None, std: float | None = None, n: int | None = None, *, of: int | None = None,
              statistic: str | None = None) -> Cell:
    return Cell(spread(value, std, n, of=of, statistic=statistic), value, css="num")


def _gap_cell(measured: float | None, papers: Sequence[Row], key: str) -> Cell:
    """Measured minus the paper's number, in percentage points (several papers: one gap each, sorted by the first)."""
    gaps = [(measured - getattr(p, key), p) for p in papers if measured is not None and getattr(p, key) is not None]
    if not gaps:
        return Cell("—", css="num")
    text = ", ".join(f"{100 * g:+.2f}" for g, _ in gaps)
    title = "; ".join(f"{100 * g:+.2f} pp vs {p.label} ({p.source})" for g, p in gaps)
    return Cell(text, gaps[0][0], css="num", title=title)


def _certifier_cell(results: Sequence[CertifierResult], of: int) -> Cell:
    if not results:
        return Cell("—", css="num")
    t = certifier_totals(results)
    if t.failed is not None:
        return Cell("ERROR", css="num err", title=t.failed)
    text = spread(t.accuracy.mean, t.accuracy.std, t.accuracy.n, of=of) if of > 1 else percent(t.accuracy.mean)
    if t.samples is not None and any(c.samples for c in results) and t.samples < max((c.samples for c in results), default=0):
        text += f" (of {t.samples})"
    if t.timeouts or t.errors:
        text += f" (t/o {t.timeouts}, err {t.errors})"
    return Cell(text, t.accuracy.mean, css="num")


def _mean(values: Iterable[float | None]) -> float | None:
    return Spread.of(values).mean


@dataclass(frozen=True)
class Board:
    """A board's table: its columns and, per row, its cells, a stable key and a CSS class."""

    group: Group
    columns: list[Column]
    rows: list[tuple[list[Cell], str, str]]
    unreliable: int  # rows whose runs the gradient-masking check flags


def build_board(group: Group, runs: Mapping[int, RunRecord], run_page: Callable[[int], str]) -> Board:
    """The table for ``group``; ``runs`` are the stored runs by id, ``run_page(id)`` a run's page (relative link)."""
    sound, estimates = certifier_names(group, runs)
    columns = [
        Column("rank", "rank", numeric=True),
        Column("method", "method"),
        Column("kind", "kind"),
        Column("preset", "preset"),
        Column("n", "n", numeric=True, title="runs (seeds) behind the row; for a reported row, the paper's n where it says"),
        Column("clean", "clean %", numeric=True),
        Column("robust", "attacked %", numeric=True, title="per-sample worst case over the attacks that ran"),
        Column("certified", "certified %", numeric=True, title="certified by any sound certifier"),
        Column("gap-certified", "Δ certified", numeric=True,
               title="measured minus the paper's reported certified accuracy, percentage points"),
        Column("gap-clean", "Δ clean", numeric=True, title="measured minus the paper's reported clean accuracy, percentage points"),
        *(Column(f"certifier:{name}", name, numeric=True, title=f"certifier {name}: certified % (time-outs, errors)") for name in sound),
        *(Column(f"estimate:{name}", f"{name} (paper protocol)", numeric=True,
                 title="the paper's own protocol: an estimate, not a certificate; never counted as certified") for name in estimates),
        Column("masking", "masking", title="! = the gradient-masking check flags the run (Square broke points the gradient attacks missed)"),
        Column("train-time", "train time", numeric=True),
        Column("eval-time", "eval time", numeric=True),
        Column("samples", "samples", numeric=True),
        Column("runs", "runs"),
    ]
    rows: list[tuple[list[Cell], str, str]] = []
    unreliable = 0
    reported = 0
    for row in group.rows:
        mine = row_runs(row, runs)
        results = [r.result for r in mine if r.result is not None]
        if row.kind == "reported":
            reported += 1
            key = f"reported-{reported}"
            label = Cell(row.label, row.label, title=row.source)
            n = row.n
            stats = {k: _pct_cell(getattr(row, k), getattr(row, f"{k}_std"), row.n, statistic=row.statistic)
                     for k in ("clean", "robust", "certified")}
        else:
            key = "runs-" + "-".join(str(r.run_id) for r in row.runs)
            href = run_page(row.run_id) if row.run_id is not None else None
            label = Cell(row.label + (" (errors)" if row.errors else ""), row.label, href=href,
                         title="; ".join(row.errors) or None)
            n = row.n
            stats = {k: _pct_cell(getattr(row, k), getattr(row, f"{k}_std"),
                                  sum(getattr(r, k) is not None for r in row.runs), of=row.n)
                     for k in ("clean", "robust", "certified")}
        if row.attack and row.robust is not None:
            stats["robust"] = Cell(stats["robust"].text + f" {row.attack}", row.robust, css="num")
        papers = paper_rows(group, row)
        masking = [r.masking for r in results if r.masking is not None]
        flagged = any(m.unreliable for m in masking)
        unreliable += flagged
        zero = _mean(m.zero_gradient_fraction for m in masking)
        masking_title = "; ".join(masking_text(m) for m in masking) or None
        if flagged:
            masking_cell = Cell("!", 1, css="flag", title=masking_title)
        elif masking:
            masking_cell = Cell("ok" if zero is None or zero == 0 else f"ok ({100 * zero:.1f} % zero grad)", 0, title=masking_title)
        else:
            masking_cell = Cell("—")
        of = max(len(results), 1)
        cells = [
            Cell("reported" if row.rank is None else str(row.rank), row.rank, css="num"),
            label,
            Cell(row.kind, row.kind),
            Cell(row.preset or "—", row.preset),
            Cell("—" if n is None else str(n), n, css="num"),
            stats["clean"],
            stats["robust"],
            stats["certified"],
            _gap_cell(row.certified, papers, "certified"),
            _gap_cell(row.clean, papers, "clean"),
            *(_certifier_cell([c for r in results for c in r.certifiers if c.name == name], of) for name in sound),
            *(_certifier_cell([c for r in results for c in r.certifiers if c.name == name], of) for name in estimates),
            masking_cell,
            Cell(duration(row.train_seconds), row.train_seconds, css="num"),
            _seconds_cell(_mean(r.eval_seconds for r in mine) if mine else None),
            Cell("—" if row.eval_samples is None else str(row.eval_samples), row.eval_samples, css="num"),
            _runs_cell(row, run_page),
        ]
        rows.append((cells, key, row.kind))
    return Board(group=group, columns=columns, rows=rows, unreliable=unreliable)


def masking_text(m: GradientMasking) -> str:
    """The check in words: ``zero gradient 0.00 %, 3 gradient-free breaks (unreliable)``."""
    parts = []
    if m.zero_gradient_fraction is not None:
        parts.append(f"zero gradient {100 * m.zero_gradient_fraction:.2f} %")
    if m.gradient_free_breaks is None:
        parts.append("no gradient-free attack ran")
    else:
        parts.append(f"{m.gradient_free_breaks} gradient-free breaks" + (" (unreliable)" if m.unreliable else ""))
    return ", ".join(parts)


def _seconds_cell(seconds: float | None) -> Cell:
    return Cell(duration(seconds), seconds, css="num")


def _runs_cell(row: Row, run_page: Callable[[int], str]) -> Cell:
    """A link to every run's page, sorted by the first id."""
    ids = [r.run_id for r in row.runs]
    if not ids:
        return Cell("—")
    return Cell(", ".join(map(str, ids)), ids[0], links=tuple((str(i), run_page(i)) for i in ids))
