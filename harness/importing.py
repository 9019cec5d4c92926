"""``harness import``: record a results file (:mod:`harness.results_file`) in a database."""

from __future__ import annotations

from harness.errors import UsageError
from harness.results_file import PendingResults
from harness.store import FINISHED, RUNNING, RunInfo, Store, WeightsFile


def import_pending(store: Store, pending: PendingResults) -> tuple[int, str]:
    """Record ``pending``; return the run id and how it was recorded.

    The run it came from is completed in place when this database has it,
    still ``running``, with the same configuration request; a run already
    finished with that configuration is refused (importing twice would count
    it twice); anything else becomes a new run.
    """
    request = pending.run["config"].get("request")
    origin = {"database": pending.database, "run_id": pending.run_id, "result": pending.fingerprint()}
    for record in store.list_runs():
        if isinstance(record.info.config, dict) and record.info.config.get("imported_from") == origin:
            raise UsageError(f"these results were already imported into {store.name} as run {record.id}; nothing to import")
    target: int | None = None
    if pending.run_id is not None:
        try:
            existing = store.get_run(pending.run_id)
        except UsageError:
            existing = None
        same = existing is not None and isinstance(existing.info.config, dict) and existing.info.config.get("request") == request
        if existing is not None and same and existing.status == FINISHED:
            raise UsageError(f"run {pending.run_id} in {store.name} is already finished with these results' configuration; nothing to import")
        if existing is not None and same and existing.status == RUNNING:
            target = pending.run_id
    how = f"completed run {target}, which was still running" if target is not None else "a new run"
    config = pending.run["config"]
    if target is None:
        r = pending.run
        config = {**config, "imported_from": origin}  # a second import of the same file, into any database, is refused
        try:
            info = RunInfo(
                trainer=str(r["trainer"]), dataset=str(r["dataset"]), norm=str(r["norm"]), eps=float(r["eps"]), preset=r.get("preset"),
                seed=int(r["seed"]), epochs=r.get("epochs"), config=config, device=str(r["device"]), environment=dict(r["environment"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"the results file's run is incomplete: {exc!r}") from None
        target = store.create_run(info)
    t = pending.training
    weights = WeightsFile(**t["weights"]) if t.get("weights") else None
    store.record_training(target, train_seconds=float(t.get("train_seconds") or 0.0), weights=weights,
                          training={"epochs": t.get("history", [])}, config=config)
    e = pending.evaluation
    store.record_evaluation(
        target, result=pending.result, samples=pending.samples, config=e["config"], environment=e["environment"],
        seconds=float(e.get("seconds") or 0.0), run_config=config, finish=True,
    )
    return target, how
