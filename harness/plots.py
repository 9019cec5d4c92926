"""Figures from stored results: certified accuracy against the radius, and clean against certified accuracy.

Built on :class:`matplotlib.figure.Figure` directly, never ``pyplot``: no GUI
backend is ever chosen, no global figure state is kept (the HTML export draws
many figures in one process), and the figure renders with Agg whatever
``MPLBACKEND`` says. Readable in greyscale: every line has its own line style
and marker, not only its own colour. Accuracies are drawn in percent; radii in
raw [0, 1] pixel units, as everywhere in the harness.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.curves import counted, run_curve
from harness.errors import UsageError
from harness.leaderboard import Group, Row
from harness.reported import ReportedResult
from harness.results import SampleResult
from harness.store import RunRecord
from harness.threat import format_eps

#: File types ``save`` writes, by extension.
FORMATS = ("png", "svg", "pdf")

#: Line styles and markers cycled through so that lines differ without colour.
_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
#: Colours that stay apart in greyscale too (dark to light), from the colour-blind-safe Okabe-Ito palette.
_COLOURS = ("#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
#: The largest radius drawn: an l_inf ball of radius 1 covers the whole [0, 1] box; l_2 radii beyond 100 exceed
#: the diagonal of a 3x32x32 image (55) and come from near-infinite closed-form radii.
_RADIUS_CAP = {"inf": 1.0, "2": 100.0}


def _styles() -> Iterator[tuple[str, str, str]]:
    """(line style, marker, colour) for line 0, 1, ...: no two of the first 36 share both style and marker."""
    for i in itertools.count():
        yield _STYLES[i % len(_STYLES)], _MARKERS[i % len(_MARKERS)], _COLOURS[i % len(_COLOURS)]


def _norm_label(norm: str) -> str:
    return "l_inf" if norm == "inf" else f"l_{norm}"


def run_label(run: RunRecord) -> str:
    """How a figure names a run: ``run 3: linf_v2 (quick, seed 0)``."""
    info = run.info
    return f"run {run.id}: {info.trainer} ({info.preset or 'no preset'}, seed {info.seed})"


def radius_figure(runs: Sequence[tuple[RunRecord, Sequence[SampleResult]]], reported: Sequence[ReportedResult] = ()) -> Figure:
    """Certified accuracy against the radius, one step line per run, from each run's stored per-sample outcomes.

    ``runs``: each finished run with its per-sample results (``store.samples(run.id)``: its best evaluation's); all of
    one norm. Each run's attack's robust accuracy at its trained eps is marked (its marker, half filled), and the numbers reported
    for its trainer, dataset and norm (``reported``: the catalog's) are drawn as hollow markers at their eps.

    :raises UsageError: no runs, a run without an evaluation, or runs of different norms (radii would not compare).
    """
    if not runs:
        raise UsageError("no runs to plot")
    norms = sorted({run.info.norm for run, _ in runs})
    if len(norms) > 1:
        raise UsageError(f"runs of different norms ({', '.join(_norm_label(n) for n in norms)}) share no radius axis: plot them apart")
    norm = norms[0]
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = _styles()
    xmax = 0.0
    for run, samples in runs:
        if run.result is None:
            raise UsageError(f"run {run.id} has no evaluation (status {run.status}): nothing to plot")
        style, marker, colour = next(styles)
        xmax = max(xmax, run.info.eps)
        if counted(run.result):  # else no sound certifier stood: it has no certified accuracy to draw (not a line at 0)
            curve = run_curve(run.result, samples, run.info.eps)
            xs, ys = curve.steps()
            cap = _RADIUS_CAP[norm]
            xmax = max(xmax, max((x for x in xs if x <= cap), default=0.0))
            xs = [min(x, 2 * cap) for x in xs]  # a near-infinite radius runs flat past the frame, not to 1e308
            # One marker, where the line meets the run's eps: the stored certified accuracy (the line's style tells it anyway).
            ax.plot(xs, [100 * y for y in ys], drawstyle="steps-post", linestyle=style, marker=marker, markevery=[xs.index(curve.eps)],
                    color=colour, label=run_label(run))
        robust = run.result.robust_accuracy
        if robust is not None:
            attack = run.result.attack_label() or "attack"
            # The run's own marker, half filled: which run it is reads without colour, and it differs from the curve's
            # (filled) and the papers' (hollow) points.
            ax.plot([run.info.eps], [100 * robust], linestyle="none", marker=marker, fillstyle="top", markersize=10, markeredgewidth=1.5,
                    markerfacecoloralt="white", color=colour, label=f"run {run.id}: {attack} at eps {format_eps(run.info.eps)}")
    for (label, _), points in _reported_points(runs, reported).items():
        style, marker, colour = next(styles)
        xs = [r.eps for r in points]
        ax.plot(xs, [100 * (r.certified or 0.0) for r in points], linestyle="none", marker=marker, markersize=9, markeredgewidth=1.5,
                markerfacecolor="white", color=colour, label=f"{label} (reported)")
        xmax = max(xmax, *xs)
    datasets = ", ".join(sorted({run.info.dataset for run, _ in runs}))
    ax.set_title(f"Certified accuracy against radius: {datasets}, {_norm_label(norm)}")
    ax.set_xlabel(f"radius ({_norm_label(norm)}, [0, 1] pixel units)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_xlim(0, xmax * 1.05 if xmax > 0 else 1.0)
    ax.set_ylim(0, 100)
    ax.grid(True, linestyle=":", linewidth=0.5, color="#999999")
    ax.legend(loc="best", fontsize="small")
    return fig


def _reported_points(runs: Sequence[tuple[RunRecord, Sequence[SampleResult]]],
                     reported: Sequence[ReportedResult]) -> dict[tuple[str, str], list[ReportedResult]]:
    """The reported rows that match a plotted run's trainer, dataset and norm and state a certified accuracy, by (label, source)."""
    wanted = {(run.info.trainer, run.info.dataset, run.info.norm) for run, _ in runs}
    found: dict[tuple[str, str], list[ReportedResult]] = {}
    for r in reported:
        if (r.trainer, r.dataset, r.norm) in wanted and r.certified is not None:
            found.setdefault((r.label, r.source), []).append(r)
    return {key: sorted(rows, key=lambda r: r.eps) for key, rows in found.items()}


def tradeoff_figure(group: Group) -> Figure:
    """Clean against certified accuracy for one threat model: one point per leaderboard row (runs that differ only by
    seed are one point, with ± one standard deviation as error bars); reported numbers hollow, measured ones filled, each row its own marker.

    ``group``: one group of :func:`harness.leaderboard.build` (a dataset, norm and eps).
    """
    fig = Figure(figsize=(6.5, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = _styles()
    for row in group.rows:
        if row.clean is None or row.certified is None:
            continue
        _, marker, colour = next(styles)
        reported = row.kind == "reported"
        ax.errorbar(
            [100 * row.clean], [100 * row.certified],
            xerr=None if row.clean_std is None else [100 * row.clean_std],
            yerr=None if row.certified_std is None else [100 * row.certified_std],
            linestyle="none", marker=marker, markersize=9 if reported else 8, markeredgewidth=1.5, capsize=4,
            markerfacecolor="white" if reported else colour, color=colour, label=row_label(row),
        )
    ax.set_title(f"Clean against certified accuracy: {group.dataset}, {_norm_label(group.norm)}, eps {format_eps(group.eps)}")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("certified accuracy (%)")
    ax.margins(0.1)  # points on the frame are hard to see
    ax.grid(True, linestyle=":", linewidth=0.5, color="#999999")
    if ax.has_data():
        ax.legend(loc="best", fontsize="small")
    return fig


def row_label(row: Row) -> str:
    """How the trade-off figure names a leaderboard row."""
    if row.kind == "reported":
        return f"{row.label} (reported)"
    runs = ",".join(str(r.run_id) for r in row.runs)
    spread = f", mean of {row.n} seeds" if (row.n or 1) > 1 else ""
    return f"{row.label} ({row.preset or 'no preset'}, run{'s' if len(row.runs) > 1 else ''} {runs}{spread})"


def output_path(out: Path | None, default: str) -> Path:
    """``out``, or ``default`` in the working directory; a UsageError unless it ends in one of :data:`FORMATS`."""
    path = Path(default) if out is None else out
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UsageError(f"--out {str(path)!r}: unknown file type {path.suffix or '(none)'!r}; valid: {', '.join('.' + f for f in FORMATS)}")
    return path


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (its extension says the format, one of :data:`FORMATS`); return the path.

    An SVG keeps its text as text (not glyph outlines): searchable, selectable, and smaller.

    :raises UsageError: the file cannot be written (a missing folder, permissions, a full disk): one line, not a traceback.
    """
    try:
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            fig.savefig(path, dpi=150)
    except OSError as exc:
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def default_name(*parts: str, ext: str = "png") -> str:
    """A file name from ``parts``, safe in a path: ``tradeoff-mnist-linf-8-255.png``."""
    clean = "-".join(p.replace("/", "-").replace(" ", "-") for p in parts if p)
    return f"{clean}.{ext}"

