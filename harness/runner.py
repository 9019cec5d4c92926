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

from harness.catalog import Catalog, Entry
from harness.components import Attacker, Certifier, Dataset, Model, Trainer
from harness.data.files import default_data_dir
from harness.env import device_name, environment, resolve_device
from harness.errors import HarnessError, PluginError, UsageError, one_line
from harness.evaluation import SUBSET_SEED, attack_label, eval_indices, evaluate
from harness.options import has_field, options_dict, parse_options, scale_epochs
from harness.presets import Preset, select_preset
from harness.progress import Progress, SilentProgress
from harness.results import EvaluationResult
from harness.store import FAILED, INTERRUPTED, RunInfo, Store
from harness.threat import ThreatModel, parse_norm
from harness.train import TrainContext, TrainData


@dataclass
class RunRequest:
    """What the user asked for (the ``harness run`` options). ``trainer`` is what ``--plugin`` names."""

    trainer: str
    dataset: str
    eps: float | None = None
    norm: str | None = None
    preset: str | None = None
    no_preset: bool = False
    model: str | None = None
    epochs: int | None = None
    seed: int | None = None
    device: str = "auto"
    eval_samples: int | None = None
    eval_batch_size: int = 500
    train_samples: int | None = None
    attacks: Sequence[str] | None = None
    certifiers: Sequence[str] | None = None
    overrides: Sequence[str] = ()
    data_dir: Path | None = None
    save_dir: Path | None = None


@dataclass
class Plan:
    """A validated run, ready to execute. Components are recorded under their catalog keys."""

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
    entries: dict[int, Entry] = field(default_factory=dict)  # id(component) → its catalog entry (key, plugin)
    plugin_versions: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the plan chose on the user's behalf

    @property
    def epochs(self) -> int | None:
        return getattr(self.trainer.options, "epochs", None)

    def key(self, component: Any) -> str:
        entry = self.entries.get(id(component))
        return entry.key if entry else component.name

    def _component(self, component: Any, **extra: Any) -> dict[str, Any]:
        entry = self.entries.get(id(component))
        return {"name": self.key(component), "plugin": entry.plugin if entry else None, **extra, "options": options_dict(component.options)}

    def config(self, result: EvaluationResult | None = None) -> dict[str, Any]:
        """The full resolved configuration, as stored with the run.

        Before evaluation the certifiers are those requested (``null``: every
        one that applies to the trained model); after it, only those that ran,
        and ``not_applicable`` says why each other one did not.
        """
        r = self.request
        evaluation: dict[str, Any] = {
            "samples": r.eval_samples,
            "subset_seed": SUBSET_SEED,
            "batch_size": r.eval_batch_size,
            "attackers": [self._component(a, label=_label(a)) for a in self.attackers],
        }
        if result is None:
            evaluation["certifiers"] = [self.key(c) for c in self.certifiers] if r.certifiers is not None else None
        else:
            ran = {c.name for c in result.certifiers}
            evaluation["certifiers"] = [self._component(c) for c in self.certifiers if self.key(c) in ran]
            evaluation["not_applicable"] = dict(result.not_applicable)
        return _jsonable(
            {
                "trainer": self._component(self.trainer),
                "dataset": self.key(self.dataset),
                "threat": {"norm": self.threat.norm, "eps": self.threat.eps},
                "preset": self.preset.name if self.preset else None,
                "preset_source": self.preset.source if self.preset else None,
                "seed": self.seed,
                "device": {"requested": r.device, "used": str(self.device)},
                "model": self._component(self.model),
                "train_samples": r.train_samples,
                "evaluation": evaluation,
                "overrides": list(r.overrides),
            }
        )


def _label(attacker: Attacker) -> str:
    """The attack's label for the configuration; its name if ``label()`` fails (the evaluation records that failure)."""
    try:
        return attack_label(attacker)
    except HarnessError:
        return attacker.name


def _jsonable(value: Any) -> Any:
    """Plain JSON: tuples become lists, non-finite floats become strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _split_overrides(overrides: Sequence[str], catalog: Catalog) -> dict[str, dict[str, str]]:
    """``model.width=16`` → {"model": {...}}; ``attacker.pgd.steps=20`` → {"attacker.pgd": {...}} (keyed by catalog key).

    A component may be named ``plugin:name`` (``attacker.toy:fgsm.steps=3``).
    """
    sections: dict[str, dict[str, str]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        head, _, option = key.strip().rpartition(".")
        kind, _, name = head.partition(".")
        if not sep or not option or not kind or (kind in ("model", "trainer")) != (name == ""):
            raise UsageError(f"--set {item!r} is not SECTION.KEY=VALUE (e.g. model.width=256, trainer.lr=0.01, attacker.pgd.steps=20)")
        if kind in ("model", "trainer"):
            section = kind
        elif kind in ("attacker", "certifier"):
            section = f"{kind}.{catalog.entry(kind, name).key}"
        else:
            raise UsageError(
                f"--set {item!r}: unknown section {head!r}; valid: model.KEY, trainer.KEY, attacker.NAME.KEY, certifier.NAME.KEY"
            )
        sections.setdefault(section, {})[option] = value.strip()
    return sections


def _choose(catalog: Catalog, kind: str, requested: Sequence[str] | None, flag: str) -> list[Entry]:
    """The entries a repeatable flag names (each once, in the order given), or every one of ``kind``."""
    if requested is None:
        return catalog.sorted_entries(kind)
    chosen: list[Entry] = []
    for name in requested:
        entry = catalog.entry(kind, name)
        if entry in chosen:
            raise UsageError(f"{flag} {name!r} is given twice")
        chosen.append(entry)
    return chosen


def _check_names(request: RunRequest) -> None:
    """Every name given is a name: an empty one (``--model ''``) is refused, not ignored."""
    single = {"--plugin": request.trainer, "--dataset": request.dataset, "--model": request.model, "--preset": request.preset}
    for flag, name in single.items():
        if name is not None and not name.strip():
            raise UsageError(f"{flag} {name!r} is empty; give a name (see harness plugins)")
    for flag, names in (("--attack", request.attacks), ("--certifier", request.certifiers)):
        for name in names or ():
            if not name.strip():
                raise UsageError(f"{flag} {name!r} is empty; give a name (see harness plugins)")


def plan_run(catalog: Catalog, request: RunRequest, plugin_versions: dict[str, str | None] | None = None) -> Plan:
    """Resolve names, preset and options; raise UsageError for anything wrong."""
    _check_names(request)
    trainer_entry = catalog.entry("trainer", request.trainer)
    dataset_entry = catalog.entry("dataset", request.dataset)
    trainer_cls: Any = trainer_entry.component
    if request.epochs is not None and request.epochs < 1:
        raise UsageError(f"--epochs {request.epochs} is out of range; it must be >= 1")
    sizes = (("--eval-samples", request.eval_samples), ("--train-samples", request.train_samples), ("--eval-batch-size", request.eval_batch_size))
    for flag, value in sizes:
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value} is out of range; it must be >= 1")
    if request.no_preset and request.preset is not None:
        raise UsageError("--preset and --no-preset exclude each other")
    if request.preset is not None:
        problem = catalog.rejected_preset(trainer_entry, dataset_entry, request.preset)
        if problem is not None and not any(p.name == request.preset for p in catalog.presets_for(trainer_entry.key, dataset_entry.key)):
            raise PluginError(f"preset {request.preset!r} is unavailable: {problem}")
    notes: list[str] = []
    norm = parse_norm(request.norm) if request.norm is not None else None
    preset = None
    if not request.no_preset:
        preset = select_preset(
            catalog.presets_for(trainer_entry.key),
            trainer=trainer_entry.key,
            dataset=dataset_entry.key,
            name=request.preset,
            norm=norm,
            eps=request.eps,
        )
        if preset is None and catalog.presets_for(trainer_entry.key):
            notes.append(f"{trainer_entry.key!r} has no preset for {dataset_entry.key!r}: training with its default options")
    norm = norm or (preset.norm if preset else "inf")
    eps = request.eps if request.eps is not None else (preset.eps if preset else None)
    if eps is None:
        raise UsageError("no preset sets the radius of this run: give it with --eps (e.g. --eps 0.3, --eps 8/255)")
    threat = ThreatModel(norm, eps)
    if norm not in trainer_cls.norms:
        raise UsageError(f"trainer {trainer_entry.key!r} trains for norms {', '.join(trainer_cls.norms)}, not {norm!r}")

    preset_model = catalog.entry("model", preset.model) if preset and preset.model else catalog.model_entry(trainer_entry)
    model_entry = catalog.entry("model", request.model) if request.model is not None else preset_model
    if not catalog.compatible(trainer_cls, model_entry):
        raise UsageError(
            f"trainer {trainer_entry.key!r} cannot train model {model_entry.key!r}; it trains: {', '.join(trainer_cls.models)}"
        )
    if preset is not None and model_entry is not preset_model:
        raise UsageError(
            f"--model {request.model} differs from the model of preset {preset.name!r} ({preset_model.key!r}); "
            f"add --no-preset to train it with {trainer_entry.key!r}'s default options (and --set to change them)"
        )

    overrides = _split_overrides(request.overrides, catalog)
    model_cls: Any = model_entry.component
    model = model_cls(
        parse_options(model_cls.Options, {**(preset.model_options if preset else {}), **overrides.get("model", {})}, f"model {model_entry.key!r}")
    )
    trainer_options = parse_options(
        trainer_cls.Options,
        {**(preset.trainer_options if preset else {}), **overrides.get("trainer", {})},
        f"trainer {trainer_entry.key!r}",
    )
    if request.epochs is not None:
        if not has_field(trainer_cls.Options, "epochs"):
            raise UsageError(f"trainer {trainer_entry.key!r} has no 'epochs' option, so --epochs cannot be used")
        trainer_options = scale_epochs(trainer_options, request.epochs)
    trainer = trainer_cls(trainer_options)
    dataset: Dataset = dataset_entry.component()  # type: ignore[assignment]  # the catalog checked its kind

    entries: dict[int, Entry] = {id(trainer): trainer_entry, id(model): model_entry, id(dataset): dataset_entry}
    attackers = []
    for entry in _choose(catalog, "attacker", request.attacks, "--attack"):
        cls: Any = entry.component
        if norm not in cls.norms:
            if request.attacks is None:
                continue
            raise UsageError(f"attack {entry.key!r} is for {', '.join('l_' + n for n in cls.norms)}; this run is l_{norm}")
        attacker = cls(parse_options(cls.Options, overrides.pop(f"attacker.{entry.key}", {}), f"attacker {entry.key!r}"))
        entries[id(attacker)] = entry
        attackers.append(attacker)
    certifiers = []
    for entry in _choose(catalog, "certifier", request.certifiers, "--certifier"):
        cls = entry.component
        # Every registered certifier is a candidate (the evaluation records why each one that does not apply
        # does not, the other norm included); one asked for by name must be able to apply.
        if norm not in cls.norms and request.certifiers is not None:
            raise UsageError(f"certifier {entry.key!r} certifies {', '.join('l_' + n for n in cls.norms)}; this run is l_{norm}")
        certifier = cls(parse_options(cls.Options, overrides.pop(f"certifier.{entry.key}", {}), f"certifier {entry.key!r}"))
        entries[id(certifier)] = entry
        certifiers.append(certifier)
    unused = sorted(k for k in overrides if k not in ("model", "trainer"))
    if unused:
        raise UsageError(f"--set {unused[0]}.…: that component does not run in this l_{norm} evaluation (see --attack, --certifier)")

    seed = request.seed if request.seed is not None else (preset.seed if preset and preset.seed is not None else 0)
    return Plan(
        request=request,
        trainer=trainer,
        model=model,
        dataset=dataset,
        attackers=attackers,
        certifiers=certifiers,
        threat=threat,
        preset=preset,
        seed=seed,
        device=resolve_device(request.device),
        data_dir=Path(request.data_dir) if request.data_dir else default_data_dir(),
        entries=entries,
        plugin_versions=plugin_versions or {},
        notes=notes,
    )


def _subset(images: torch.Tensor, labels: torch.Tensor, samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    index = eval_indices(images.shape[0], samples)
    return images[index], labels[index]


def execute(plan: Plan, store: Store, *, progress: Progress | None = None) -> int:
    """Train, evaluate and record one run; return its id.

    A certifier or attack that fails is recorded against it (see
    :mod:`harness.evaluation`); the run still finishes, and its result's
    ``errors`` say what failed.
    """
    progress = progress or SilentProgress()
    for note in plan.notes:
        progress.log(note)
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
            trainer=plan.key(plan.trainer),
            dataset=plan.key(plan.dataset),
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
            f"run {run_id}: {plan.key(plan.trainer)} on {plan.key(plan.dataset)}, {plan.threat}, preset {config['preset']}, "
            f"{plan.epochs} epochs, seed {plan.seed}, {params:,} parameters, {device_name(plan.device)}"
        )
        start = time.perf_counter()
        ctx = TrainContext(threat=plan.threat, device=plan.device, seed=plan.seed, generator=generator, progress=progress)
        plan.trainer.fit(model, data, ctx)
        _sync(plan.device)
        train_seconds = time.perf_counter() - start
        store.record_training(run_id, train_seconds=train_seconds, weights=None, training={}, config=config)
        if save_dir is not None:
            # Before the evaluation: a run whose evaluation fails keeps its trained weights.
            try:
                _save(save_dir / f"run-{run_id}", model, config)
            except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
                progress.log(f"warning: run {run_id}'s weights could not be saved: {one_line(exc)}")
        start = time.perf_counter()
        evaluation = evaluate(
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
            names=plan.key,
        )
        _sync(plan.device)
        eval_seconds = time.perf_counter() - start
        if plan.request.certifiers is not None:
            for name, reason in sorted(evaluation.result.not_applicable.items()):
                progress.log(f"warning: certifier {name!r}, asked for with --certifier, did not apply: {reason}")
        final = plan.config(evaluation.result)
        store.record_evaluation(
            run_id,
            result=evaluation.result,
            samples=evaluation.samples,
            config=final["evaluation"],
            environment={**environment(plan.plugin_versions), "device": device_name(plan.device)},
            seconds=eval_seconds,
            run_config=final,
            finish=True,
        )
        if save_dir is not None and (save_dir / f"run-{run_id}").is_dir():
            try:
                _write_config(save_dir / f"run-{run_id}", final)
            except OSError as exc:
                progress.log(f"warning: run {run_id}'s final configuration could not be saved: {one_line(exc)}")
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
    except Exception:  # the original error matters more than a failed bookkeeping write  # noqa: BLE001, S110
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _save(directory: Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """The trained weights with the full resolved configuration beside them."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": config}, directory / "model.pt")
    _write_config(directory, config)


def _write_config(directory: Path, config: dict[str, Any]) -> None:
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
