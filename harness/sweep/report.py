"""What a sweep prints: its plan, one line per cell state change, its summary and ``--status``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from harness.runner import Plan
from harness.sweep.cell import Outcome, key_numbers
from harness.sweep.spec import Spec
from harness.sweep.state import Action, CellState


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def numbers(values: dict[str, float | None]) -> str:
    """``clean 98.10%  attacked 91.00%  certified 90.20%``."""
    return "  ".join(f"{k} {_pct(v)}" for k, v in values.items())


def plan_lines(spec: Spec, states: Sequence[CellState], plans: dict[str, Plan], database: str) -> list[str]:
    """The plan: how many cells, what happens to them, resources and the GPU-hours estimate (``database``: its name, no password)."""
    counts = Counter(s.action for s in states)
    order = (Action.FINISHED, Action.RUNNING, Action.RESUME, Action.RETRY, Action.GAVE_UP, Action.NEW)
    names = {Action.FINISHED: "finished", Action.RUNNING: "running elsewhere", Action.RESUME: "to resume", Action.RETRY: "to retry",
             Action.GAVE_UP: "failed (gave up)", Action.NEW: "new"}
    resources = {(c.resources.cpus, c.resources.gpus, c.resources.processes) for c in spec.cells}
    per_run = "; ".join(f"{cpus:g} CPU, {gpus:g} GPU" + (f", {n} processes" if n > 1 else "") for cpus, gpus, n in sorted(resources))
    lines = [
        f"sweep {spec.name} ({spec.source}) in {database}: {len(states)} cells: " + ", ".join(f"{counts[a]} {names[a]}" for a in order),
        f"per run: {per_run}; " + estimate([s for s in states if s.action not in (Action.FINISHED, Action.GAVE_UP)], plans),
    ]
    return lines


def estimate(states: Sequence[CellState], plans: dict[str, Plan]) -> str:
    """The GPU-hours of the cells still to run, from their presets' ``gpu_hours`` (scaled by --epochs); or why there is none."""
    if not states:
        return "nothing left to run"
    total, missing = 0.0, 0
    for state in states:
        plan = plans.get(state.cell.id)
        preset = plan.preset if plan is not None else None
        hours = preset.gpu_hours if preset is not None else None
        if hours is None or state.cell.request.train_samples is not None:
            missing += 1
            continue
        preset_epochs = preset.trainer_options.get("epochs") if preset is not None else None
        if state.cell.request.epochs is not None and isinstance(preset_epochs, int) and preset_epochs > 0:
            hours *= state.cell.request.epochs / preset_epochs
        total += hours
    if missing == len(states):
        return "no GPU-hours estimate (no preset of these cells states a GPU time for its full data)"
    known = len(states) - missing
    return f"about {total:.1f} GPU-hours for {known} of {len(states)} cells to run" + (f"; no estimate for {missing}" if missing else "")


def cell_line(label: str, what: str) -> str:
    return f"cell {label}: {what}"


def outcome_text(outcome: Outcome) -> str:
    run = f"run {outcome.run_id}" if outcome.run_id is not None else "no run"
    if outcome.status == "finished":
        how = f" ({outcome.reason})" if outcome.reason else ""
        return f"finished: {run}{how}  {numbers(outcome.numbers)}  [{outcome.seconds:.0f} s on {outcome.host}]"
    return f"{outcome.status}: {run}: {outcome.reason}"


def status_rows(states: Sequence[CellState]) -> list[dict[str, Any]]:
    """Every cell's state from the database, as rows (``--status``)."""
    rows = []
    for state in states:
        run = state.run
        status = run.status if run is not None else "not started"
        if state.action == Action.RESUME and run is not None and run.status == "running":
            status = "running (stale)"
        if state.action == Action.GAVE_UP:
            status = "failed (gave up)"
        rows.append({
            "cell": state.cell.label, "key": state.cell.id, "run": run.id if run else None, "status": status,
            "resumes": run.resumes if run else None, "next": state.action.value,
            **(key_numbers(run) if run is not None and run.status == "finished" else {"clean": None, "attacked": None, "certified": None}),
            "error": run.error if run is not None and run.status != "finished" else None,
        })
    return rows


def status_table(spec: Spec, states: Sequence[CellState], fmt: str = "table") -> str:
    rows = status_rows(states)
    if fmt == "json":
        return json.dumps({"sweep": spec.name, "cells": rows}, indent=2)
    header = ["cell", "run", "status", "resumes", "clean", "attacked", "certified"]
    table = [header] + [
        [r["cell"], "-" if r["run"] is None else str(r["run"]), r["status"], "-" if r["resumes"] is None else str(r["resumes"]),
         _pct(r["clean"]), _pct(r["attacked"]), _pct(r["certified"])]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    counts = Counter(r["status"] for r in rows)
    lines.append(f"sweep {spec.name}: {len(rows)} cells: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return "\n".join(lines)
