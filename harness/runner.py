"""Planning a run: resolve and validate the request before any work starts.

:func:`plan_run` turns a :class:`RunRequest` into a :class:`Plan`, checking
every name and value (all mistakes are UsageErrors);
:func:`evaluation_components` chooses and configures the attacks and
certifiers of an evaluation (a run's, or ``harness eval``'s).
:func:`harness.execution.execute` carries a plan out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.budget import Budgets
from harness.catalog import Catalog, Entry
from harness.components import Attacker, Certifier, Dataset, Model, Trainer
from harness.data.files import default_data_dir
from harness.data.types import DatasetInfo, Splits
from harness.env import resolve_device
from harness.errors import HarnessError, PluginError, UsageError, one_line
from harness.evaluation import SUBSET_SEED, attack_label
from harness.options import has_field, options_dict, parse_options, scale_epochs
from harness.presets import Preset, select_preset
from harness.results import EvaluationResult
from harness.store import RunRecord
from harness.threat import ThreatModel, parse_norm


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
    checkpoint_every: int = 1  # epochs between checkpoints (and at least every 30 minutes)
    certifier_budget: Budgets = field(default_factory=Budgets)  # seconds per certifier in the evaluation (--certifier-budget)


class RecordsComponents:
    """How a plan's components are recorded: under their catalog keys, with their plugin and options.

    ``entries`` maps ``id(component)`` to its catalog entry (a dataclass field of the plan).
    """

    entries: dict[int, Entry]

    def key(self, component: Any) -> str:
        entry = self.entries.get(id(component))
        return entry.key if entry else component.name

    def describe(self, component: Any, **extra: Any) -> dict[str, Any]:
        entry = self.entries.get(id(component))
        return {"name": self.key(component), "plugin": entry.plugin if entry else None, **extra, "options": options_dict(component.options)}


@dataclass
class Plan(RecordsComponents):
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

    def config(self, result: EvaluationResult | None = None) -> dict[str, Any]:
        """The full resolved configuration, as stored with the run.

        Before evaluation the certifiers are those requested (``null``: every
        one that applies to the trained model); after it, only those that ran,
        and ``not_applicable`` says why each other one did not.
        """
        r = self.request
        evaluation = evaluation_config(
            self.describe, self.attackers, self.certifiers, samples=r.eval_samples, batch_size=r.eval_batch_size,
            requested=r.certifiers is not None, result=result, budget=r.certifier_budget,
        )
        return jsonable(
            {
                "trainer": self.describe(self.trainer),
                "dataset": self.key(self.dataset),
                "threat": {"norm": self.threat.norm, "eps": self.threat.eps},
                "preset": self.preset.name if self.preset else None,
                "preset_source": self.preset.source if self.preset else None,
                "seed": self.seed,
                "device": {"requested": r.device, "used": str(self.device)},
                "model": self.describe(self.model),
                "train_samples": r.train_samples,
                "evaluation": evaluation,
                "overrides": list(r.overrides),
                "request": request_json(r),
            }
        )


def evaluation_config(
    component: Callable[..., dict[str, Any]],
    attackers: Sequence[Attacker],
    certifiers: Sequence[Certifier],
    *,
    samples: int | None,
    batch_size: int,
    requested: bool,
    result: EvaluationResult | None = None,
    budget: Budgets | None = None,
) -> dict[str, Any]:
    """The evaluation section of a configuration: samples, subset, attackers and certifiers with their options.

    Before evaluation the certifiers are those requested (``null``: every one
    that applies to the model); after it, only those that ran, and
    ``not_applicable`` says why each other one did not. ``component(c, **extra)``
    describes one component (its key, plugin and options). ``certifier_budget``: each certifier's time budget
    (``--certifier-budget``; absent without one).
    """
    evaluation: dict[str, Any] = {
        "samples": samples,
        "subset_seed": SUBSET_SEED,
        "batch_size": batch_size,
        "attackers": [component(a, label=_label(a)) for a in attackers],
    }
    budgets = (budget or Budgets()).to_json()
    if budgets is not None:  # only then: an evaluation without one is configured as before budgets (the leaderboard compares them)
        evaluation["certifier_budget"] = budgets
    if result is None:
        evaluation["certifiers"] = [component(c)["name"] for c in certifiers] if requested else None
    else:
        ran = {c.name for c in result.certifiers}
        evaluation["certifiers"] = [d for d in (component(c) for c in certifiers) if d["name"] in ran]
        evaluation["not_applicable"] = dict(result.not_applicable)
    return jsonable(evaluation)


def request_json(request: RunRequest) -> dict[str, Any]:
    """The request as stored with the run (paths absolute): ``harness run --resume`` plans the run again from it."""
    data = dataclasses.asdict(request)
    for key in ("data_dir", "save_dir"):
        data[key] = str(Path(data[key]).absolute()) if data[key] is not None else None
    for key in ("attacks", "certifiers", "overrides"):
        data[key] = list(data[key]) if data[key] is not None else None
    if request.certifier_budget.to_json() is None:
        # Without a budget, the request is stored as harnesses before budgets stored it: a sweep finds its cells' runs by it.
        del data["certifier_budget"]
    else:
        data["certifier_budget"] = {"default": request.certifier_budget.default,
                                    "per_certifier": dict(sorted(request.certifier_budget.per_certifier.items()))}
    return data


def request_from_json(data: dict[str, Any]) -> RunRequest:
    """The inverse of :func:`request_json`; a ValueError if ``data`` is not a stored request."""
    names = {f.name for f in dataclasses.fields(RunRequest)}
    if not isinstance(data, dict) or not set(data) <= names or "trainer" not in data or "dataset" not in data:
        raise ValueError(f"not a stored run request: {data!r:.80}")
    values = dict(data)
    for key in ("data_dir", "save_dir"):
        values[key] = Path(values[key]) if values.get(key) is not None else None
    values["overrides"] = tuple(values.get("overrides") or ())
    budget = values.get("certifier_budget")  # absent from the requests of older harnesses
    values["certifier_budget"] = Budgets(budget["default"], dict(budget["per_certifier"])) if isinstance(budget, dict) else Budgets()
    return RunRequest(**values)


def run_arguments(request: RunRequest) -> list[str]:
    """The ``harness run`` arguments (after ``run``) that plan ``request`` again: the same :func:`request_json`.

    A sweep's cell that trains in several processes starts ``harness run``
    with them. ``save_dir`` ``None`` is ``--no-save``; ``data_dir`` ``None``
    gives no ``--data-dir`` (the command's default: ``$HARNESS_DATA``, else
    the cache folder, as :func:`plan_run` chooses it). The database is not an
    argument (it may hold a password): give it in ``HARNESS_DB``. ValueError for a
    request the command line cannot express (an empty list of attacks or
    certifiers: on the command line that means every one).
    """
    r = request
    args = ["--plugin", r.trainer, "--dataset", r.dataset]
    for flag, values in (("--attack", r.attacks), ("--certifier", r.certifiers)):
        if values is not None and len(values) == 0:
            raise ValueError(f"{flag}: an empty list (no {flag[2:]}s) cannot be given to harness run, where none means every one")
    optional: list[tuple[str, Any]] = [
        ("--eps", repr(float(r.eps)) if r.eps is not None else None), ("--norm", r.norm), ("--preset", r.preset),
        ("--model", r.model), ("--epochs", r.epochs), ("--seed", r.seed), ("--eval-samples", r.eval_samples),
        ("--train-samples", r.train_samples), ("--data-dir", str(Path(r.data_dir).absolute()) if r.data_dir is not None else None),
    ]
    args += [item for flag, value in optional if value is not None for item in (flag, str(value))]
    if r.no_preset:
        args.append("--no-preset")
    args += ["--device", r.device, "--eval-batch-size", str(r.eval_batch_size), "--checkpoint-every", str(r.checkpoint_every)]
    args += [item for name in r.attacks or () for item in ("--attack", name)]
    args += [item for name in r.certifiers or () for item in ("--certifier", name)]
    args += [item for override in r.overrides for item in ("--set", override)]
    args += [item for value in r.certifier_budget.to_args() for item in ("--certifier-budget", value)]
    args += ["--save-dir", str(Path(r.save_dir).absolute())] if r.save_dir is not None else ["--no-save"]
    return args


def _label(attacker: Attacker) -> str:
    """The attack's label for the configuration; its name if ``label()`` fails (the evaluation records that failure)."""
    try:
        return attack_label(attacker)
    except HarnessError:
        return attacker.name


def jsonable(value: Any) -> Any:
    """Plain JSON: tuples become lists, non-finite floats become strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def split_overrides(overrides: Sequence[str], catalog: Catalog) -> dict[str, dict[str, str]]:
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


def evaluation_components(
    catalog: Catalog,
    norm: str,
    attacks: Sequence[str] | None,
    certifiers: Sequence[str] | None,
    overrides: dict[str, dict[str, str]],
    entries: dict[int, Entry],
) -> tuple[list[Attacker], list[Certifier]]:
    """The attackers and certifiers of an l_``norm`` evaluation, configured by ``overrides`` (whose sections they pop).

    ``None`` means every registered one: the attacks for the norm, and every
    certifier (the evaluation records why each that does not apply does not).
    One named for another norm is a UsageError. Each component's catalog entry
    goes into ``entries``.
    """
    chosen_attackers: list[Attacker] = []
    for entry in _choose(catalog, "attacker", attacks, "--attack"):
        cls: Any = entry.component
        if norm not in cls.norms:
            if attacks is None:
                continue
            raise UsageError(f"attack {entry.key!r} is for {', '.join('l_' + n for n in cls.norms)}; this run is l_{norm}")
        attacker = cls(parse_options(cls.Options, overrides.pop(f"attacker.{entry.key}", {}), f"attacker {entry.key!r}"))
        entries[id(attacker)] = entry
        chosen_attackers.append(attacker)
    chosen_certifiers: list[Certifier] = []
    for entry in _choose(catalog, "certifier", certifiers, "--certifier"):
        cls = entry.component
        if norm not in cls.norms and certifiers is not None:
            raise UsageError(f"certifier {entry.key!r} certifies {', '.join('l_' + n for n in cls.norms)}; this run is l_{norm}")
        certifier = cls(parse_options(cls.Options, overrides.pop(f"certifier.{entry.key}", {}), f"certifier {entry.key!r}"))
        entries[id(certifier)] = entry
        chosen_certifiers.append(certifier)
    return chosen_attackers, chosen_certifiers


def plan_run(catalog: Catalog, request: RunRequest, plugin_versions: dict[str, str | None] | None = None) -> Plan:
    """Resolve names, preset and options; raise UsageError for anything wrong."""
    _check_names(request)
    trainer_entry = catalog.entry("trainer", request.trainer)
    dataset_entry = catalog.entry("dataset", request.dataset)
    trainer_cls: Any = trainer_entry.component
    if request.epochs is not None and request.epochs < 1:
        raise UsageError(f"--epochs {request.epochs} is out of range; it must be >= 1")
    check_at_least_one({
        "--eval-samples": request.eval_samples, "--train-samples": request.train_samples,
        "--eval-batch-size": request.eval_batch_size, "--checkpoint-every": request.checkpoint_every,
    })
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

    overrides = split_overrides(request.overrides, catalog)
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
    attackers, certifiers = evaluation_components(catalog, norm, request.attacks, request.certifiers, overrides, entries)
    unused = sorted(k for k in overrides if k not in ("model", "trainer"))
    if unused:
        raise UsageError(f"--set {unused[0]}.…: that component does not run in this l_{norm} evaluation (see --attack, --certifier)")
    request.certifier_budget.check_names([entries[id(c)].key for c in certifiers])

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


def check_at_least_one(values: dict[str, int | None]) -> None:
    """Every count given (flag → value; ``None``: not given) is at least 1, else a UsageError naming it."""
    for flag, value in values.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value} is out of range; it must be >= 1")


def check_sample_counts(splits: Splits, dataset: str, *, train_samples: int | None = None, eval_samples: int | None = None) -> None:
    """Refuse ``--train-samples`` / ``--eval-samples`` beyond the split sizes (known once the data is loaded).

    Capping them silently would record a configuration that the run did not use.
    """
    for flag, value, n, split in (
        ("--train-samples", train_samples, splits.train_images.shape[0], "training"),
        ("--eval-samples", eval_samples, splits.test_images.shape[0], "test"),
    ):
        if value is not None and value > n:
            raise UsageError(f"{flag} {value} exceeds the {n} {split} samples of {dataset!r}; give at most {n} (or leave it out to use them all)")


def build_model(plan: Plan, info: DatasetInfo) -> nn.Module:
    """The plan's model built for ``info`` and moved to the plan's device.

    A model too big for the machine is a UsageError naming the model and its
    options: one whose parameters alone would exceed the device's memory
    (counted first on the meta device, which allocates nothing), one the
    allocator refuses, and one whose sizes overflow.
    """
    options = ", ".join(f"{k}={v}" for k, v in options_dict(plan.model.options).items())
    what = f"model {plan.key(plan.model)!r}" + (f" ({options})" if options else "")
    size = _model_bytes(plan.model, info)
    memory = _memory_bytes(plan.device)
    if size is not None and memory is not None and size[1] > memory:
        raise UsageError(
            f"{what} has {size[0]:,} parameters ({_gb(size[1])}), more than the {_gb(memory)} of memory of "
            f"{plan.device}; give smaller sizes (--set model.KEY=VALUE)"
        )
    try:
        return plan.model.build(info).to(plan.device)
    except (MemoryError, OverflowError, RuntimeError, TypeError, ValueError) as exc:
        reason = _too_big(exc)
        if reason is None:
            raise
        raise UsageError(f"{what} cannot be built on {plan.device}: {reason}; give smaller sizes (--set model.KEY=VALUE)") from exc


def _too_big(exc: BaseException) -> str | None:
    """Why building failed if it was for the model's size (refused by an allocator, or sizes that overflow); else None."""
    message = one_line(exc).lower()
    if isinstance(exc, MemoryError | torch.OutOfMemoryError) or "can't allocate memory" in message or "out of memory" in message:
        tried = re.search(r"tried to allocate (\d+) bytes", message)
        return "not enough memory" + (f" (one of its tensors needs {_gb(int(tried.group(1)))})" if tried else "")
    if isinstance(exc, OverflowError) or "overflow" in message:
        return "its sizes overflow (a tensor would have more than 2^63 elements or bytes)"
    return None


def _model_bytes(model: Model, info: DatasetInfo) -> tuple[int, int] | None:
    """The model's parameter count and the bytes of its parameters and buffers, built on the meta device; None if that fails.

    The random state is restored afterwards, so the real build draws the same weights.
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            network = model.build(info)
    except Exception:  # noqa: BLE001  # not every build runs on the meta device; the real build then decides
        return None
    params = sum(p.numel() for p in network.parameters())
    tensors = [*network.parameters(), *network.buffers()]
    return params, sum(t.numel() * t.element_size() for t in tensors)


def _memory_bytes(device: torch.device) -> int | None:
    """The total memory of ``device`` (the machine's RAM for the CPU); None if unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None
    return None


def _gb(size: int) -> str:
    return f"{size / 1e9:,.1f} GB"


def prepare_save_dir(save_dir: Path | None) -> Path | None:
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


#: What must be the same when a run is resumed: the plan made again from the stored request must give these unchanged.
_RESUME_KEYS = ("trainer", "model", "dataset", "threat", "seed", "train_samples", "preset")


def plan_resume(
    catalog: Catalog, record: RunRecord, plugin_versions: dict[str, str | None] | None = None, *,
    device: str | None = None, data_dir: Path | None = None,
) -> Plan:
    """Plan run ``record`` again, from the request stored with it, to continue it; UsageError if it cannot be.

    It can be resumed when it was interrupted, failed, or is ``running`` but
    stale (:func:`harness.liveness.stale_reason`), its trainer can resume
    (:meth:`harness.Trainer.resumable`), and the installed plugins still plan
    it exactly as it started (the same trainer, model and their options, data,
    threat model and seed). ``device`` and ``data_dir`` may differ.
    """
    from harness.liveness import stale_reason
    from harness.store import EXTERNAL, FINISHED, RUNNING

    if record.info.origin == EXTERNAL:
        raise UsageError(f"run {record.id} is an external model (harness eval --weights): it was never trained here, so there is nothing to resume")
    if record.status == FINISHED:
        raise UsageError(f"run {record.id} is finished: nothing to resume (harness eval {record.id} evaluates it again)")
    if record.status == RUNNING and stale_reason(record) is None:
        env = record.info.environment if isinstance(record.info.environment, dict) else {}
        raise UsageError(
            f"run {record.id} is running (pid {env.get('pid')} on {env.get('host')}) and its heartbeat is recent; "
            "stop it first (SIGTERM writes a checkpoint), or wait until its heartbeat is stale"
        )
    config = record.info.config if isinstance(record.info.config, dict) else {}
    try:
        request = request_from_json(config.get("request"))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise UsageError(f"run {record.id} was recorded without its request (an older harness), so it cannot be resumed") from None
    if device is not None:
        request.device = device
    if data_dir is not None:
        request.data_dir = data_dir
    trainer_cls: Any = catalog.entry("trainer", request.trainer).component
    if not trainer_cls.resumable():
        raise UsageError(
            f"trainer {request.trainer!r} cannot resume runs (it implements no checkpoint_state()/restore_state()); "
            f"start run {record.id} again instead"
        )
    plan = plan_run(catalog, request, plugin_versions)
    now = json.loads(json.dumps(plan.config()))
    for key in _RESUME_KEYS:
        if now.get(key) != config.get(key):
            raise UsageError(
                f"run {record.id} cannot be resumed as it started: its {key} would now be {json.dumps(now.get(key))[:200]}, "
                f"it was {json.dumps(config.get(key))[:200]} (the installed plugins changed)"
            )
    return plan
