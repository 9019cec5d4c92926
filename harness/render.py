"""Rendering of the leaderboard and of runs: plain text, markdown, CSV and JSON. No data logic here."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from harness import evaluation_report
from harness.commands import text_table
from harness.leaderboard import CertifierCell, Group, Row
from harness.results import CertifierResult, EvaluationResult, SampleResult
from harness.store import EvaluationRecord, RunRecord
from harness.threat import format_eps

FORMATS = ("table", "markdown", "csv", "json")

#: Marks a row whose gradient-masking check failed (``Row.unreliable``), after its attack number; :data:`LEGEND` explains it.
UNRELIABLE_MARK = "!"
LEGEND = {
    UNRELIABLE_MARK: "gradient masking suspected: a gradient-free attack broke samples that every gradient attack missed "
                     "(more than 0.2 % of them, AutoAttack's check), so the attack's number overstates robustness",
    "paper protocol": "a paper's own evaluation that is an estimate, not a certificate: never counted as certified",
    "time-outs / errors": "samples a certifier ran out of time on / whose batch raised: never certified",
}


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def spread(value: float | None, std: float | None, n: int | None, *, of: int | None = None, statistic: str | None = None) -> str:
    """A percentage over several runs: ``93.33 ± 0.08 (3)``; ``93.33`` for one run; ``93.20 (median of 8)``.

    ``n`` counts the values behind ``value``; ``of``, when more, the runs of the row (``40.00 ± 1.00 (2 of 3)``:
    one run had no such number). ``statistic`` names what a value without a ``std`` is over its ``n`` runs.
    """
    if value is None:
        return "—"
    count = "" if n is None else (f"{n} of {of}" if of is not None and of > n else str(n))
    if std is not None:
        return f"{percent(value)} ± {100 * std:.2f} ({count})"
    if n is not None and (n > 1 or (of or 0) > 1):
        return f"{percent(value)} ({statistic} of {count})" if statistic else f"{percent(value)} ({count})"
    return percent(value)


def certifier_cell(name: str, cell: CertifierCell, of: int | None = None) -> str:
    """``crown 0.00 (of 100)``, ``interval 30.00 ± 1.00 (3)`` over seeds, ``ibp 85.30 (t/o 3, err 0)`` with time-outs or
    per-sample errors, or ``liar ERROR`` for a certifier that failed."""
    if cell.error is not None and not cell.n:
        return f"{name} ERROR"
    value = spread(cell.accuracy, cell.std, cell.n, of=of) if of is not None and of > 1 else percent(cell.accuracy)
    text = f"{name} {value}" + (f" (of {cell.samples})" if cell.samples is not None else "")
    return text + (f" (t/o {cell.timeouts}, err {cell.errors})" if cell.timeouts or cell.errors else "")


@dataclass(frozen=True)
class Column:
    """One column of the leaderboard, the same in every format (table, markdown, CSV, JSON, the HTML board).

    ``key`` names it in data (a :class:`~harness.leaderboard.Row` field where there is one); ``header`` is
    what tables print; ``text(row)`` the cell as shown; ``value(row)`` a typed value to sort by (a number,
    a string, or ``None`` when the row has none).
    """

    key: str
    header: str
    text: Callable[[Row], str]
    value: Callable[[Row], Any]


def columns(groups: Sequence[Group]) -> list[Column]:
    """The leaderboard's columns for ``groups``: certified accuracy at ``--at-eps`` when it was asked for, and the
    paper-protocol column when some row has an estimate; every other column always."""
    at_eps = next((r.at_eps for g in groups for r in g.rows if r.at_eps is not None), None)
    estimates = any(r.estimates for g in groups for r in g.rows)
    cols = [
        Column("rank", "rank", lambda r: "reported" if r.kind == "reported" else str(r.rank), lambda r: r.rank),
        Column("trainer", "trainer", lambda r: r.label + (" (errors)" if r.errors else ""), lambda r: r.label),
        Column("preset", "preset", _preset, lambda r: r.preset),
        Column("seeds", "seeds", lambda r: ",".join("—" if s is None else str(s) for s in r.seeds) or "—", lambda r: r.n),
        Column("clean", "clean", lambda r: _stat(r, "clean"), lambda r: r.clean),
        Column("robust", "attack", _attack, lambda r: r.robust),
        Column("certified", "certified", lambda r: _stat(r, "certified"), lambda r: r.certified),
    ]
    if at_eps is not None:
        cols.append(Column("certified_at", f"certified at {format_eps(at_eps)}", _at_eps, lambda r: r.certified_at))
    cols.append(Column("by_certifier", "by certifier", lambda r: _certifiers(r, r.by_certifier), lambda r: r.certified))
    if estimates:
        cols.append(Column("estimates", "paper protocol", lambda r: _certifiers(r, r.estimates), _first_estimate))
    cols += [
        Column("timeouts", "time-outs / errors", _timeouts, lambda r: None if r.timeouts is None else r.timeouts + (r.sample_errors or 0)),
        Column("epochs", "epochs", lambda r: "—" if r.epochs is None else str(r.epochs), lambda r: r.epochs),
        Column("train_seconds", "train time", lambda r: duration(r.train_seconds), lambda r: r.train_seconds),
        Column("eval_seconds", "eval time", lambda r: duration(r.eval_seconds), lambda r: r.eval_seconds),
        Column("eval_samples", "samples", lambda r: "—" if r.eval_samples is None else str(r.eval_samples), lambda r: r.eval_samples),
        Column("run_id", "run", _run_cell, lambda r: r.run_id if r.run_id is not None else (r.runs[0].run_id if r.runs else None)),
    ]
    return cols


def _preset(row: Row) -> str:
    preset = row.preset or ("reported" if row.kind == "reported" else "—")
    return preset + (f" (train {row.train_samples})" if row.train_samples else "")


def _stat(row: Row, key: str) -> str:
    """A row's accuracy ``key`` (clean, robust, certified, certified_at) with its spread."""
    value, std = getattr(row, key), getattr(row, f"{key}_std")
    if row.kind == "reported":
        return spread(value, std, row.n, statistic=row.statistic)
    values = sum(_finite(getattr(r, key)) for r in row.runs)  # those the mean is over (leaderboard.Spread's rule)
    return spread(value, std, values, of=row.n)


def _attack(row: Row) -> str:
    text = _stat(row, "robust") + (f" {row.attack}" if row.attack and row.robust is not None else "")
    return text + (f" {UNRELIABLE_MARK}" if row.unreliable else "")


def _at_eps(row: Row) -> str:
    if row.certified_at is None and row.at_eps_missing:
        return f"n/a ({row.at_eps_missing})"
    return _stat(row, "certified_at")


def _certifiers(row: Row, cells: dict[str, CertifierCell]) -> str:
    return ", ".join(certifier_cell(k, v, row.n) for k, v in cells.items()) or "—"


def _first_estimate(row: Row) -> float | None:
    return next((c.accuracy for c in row.estimates.values() if c.accuracy is not None), None)


def _timeouts(row: Row) -> str:
    return "—" if row.timeouts is None else f"{row.timeouts} / {row.sample_errors or 0}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _run_cell(row: Row) -> str:
    """The run id; with several evaluations, also which one the row shows (``3 eval 5 of 2``); over seeds, every run id."""
    if row.run_id is None:
        return ",".join(str(r.run_id) for r in row.runs) or "—"
    return str(row.run_id) + (f" eval {row.evaluation_id} of {row.evaluations}" if row.evaluations > 1 else "")


def title(group: Group) -> str:
    return f"{group.dataset}  l_{group.norm}  eps={format_eps(group.eps)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def leaderboard(groups: list[Group], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(_strict([_group_json(g) for g in groups]), indent=2, allow_nan=False)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["dataset", "norm", "eps", "kind", "rank", "trainer", "label", "preset", "clean", "robust", "attack",
                         "certified", "by_certifier", "epochs", "train_seconds", "eval_samples", "train_samples", "run_id", "source", "errors",
                         "n", "statistic", "clean_std", "robust_std", "certified_std", "seeds", "run_ids", "runs",
                         "eval_seconds", "at_eps", "certified_at", "certified_at_std", "certified_at_n", "at_eps_missing", "estimates",
                         "timeouts", "sample_errors", "unreliable", "gradient_free_breaks", "zero_gradient_fraction"])
        for g in groups:
            for r in g.rows:
                writer.writerow(_strict([g.dataset, g.norm, repr(g.eps), r.kind, r.rank, r.trainer, r.label, r.preset, r.clean, r.robust,
                                         r.attack, r.certified, _json({k: asdict(v) for k, v in r.by_certifier.items()}), r.epochs,
                                         r.train_seconds, r.eval_samples, r.train_samples, r.run_id, r.source, _json(r.errors),
                                         r.n, r.statistic, r.clean_std, r.robust_std, r.certified_std, _json(r.seeds),
                                         _json([s.run_id for s in r.runs]), _json([asdict(s) for s in r.runs]),
                                         r.eval_seconds, r.at_eps, r.certified_at, r.certified_at_std, r.certified_at_n, r.at_eps_missing,
                                         _json({k: asdict(v) for k, v in r.estimates.items()}), r.timeouts, r.sample_errors,
                                         r.unreliable, r.gradient_free_breaks, r.zero_gradient_fraction]))
        return buf.getvalue().rstrip("\n")
    if not groups:
        return "no finished runs yet (harness run --plugin NAME --dataset NAME)"
    blocks = []
    cols = columns(groups)
    header = [c.header for c in cols]
    for g in groups:
        rows = [[c.text(r) for c in cols] for r in g.rows]
        if fmt == "markdown":
            blocks.append(f"### {title(g)}\n\n" + markdown_table(header, rows))
        else:
            blocks.append(title(g) + "\n" + text_table(header, rows))
    notes = [f"reported: {s}" for s in sorted({r.source for g in groups for r in g.rows if r.source})]
    notes += [f"{mark}: {why}" for mark, why in legend(groups, cols).items()]
    if notes:
        blocks.append(("Notes:\n" if fmt == "table" else "Notes:\n\n") + "\n".join(f"  {n}" if fmt == "table" else f"- {n}" for n in notes))
    return "\n\n".join(blocks)


def legend(groups: Sequence[Group], cols: Sequence[Column]) -> dict[str, str]:
    """What the marks and columns that need a word mean, for those that ``groups`` show."""
    shown = {c.header for c in cols}
    if not any(r.timeouts or r.sample_errors for g in groups for r in g.rows):
        shown.discard("time-outs / errors")  # all zero: nothing to explain
    found = {mark: why for mark, why in LEGEND.items() if mark in shown}
    if any(r.unreliable for g in groups for r in g.rows):
        found = {UNRELIABLE_MARK: LEGEND[UNRELIABLE_MARK], **found}
    at = next((c.header for c in cols if c.key == "certified_at"), None)
    if at is not None:
        found[at] = ("from the stored per-sample radii: correct and, by a sound certifier, a radius above it or a certificate "
                     "at the run's eps when it is no larger; n/a (no radii): the run's certifiers stored none")
    return found


def nothing_matches(recorded: list[RunRecord], filters: Sequence[str], *, finished: bool) -> str:
    """Why a list is empty: the database has no runs, no run has finished, or none matches ``filters``.

    :param recorded: every run in the database.
    :param filters: the filters as given (``--dataset cifar10``); empty if none.
    :param finished: the list shows finished runs only (the leaderboard), not every status (``harness runs``).
    """
    if not recorded:
        return "no finished runs yet (harness run --plugin NAME --dataset NAME)" if finished else "no runs recorded"
    matches = f"no {'finished run' if finished else 'run'} matches {' '.join(filters)}"
    statuses = ", ".join(f"{n} {status}" for status, n in _counts(r.status for r in recorded))
    if not finished:
        datasets = ", ".join(f"{dataset} ({n})" for dataset, n in _counts(r.info.dataset for r in recorded))
        return f"{matches}; recorded runs: {statuses}; datasets: {datasets}"
    done = [r for r in recorded if r.status == "finished"]
    if not done:
        why = f"no run has finished yet: {statuses} (harness runs lists them)"
        return f"{matches}; {why}" if filters else why
    settings = ", ".join(f"{s} ({n})" for s, n in _counts(f"{r.info.dataset} l_{r.info.norm} eps={format_eps(r.info.eps)}" for r in done))
    return f"{matches}; finished runs are on {settings}"


def _counts(values: Iterable[str]) -> list[tuple[str, int]]:
    """Each value with how often it occurs, most frequent first."""
    return sorted(Counter(values).items(), key=lambda item: (-item[1], item[0]))


def _strict(value: Any) -> Any:
    """``value`` with every NaN or infinite number made ``None``: JSON and CSV readers take them as missing, not as ``NaN``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def _json(value: Any) -> str:
    return json.dumps(_strict(value), allow_nan=False)


def _group_json(group: Group) -> dict[str, Any]:
    return {"dataset": group.dataset, "norm": group.norm, "eps": group.eps, "rows": [asdict(r) for r in group.rows]}


# -- runs ---------------------------------------------------------------------------------------------------


def run_summary(record: RunRecord) -> str:
    """One line: status, clean / attacked / certified accuracy, per certifier, times; then what robust accuracy is and
    each certifier's radii (:func:`harness.evaluation_report.summary_lines`)."""
    times = f"train {record.train_seconds or 0:.0f}s, eval {record.eval_seconds or 0:.0f}s"
    if record.result is None:
        return f"run {record.id} {record.status}; {times}"
    first = f"run {record.id} {record.status}: {_result_line(record.result)}; {times}"
    return "\n".join([first, *("  " + line for line in evaluation_report.summary_lines(record.result))])


def evaluation_summary(record: RunRecord, evaluation: EvaluationRecord) -> str:
    """One line for one evaluation of a run (``harness eval``), then the lines :func:`run_summary` adds."""
    best = " (the leaderboard's)" if record.best is not None and record.best.id == evaluation.id else ""
    first = f"run {record.id}, evaluation {evaluation.id}{best}: {_result_line(evaluation.result)}; eval {evaluation.seconds or 0:.0f}s"
    return "\n".join([first, *("  " + line for line in evaluation_report.summary_lines(evaluation.result))])


def _result_line(r: EvaluationResult) -> str:
    per = ", ".join(certifier_cell(c.name, _cell(c, r.samples)) for c in r.certifiers if c.sound)
    # An estimate is never part of "certified": named apart, as what it is.
    estimates = ", ".join(certifier_cell(c.name, _cell(c, r.samples)) for c in r.certifiers if not c.sound)
    return (
        f"clean {_pct(r.clean_accuracy)}  attack {_pct(r.robust_accuracy)}  certified {_pct(r.certified_accuracy)}"
        + (f" ({per})" if per else "") + (f"  paper protocol, not certified: {estimates}" if estimates else "")
        + f"  on {r.samples} test samples"
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _cell(c: CertifierResult, samples: int) -> CertifierCell:
    return CertifierCell(accuracy=c.accuracy, samples=c.samples if c.samples < samples else None, error=c.error)


def resumable(record: RunRecord, stale: str | None) -> bool:
    """Whether ``harness run --resume`` can continue the run (interrupted, failed, or running but stale; trained here,
    by a harness that stored the run's request)."""
    stored_request = isinstance(record.info.config, dict) and "request" in record.info.config  # runs of older harnesses lack it
    return record.info.origin != "external" and stored_request and (record.status in ("interrupted", "failed") or stale is not None)


def _status(record: RunRecord, stale: str | None) -> str:
    text = record.status + (f" (stale: {stale})" if stale else "")
    return text + (f", resumable: harness run --resume {record.id}" if resumable(record, stale) else "")


def _trainer_line(record: RunRecord) -> str:
    info = record.info
    if info.origin == "external":
        model = info.config.get("model") if isinstance(info.config, dict) else None
        name = model.get("name") if isinstance(model, dict) else "?"
        return f"  trainer     none: an external model ({name}), trained elsewhere and evaluated here"
    return f"  trainer     {info.trainer} (preset {info.preset or '—'}, seed {info.seed}, {info.epochs or '—'} epochs)"


def run_details(record: RunRecord, samples: list[SampleResult], *, stale: str | None = None) -> str:
    """What ``harness show`` prints: the run, its results per component, why others did not apply, its configuration."""
    info = record.info
    env = info.environment
    lines = [
        f"run {record.id}: {_status(record, stale)}",
        _trainer_line(record),
        f"  threat      {info.dataset}, l_{info.norm} eps={format_eps(info.eps)}",
        f"  created     {record.created_at:%Y-%m-%d %H:%M:%S} UTC"
        + (f", ended {record.finished_at:%Y-%m-%d %H:%M:%S}" if record.finished_at else ""),
        f"  time        train {duration(record.train_seconds)}, eval {duration(record.eval_seconds)}",
        f"  device      {info.device}",
        f"  versions    harness {env.get('harness')}, torch {env.get('torch')}, python {env.get('python')}",
        f"  commit      {env.get('commit') or 'unknown'}",
    ]
    if record.error:
        lines.append(f"  error       {record.error}")
    if record.weights is not None:
        lines.append(f"  weights     {record.weights.path} ({record.weights.bytes:,} bytes, sha256 {record.weights.sha256[:16]}…)")
    if record.checkpoint:
        c = record.checkpoint
        lines.append(f"  checkpoint  {c.get('path')} (epoch {c.get('epoch')}, step {c.get('step')}, saved {c.get('saved_at')})")
    if record.resumes:
        lines.append(f"  resumed     {record.resumes} time(s)")
    history = record.training.get("epochs") if isinstance(record.training, dict) else None
    if history:
        last = history[-1]
        lines.append("  training    last epoch: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items()))
    for evaluation in record.evaluations:
        best = ", the leaderboard's: the most complete" if record.best is not None and evaluation.id == record.best.id else ""
        lines.append(
            f"evaluation {evaluation.id} ({evaluation.created_at:%Y-%m-%d %H:%M:%S} UTC, {duration(evaluation.seconds)}, "
            f"harness {evaluation.environment.get('harness')}{best}):"
        )
        lines += ["  " + line for line in _result_lines(evaluation.result)]
    lines.append("configuration:")
    lines += ["  " + line for line in json.dumps(info.config, indent=2).splitlines()]
    if samples:
        names = sorted({*samples[0].attacks, *(n for s in samples for n in s.certificates)})
        header = ["index", "label", "pred", *names]
        table = []
        for s in samples:
            cells = [str(s.index), str(s.label), str(s.prediction)]
            for name in names:
                if name in s.attacks:
                    cells.append("survived" if s.attacks[name] else "broken")
                elif name in s.certificates:
                    ok, radius = s.certificates[name]
                    outcome = s.outcomes.get(name, "certified" if ok else "not-certified")
                    cells.append(("certified" if ok else "-" if outcome == "not-certified" else outcome)
                                 + (f" r={radius:.4g}" if radius is not None else ""))
                else:
                    cells.append("")  # outside a costly certifier's subset
            table.append(cells)
        lines.append("samples:")
        lines.append(text_table(header, table))
    return "\n".join(lines)


def _result_lines(r: EvaluationResult) -> list[str]:
    return evaluation_report.result_lines(r)


def run_json(record: RunRecord, samples: list[SampleResult]) -> dict[str, Any]:
    """``harness show --format json``: the record as nested, typed JSON.

    ``result`` is the leaderboard's evaluation (the most complete, ``best_evaluation``); ``evaluations`` lists them all.
    """
    data = asdict(record)
    data.pop("best", None)
    data["best_evaluation"] = record.best.id if record.best else None
    data["result"] = asdict(record.result) if record.result is not None else None
    data["eval_seconds"] = record.eval_seconds
    if record.result is not None:
        data["result"]["errors"] = record.result.errors
    data["samples"] = [asdict(s) for s in samples]
    return json.loads(json.dumps(data, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def run_list(records: list[RunRecord], *, stale: Callable[[RunRecord], str | None]) -> str:
    """What ``harness runs`` prints: one line per run."""
    rows = []
    for r in records:
        result = r.result
        errors = result.errors if result else []
        error = r.error or (errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "") if errors else "")
        why = stale(r)
        status = r.status + (" (stale)" if why else "") + (" with errors" if errors else "") + (" (resumable)" if resumable(r, why) else "")
        rows.append([
            str(r.id), status, r.info.trainer, r.info.preset or "—", r.info.dataset, f"l_{r.info.norm} {format_eps(r.info.eps)}",
            percent(result.certified_accuracy if result else None), f"{r.created_at:%Y-%m-%d %H:%M}", error[:60],
        ])
    return text_table(["id", "status", "trainer", "preset", "dataset", "threat", "certified", "created (UTC)", "error"], rows)
