"""A sweep's specification: a matrix of runs, from a TOML file or the command line, expanded into cells.

File format (``harness sweep SPEC.toml``)::

    name = "mnist-linf"                  # default: the file's name without .toml
    plugins = ["linf_v2", "linf_v1"]     # trainers (what --plugin names)
    datasets = ["mnist"]
    threats = [{norm = "inf", eps = 0.1}, {eps = "8/255"}]   # or eps = [0.1, 0.3] (and norm = "inf")
    presets = ["quick"]                  # default: each run's preset as harness run chooses it
    seeds = 3                            # seeds 0, 1, 2; or a list: seeds = [1, 2, 5]
    epochs = 1                           # optional, as harness run's options:
    train_samples = 256                  #   epochs, train_samples, eval_samples, eval_batch_size,
    eval_samples = 50                    #   attacks, certifiers, no_preset
    set = ["attacker.pgd.steps=5"]       # --set for every cell
    set_by_plugin = {linf_v2 = ["model.width=64"]}   # --set for one plugin's cells

    [resources]                          # what each run needs (a Ray task's request)
    gpus = 1
    cpus = 4
    nproc = 1                            # processes per run (harness run --nproc); default: gpus if >= 2, else 1

    [[extra]]                            # cells beyond the matrix (missing keys: the spec's)
    plugin = "crm"
    dataset = "mnist"
    norm = "2"
    eps = 1.58

    [[exclude]]                          # matrix cells left out: every key given must match
    plugin = "linf_v1"
    eps = 0.1

A **cell** is one run of the matrix: a :class:`~harness.runner.RunRequest`
and the resources it needs. Its identity (:attr:`Cell.key`) is the request
without where it runs (device, data and save directories, checkpoint
interval): the run of a cell is the stored run whose request has that key,
whoever started it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UsageError, unknown_name
from harness.runner import RunRequest, request_json, run_arguments
from harness.threat import format_eps, parse_eps, parse_norm, same_eps

#: RunRequest fields that say where a run runs, not what it is: not part of a cell's identity.
WHERE_FIELDS = ("device", "data_dir", "save_dir", "checkpoint_every")

#: Spec keys that are harness run's options, the same for every cell (or an extra cell's own).
_RUN_KEYS = {
    "epochs": int, "train_samples": int, "eval_samples": int, "eval_batch_size": int,
    "attacks": list, "certifiers": list, "no_preset": bool,
}
_SPEC_KEYS = {"name", "plugins", "datasets", "threats", "eps", "norm", "presets", "seeds", "set", "set_by_plugin",
              "resources", "extra", "exclude", *_RUN_KEYS}
_CELL_KEYS = {"plugin", "dataset", "eps", "norm", "preset", "seed", "set", *_RUN_KEYS}
_MATCH_KEYS = {"plugin", "dataset", "eps", "norm", "preset", "seed"}


@dataclass(frozen=True)
class Resources:
    """What one run of the sweep needs: Ray reserves it for the cell's task (``gpus`` may be a fraction).

    ``nproc``: the processes the run trains in (``harness run --nproc``), one
    per GPU; ``None`` resolves to ``gpus`` when that is a whole number >= 2,
    else 1. Like the device, it says where a run runs, not what it is: it is
    no part of a cell's identity, since with exact batch statistics (the only
    ones a sweep uses) N processes train as one.
    """

    gpus: float = 0.0
    cpus: float = 1.0
    nproc: int | None = None
    batch_stats: str = "exact"

    def __post_init__(self) -> None:
        for name in ("gpus", "cpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UsageError(f"resources: {name} {value!r} must be a number >= 0")
        if self.cpus == 0 and self.gpus == 0:
            raise UsageError("resources: a run needs at least some cpus or gpus (cpus = 1)")
        if self.batch_stats != "exact":
            raise UsageError(
                f"resources: batch_stats {self.batch_stats!r} is refused in sweeps; valid: exact. Local statistics make a run "
                "depend on its process count, which is not part of a cell's identity (train one by hand: harness run --nproc N "
                "--batch-stats local)"
            )
        whole = float(self.gpus).is_integer()
        nproc = self.nproc
        if nproc is None:
            nproc = int(self.gpus) if whole and self.gpus >= 2 else 1
        elif isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise UsageError(f"resources: nproc {nproc!r} must be an integer >= 1 (processes per run)")
        elif nproc > 1 and not whole:
            raise UsageError(f"resources: nproc {nproc} needs a whole number of gpus (one per process), not gpus {self.gpus:g}")
        elif self.gpus >= 1 and nproc != self.gpus:
            raise UsageError(f"resources: nproc {nproc} must equal gpus {self.gpus:g} (one process per GPU)")
        object.__setattr__(self, "nproc", nproc)

    @property
    def processes(self) -> int:
        """``nproc``, resolved (never ``None`` after construction)."""
        return self.nproc or 1

    @property
    def device(self) -> str:
        """The device a cell runs on: CUDA when it has a GPU reserved, else the CPU (never a GPU it did not reserve)."""
        return "cuda" if self.gpus > 0 else "cpu"


@dataclass(frozen=True)
class Cell:
    """One run of the matrix: what to run (``request``, without where) and what it needs."""

    request: RunRequest
    resources: Resources = field(default_factory=Resources)

    @property
    def key(self) -> str:
        return cell_key(self.request)

    @property
    def id(self) -> str:
        """A short, stable name of the key (a file name for the cell's log)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:10]

    @property
    def label(self) -> str:
        """What the user reads: plugin, dataset, threat model, preset, seed (and overrides, if any)."""
        r = self.request
        threat = f"l_{r.norm or 'inf'} {format_eps(r.eps)}" if r.eps is not None else (f"l_{r.norm}" if r.norm else "")
        parts = [r.trainer, r.dataset, threat, r.preset or ("no-preset" if r.no_preset else ""),
                 f"seed {r.seed}" if r.seed is not None else "", " ".join(r.overrides)]
        return " ".join(p for p in parts if p)


def cell_key(request: RunRequest | dict[str, Any]) -> str:
    """A request's identity as a cell: its stored JSON without :data:`WHERE_FIELDS`, keys sorted."""
    data = request_json(request) if isinstance(request, RunRequest) else dict(request)
    for name in WHERE_FIELDS:
        data.pop(name, None)
    return json.dumps(data, sort_keys=True)


@dataclass
class Spec:
    """A named list of cells, in the order they run."""

    name: str
    cells: list[Cell]
    source: str  # the spec file, or "the command line"


def read_spec(path: Path) -> Spec:
    """Parse a spec file; every mistake is a UsageError naming the file and the bad value."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read sweep spec {str(path)!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"sweep spec {str(path)!r} is not TOML: {' '.join(str(exc).split())}") from None
    try:
        return build_spec(data, default_name=path.stem, source=str(path))
    except UsageError as exc:
        raise UsageError(f"sweep spec {str(path)!r}: {exc}") from None


def build_spec(data: dict[str, Any], *, default_name: str | None = None, source: str = "the command line") -> Spec:
    """The spec a parsed TOML document (or the quick form's options, in the same shape) describes."""
    _check_keys(data, _SPEC_KEYS, "key")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise UsageError(f"name {name!r} must be letters, digits, '.', '_' or '-' (it names the sweep's log folder)")
    plugins = _names(data, "plugins", required=True)
    datasets = _names(data, "datasets", required=True)
    presets: list[str | None] = list(_names(data, "presets")) or [None]
    threats = _threats(data)
    seeds = _seeds(data.get("seeds"))
    common = {k: _run_value(k, data[k]) for k in _RUN_KEYS if k in data}
    overrides = _strings(data.get("set", []), "set")
    by_plugin = data.get("set_by_plugin", {})
    if not isinstance(by_plugin, dict):
        raise UsageError(f"set_by_plugin must be a table (set_by_plugin = {{linf_v2 = [...]}}), got {by_plugin!r}")
    for plugin in by_plugin:
        if plugin not in plugins:
            raise unknown_name("plugin in set_by_plugin", plugin, plugins)
    resources = _resources(data.get("resources", {}))

    cells: list[Cell] = []
    for plugin in plugins:
        extra_overrides = _strings(by_plugin.get(plugin, []), f"set_by_plugin.{plugin}")
        for dataset in datasets:
            for norm, eps in threats:
                for preset in presets:
                    for seed in seeds:
                        request = RunRequest(trainer=plugin, dataset=dataset, eps=eps, norm=norm, preset=preset, seed=seed,
                                             overrides=(*overrides, *extra_overrides), **common)
                        cells.append(Cell(request, resources))
    excludes = _tables(data, "exclude")
    for table in excludes:
        _check_keys(table, _MATCH_KEYS, "key of [[exclude]]")
    cells = [c for c in cells if not any(_matches(c.request, table) for table in excludes)]
    for table in _tables(data, "extra"):
        _check_keys(table, _CELL_KEYS, "key of [[extra]]")
        for key in ("plugin", "dataset"):
            if not isinstance(table.get(key), str):
                raise UsageError(f"[[extra]] {table!r} must name a {key}")
        values = common | {k: _run_value(k, table[k]) for k in _RUN_KEYS if k in table}
        norm, eps = _threat(table) if "eps" in table or "norm" in table else (threats[0] if len(threats) == 1 else (None, None))
        extra_seeds = [_seed(table["seed"])] if "seed" in table else seeds
        for seed in extra_seeds:
            request = RunRequest(
                trainer=table["plugin"], dataset=table["dataset"], eps=eps, norm=norm, preset=table.get("preset"), seed=seed,
                overrides=(*overrides, *_strings(table.get("set", []), "[[extra]] set")), **values,
            )
            cells.append(Cell(request, resources))
    unique: dict[str, Cell] = {}
    for cell in cells:
        unique.setdefault(cell.key, cell)
    if not unique:
        raise UsageError("the sweep has no cells (every one excluded?)")
    for cell in unique.values():
        if cell.resources.processes > 1:
            try:
                run_arguments(cell.request)  # it trains through harness run --nproc N
            except ValueError as exc:
                raise UsageError(f"cell {cell.label} (nproc {cell.resources.processes}): {exc}") from None
    return Spec(name=name, cells=list(unique.values()), source=source)


def quick_spec(
    *,
    plugins: str,
    datasets: str,
    eps: str | None,
    norm: str | None,
    presets: str | None,
    seeds: str | None,
    overrides: Sequence[str],
    attacks: Sequence[str],
    certifiers: Sequence[str],
    gpus: float,
    cpus: float,
    name: str | None,
    nproc: int | None = None,
    **run: Any,
) -> Spec:
    """The spec of the quick form (comma lists: ``--plugin linf_v2,linf_v1 --eps 0.1,0.3 --seeds 3``)."""
    resources: dict[str, Any] = {"gpus": gpus, "cpus": cpus} | ({"nproc": nproc} if nproc is not None else {})
    data: dict[str, Any] = {
        "plugins": _split(plugins), "datasets": _split(datasets), "set": list(overrides), "resources": resources,
    }
    if eps is not None:
        data["eps"] = _split(eps)
    if norm is not None:
        data["norm"] = norm
    if presets is not None:
        data["presets"] = _split(presets)
    if seeds is not None:
        items = _split(seeds)
        try:
            numbers = [int(s) for s in items]
        except ValueError:
            raise UsageError(f"--seeds {seeds!r} must be a count (3: seeds 0, 1, 2) or a comma list of seeds (1,2,5)") from None
        data["seeds"] = numbers[0] if len(numbers) == 1 and not seeds.strip().endswith(",") else numbers
    if attacks:
        data["attacks"] = list(attacks)
    if certifiers:
        data["certifiers"] = list(certifiers)
    data |= {k: v for k, v in run.items() if v is not None and v is not False}
    spec = build_spec(data, default_name="quick")
    if name is None:
        # The same command line names the same sweep (its log folder), another one another sweep.
        digest = hashlib.sha256("\n".join(c.key for c in spec.cells).encode()).hexdigest()[:8]
        spec.name = f"quick-{digest}"
    else:
        spec.name = build_spec({**data, "name": name}).name
    return spec


def with_where(cell: Cell, *, data_dir: Path | None, save_dir: Path | None, device: str | None = None) -> RunRequest:
    """The cell's request with where it runs filled in (paths absolute)."""
    return dataclasses.replace(
        cell.request,
        device=device or cell.resources.device,
        data_dir=data_dir.absolute() if data_dir is not None else None,
        save_dir=save_dir.absolute() if save_dir is not None else None,
    )


# -- parsing helpers ---------------------------------------------------------------------------------------------


def _check_keys(data: dict[str, Any], allowed: Iterable[str], what: str) -> None:
    for key in data:
        if key not in allowed:
            raise unknown_name(what, key, sorted(allowed))


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _names(data: dict[str, Any], key: str, *, required: bool = False) -> list[str]:
    value = data.get(key)
    if value is None:
        if required:
            raise UsageError(f"{key!r} is missing: name at least one (e.g. {key} = [\"...\"])")
        return []
    if isinstance(value, str):
        value = [value]
    names = _strings(value, key)
    if required and not names:
        raise UsageError(f"{key!r} is empty: name at least one")
    if len(set(names)) != len(names):
        raise UsageError(f"{key!r} names {sorted(n for n in names if names.count(n) > 1)[0]!r} twice")
    return names


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f"{key} {value!r} must be a list of non-empty strings")
    return [v.strip() for v in value]


def _tables(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UsageError(f"{key} must be a list of tables ([[{key}]]), got {value!r}")
    return value


def _threat(table: dict[str, Any]) -> tuple[str | None, float | None]:
    norm = table.get("norm")
    if norm is not None:
        norm = parse_norm(str(norm))
    eps = table.get("eps")
    if eps is None:
        return norm, None
    if isinstance(eps, bool) or not isinstance(eps, int | float | str):
        raise UsageError(f"eps {eps!r} must be a number or a fraction such as \"8/255\"")
    return norm, parse_eps(eps)


def _threats(data: dict[str, Any]) -> list[tuple[str | None, float | None]]:
    if "threats" in data:
        if "eps" in data or "norm" in data:
            raise UsageError("give either threats = [...] or eps (and norm), not both")
        tables = _tables(data, "threats")
        for table in tables:
            _check_keys(table, {"norm", "eps"}, "key of a threat")
        threats = [_threat(t) for t in tables]
    else:
        eps = data.get("eps")
        values = eps if isinstance(eps, list) else [eps]
        threats = [_threat({"norm": data.get("norm"), "eps": v}) for v in values]
    if not threats:
        raise UsageError("threats is empty: give at least one (or leave it out for each preset's own)")
    for i, (norm, eps) in enumerate(threats):
        for other_norm, other_eps in threats[:i]:
            same = eps == other_eps if eps is None or other_eps is None else same_eps(eps, other_eps)
            if (norm or "inf") == (other_norm or "inf") and same:
                # 8/255 and 0.0313725 are one threat model: the leaderboard would count their runs as two seeds of one row
                shown = "the preset's radius" if eps is None else f"eps {format_eps(other_eps or 0)} and {format_eps(eps)}"
                raise UsageError(f"a threat model is given twice: l_{norm or 'inf'} {shown}")
    return threats


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"seed {value!r} must be an integer >= 0")
    return value


def _seeds(value: Any) -> list[int | None]:
    if value is None:
        return [None]  # each preset's own seed
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise UsageError(f"seeds {value} must be a count >= 1 (seeds 0 .. N-1) or a list of seeds")
        return list(range(value))
    if isinstance(value, list) and value:
        seeds = [_seed(v) for v in value]
        if len(set(seeds)) != len(seeds):
            raise UsageError(f"seeds {value!r} repeats a seed")
        return list(seeds)
    raise UsageError(f"seeds {value!r} must be a count (3: seeds 0, 1, 2) or a non-empty list of seeds ([1, 2, 5])")


def _run_value(key: str, value: Any) -> Any:
    kind = _RUN_KEYS[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"{key} {value!r} must be an integer >= 1")
    if kind is list:
        return _strings(value, key)
    if kind is bool and not isinstance(value, bool):
        raise UsageError(f"{key} {value!r} must be true or false")
    return value


def _matches(request: RunRequest, table: dict[str, Any]) -> bool:
    values = {"plugin": request.trainer, "dataset": request.dataset, "preset": request.preset, "seed": request.seed}
    for key, wanted in table.items():
        if key == "eps":
            if request.eps is None or abs(request.eps - parse_eps(str(wanted))) > 1e-9:
                return False
        elif key == "norm":
            if (request.norm or "inf") != parse_norm(str(wanted)):
                return False
        elif values[key] != wanted:
            return False
    return True


def _resources(value: Any) -> Resources:
    if not isinstance(value, dict):
        raise UsageError(f"resources must be a table ([resources] gpus = 1, cpus = 4), got {value!r}")
    _check_keys(value, {"gpus", "cpus", "nproc", "batch_stats"}, "key of [resources]")
    return Resources(**value)
