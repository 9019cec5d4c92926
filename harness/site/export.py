"""``harness export html DIR``: write the static board, one file per page and per figure.

Pages link to each other and to their figures by relative paths, so the folder can be opened from disk,
copied or served by any static file server; nothing is fetched from a network.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import leaderboard
from harness.errors import UsageError
from harness.leaderboard import Group, SampleSource
from harness.plots import radius_figure, save, tradeoff_figure
from harness.reported import ReportedResult
from harness.results import SampleResult
from harness.site.board import Board, build_board
from harness.site.pages import INDEX, board_page, board_title, index_page, run_page
from harness.store import RunRecord
from harness.threat import format_eps, same_eps


@dataclass
class Site:
    """What an export wrote: the folder, and its pages and figures (paths relative to it)."""

    directory: Path
    pages: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def board_file(group: Group) -> str:
    """``board-mnist-linf-eps0.3.html``, ``board-cifar10-linf-eps8_255.html``: readable, and safe on every file system."""
    eps = format_eps(group.eps).replace("/", "_")
    return "board-" + re.sub(r"[^A-Za-z0-9._-]+", "_", f"{group.dataset}-l{group.norm}-eps{eps}") + ".html"


def run_file(run_id: int) -> str:
    return f"run-{run_id}.html"


def _write(path: Path, text: str) -> None:
    """Write ``text`` whole: a reader (a browser refreshing) never sees half a page."""
    temporary = path.with_name(f".{path.name}.tmp")
    with _writing(path):
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A file that cannot be written (permissions, a full disk) is the user's to fix: one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc


def _folder(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{str(directory)!r} is a file, not a folder: give a folder for the site (it is created if missing)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the folder {str(directory)!r}: {exc.strerror or exc}") from exc


def export_site(
    directory: Path,
    runs: Sequence[RunRecord],
    reported: Sequence[ReportedResult],
    *,
    samples: SampleSource,
    dataset: str | None = None,
    norm: str | None = None,
    eps: float | None = None,
    reported_rows: str = "runs",
    at_eps: float | None = None,
    figures: bool = True,
) -> Site:
    """Write the board for finished ``runs`` (and the papers' ``reported`` numbers) into ``directory``.

    :param samples: a run → its best evaluation's per-sample results (the radius curves' data).
    :param dataset, norm, eps: only these boards (and reported numbers), as :func:`harness.leaderboard.build`.
    :param reported_rows: as :func:`harness.leaderboard.build`: reported numbers beside measured runs ("runs"),
        for every threat model ("all"), or none.
    :param at_eps: also a column of certified accuracy at this radius (the leaderboard's ``--at-eps``).
    :param figures: also draw each run's radius curve and each board's trade-off plot (matplotlib).
    :raises UsageError: ``directory`` is a file or cannot be created.
    """
    _folder(directory)
    site = Site(directory)
    runs = [r for r in runs if (dataset is None or r.info.dataset == dataset) and (norm is None or r.info.norm == norm)
            and (eps is None or same_eps(r.info.eps, eps))]
    stored: dict[int, Sequence[SampleResult]] = {}

    def with_samples(run: RunRecord) -> tuple[RunRecord, Sequence[SampleResult]]:
        if run.id not in stored:
            stored[run.id] = samples(run)
        return run, stored[run.id]

    groups = leaderboard.build(list(runs), list(reported), dataset=dataset, norm=norm, eps=eps, reported_rows=reported_rows,
                               at_eps=at_eps, samples=lambda run: with_samples(run)[1])
    by_id = {run.id: run for run in runs}
    boards: list[tuple[Board, str]] = []
    for group in groups:
        board = build_board(group, run_file)
        name = board_file(group)
        stem = name.removeprefix("board-").removesuffix(".html")
        shown = [with_samples(by_id[i]) for i in board_runs(group) if i in by_id]
        radius = _figure(site, f"radius-{stem}.png", functools.partial(draw_radius, runs=shown, reported=reported)) if figures else None
        tradeoff = _figure(site, f"tradeoff-{stem}.png", functools.partial(draw_tradeoff, group=group)) if figures else None
        _write(directory / name, board_page(board, radius=radius, tradeoff=tradeoff, radius_runs=len(shown)))
        site.pages.append(name)
        boards.append((board, name))
    for run in runs:
        mine = {board_title(b.group): name for b, name in boards
                if (b.group.dataset, b.group.norm) == (run.info.dataset, run.info.norm) and same_eps(b.group.eps, run.info.eps)}
        radius = _figure(site, f"radius-{run.id}.png",
                         functools.partial(draw_radius, runs=[with_samples(run)], reported=reported)) if figures else None
        _write(directory / run_file(run.id), run_page(run, mine, radius))
        site.pages.append(run_file(run.id))
    _write(directory / INDEX, index_page(boards, runs, run_file))
    site.pages.append(INDEX)
    return site


#: At most this many runs' curves on a board's radius figure (the best rows' runs first): more lines are unreadable.
BOARD_CURVES = 8


def board_runs(group: Group) -> list[int]:
    """The runs a board's radius figure draws: those of its measured rows in rank order, at most :data:`BOARD_CURVES`."""
    ids = [r.run_id for row in group.rows if row.kind == "measured" for r in row.runs]
    return ids[:BOARD_CURVES]


def _figure(site: Site, name: str, draw: Callable[[Path], bool]) -> str | None:
    """Draw one figure to ``name`` in the site; its name, or ``None`` when there was nothing to draw."""
    with _writing(site.directory / name):
        if not draw(site.directory / name):
            return None
    site.figures.append(name)
    return name


def draw_radius(path: Path, *, runs: list[tuple[RunRecord, Sequence[SampleResult]]], reported: Sequence[ReportedResult]) -> bool:
    """Certified accuracy against the radius of ``runs``, with their papers' reported points (:func:`harness.plots.radius_figure`)."""
    runs = [(run, samples) for run, samples in runs if run.result is not None]
    if not runs:
        return False
    save(radius_figure(runs, reported), path)
    return True


def draw_tradeoff(path: Path, *, group: Group) -> bool:
    """The board's clean against certified accuracy (:func:`harness.plots.tradeoff_figure`); nothing without a point."""
    if not any(r.clean is not None and r.certified is not None for r in group.rows):
        return False
    save(tradeoff_figure(group), path)
    return True
