"""The leaderboard as data: finished runs and reported numbers, grouped and ranked.

Runs are grouped by (dataset, norm, eps) and ranked by certified accuracy
(ties: clean accuracy). Numbers reported in papers sit beside them, marked as
reported and never ranked. Rendering lives in :mod:`harness.render`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.reported import ReportedResult
from harness.store import RunRecord
from harness.threat import format_eps, same_eps

REPORTED_CHOICES = ("runs", "all", "none")


@dataclass
class CertifierCell:
    """One certifier's number in a row: its accuracy, over how many samples where it certified a subset, or its error."""

    accuracy: float | None
    samples: int | None = None
    error: str | None = None


@dataclass
class Row:
    """One line of the leaderboard. Accuracies are fractions; ``None`` when absent.

    ``trainer`` is the trainer's key (for a reported row, the trainer that
    reproduces the method, if any); ``label`` is how the row is named: the
    trainer for a measured run, the paper's name for a reported one.
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


@dataclass
class Group:
    dataset: str
    norm: str
    eps: float
    rows: list[Row]


def _row_from_run(run: RunRecord) -> Row:
    result = run.result
    by_certifier: dict[str, CertifierCell] = {}
    if result is not None:
        for c in result.certifiers:
            subset = c.samples if c.error is None and c.samples < result.samples else None
            by_certifier[c.name] = CertifierCell(accuracy=c.accuracy, samples=subset, error=c.error)
    label = run.info.trainer
    if run.info.origin == "external":
        model = run.info.config.get("model") if isinstance(run.info.config, dict) else None
        label = f"external {model.get('name') if isinstance(model, dict) else ''}".strip()
    train_samples = run.info.config.get("train_samples") if isinstance(run.info.config, dict) else None
    return Row(
        kind="measured",
        label=label,
        trainer=run.info.trainer,
        preset=run.info.preset,
        clean=result.clean_accuracy if result else None,
        robust=result.robust_accuracy if result else None,
        certified=result.certified_accuracy if result else None,
        by_certifier=by_certifier,
        attack=result.attack_label() if result else None,
        epochs=run.info.epochs,
        train_seconds=run.train_seconds,
        eval_samples=result.samples if result else None,
        train_samples=train_samples,
        run_id=run.id,
        evaluation_id=run.best.id if run.best else None,
        evaluations=len(run.evaluations),
        errors=result.errors if result else [],
    )


def _row_from_reported(result: ReportedResult) -> Row:
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
    )


def build(
    runs: list[RunRecord],
    reported: list[ReportedResult],
    *,
    dataset: str | None = None,
    norm: str | None = None,
    eps: float | None = None,
    reported_rows: str = "runs",
) -> list[Group]:
    """Group finished ``runs`` (and ``reported`` numbers) by threat model and rank them.

    ``reported_rows``: "runs" shows reported numbers in groups that have a
    measured run, "all" in every group, "none" nowhere.
    """
    if reported_rows not in REPORTED_CHOICES:
        raise ValueError(f"reported_rows must be one of {REPORTED_CHOICES}, got {reported_rows!r}")

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

    for run in runs:
        if wanted(run.info.dataset, run.info.norm, run.info.eps):
            group(run.info.dataset, run.info.norm, run.info.eps).rows.append(_row_from_run(run))
    measured = list(groups)
    if reported_rows != "none":
        for result in reported:
            if not wanted(result.dataset, result.norm, result.eps):
                continue
            if reported_rows == "runs" and not any(
                g.dataset == result.dataset and g.norm == result.norm and same_eps(g.eps, result.eps) for g in measured
            ):
                continue
            group(result.dataset, result.norm, result.eps).rows.append(_row_from_reported(result))

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
