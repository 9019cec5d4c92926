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
    runs = 8                    # over how many runs, where the source says; omit otherwise
    statistic = "median"        # what the numbers are over those runs: "median" or "mean"
    certified_std = 0.33        # percent: a standard deviation the source prints (also clean_std, pgd_std)

``runs``, ``statistic`` and the ``*_std`` keys are optional and are filled only
from the source: a row says nothing about its spread unless the paper does.
The key was called ``method`` before; files that still say ``method`` load,
with a deprecation warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from harness.datafile import DataFile, RowError, Table, read_rows
from harness.errors import HarnessDeprecationWarning

_KEYS = {"trainer", "method", "label", "dataset", "norm", "eps", "clean", "pgd", "certified", "attack", "epochs", "source",
         "runs", "statistic", "clean_std", "pgd_std", "certified_std"}
STATISTICS = ("median", "mean")


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
    #: Over how many runs the numbers are (``None``: the source does not say), and what they are over them.
    runs: int | None = None
    statistic: str | None = None
    clean_std: float | None = None
    pgd_std: float | None = None
    certified_std: float | None = None


def _percent(row: Table, key: str) -> float | None:
    value = row.number(key)
    if value is None:
        return None
    if not 0 <= value <= 100:
        raise RowError(f"{key!r} is {value}, not a percentage")
    return value / 100


def _read_row(row: Table, file: str, plugin: str) -> ReportedResult:
    threat = row.threat()
    clean, pgd, certified = _percent(row, "clean"), _percent(row, "pgd"), _percent(row, "certified")
    # Certified accuracy can exceed neither the attacked nor the clean one: a row that says so is mistyped.
    for low, high, what in ((certified, pgd, "certified > pgd"), (certified, clean, "certified > clean"), (pgd, clean, "pgd > clean")):
        if low is not None and high is not None and low > high:
            raise RowError(f"{what} ({100 * low:g} > {100 * high:g})")
    epochs = row.integer("epochs")
    if epochs is not None and epochs < 1:
        raise RowError(f"'epochs' must be >= 1, got {epochs}")
    runs = row.integer("runs")
    if runs is not None and runs < 1:
        raise RowError(f"'runs' must be >= 1, got {runs}")
    statistic = row.optional_text("statistic")
    if statistic is not None and statistic not in STATISTICS:
        raise RowError(f"'statistic' must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    stds = {key: _percent(row, key) for key in ("clean_std", "pgd_std", "certified_std")}
    for key, std in stds.items():
        if std is not None and (runs is None or runs < 2):
            raise RowError(f"{key!r} needs 'runs' >= 2 (a standard deviation over how many runs?), got runs = {runs}")
    if statistic is not None and (runs is None or runs < 2):
        raise RowError(f"'statistic' needs 'runs' >= 2, got runs = {runs}")
    trainer = row.optional_text("trainer")
    if "method" in row.raw:
        if trainer is not None:
            raise RowError("give 'trainer' only ('method' is its deprecated name)")
        trainer = row.text("method")
        warnings.warn(f"reported result {row.raw.get('label')!r} in {file} (plugin {plugin!r}): the key 'method' is deprecated; "
                      f"write trainer = {trainer!r}", HarnessDeprecationWarning, stacklevel=4)
    return ReportedResult(
        label=row.text("label"),
        dataset=row.text("dataset"),
        norm=threat.norm,
        eps=threat.eps,
        clean=clean,
        pgd=pgd,
        certified=certified,
        source=row.text("source"),
        file=file,
        plugin=plugin,
        trainer=trainer,
        attack=row.optional_text("attack"),
        epochs=epochs,
        runs=runs,
        statistic=statistic,
        clean_std=stds["clean_std"],
        pgd_std=stds["pgd_std"],
        certified_std=stds["certified_std"],
    )


def read_reported(path: Path | Traversable, plugin: str) -> DataFile[ReportedResult]:
    """Parse one reported-results file, checking every row on its own.

    :raises PluginError: the file cannot be read or is not TOML.
    """
    file = str(getattr(path, "name", path))
    return read_rows(path, plugin, "reported results", "results", lambda row, _: _read_row(row, file, plugin), name_key="label",
                     allowed=_KEYS, required={"label", "dataset", "eps", "source"})
