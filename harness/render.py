"""Rendering of tables: plain text, markdown, CSV and JSON. No data logic here."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from harness.commands import text_table
from harness.leaderboard import Group, Row
from harness.threat import format_eps

FORMATS = ("table", "markdown", "csv", "json")

_COLUMNS = ("rank", "method", "preset", "clean", "attack", "certified", "by certifier", "epochs", "train time", "n", "run")


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


def _cells(row: Row) -> list[str]:
    reported = row.kind == "reported"
    n = "—" if row.eval_samples is None else str(row.eval_samples)
    preset = row.preset or ("reported" if reported else "—")
    if row.train_samples:
        preset += f" (train {row.train_samples})"
    attack = percent(row.robust) + (f" {row.attack}" if row.attack and row.robust is not None else "")
    return [
        "reported" if reported else str(row.rank),
        row.method,
        preset,
        percent(row.clean),
        attack,
        percent(row.certified),
        ", ".join(
            f"{k} {percent(v)}" + (f" (of {row.certifier_samples[k]})" if k in row.certifier_samples else "")
            for k, v in row.by_certifier.items()
        ) or "—",
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
        writer.writerow(["dataset", "norm", "eps", "kind", "rank", "method", "preset", "clean", "robust", "attack",
                         "certified", "by_certifier", "certifier_samples", "epochs", "train_seconds", "eval_samples", "train_samples", "run_id", "source"])
        for g in groups:
            for r in g.rows:
                writer.writerow([g.dataset, g.norm, repr(g.eps), r.kind, r.rank, r.method, r.preset, r.clean, r.robust, r.attack,
                                 r.certified, json.dumps(r.by_certifier), json.dumps(r.certifier_samples), r.epochs, r.train_seconds, r.eval_samples,
                                 r.train_samples, r.run_id, r.source])
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
