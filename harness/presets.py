"""Presets: named, sourced training configurations stored as TOML data files.

File format (``registry/presets/*.toml``)::

    trainer = "linf_v2"                 # the trainer these presets configure (or "plugin:name")

    [[presets]]
    name = "paper-0.3"                  # unique per (trainer, dataset)
    dataset = "mnist"
    norm = "inf"
    eps = 0.3                           # raw pixel units; "8/255" is accepted
    paper = true                        # a paper's setting: --eps picks among these
    default = true                      # chosen when --preset and --eps are not given
    seed = 2021
    source = "where every value comes from"
    model = "linf_dist_net"             # optional: defaults to the trainer's model
    gpu_hours = 9.5                     # optional: one run's GPU time as a source states it (harness sweep's estimate)
    gpu_hours_source = "paper, Appendix C: 9.5 h on one V100"   # required with gpu_hours

    [presets.model_options]             # options of the model component
    depth = 5

    [presets.trainer_options]           # options of the trainer component
    epochs = 450
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from harness.datafile import DataFile, RowError, Table, read_rows
from harness.errors import PluginError, UsageError, unknown_name
from harness.threat import format_eps, same_eps

_PRESET_KEYS = {
    "name", "dataset", "norm", "eps", "paper", "default", "seed", "source", "model", "model_options", "trainer_options",
    "gpu_hours", "gpu_hours_source",
}


@dataclass(frozen=True)
class Preset:
    """One named configuration of a trainer for a dataset and threat model.

    The catalog resolves ``trainer``, ``dataset`` and ``model`` to the keys of
    registered components and checks every option against their ``Options``.
    """

    trainer: str
    name: str
    dataset: str
    norm: str
    eps: float
    source: str
    file: str  # the file it was read from
    plugin: str  # the plugin that registered the file
    paper: bool = False
    default: bool = False
    seed: int | None = None
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    trainer_options: dict[str, Any] = field(default_factory=dict)
    gpu_hours: float | None = None  # one run's GPU time, only where a paper or README states it
    gpu_hours_source: str | None = None

    def describe(self) -> str:
        return f"{self.name} ({self.dataset}, l_{self.norm} eps {format_eps(self.eps)})"


def read_presets(path: Path | Traversable, plugin: str) -> DataFile[Preset]:
    """Parse one preset file, checking every preset on its own.

    :raises PluginError: the file cannot be read, is not TOML, or names no trainer.
    """
    file = str(getattr(path, "name", path))

    def parse(row: Table, data: dict[str, Any]) -> Preset:
        trainer = data.get("trainer")
        if not isinstance(trainer, str) or not trainer:
            raise PluginError(f"presets {file} (plugin {plugin!r}) must name a top-level 'trainer'")
        threat = row.threat()
        gpu_hours, gpu_hours_source = row.number("gpu_hours"), row.optional_text("gpu_hours_source")
        if (gpu_hours is None) != (gpu_hours_source is None):
            raise RowError("'gpu_hours' and 'gpu_hours_source' go together (a time needs its source)")
        if gpu_hours is not None and gpu_hours <= 0:
            raise RowError(f"'gpu_hours' must be > 0, got {gpu_hours}")
        return Preset(
            trainer=trainer,
            name=row.text("name"),
            dataset=row.text("dataset"),
            norm=threat.norm,
            eps=threat.eps,
            source=row.text("source"),
            file=file,
            plugin=plugin,
            paper=row.flag("paper"),
            default=row.flag("default"),
            seed=row.integer("seed"),
            model=row.optional_text("model"),
            model_options=row.mapping("model_options"),
            trainer_options=row.mapping("trainer_options"),
            gpu_hours=gpu_hours,
            gpu_hours_source=gpu_hours_source,
        )

    return read_rows(path, plugin, "presets", "presets", parse, name_key="name", allowed=_PRESET_KEYS,
                     required={"name", "dataset", "eps", "source"})


def select_preset(
    presets: list[Preset],
    *,
    trainer: str,
    dataset: str,
    name: str | None,
    norm: str | None,
    eps: float | None,
) -> Preset | None:
    """The preset a run uses, or ``None`` to run on the components' default options.

    ``--preset NAME`` picks by name (its norm must agree with ``--norm``);
    otherwise the paper preset whose threat model matches ``--eps``; otherwise
    the dataset's default preset. A dataset the trainer has no preset for runs
    on the defaults (``None``), as does a trainer without presets.
    """
    mine = [p for p in presets if p.dataset == dataset]
    if name is not None:
        for preset in mine:
            if preset.name == name:
                if norm is not None and norm != preset.norm:
                    raise UsageError(
                        f"preset {name!r} of {trainer!r} is for l_{preset.norm}, not --norm {norm}; "
                        f"presets for {dataset!r}: {'; '.join(p.describe() for p in mine)}"
                    )
                return preset
        elsewhere = sorted({p.dataset for p in presets if p.name == name})
        if elsewhere:
            raise UsageError(
                f"preset {name!r} of {trainer!r} is for {', '.join(elsewhere)}, not {dataset!r}; "
                f"presets for {dataset!r}: {', '.join(p.name for p in mine) or 'none (run with --no-preset and --eps)'}"
            )
        raise unknown_name(f"preset of {trainer!r} for {dataset!r}", name, [p.name for p in mine])
    if not mine:
        return None
    listing = "; ".join(p.describe() for p in mine)
    if eps is not None:
        matching = [p for p in mine if p.paper and p.norm == (norm or "inf") and same_eps(p.eps, eps)]
        if len(matching) == 1:
            return matching[0]
        raise UsageError(
            f"{trainer!r} has no paper preset for {dataset!r} at l_{norm or 'inf'} eps {format_eps(eps)}; "
            f"choose one with --preset (it then runs at your eps), or --no-preset for the default options: {listing}"
        )
    defaults = [p for p in mine if p.default] or (mine if len(mine) == 1 else [])
    if not defaults:
        raise UsageError(f"{trainer!r} has several presets for {dataset!r} and no default; choose with --preset or --eps: {listing}")
    return defaults[0]
