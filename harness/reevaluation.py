"""``harness eval``: evaluate a stored model again, or a model trained elsewhere, and record the evaluation.

A trained model is its run's weights file (checked against the sha256 recorded
when it was saved) and the model's name and options from the run's
configuration; it is rebuilt, loaded with ``weights_only=True`` and evaluated
exactly as a run evaluates (:func:`harness.evaluation.evaluate`), with the
attacks and certifiers asked for (default: every one registered for the norm,
including those a plugin added after the model was trained). The evaluation is
a new record of the run; earlier ones stay.

A model trained elsewhere (``--weights FILE --model NAME``: a state dict for a
registered model, or a harness ``model.pt``) is recorded as an *external* run:
no training record, its weights' path and sha256, then its evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.budget import Budgets
from harness.catalog import Catalog, Entry
from harness.checkpoint import load_weights as read_weights
from harness.checkpoint import sha256_file
from harness.components import Attacker, Certifier, Dataset, Model
from harness.data.files import default_data_dir
from harness.env import device_name, environment, resolve_device
from harness.errors import UsageError, one_line
from harness.evaluation import Evaluation, eval_indices, evaluate
from harness.options import parse_options
from harness.progress import Progress, SilentProgress
from harness.results import EvaluationResult
from harness.runner import (
    RecordsComponents,
    check_at_least_one,
    check_sample_counts,
    evaluation_components,
    evaluation_config,
    jsonable,
    split_overrides,
)
from harness.store import EXTERNAL, FINISHED, RunInfo, RunRecord, Store, WeightsFile
from harness.threat import ThreatModel


@dataclass
class EvaluationRequest:
    """What ``harness eval`` was asked: the components and samples of the evaluation."""

    attacks: list[str] | None = None
    certifiers: list[str] | None = None
    overrides: tuple[str, ...] = ()
    eval_samples: int | None = None
    eval_batch_size: int = 500
    device: str = "auto"
    data_dir: Path | None = None
    certifier_budget: Budgets = field(default_factory=Budgets)


@dataclass
class EvaluationPlan(RecordsComponents):
    """A validated evaluation of one model."""

    request: EvaluationRequest
    model_entry: Entry
    model: Model
    dataset: Dataset
    dataset_key: str
    threat: ThreatModel
    weights: WeightsFile
    attackers: list[Attacker]
    certifiers: list[Certifier]
    device: torch.device
    data_dir: Path
    run: RunRecord | None = None  # None: an external model
    entries: dict[int, Entry] = field(default_factory=dict)
    plugin_versions: dict[str, str | None] = field(default_factory=dict)

    def config(self, result: EvaluationResult | None = None) -> dict[str, Any]:
        r = self.request
        return evaluation_config(
            self.describe, self.attackers, self.certifiers, samples=r.eval_samples, batch_size=r.eval_batch_size,
            requested=r.certifiers is not None, result=result, budget=r.certifier_budget,
        )


def _check_sizes(request: EvaluationRequest) -> None:
    check_at_least_one({"--eval-samples": request.eval_samples, "--eval-batch-size": request.eval_batch_size})


def _components(catalog: Catalog, request: EvaluationRequest, norm: str, model_overrides_allowed: bool) -> tuple[
    list[Attacker], list[Certifier], dict[str, str], dict[int, Entry]
]:
    overrides = split_overrides(request.overrides, catalog)
    model_options = overrides.pop("model", {})
    if "trainer" in overrides:
        raise UsageError("--set trainer.…: an evaluation trains nothing; valid: attacker.NAME.KEY, certifier.NAME.KEY")
    if model_options and not model_overrides_allowed:
        raise UsageError("--set model.…: a stored model keeps the options it was trained with; valid: attacker.NAME.KEY, certifier.NAME.KEY")
    entries: dict[int, Entry] = {}
    attackers, certifiers = evaluation_components(catalog, norm, request.attacks, request.certifiers, overrides, entries)
    if overrides:
        raise UsageError(f"--set {sorted(overrides)[0]}.…: that component does not run in this l_{norm} evaluation (see --attack, --certifier)")
    request.certifier_budget.check_names([entries[id(c)].key for c in certifiers])
    return attackers, certifiers, model_options, entries


def plan_stored(
    catalog: Catalog, record: RunRecord, request: EvaluationRequest, plugin_versions: dict[str, str | None] | None = None
) -> EvaluationPlan:
    """Evaluate run ``record``'s model again: it must be finished, with its weights file intact."""
    _check_sizes(request)
    if record.status != FINISHED:
        hint = f"; resume it with harness run --resume {record.id}" if record.status != "running" else ""
        raise UsageError(f"run {record.id} is {record.status}, not finished: it has no evaluated model to evaluate again{hint}")
    if record.weights is None:
        raise UsageError(
            f"run {record.id} has no saved weights (it ran with --no-save, or saving them failed), so it cannot be evaluated again"
        )
    path = Path(record.weights.path)
    if not path.is_file():
        raise UsageError(f"run {record.id}'s weights file {str(path)!r} is missing")
    digest = sha256_file(path)
    if digest != record.weights.sha256:
        raise UsageError(
            f"run {record.id}'s weights file {str(path)!r} changed since training "
            f"(sha256 {digest[:12]}…, recorded {record.weights.sha256[:12]}…)"
        )
    config = record.info.config if isinstance(record.info.config, dict) else {}
    spec = config.get("model") if isinstance(config.get("model"), dict) else None
    if spec is None or not isinstance(spec.get("name"), str):
        raise UsageError(f"run {record.id}'s configuration does not name its model, so it cannot be rebuilt")
    model_entry = catalog.entry("model", spec["name"])
    model_cls: Any = model_entry.component
    model = model_cls(parse_options(model_cls.Options, spec.get("options") or {}, f"model {model_entry.key!r} of run {record.id}"))
    dataset_entry = catalog.entry("dataset", record.info.dataset)
    threat = ThreatModel(record.info.norm, record.info.eps)
    attackers, certifiers, _, entries = _components(catalog, request, threat.norm, model_overrides_allowed=False)
    entries[id(model)] = model_entry
    return EvaluationPlan(
        request=request, model_entry=model_entry, model=model, dataset=dataset_entry.component(),  # type: ignore[arg-type]
        dataset_key=dataset_entry.key, threat=threat, weights=record.weights, attackers=attackers, certifiers=certifiers,
        device=resolve_device(request.device), data_dir=Path(request.data_dir) if request.data_dir else default_data_dir(),
        run=record, entries=entries, plugin_versions=plugin_versions or {},
    )


def plan_external(
    catalog: Catalog,
    weights: Path,
    model_name: str,
    dataset_name: str,
    threat: ThreatModel,
    request: EvaluationRequest,
    plugin_versions: dict[str, str | None] | None = None,
) -> EvaluationPlan:
    """Evaluate a model trained elsewhere: a state dict (or a harness ``model.pt``) for a registered model."""
    _check_sizes(request)
    if not weights.is_file():
        raise UsageError(f"--weights {str(weights)!r} is not a file")
    model_entry = catalog.entry("model", model_name)
    dataset_entry = catalog.entry("dataset", dataset_name)
    attackers, certifiers, model_options, entries = _components(catalog, request, threat.norm, model_overrides_allowed=True)
    model_cls: Any = model_entry.component
    model = model_cls(parse_options(model_cls.Options, model_options, f"model {model_entry.key!r}"))
    entries[id(model)] = model_entry
    file = WeightsFile(path=str(weights.absolute()), sha256=sha256_file(weights), bytes=weights.stat().st_size)
    return EvaluationPlan(
        request=request, model_entry=model_entry, model=model, dataset=dataset_entry.component(),  # type: ignore[arg-type]
        dataset_key=dataset_entry.key, threat=threat, weights=file, attackers=attackers, certifiers=certifiers,
        device=resolve_device(request.device), data_dir=Path(request.data_dir) if request.data_dir else default_data_dir(),
        run=None, entries=entries, plugin_versions=plugin_versions or {},
    )


def load_weights(path: Path, model: nn.Module) -> None:
    """Load a state dict (or a harness ``model.pt``'s) into ``model``, safely and strictly; a UsageError if it does not fit."""
    state, _ = read_weights(path)  # weights_only: a file with code in it is refused, never run
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(f"weights file {str(path)!r} does not fit the model: {one_line(exc)[:300]}") from None


def execute_evaluation(plan: EvaluationPlan, store: Store, *, progress: Progress | None = None) -> tuple[int, int]:
    """Rebuild, load, evaluate and record; return (run id, evaluation id). An external model becomes a run first."""
    progress = progress or SilentProgress()
    splits = plan.dataset.load(plan.data_dir)
    check_sample_counts(splits, plan.dataset_key, eval_samples=plan.request.eval_samples)
    index = eval_indices(splits.test_images.shape[0], plan.request.eval_samples)
    model = plan.model.build(plan.dataset.info)
    load_weights(Path(plan.weights.path), model)
    model = model.to(plan.device).eval()
    what = f"run {plan.run.id}" if plan.run else f"{plan.model_entry.key} from {plan.weights.path}"
    progress.log(f"evaluating {what}: {plan.dataset_key}, {plan.threat}, {len(index)} test samples, {device_name(plan.device)}")
    start = time.perf_counter()
    evaluation: Evaluation = evaluate(
        model, splits.test_images[index], splits.test_labels[index], plan.threat, attackers=plan.attackers,
        certifiers=plan.certifiers, device=plan.device, indices=index, batch_size=plan.request.eval_batch_size,
        progress=progress, names=plan.key, budgets=plan.request.certifier_budget,
    )
    seconds = time.perf_counter() - start
    env = {**environment(plan.plugin_versions), "device": device_name(plan.device)}
    config = plan.config(evaluation.result)
    if plan.run is not None:
        run_id = plan.run.id
    else:
        run_id = store.create_external_run(
            RunInfo(
                trainer=EXTERNAL, dataset=plan.dataset_key, norm=plan.threat.norm, eps=plan.threat.eps, preset=None, seed=0,
                epochs=None, device=device_name(plan.device), environment=env, origin=EXTERNAL,
                config=jsonable({
                    "trainer": None, "dataset": plan.dataset_key, "threat": {"norm": plan.threat.norm, "eps": plan.threat.eps},
                    "model": plan.describe(plan.model), "weights": plan.weights.path, "evaluation": config,
                }),
            ),
            plan.weights,
        )
    evaluation_id = store.record_evaluation(
        run_id, result=evaluation.result, samples=evaluation.samples, config=config, environment=env, seconds=seconds,
    )
    return run_id, evaluation_id
