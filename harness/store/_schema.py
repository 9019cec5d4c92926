"""The store's tables at the newest revision (:data:`REVISION`), as SQLAlchemy ORM classes.

One ``runs`` row per model; one ``evaluations`` row per evaluation of it;
per evaluation, its summary in ``results``, one row per attack in
``attack_results`` and per certifier that ran in ``certifier_results``, one
``samples`` row per evaluated test sample, one row per (sample, attack) in
``sample_attacks`` and per (sample, certifier) in ``sample_certificates``.
``schema_meta`` holds the database's id (:meth:`Store.check_alive` compares
it) and a version that only harness releases from before Alembic read (they
refuse anything above 2); the revision itself is Alembic's
``alembic_version``.

A change here is a new revision in ``migrations/versions/`` that brings the
previous revision to exactly these tables (``tests/store/test_migration.py``
compares an upgraded database with a fresh one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from harness.results import OUTCOMES, RADIUS_METHODS
from harness.store import ORIGINS, STATUSES

#: The Alembic revision these tables are; revisions are "1", "2", ... in order.
REVISION = 3
#: What ``schema_meta.version`` holds at this revision: above 2, so that a harness from before Alembic refuses the database.
LEGACY_VERSION = 3


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC timestamp, stored naive (the same on every backend) and read back timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


def table(row_class: type[Base]) -> Table:
    """The Core table of a mapped class (typed as such, for Core inserts and updates)."""
    return cast(Table, row_class.__table__)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


#: A certificate's two columns agree: a time-out or an error is never certified (the same text in revision 3's migration).
CERTIFIED_IS_OUTCOME = "certified = (outcome = 'certified')"


class SchemaMeta(Base):
    __tablename__ = "schema_meta"
    __table_args__ = (CheckConstraint("id = 1", name="ck_schema_meta_one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    #: A random id written when the database is created: a file replaced by another database has another.
    database_id: Mapped[str] = mapped_column(String(32))


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_one_of("status", STATUSES), name="ck_runs_status"),
        CheckConstraint(_one_of("origin", ORIGINS), name="ck_runs_origin"),
        Index("ix_runs_status_threat", "status", "dataset", "norm", "eps"),
        Index("ix_runs_threat", "dataset", "norm", "eps"),
        # AUTOINCREMENT: a run id is never handed out twice, even if rows were deleted by hand.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trainer: Mapped[str] = mapped_column(String(100))
    dataset: Mapped[str] = mapped_column(String(100))
    norm: Mapped[str] = mapped_column(String(16))
    eps: Mapped[float] = mapped_column(Double)
    preset: Mapped[str | None] = mapped_column(String(100))
    seed: Mapped[int] = mapped_column(BigInteger)
    epochs: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    device: Mapped[str] = mapped_column(String(200))
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    train_seconds: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)
    #: The last checkpoint: epoch, step, path, bytes, saved_at.
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    weights_path: Mapped[str | None] = mapped_column(Text)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    weights_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: Per-epoch metric means: {"epochs": [{"epoch": 1, "loss": ..., ...}, ...]}.
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    resumes: Mapped[int] = mapped_column(Integer)


class EvaluationRow(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_run", "run_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    seconds: Mapped[float | None] = mapped_column(Double)
    #: The evaluation section of the configuration: attackers, certifiers that ran, not_applicable, samples, subset_seed, batch_size.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: harness and torch versions, host, device.
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)


class ResultRow(Base):
    """The summary of an evaluation."""

    __tablename__ = "results"

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), primary_key=True)
    eval_samples: Mapped[int] = mapped_column(Integer)
    clean_accuracy: Mapped[float] = mapped_column(Double)
    robust_accuracy: Mapped[float | None] = mapped_column(Double)
    certified_accuracy: Mapped[float | None] = mapped_column(Double)
    #: Certifier → why it did not apply to the model.
    not_applicable: Mapped[dict[str, str]] = mapped_column(JSON)
    #: The gradient-masking check (:class:`harness.results.GradientMasking`); NULL where it was not made.
    zero_gradient_fraction: Mapped[float | None] = mapped_column(Double)
    gradient_free_breaks: Mapped[int | None] = mapped_column(Integer)
    unreliable: Mapped[bool | None] = mapped_column(Boolean)


class AttackResultRow(Base):
    __tablename__ = "attack_results"

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), primary_key=True)
    attack: Mapped[str] = mapped_column(String(100), primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    accuracy: Mapped[float | None] = mapped_column(Double)
    attacked: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)
    samples_per_second: Mapped[float | None] = mapped_column(Double)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    memory_kind: Mapped[str | None] = mapped_column(String(32))
    #: A multi-stage attack's robust accuracy after each stage, in the order run: {stage: accuracy}; {} for one stage (NULL before revision 3).
    stages: Mapped[dict[str, float] | None] = mapped_column(JSON)
    gradient_free: Mapped[bool] = mapped_column(Boolean, server_default=false())


class CertifierResultRow(Base):
    __tablename__ = "certifier_results"
    __table_args__ = (CheckConstraint(_one_of("radius_method", RADIUS_METHODS), name="ck_certifier_results_radius_method"),)

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), primary_key=True)
    certifier: Mapped[str] = mapped_column(String(100), primary_key=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    accuracy: Mapped[float | None] = mapped_column(Double)
    samples: Mapped[int] = mapped_column(Integer)
    mean_radius: Mapped[float | None] = mapped_column(Double)
    median_radius: Mapped[float | None] = mapped_column(Double)
    seconds: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)
    samples_per_second: Mapped[float | None] = mapped_column(Double)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    memory_kind: Mapped[str | None] = mapped_column(String(32))
    #: Samples it ran out of time on, and samples whose batch raised (the first such message in sample_error).
    timeouts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    errors: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    sample_error: Mapped[str | None] = mapped_column(Text)
    radius_method: Mapped[str | None] = mapped_column(String(16))
    radius_tolerance: Mapped[float | None] = mapped_column(Double)
    #: False for an estimate (a paper's protocol that is not a certificate): never counted as certified.
    sound: Mapped[bool] = mapped_column(Boolean, server_default=true())


class SampleRow(Base):
    __tablename__ = "samples"

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[int] = mapped_column(Integer)
    prediction: Mapped[int] = mapped_column(Integer)


class AttackRow(Base):
    __tablename__ = "sample_attacks"
    __table_args__ = (ForeignKeyConstraint(["evaluation_id", "idx"], ["samples.evaluation_id", "samples.idx"]),)

    evaluation_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    attack: Mapped[str] = mapped_column(String(100), primary_key=True)
    survived: Mapped[bool] = mapped_column(Boolean)
    #: The stage of a multi-stage attack that broke the sample; NULL if it survived or the attack has one stage.
    broken_by: Mapped[str | None] = mapped_column(String(100))


class CertificateRow(Base):
    __tablename__ = "sample_certificates"
    __table_args__ = (
        ForeignKeyConstraint(["evaluation_id", "idx"], ["samples.evaluation_id", "samples.idx"]),
        CheckConstraint(_one_of("outcome", OUTCOMES), name="ck_sample_certificates_outcome"),
        CheckConstraint(CERTIFIED_IS_OUTCOME, name="ck_sample_certificates_certified"),
    )

    evaluation_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    certifier: Mapped[str] = mapped_column(String(100), primary_key=True)
    certified: Mapped[bool] = mapped_column(Boolean)
    radius: Mapped[float | None] = mapped_column(Double)
    #: One of :data:`harness.results.OUTCOMES`; ``certified`` is true exactly when it is "certified".
    outcome: Mapped[str] = mapped_column(String(16))


metadata = Base.metadata
