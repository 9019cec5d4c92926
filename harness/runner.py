"""A run: resolve and validate the request, then train, evaluate and record.

:func:`plan_run` turns a :class:`RunRequest` into a :class:`Plan`, checking
every name and value before any work starts (all mistakes are UsageErrors).
:func:`execute` loads the data, records the run as ``running``, trains,
evaluates, and records the results in one transaction; a failure or an
interruption is recorded as such, and nothing stored before is touched.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.components import Attacker, Certifier, Dataset, Model, Trainer
from harness.data.files import default_data_dir
from harness.env import device_name, environment, resolve_device
from harness.errors import UsageError, one_line, unknown_name
from harness.evaluation import SUBSET_SEED, eval_indices, evaluate
from harness.options import has_field, options_dict, parse_options, scale_epochs
from harness.presets import Preset, select_preset
from harness.progress import Progress, SilentProgress
from harness.catalog import Catalog
from harness.store import FAILED, INTERRUPTED, RunInfo, Store
from harness.threat import ThreatModel, parse_norm
from harness.train import TrainContext, TrainData


@dataclass
class RunRequest:
    """What the user asked for (the ``harness run`` options)."""

    plugin: str
    dataset: str
    eps: float | None = None
    norm: str | None = None
    preset: str | None = None
    epochs: int | None = None
    seed: int | None = None
    device: str = "auto"
    eval_samples: int | None = None
    eval_batch_size: int = 500
    train_samples: int | None = None
    attacks: Sequence[str] | None = None
    overrides: Sequence[str] = ()
    data_dir: Path | None = None
    save_dir: Path | None = None


@dataclass
class Plan:
    """A validated run, ready to execute."""

    request: RunRequest
    trainer: Trainer
    model: Model
    dataset: Dataset
    attackers: list[Attacker]
    certifiers: list[Certifier]
    threat: ThreatModel
    preset: Preset | None
    seed: int
    device: torch.device
    data_dir: Path
    plugin_versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def epochs(self) -> int | None:
        return getattr(self.trainer.options, "epochs", None)

    def config(self) -> dict[str, Any]:
        """The full resolved configuration, as stored with the run."""
        r = self.request
        return _jsonable(
            {
                "plugin": self.trainer.name,
                "dataset": self.dataset.name,
                "threat": {"norm": self.threat.norm, "eps": self.threat.eps},
                "preset": self.preset.name if self.preset else None,
                "preset_source": self.preset.source if self.preset else None,
                "seed": self.seed,
                "device": {"requested": r.device, "used": str(self.device)},
                "model": {"name": self.model.name, "options": options_dict(self.model.options)},
                "trainer": {"name": self.trainer.name, "options": options_dict(self.trainer.options)},
                "train_samples": r.train_samples,
                "evaluation": {
                    "samples": r.eval_samples,
                    "subset_seed": SUBSET_SEED,
                    "batch_size": r.eval_batch_size,
                    "attackers": [{"name": a.name, "label": a.label(), "options": options_dict(a.options)} for a in self.attackers],
                    "certifiers": [{"name": c.name, "options": options_dict(c.options)} for c in self.certifiers],
                },
                "overrides": list(r.overrides),
            }
        )


def _jsonable(value: Any) -> Any:
    """Plain JSON: tuples become lists, non-finite floats become strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _split_overrides(overrides: Sequence[str], registry: Catalog) -> dict[str, dict[str, str]]:
    """``model.width=16`` → {"model": {"width": "16"}}; ``attacker.pgd.steps=20`` → {"attacker.pgd": {...}}."""
    sections: dict[str, dict[str, str]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise UsageError(f"--set {item!r} is not SECTION.KEY=VALUE (e.g. model.width=256, trainer.lr=0.01, attacker.pgd.steps=20)")
        if parts[0] in ("model", "trainer") and len(parts) == 2:
            section = parts[0]
        elif parts[0] in ("attacker", "certifier") and len(parts) == 3:
            kind = parts[0]
            if parts[1] not in registry.names(kind):
                raise unknown_name(kind, parts[1], registry.names(kind))
            section = f"{kind}.{parts[1]}"
        else:
            raise UsageError(
                f"--set {item!r}: unknown section {'.'.join(parts[:-1])!r}; valid: model.KEY, trainer.KEY, attacker.NAME.KEY, certifier.NAME.KEY"
            )
        sections.setdefault(section, {})[parts[-1]] = value.strip()
    return sections


def plan_run(registry: Catalog, request: RunRequest, plugin_versions: dict[str, str | None] | None = None) -> Plan:
    """Resolve names, preset and options; raise UsageError for anything wrong."""
    trainer_cls = registry.get("trainer", request.plugin)
    dataset_cls = registry.get("dataset", request.dataset)
    if request.epochs is not None and request.epochs < 1:
        raise UsageError(f"--epochs {request.epochs} is out of range; it must be >= 1")
    for flag, value in (("--eval-samples", request.eval_samples), ("--train-samples", request.train_samples), ("--eval-batch-size", request.eval_batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value} is out of range; it must be >= 1")
    norm = parse_norm(request.norm) if request.norm is not None else None
    preset = select_preset(
        registry.presets_for(trainer_cls.name),
        trainer=trainer_cls.name,
        dataset=dataset_cls.name,
        name=request.preset,
        norm=norm or "inf",
        eps=request.eps,
    )
    norm = norm or (preset.norm if preset else "inf")
    eps = request.eps if request.eps is not None else (preset.eps if preset else None)
    if eps is None:
        raise UsageError(f"{trainer_cls.name!r} has no presets; give the radius with --eps (e.g. --eps 0.3)")
    threat = ThreatModel(norm, eps)
    if norm not in trainer_cls.norms:
        raise UsageError(f"{trainer_cls.name!r} trains for norms {', '.join(trainer_cls.norms)}, not {norm!r}")

    overrides = _split_overrides(request.overrides, registry)
    model_name = (preset.model if preset and preset.model else None) or trainer_cls.model
    model_cls = registry.get("model", model_name)
    model = model_cls(
        parse_options(model_cls.Options, {**(preset.model_options if preset else {}), **overrides.get("model", {})}, f"model {model_name!r}")
    )
    trainer_options = parse_options(
        trainer_cls.Options,
        {**(preset.trainer_options if preset else {}), **overrides.get("trainer", {})},
        f"trainer {trainer_cls.name!r}",
    )
    if request.epochs is not None:
        if not has_field(trainer_cls.Options, "epochs"):
            raise UsageError(f"trainer {trainer_cls.name!r} has no 'epochs' option, so --epochs cannot be used")
        trainer_options = scale_epochs(trainer_options, request.epochs)
    trainer = trainer_cls(trainer_options)

    attacker_names = registry.names("attacker")
    if request.attacks is not None:
        for name in request.attacks:
            if name not in attacker_names:
                raise unknown_name("attack", name, attacker_names)
        attacker_names = list(request.attacks)
    attackers = []
    for name in attacker_names:
        cls = registry.get("attacker", name)
        if norm in cls.norms:
            attackers.append(cls(parse_options(cls.Options, overrides.get(f"attacker.{name}", {}), f"attacker {name!r}")))
    certifiers = []
    for cls in registry.components("certifier"):
        certifiers.append(cls(parse_options(cls.Options, overrides.get(f"certifier.{cls.name}", {}), f"certifier {cls.name!r}")))

    seed = request.seed if request.seed is not None else (preset.seed if preset and preset.seed is not None else 0)
    return Plan(
        request=request,
        trainer=trainer,
        model=model,
        dataset=dataset_cls(),
        attackers=attackers,
        certifiers=certifiers,
        threat=threat,
        preset=preset,
        seed=seed,
        device=resolve_device(request.device),
        data_dir=Path(request.data_dir) if request.data_dir else default_data_dir(),
        plugin_versions=plugin_versions or {},
    )


def _subset(images: torch.Tensor, labels: torch.Tensor, samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    index = eval_indices(images.shape[0], samples)
    return images[index], labels[index]


def execute(plan: Plan, store: Store, *, progress: Progress | None = None) -> int:
    """Train, evaluate and record one run; return its id."""
    progress = progress or SilentProgress()
    splits = plan.dataset.load(plan.data_dir)
    info = plan.dataset.info
    train_images, train_labels = _subset(splits.train_images, splits.train_labels, plan.request.train_samples)
    test_index = eval_indices(splits.test_images.shape[0], plan.request.eval_samples)

    save_dir = _prepare_save_dir(plan.request.save_dir)

    torch.manual_seed(plan.seed)
    generator = torch.Generator(device=plan.device).manual_seed(plan.seed)
    model = plan.model.build(info).to(plan.device)
    data = TrainData(info, train_images.to(plan.device), train_labels.to(plan.device))
    config = plan.config()
    run_id = store.create_run(
        RunInfo(
            plugin=plan.trainer.name,
            dataset=plan.dataset.name,
            norm=plan.threat.norm,
            eps=plan.threat.eps,
            preset=plan.preset.name if plan.preset else None,
            seed=plan.seed,
            epochs=plan.epochs,
            config=config,
            device=device_name(plan.device),
            environment=environment(plan.plugin_versions),
        )
    )
    train_seconds: float | None = None
    try:
        params = sum(p.numel() for p in model.parameters())
        progress.log(
            f"run {run_id}: {plan.trainer.name} on {plan.dataset.name}, {plan.threat}, preset {config['preset']}, "
            f"{plan.epochs} epochs, seed {plan.seed}, {params:,} parameters, {device_name(plan.device)}"
        )
        start = time.perf_counter()
        ctx = TrainContext(threat=plan.threat, device=plan.device, seed=plan.seed, generator=generator, progress=progress)
        plan.trainer.fit(model, data, ctx)
        _sync(plan.device)
        train_seconds = time.perf_counter() - start
        if save_dir is not None:
            # Before the evaluation: a run whose evaluation fails keeps its trained weights.
            try:
                _save(save_dir / f"run-{run_id}", model, config)
            except OSError as exc:
                progress.log(f"warning: run {run_id}'s weights could not be saved: {one_line(exc)}")
        start = time.perf_counter()
        result = evaluate(
            model,
            splits.test_images[test_index],
            splits.test_labels[test_index],
            plan.threat,
            attackers=plan.attackers,
            certifiers=plan.certifiers,
            device=plan.device,
            indices=test_index,
            batch_size=plan.request.eval_batch_size,
            progress=progress,
        )
        _sync(plan.device)
        eval_seconds = time.perf_counter() - start
        store.record_results(
            run_id, metrics=result.metrics, samples=result.samples, train_seconds=train_seconds, eval_seconds=eval_seconds
        )
    except KeyboardInterrupt:
        _mark(store, run_id, INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)", train_seconds)
        raise
    except BaseException as exc:
        _mark(store, run_id, FAILED, f"{type(exc).__name__}: {one_line(exc)}", train_seconds)
        raise
    return run_id


def _prepare_save_dir(save_dir: Path | None) -> Path | None:
    """Create ``--save-dir`` before training, so a bad path is a user error, not a lost run."""
    if save_dir is None:
        return None
    path = Path(save_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --save-dir {str(path)!r}: {one_line(exc)}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"--save-dir {str(path)!r} is not writable")
    return path


def _mark(store: Store, run_id: int, status: str, error: str, train_seconds: float | None) -> None:
    try:
        store.mark_ended(run_id, status, error, train_seconds=train_seconds)
    except Exception:  # the original error matters more than a failed bookkeeping write
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _save(directory: Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """The trained weights with the full resolved configuration beside them."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": config}, directory / "model.pt")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
