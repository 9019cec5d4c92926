"""The leaderboard as data: finished runs and reported numbers, grouped and ranked.

Runs are grouped by (dataset, norm, eps). Within a group, runs that differ
only by seed (:func:`seed_group_key`) make one row: the mean, the sample
standard deviation and n of their clean, attacked and certified accuracy (and
of each certifier's), every run's own numbers kept beside (``Row.runs``). Rows
are ranked by mean certified accuracy (ties: mean clean accuracy). Numbers
reported in papers sit beside them, marked as reported and never ranked.

Besides the accuracies a row carries what the uniform evaluation recorded about
how far to trust them: each certifier's time-outs and per-sample errors (never
certified), the paper-protocol estimates (``sound`` false certifiers) apart from
the certifiers, the gradient-masking check, training and evaluation time, and,
with ``at_eps``, certified accuracy at another radius from the stored per-sample
radii (:mod:`harness.curves`). Rendering lives in :mod:`harness.render`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness import curves
from harness.reported import ReportedResult
from harness.results import EvaluationResult, SampleResult
from harness.store import RunRecord
from harness.threat import format_eps, same_eps

REPORTED_CHOICES = ("runs", "all", "none")

#: Why a run has no certified accuracy at ``--at-eps``: its certifiers stored no radii (only its own eps is known).
NO_RADII = "no radii"
#: ... or no sound certifier stood (each failed, or only estimates ran): it has no certified accuracy at any radius.
NO_CERTIFIER = "no sound certifier without error"

#: Top-level keys of a run's stored configuration that do not make it a different configuration:
#: the seed; where it ran (``device``; ``data_dir``, ``save_dir`` and ``checkpoint_every`` live only in
#: ``request``); what merely names or explains a resolved value (``preset_source``; ``request`` and
#: ``overrides``, whose every effect is in the resolved trainer, model, threat, preset and evaluation);
#: sweep bookkeeping (``sweep``); and ``evaluation``, which is taken from the evaluation the row shows instead.
IGNORED_CONFIG_KEYS = frozenset({"seed", "device", "request", "overrides", "preset_source", "sweep", "evaluation"})
#: ``config["distributed"]`` (a multi-process run, :mod:`harness.distributed`) counts only as far as it changes the
#: model: ``exact`` batch statistics train what one process trains (it groups with single-process runs, whatever its
#: world size and backend); ``local`` ones shift by each process's slice, so its world size makes another configuration.
EXACT_BATCH_STATS = "exact"
#: Keys of an evaluation's configuration that do not make it a different one: why the other certifiers did
#: not apply (a consequence of the model, not a choice).
IGNORED_EVALUATION_KEYS = frozenset({"not_applicable"})


def configuration_key(config: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None) -> str:
    """What two runs must share to differ only by seed, as a canonical JSON string (equal strings: the same configuration).

    ``config`` is a run's stored configuration (``RunInfo.config``); ``evaluation`` the configuration of the
    evaluation whose numbers are compared (``EvaluationRecord.config``; default ``config["evaluation"]``).
    Everything in them counts (trainer and model with their plugins and every resolved option, epochs among
    them; dataset; threat model; preset; train samples; evaluation samples, subset seed, batch size, attackers
    and certifiers with their options; any key a later harness adds) except :data:`IGNORED_CONFIG_KEYS` and
    :data:`IGNORED_EVALUATION_KEYS`; ``distributed`` counts only with ``local`` batch statistics (its world size).
    The radius is compared to 4 significant digits, so ``8/255`` and a typed
    ``0.03137`` agree.

    Before a run is evaluated, ``config["evaluation"]`` lists the certifiers requested (names, or ``null`` for
    every one that applies), after it those that ran (with their options): compare runs in the same state, or
    pass ``evaluation={}`` to compare the training configuration alone.
    """
    kept: dict[str, Any] = {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}
    distributed = kept.pop("distributed", None)
    if isinstance(distributed, dict) and distributed.get("batch_stats", EXACT_BATCH_STATS) != EXACT_BATCH_STATS:
        kept["distributed"] = {"batch_stats": distributed.get("batch_stats"), "world_size": distributed.get("world_size")}
    threat = kept.get("threat")
    if isinstance(threat, dict) and isinstance(threat.get("eps"), int | float):
        kept["threat"] = {**threat, "eps": f"{threat['eps']:.4g}"}
    if evaluation is None:
        evaluation = config.get("evaluation") if isinstance(config.get("evaluation"), dict) else {}
    kept["evaluation"] = {k: v for k, v in (evaluation or {}).items() if k not in IGNORED_EVALUATION_KEYS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)


def seed_group_key(run: RunRecord) -> str:
    """The key under which the leaderboard groups ``run`` with the runs that differ from it only by seed.

    :func:`configuration_key` of the run's configuration and of the evaluation the leaderboard shows (its
    most complete, ``run.best``). An external model (``harness eval --weights``: no seed) or a run stored
    without a configuration groups with no other run.
    """
    config = run.info.config
    if run.info.origin == "external" or not isinstance(config, dict) or not config:
        return json.dumps({"run": run.id})
    return configuration_key(config, run.best.config if run.best is not None and isinstance(run.best.config, dict) else None)


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (``None`` for fewer than 2 values) and count of the values given."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread:
        """Over the values that are not ``None`` (a run whose attack failed has no attacked accuracy)."""
        present = [v for v in values if v is not None and math.isfinite(v)]
        if not present:
            return cls(None, None, 0)
        return cls(statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present))


@dataclass
class CertifierCell:
    """One certifier's number in a row: its accuracy, over how many samples where it certified a subset, or its error.

    In a row of several seeds: ``accuracy`` is the mean over the runs where it did not fail, ``std`` their
    sample standard deviation, ``n`` how many they are; ``error`` is set only when it failed in every run.
    ``timeouts`` and ``errors`` count the samples it ran out of time on or that a failing batch held (never
    certified), summed over the row's runs. ``sound`` is false for a paper's protocol that is an estimate.
    """

    accuracy: float | None
    samples: int | None = None
    error: str | None = None
    std: float | None = None
    n: int | None = None
    timeouts: int = 0
    errors: int = 0
    sound: bool = True


@dataclass
class SeedRun:
    """One run of a row that groups several seeds: its own numbers."""

    seed: int | None
    run_id: int
    evaluation_id: int | None
    clean: float | None
    robust: float | None
    certified: float | None
    by_certifier: dict[str, CertifierCell] = field(default_factory=dict)
    train_seconds: float | None = None
    eval_samples: int | None = None
    errors: list[str] = field(default_factory=list)
    eval_seconds: float | None = None
    #: Paper-protocol estimates (certifiers with ``sound`` false), never in ``certified``.
    estimates: dict[str, CertifierCell] = field(default_factory=dict)
    #: Certified accuracy at the leaderboard's ``at_eps`` (:mod:`harness.curves`), or why there is none.
    certified_at: float | None = None
    at_eps_missing: str | None = None
    #: The gradient-masking check (``None``: not recorded, or no gradient-free attack ran).
    unreliable: bool | None = None
    gradient_free_breaks: int | None = None
    zero_gradient_fraction: float | None = None


@dataclass
class Row:
    """One line of the leaderboard. Accuracies are fractions; ``None`` when absent.

    ``trainer`` is the trainer's key (for a reported row, the trainer that
    reproduces the method, if any); ``label`` is how the row is named: the
    trainer for a measured run, the paper's name for a reported one.

    A measured row stands for the ``n`` runs that differ only by seed: ``clean``,
    ``robust`` and ``certified`` are their means, ``*_std`` the sample standard
    deviations (``None`` when n = 1), ``seeds`` and ``runs`` every run's own
    numbers (in seed order; n = 1 included). ``run_id``,
    ``evaluation_id`` and ``evaluations`` are the run's when n = 1, else ``None``/0.
    A reported row has the paper's ``n`` (``None``: not stated) and says whether its
    numbers are a ``median`` or a ``mean`` (``statistic``).

    ``by_certifier`` holds the sound certifiers, ``estimates`` the paper-protocol ones
    (never counted in ``certified``); ``timeouts`` and ``sample_errors`` total their
    per-sample time-outs and errors. ``at_eps`` is the radius the leaderboard was asked
    for (``None``: none) and ``certified_at`` the certified accuracy there (mean ± std over
    ``certified_at_n`` runs), or ``at_eps_missing`` says why there is none. ``unreliable``:
    the gradient-masking check flagged some run of the row (``None``: no run was checked).
    """

    kind: str  # "measured" or "reported"
    label: str
    trainer: str | None
    preset: str | None
    clean: float | None
    robust: float | None
    certified: float | None
    by_certifier: dict[str, CertifierCell] = field(default_factory=dict)
    attack: str | None = None
    epochs: int | None = None
    train_seconds: float | None = None
    eval_samples: int | None = None
    train_samples: int | None = None
    run_id: int | None = None
    #: The evaluation shown (the run's most complete), and how many the run has.
    evaluation_id: int | None = None
    evaluations: int = 0
    rank: int | None = None
    source: str | None = None
    #: Components that failed in this run's evaluation, one line each.
    errors: list[str] = field(default_factory=list)
    clean_std: float | None = None
    robust_std: float | None = None
    certified_std: float | None = None
    n: int | None = 1
    statistic: str | None = None  # "mean" over seeds; for a reported row what the paper reports ("median", "mean")
    seeds: list[int | None] = field(default_factory=list)
    runs: list[SeedRun] = field(default_factory=list)
    eval_seconds: float | None = None
    estimates: dict[str, CertifierCell] = field(default_factory=dict)
    timeouts: int | None = None
    sample_errors: int | None = None
    at_eps: float | None = None
    certified_at: float | None = None
    certified_at_std: float | None = None
    certified_at_n: int | None = None
    at_eps_missing: str | None = None
    unreliable: bool | None = None
    gradient_free_breaks: int | None = None
    zero_gradient_fraction: float | None = None


@dataclass
class Group:
    dataset: str
    norm: str
    eps: float
    rows: list[Row]


def _label(run: RunRecord) -> str:
    if run.info.origin == "external":
        model = run.info.config.get("model") if isinstance(run.info.config, dict) else None
        return f"external {model.get('name') if isinstance(model, dict) else ''}".strip()
    return run.info.trainer


#: A run's per-sample results (its best evaluation's), asked only for ``at_eps``.
SampleSource = Callable[[RunRecord], Sequence[SampleResult]]


def _at_eps(run: RunRecord, result: EvaluationResult, at_eps: float, samples: SampleSource) -> tuple[float | None, str | None]:
    """Certified accuracy at ``at_eps`` from the run's stored radii, or why there is none."""
    stored = samples(run)
    if not stored:
        return None, "no per-sample results"
    counted = curves.counted(result)
    if not counted:
        return None, NO_CERTIFIER  # as its certified accuracy is none, not 0
    if not same_eps(at_eps, run.info.eps) and not curves.has_radii(stored, counted):
        return None, NO_RADII  # only its certificates at its own eps are known
    return curves.accuracy_at(stored, at_eps, eps=run.info.eps, certifiers=counted), None


def _seed_run(run: RunRecord, at_eps: float | None = None, samples: SampleSource | None = None) -> SeedRun:
    result = run.result
    by_certifier: dict[str, CertifierCell] = {}
    estimates: dict[str, CertifierCell] = {}
    if result is not None:
        for c in result.certifiers:
            subset = c.samples if c.error is None and c.samples < result.samples else None
            cell = CertifierCell(accuracy=c.accuracy, samples=subset, error=c.error, timeouts=c.timeouts, errors=c.errors, sound=c.sound)
            (by_certifier if c.sound else estimates)[c.name] = cell
    certified_at, missing = None, None
    if at_eps is not None and samples is not None and result is not None:
        certified_at, missing = _at_eps(run, result, at_eps, samples)
    masking = result.masking if result is not None else None
    return SeedRun(
        seed=run.info.seed,
        run_id=run.id,
        evaluation_id=run.best.id if run.best else None,
        clean=result.clean_accuracy if result else None,
        robust=result.robust_accuracy if result else None,
        certified=result.certified_accuracy if result else None,
        by_certifier=by_certifier,
        train_seconds=run.train_seconds,
        eval_samples=result.samples if result else None,
        errors=result.errors if result else [],
        eval_seconds=run.eval_seconds,
        estimates=estimates,
        certified_at=certified_at,
        at_eps_missing=missing,
        unreliable=masking.unreliable if masking else None,
        gradient_free_breaks=masking.gradient_free_breaks if masking else None,
        zero_gradient_fraction=masking.zero_gradient_fraction if masking else None,
    )


def _certifier_spread(cells_of: list[dict[str, CertifierCell]]) -> dict[str, CertifierCell]:
    """Each certifier's mean ± std over the runs where it ran without error; its error if it failed in all; its
    time-outs and per-sample errors summed over the runs."""
    cells: dict[str, CertifierCell] = {}
    for name in dict.fromkeys(name for by in cells_of for name in by):
        mine = [by[name] for by in cells_of if name in by]
        timeouts, errors, sound = sum(c.timeouts for c in mine), sum(c.errors for c in mine), mine[0].sound
        ok = [c for c in mine if c.error is None]
        if not ok:
            cells[name] = CertifierCell(accuracy=None, error=mine[0].error, n=0, timeouts=timeouts, errors=errors, sound=sound)
            continue
        spread = Spread.of(c.accuracy for c in ok)
        samples = {c.samples for c in ok}
        cells[name] = CertifierCell(accuracy=spread.mean, samples=samples.pop() if len(samples) == 1 else None, std=spread.std, n=spread.n,
                                    timeouts=timeouts, errors=errors, sound=sound)
    return cells


def _any_flag(values: Iterable[bool | None]) -> bool | None:
    """True if any run was flagged, False if every checked run was clear, None if none was checked."""
    checked = [v for v in values if v is not None]
    return any(checked) if checked else None


def _total(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _row_from_runs(group: list[RunRecord], at_eps: float | None = None, samples: SampleSource | None = None) -> Row:
    """One row for runs that differ only by seed (one run: that run's numbers, n = 1)."""
    group = sorted(group, key=lambda r: (r.info.seed if r.info.seed is not None else -1, r.id))
    runs = [_seed_run(r, at_eps, samples) for r in group]
    first = group[0]
    single = len(group) == 1
    clean, robust, certified = (Spread.of(getattr(r, k) for r in runs) for k in ("clean", "robust", "certified"))
    train = Spread.of(r.train_seconds for r in runs)
    evaluate = Spread.of(r.eval_seconds for r in runs)
    at = Spread.of(r.certified_at for r in runs)
    by_certifier = runs[0].by_certifier if single else _certifier_spread([r.by_certifier for r in runs])
    estimates = runs[0].estimates if single else _certifier_spread([r.estimates for r in runs])
    cells = (*by_certifier.values(), *estimates.values())
    sizes = {r.eval_samples for r in runs}
    attacks = {r.result.attack_label() if r.result else None for r in group}
    train_samples = first.info.config.get("train_samples") if isinstance(first.info.config, dict) else None
    errors = runs[0].errors if single else [f"run {r.run_id} (seed {r.seed}): {e}" for r in runs for e in r.errors]
    return Row(
        kind="measured",
        label=_label(first),
        trainer=first.info.trainer,
        preset=first.info.preset,
        clean=clean.mean,
        robust=robust.mean,
        certified=certified.mean,
        by_certifier=by_certifier,
        attack=attacks.pop() if len(attacks) == 1 else None,
        epochs=first.info.epochs,
        train_seconds=train.mean,
        eval_samples=sizes.pop() if len(sizes) == 1 else None,
        train_samples=train_samples,
        run_id=first.id if single else None,
        evaluation_id=runs[0].evaluation_id if single else None,
        evaluations=len(first.evaluations) if single else 0,
        errors=errors,
        clean_std=clean.std,
        robust_std=robust.std,
        certified_std=certified.std,
        n=len(runs),
        statistic=None if single else "mean",
        seeds=[r.seed for r in runs],
        runs=runs,
        eval_seconds=evaluate.mean,
        estimates=estimates,
        timeouts=sum(c.timeouts for c in cells),
        sample_errors=sum(c.errors for c in cells),
        at_eps=at_eps,
        certified_at=at.mean,
        certified_at_std=at.std,
        certified_at_n=at.n if at_eps is not None else None,
        at_eps_missing=_missing(runs) if at_eps is not None and at.n == 0 else None,
        unreliable=_any_flag(r.unreliable for r in runs),
        gradient_free_breaks=_total(r.gradient_free_breaks for r in runs),
        zero_gradient_fraction=Spread.of(r.zero_gradient_fraction for r in runs).mean,
    )


def _missing(runs: list[SeedRun]) -> str:
    """Why no run of a row has a certified accuracy at ``at_eps``: each reason once."""
    return "; ".join(dict.fromkeys(r.at_eps_missing or "not evaluated" for r in runs))


def _row_from_reported(result: ReportedResult, at_eps: float | None = None) -> Row:
    # A paper's certified accuracy is at its own eps only.
    at_own_eps = at_eps is not None and same_eps(at_eps, result.eps)
    return Row(
        kind="reported",
        label=result.label,
        trainer=result.trainer,
        preset=None,
        clean=result.clean,
        robust=result.pgd,
        certified=result.certified,
        attack=result.attack,
        epochs=result.epochs,
        source=result.source,
        clean_std=result.clean_std,
        robust_std=result.pgd_std,
        certified_std=result.certified_std,
        n=result.runs,
        statistic=result.statistic,
        at_eps=at_eps,
        certified_at=result.certified if at_own_eps else None,
        certified_at_std=result.certified_std if at_own_eps else None,
    )


def _one_per_seed(runs: list[RunRecord]) -> list[RunRecord]:
    """The newest run of each seed: runs of one configuration and one seed are one sample repeated, not two seeds (a run
    repeated by hand, two sweeps that started the same cell at once); counting both would shrink the std and inflate n.
    ``--per-seed`` still shows every run."""
    newest: dict[int | None, RunRecord] = {}
    for run in runs:
        if run.info.seed is None:
            return runs  # no seed recorded: nothing to tell repeats by
        if run.info.seed not in newest or run.id > newest[run.info.seed].id:
            newest[run.info.seed] = run
    return [r for r in runs if newest.get(r.info.seed) is r]


def build(
    runs: list[RunRecord],
    reported: list[ReportedResult],
    *,
    dataset: str | None = None,
    norm: str | None = None,
    eps: float | None = None,
    reported_rows: str = "runs",
    per_seed: bool = False,
    at_eps: float | None = None,
    samples: SampleSource | None = None,
) -> list[Group]:
    """Group finished ``runs`` (and ``reported`` numbers) by threat model and rank them.

    Runs that differ only by seed (the same :func:`seed_group_key`) make one row
    (mean ± std over them, the newest run of each seed); ``per_seed`` gives every run a row of its own.
    ``reported_rows``: "runs" shows reported numbers in groups that have a
    measured run, "all" in every group, "none" nowhere.
    ``at_eps``: also certified accuracy at this radius (``Row.certified_at``, :mod:`harness.curves`), from each
    run's per-sample results, which ``samples`` reads (``store.samples(run.id)``); rows keep their rank by
    certified accuracy at their own eps.
    """
    if reported_rows not in REPORTED_CHOICES:
        raise ValueError(f"reported_rows must be one of {REPORTED_CHOICES}, got {reported_rows!r}")
    if at_eps is not None and (samples is None or not at_eps >= 0):
        raise ValueError(f"at_eps needs the runs' samples and a radius >= 0, got {at_eps!r}")

    def wanted(d: str, n: str, e: float) -> bool:
        return (
            (dataset is None or d == dataset)
            and (norm is None or n == norm)
            and (eps is None or same_eps(e, eps))
        )

    groups: list[Group] = []

    def group(d: str, n: str, e: float) -> Group:
        for g in groups:
            if g.dataset == d and g.norm == n and same_eps(g.eps, e):
                if len(format_eps(e)) < len(format_eps(g.eps)):
                    g.eps = e  # show 8/255 rather than a typed 0.0313725
                return g
        groups.append(Group(dataset=d, norm=n, eps=e, rows=[]))
        return groups[-1]

    members: dict[int, dict[str, list[RunRecord]]] = {}  # id(group) → configuration key → its runs, in order met
    for run in runs:
        if wanted(run.info.dataset, run.info.norm, run.info.eps):
            g = group(run.info.dataset, run.info.norm, run.info.eps)
            key = json.dumps({"run": run.id}) if per_seed else seed_group_key(run)
            members.setdefault(id(g), {}).setdefault(key, []).append(run)
    for g in groups:
        g.rows = [_row_from_runs(_one_per_seed(same), at_eps, samples) for same in members[id(g)].values()]
    measured = list(groups)
    if reported_rows != "none":
        for result in reported:
            if not wanted(result.dataset, result.norm, result.eps):
                continue
            if reported_rows == "runs" and not any(
                g.dataset == result.dataset and g.norm == result.norm and same_eps(g.eps, result.eps) for g in measured
            ):
                continue
            group(result.dataset, result.norm, result.eps).rows.append(_row_from_reported(result, at_eps))

    def order(row: Row) -> tuple[float, float, int]:
        return (
            -(row.certified if row.certified is not None else -1.0),
            -(row.clean if row.clean is not None else -1.0),
            0 if row.kind == "measured" else 1,
        )

    for g in groups:
        g.rows.sort(key=order)
        rank = 0
        for row in g.rows:
            if row.kind == "measured":
                rank += 1
                row.rank = rank
    return sorted(groups, key=lambda g: (g.dataset, g.norm, g.eps))
