"""Rendering of the leaderboard and of runs: plain text, markdown, CSV and JSON. No data logic here."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from harness.commands import text_table
from harness.leaderboard import CertifierCell, Group, Row
from harness.results import CertifierResult, SampleResult
from harness.store import RunRecord
from harness.threat import format_eps

FORMATS = ("table", "markdown", "csv", "json")

_COLUMNS = ("rank", "trainer", "preset", "clean", "attack", "certified", "by certifier", "epochs", "train time", "n", "run")


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


def certifier_cell(name: str, cell: CertifierCell) -> str:
    """``crown 0.00 (of 100)``, or ``liar ERROR`` for a certifier that failed."""
    if cell.error is not None:
        return f"{name} ERROR"
    return f"{name} {percent(cell.accuracy)}" + (f" (of {cell.samples})" if cell.samples is not None else "")


def _cells(row: Row) -> list[str]:
    reported = row.kind == "reported"
    n = "—" if row.eval_samples is None else str(row.eval_samples)
    preset = row.preset or ("reported" if reported else "—")
    if row.train_samples:
        preset += f" (train {row.train_samples})"
    attack = percent(row.robust) + (f" {row.attack}" if row.attack and row.robust is not None else "")
    return [
        "reported" if reported else str(row.rank),
        row.label + (" (errors)" if row.errors else ""),
        preset,
        percent(row.clean),
        attack,
        percent(row.certified),
        ", ".join(certifier_cell(k, v) for k, v in row.by_certifier.items()) or "—",
        "—" if row.epochs is None else str(row.epochs),
        duration(row.train_seconds),
        n,
        "—" if row.run_id is None else str(row.run_id),
    ]


def title(group: Group) -> str:
    return f"{group.dataset}  l_{group.norm}  eps={format_eps(group.eps)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def leaderboard(groups: list[Group], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([_group_json(g) for g in groups], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["dataset", "norm", "eps", "kind", "rank", "trainer", "label", "preset", "clean", "robust", "attack",
                         "certified", "by_certifier", "epochs", "train_seconds", "eval_samples", "train_samples", "run_id", "source", "errors"])
        for g in groups:
            for r in g.rows:
                writer.writerow([g.dataset, g.norm, repr(g.eps), r.kind, r.rank, r.trainer, r.label, r.preset, r.clean, r.robust, r.attack,
                                 r.certified, json.dumps({k: asdict(v) for k, v in r.by_certifier.items()}), r.epochs, r.train_seconds,
                                 r.eval_samples, r.train_samples, r.run_id, r.source, json.dumps(r.errors)])
        return buf.getvalue().rstrip("\n")
    if not groups:
        return "no finished runs yet (harness run --plugin NAME --dataset NAME)"
    blocks = []
    for g in groups:
        rows = [_cells(r) for r in g.rows]
        if fmt == "markdown":
            blocks.append(f"### {title(g)}\n\n" + markdown_table(_COLUMNS, rows))
        else:
            blocks.append(title(g) + "\n" + text_table(_COLUMNS, rows))
    sources = sorted({r.source for g in groups for r in g.rows if r.source})
    if sources:
        notes = "\n".join(f"  reported: {s}" for s in sources)
        blocks.append(("Sources:\n" if fmt == "table" else "Sources:\n\n") + notes)
    return "\n\n".join(blocks)


def _group_json(group: Group) -> dict[str, Any]:
    return {"dataset": group.dataset, "norm": group.norm, "eps": group.eps, "rows": [asdict(r) for r in group.rows]}


# -- runs ---------------------------------------------------------------------------------------------------


def run_summary(record: RunRecord) -> str:
    """One line: status, clean / attacked / certified accuracy, per certifier, times."""
    r = record.result
    times = f"train {record.train_seconds or 0:.0f}s, eval {record.eval_seconds or 0:.0f}s"
    if r is None:
        return f"run {record.id} {record.status}; {times}"
    per = ", ".join(certifier_cell(c.name, _cell(c, r.samples)) for c in r.certifiers)
    return (
        f"run {record.id} {record.status}: clean {_pct(r.clean_accuracy)}  attack {_pct(r.robust_accuracy)}  "
        f"certified {_pct(r.certified_accuracy)}" + (f" ({per})" if per else "") + f"  on {r.samples} test samples; {times}"
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _cell(c: CertifierResult, samples: int) -> CertifierCell:
    return CertifierCell(accuracy=c.accuracy, samples=c.samples if c.samples < samples else None, error=c.error)


def run_details(record: RunRecord, samples: list[SampleResult], *, stale: bool = False) -> str:
    """What ``harness show`` prints: the run, its results per component, why others did not apply, its configuration."""
    info = record.info
    env = info.environment
    lines = [
        f"run {record.id}: {record.status}" + (" (stale: its process is gone)" if stale else ""),
        f"  trainer     {info.trainer} (preset {info.preset}, seed {info.seed}, {info.epochs} epochs)",
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
    r = record.result
    if r is not None:
        lines.append(f"results on {r.samples} test samples:")
        lines.append(f"  clean accuracy      {_pct(r.clean_accuracy)}")
        lines.append(f"  robust accuracy     {_pct(r.robust_accuracy)}" + (f" ({r.attack_label()})" if r.attack_label() else ""))
        lines.append(f"  certified accuracy  {_pct(r.certified_accuracy)} (certified by any certifier)")
        rows = []
        for a in r.attacks:
            outcome = f"ERROR: {a.error}" if a.error else f"robust {_pct(a.accuracy)} (attacked {a.attacked})"
            rows.append(["attack", a.name, a.label, outcome, duration(a.seconds)])
        for c in r.certifiers:
            if c.error:
                outcome = f"ERROR: {c.error}"
            else:
                outcome = f"certified {_pct(c.accuracy)} of {c.samples}"
                if c.radius is not None:
                    outcome += f", radius mean {c.radius.mean:.4g} median {c.radius.median:.4g}"
            rows.append(["certifier", c.name, "", outcome, duration(c.seconds)])
        for name, reason in sorted(r.not_applicable.items()):
            rows.append(["certifier", name, "", f"did not apply: {reason}", "—"])
        if rows:
            lines += ["  " + line for line in text_table(["kind", "name", "label", "outcome", "time"], rows).splitlines()]
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
                    cells.append(("certified" if ok else "-") + (f" r={radius:.4g}" if radius is not None else ""))
                else:
                    cells.append("")  # outside a costly certifier's subset
            table.append(cells)
        lines.append("samples:")
        lines.append(text_table(header, table))
    return "\n".join(lines)


def run_json(record: RunRecord, samples: list[SampleResult]) -> dict[str, Any]:
    """``harness show --format json``: the record as nested, typed JSON."""
    data = _iso_times(asdict(record))
    # The best evaluation's result and time, where readers of this JSON found them before evaluations were records.
    data["result"] = asdict(record.result) if record.result is not None else None
    data["eval_seconds"] = record.eval_seconds
    if record.result is not None:
        data["result"]["errors"] = record.result.errors
    data["samples"] = [asdict(s) for s in samples]
    return data


def _iso_times(value: Any) -> Any:
    """``value`` with every datetime as an ISO 8601 string (JSON has no time type)."""
    if isinstance(value, dict):
        return {k: _iso_times(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_iso_times(v) for v in value]
    return value.isoformat() if isinstance(value, datetime) else value


def run_list(records: list[RunRecord], *, stale: Callable[[RunRecord], bool]) -> str:
    """What ``harness runs`` prints: one line per run."""
    rows = []
    for r in records:
        result = r.result
        errors = result.errors if result else []
        error = r.error or (errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "") if errors else "")
        status = r.status + (" (stale: its process is gone)" if stale(r) else "") + (" with errors" if errors else "")
        rows.append([
            str(r.id), status, r.info.trainer, r.info.preset or "—", r.info.dataset, f"l_{r.info.norm} {format_eps(r.info.eps)}",
            percent(result.certified_accuracy if result else None), f"{r.created_at:%Y-%m-%d %H:%M}", error[:60],
        ])
    return text_table(["id", "status", "trainer", "preset", "dataset", "threat", "certified", "created (UTC)", "error"], rows)
