"""Numbers reported in papers, kept apart from measured runs.

File format (``registry/reported/*.toml``)::

    [[results]]
    trainer = "linf_v2"         # the trainer, when the harness implements the method
    label = "l_inf-dist net v2" # how the leaderboard names it
    dataset = "mnist"
    norm = "inf"
    eps = 0.3
    clean = 98.56               # percent, as printed in the paper
    pgd = 94.73                 # percent; omit when not reported
    certified = 93.20           # percent
    attack = "PGD-100"          # what the attack column means for this row
    epochs = 450
    source = "Zhang et al., ICLR 2022, Table 2 (median of 8 runs)"

The key was called ``method`` before; files that still say ``method`` load,
with a deprecation warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from harness.datafile import check_keys, read_data_file
from harness.errors import PluginError, UsageError
from harness.threat import parse_eps, parse_norm

_KEYS = {"trainer", "method", "label", "dataset", "norm", "eps", "clean", "pgd", "certified", "attack", "epochs", "source"}


@dataclass(frozen=True)
class ReportedResult:
    """One row of a paper's table. Accuracies are fractions in [0, 1]."""

    label: str
    dataset: str
    norm: str
    eps: float
    certified: float | None
    clean: float | None
    pgd: float | None
    source: str
    file: str = ""
    plugin: str = ""
    trainer: str | None = None
    attack: str | None = None
    epochs: int | None = None


def _fraction(value: float | None, where: str) -> float | None:
    if value is None:
        return None
    if not 0 <= value <= 100:
        raise PluginError(f"{where}: accuracy {value} is not a percentage")
    return value / 100


def load_reported(path: Path | Traversable, plugin: str) -> list[ReportedResult]:
    origin, data = read_data_file(path, plugin, "reported results")
    file = str(getattr(path, "name", path))
    results = []
    for raw in data.get("results", []):
        where = f"reported result {raw.get('label')!r} in {origin}"
        check_keys(raw, _KEYS, {"label", "dataset", "eps", "source"}, where)
        if "method" in raw:
            warnings.warn(f"{where}: the key 'method' is deprecated; write trainer = {raw['method']!r}", DeprecationWarning, stacklevel=2)
            if "trainer" in raw:
                raise PluginError(f"{where}: give 'trainer' only ('method' is its deprecated name)")
        try:
            results.append(
                ReportedResult(
                    label=raw["label"],
                    dataset=raw["dataset"],
                    norm=parse_norm(raw.get("norm", "inf")),
                    eps=parse_eps(raw["eps"]),
                    clean=_fraction(raw.get("clean"), where),
                    pgd=_fraction(raw.get("pgd"), where),
                    certified=_fraction(raw.get("certified"), where),
                    source=raw["source"],
                    file=file,
                    plugin=plugin,
                    trainer=raw.get("trainer", raw.get("method")),
                    attack=raw.get("attack"),
                    epochs=raw.get("epochs"),
                )
            )
        except UsageError as exc:
            raise PluginError(f"{where}: {exc}") from None
    return results
