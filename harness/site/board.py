"""One board: a leaderboard group (dataset, norm, eps) as a sortable table's columns and cells.

The columns are the leaderboard's own (:func:`harness.render.columns`: the same cells as the text, markdown,
CSV and JSON formats, each with a typed value to sort by), with three changes a page to look at wants: the
certifiers' combined column is split into one sortable column per certifier (and per paper-protocol
estimate); the gap between a reproduction and its paper's reported numbers follows the accuracies; and the
run ids link to the runs' pages. Nothing here decides what a number is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness import render
from harness.leaderboard import Group, Row
from harness.results import GradientMasking
from harness.site.html import Cell, Column


@dataclass(frozen=True)
class Board:
    """A board's table: its columns and, per row, its cells, a stable key (for links and tests) and a CSS class."""

    group: Group
    columns: list[Column]
    rows: list[tuple[list[Cell], str, str]]

    @property
    def unreliable(self) -> int:
        """Rows whose runs the gradient-masking check flags."""
        return sum(bool(r.unreliable) for r in self.group.rows)


def row_key(group: Group, row: Row) -> str:
    """``runs-1-2`` for a measured row (its run ids), ``reported-1`` for the group's first reported row."""
    if row.kind == "measured":
        return "runs-" + "-".join(str(r.run_id) for r in row.runs)
    return f"reported-{[r for r in group.rows if r.kind == 'reported'].index(row) + 1}"


def paper_rows(group: Group, row: Row) -> list[Row]:
    """The reported rows of the paper that ``row`` (measured) reproduces: reported rows with the same trainer."""
    if row.kind != "measured" or row.trainer is None:
        return []
    return [r for r in group.rows if r.kind == "reported" and r.trainer == row.trainer]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sortable(value: Any) -> float | str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value) if _number(value) else str(value)


def _gap_cell(row: Row, papers: Sequence[Row], key: str) -> Cell:
    """Measured minus the paper's number, in percentage points (several papers: one gap each, sorted by the first)."""
    measured = getattr(row, key)
    gaps = [(measured - getattr(p, key), p) for p in papers if measured is not None and getattr(p, key) is not None]
    if not gaps:
        return Cell("—", css="num")
    text = ", ".join(f"{100 * g:+.2f}" for g, _ in gaps)
    title = "; ".join(f"{100 * g:+.2f} percentage points against {p.label} ({p.source})" for g, p in gaps)
    return Cell(text, gaps[0][0], css="num", title=title)


def _certifier_cell(row: Row, *, name: str, estimate: bool) -> Cell:
    """Certifier ``name``'s cell in ``row`` (one of its paper-protocol ``estimate`` cells when true)."""
    cell = (row.estimates if estimate else row.by_certifier).get(name)
    if cell is None:
        return Cell("—", css="num")
    if cell.error is not None and not cell.n:
        return Cell("ERROR", css="num err", title=cell.error)
    # The leaderboard's own words for the cell (spread, subset, time-outs), without the name the header already says.
    text = render.certifier_cell(name, cell, row.n).removeprefix(f"{name} ")
    return Cell(text, cell.accuracy, css="num")


def masking_text(m: GradientMasking) -> str:
    """The check in words: ``zero gradient 0.00 %, 3 gradient-free breaks (unreliable)``."""
    parts = []
    if m.zero_gradient_fraction is not None:
        parts.append(f"zero gradient {100 * m.zero_gradient_fraction:.2f} %")
    if m.gradient_free_breaks is None:
        parts.append("no gradient-free attack ran beside a gradient-based one")
    else:
        parts.append(f"{m.gradient_free_breaks} gradient-free breaks" + (" (unreliable)" if m.unreliable else ""))
    return ", ".join(parts)


def _masking_cell(row: Row) -> Cell:
    if row.unreliable is None and row.zero_gradient_fraction is None:
        return Cell("—")
    check = GradientMasking(row.zero_gradient_fraction, row.gradient_free_breaks, row.unreliable)
    if row.unreliable:
        return Cell(render.UNRELIABLE_MARK, 1, css="flag", title=masking_text(check))
    return Cell("ok", 0, title=masking_text(check))


def build_board(group: Group, run_page: Callable[[int], str]) -> Board:
    """The table for ``group``; ``run_page(id)`` is a run's page (a relative link)."""
    sound = list(dict.fromkeys(name for r in group.rows for name in r.by_certifier))
    estimates = list(dict.fromkeys(name for r in group.rows for name in r.estimates))
    columns: list[Column] = []
    makers: list[Callable[[Row], Cell]] = []

    def add(column: Column, make: Callable[[Row], Cell]) -> None:
        columns.append(column)
        makers.append(make)

    for c in render.columns([group]):
        if c.key == "by_certifier":
            for name in sound:
                add(Column(f"certifier:{name}", name, numeric=True, title=f"certifier {name}: certified % (time-outs, errors)"),
                    functools.partial(_certifier_cell, name=name, estimate=False))
            continue
        if c.key == "estimates":
            for name in estimates:
                add(Column(f"estimate:{name}", f"{name} (paper protocol)", numeric=True,
                           title="the paper's own protocol: an estimate, not a certificate; never counted as certified"),
                    functools.partial(_certifier_cell, name=name, estimate=True))
            continue
        numeric = any(_number(c.value(r)) for r in group.rows) and all(
            c.value(r) is None or _number(c.value(r)) for r in group.rows)
        add(Column(c.key, c.header, numeric=numeric), functools.partial(_leaderboard_cell, c, run_page=run_page))
        if c.key == "certified":
            add(Column("gap_certified", "Δ certified", numeric=True,
                       title="measured minus the paper's reported certified accuracy (same trainer), percentage points"),
                lambda r: _gap_cell(r, paper_rows(group, r), "certified"))
            add(Column("gap_clean", "Δ clean", numeric=True,
                       title="measured minus the paper's reported clean accuracy (same trainer), percentage points"),
                lambda r: _gap_cell(r, paper_rows(group, r), "clean"))
        if c.key == "robust":
            add(Column("masking", "masking", title="! = the gradient-masking check flags a run of the row"), _masking_cell)
    rows = [([make(row) for make in makers], row_key(group, row), row.kind) for row in group.rows]
    return Board(group=group, columns=columns, rows=rows)


def _leaderboard_cell(column: render.Column, row: Row, *, run_page: Callable[[int], str]) -> Cell:
    value = column.value(row)
    css = "num" if _number(value) else ""
    if column.key == "trainer" and row.kind == "measured" and row.run_id is not None:
        return Cell(column.text(row), _sortable(value), href=run_page(row.run_id), title="; ".join(row.errors) or None)
    if column.key == "trainer" and row.kind == "reported":
        return Cell(column.text(row), _sortable(value), title=row.source)
    if column.key == "run_id" and row.runs:
        ids = [r.run_id for r in row.runs]
        return Cell(column.text(row), _sortable(value), css=css, links=tuple((str(i), run_page(i)) for i in ids))
    return Cell(column.text(row), _sortable(value), css=css)
