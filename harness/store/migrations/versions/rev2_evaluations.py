"""Revision 2: a run is one model; its evaluations are their own records.

``runs`` gains ``origin`` (``trained``; ``external`` for weights trained
elsewhere), ``heartbeat_at``, ``checkpoint``, the weights file (``weights_path``,
``weights_sha256``, ``weights_bytes``), ``training`` (per-epoch metrics) and
``resumes``, and loses ``eval_seconds`` to the new ``evaluations`` table (one
row per evaluation of a model: when, how long, its configuration and
environment). The result tables are keyed by ``evaluation_id`` instead of
``run_id``. ``schema_meta`` gains the database's random id, and its version
becomes 3 so that a harness from before Alembic refuses the database.

Every revision-1 run that has a result gets one evaluation (created when the
run finished, its ``eval_seconds``, the evaluation section of its
configuration, its environment); every value is copied as stored, and the
upgrade stops if any result or per-sample row would be left behind.
"""

from __future__ import annotations

import uuid

from alembic import op
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    text,
)

from harness.errors import HarnessError

revision = "2"
down_revision = "1"
branch_labels = None
depends_on = None

metadata = MetaData()

schema_meta = Table(
    "schema_meta", metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("database_id", String(32), nullable=False),
    CheckConstraint("id = 1", name="ck_schema_meta_one_row"),
)
Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("trainer", String(100), nullable=False),
    Column("dataset", String(100), nullable=False),
    Column("norm", String(16), nullable=False),
    Column("eps", Double, nullable=False),
    Column("preset", String(100)),
    Column("seed", BigInteger, nullable=False),
    Column("epochs", Integer),
    Column("status", String(16), nullable=False),
    Column("origin", String(16), nullable=False),
    Column("config", JSON, nullable=False),
    Column("device", String(200), nullable=False),
    Column("environment", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("heartbeat_at", DateTime),
    Column("train_seconds", Double),
    Column("error", Text),
    Column("checkpoint", JSON),
    Column("weights_path", Text),
    Column("weights_sha256", String(64)),
    Column("weights_bytes", BigInteger),
    Column("training", JSON, nullable=False),
    Column("resumes", Integer, nullable=False),
    CheckConstraint("status IN ('running', 'finished', 'failed', 'interrupted')", name="ck_runs_status"),
    CheckConstraint("origin IN ('trained', 'external')", name="ck_runs_origin"),
    Index("ix_runs_status_threat", "status", "dataset", "norm", "eps"),
    Index("ix_runs_threat", "dataset", "norm", "eps"),
    sqlite_autoincrement=True,
)
Table(
    "evaluations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("seconds", Double),
    Column("config", JSON, nullable=False),
    Column("environment", JSON, nullable=False),
    Index("ix_evaluations_run", "run_id"),
    sqlite_autoincrement=True,
)
Table(
    "results", metadata,
    Column("evaluation_id", Integer, ForeignKey("evaluations.id"), primary_key=True),
    Column("eval_samples", Integer, nullable=False),
    Column("clean_accuracy", Double, nullable=False),
    Column("robust_accuracy", Double),
    Column("certified_accuracy", Double),
    Column("not_applicable", JSON, nullable=False),
)
Table(
    "attack_results", metadata,
    Column("evaluation_id", Integer, ForeignKey("evaluations.id"), primary_key=True),
    Column("attack", String(100), primary_key=True),
    Column("label", String(200), nullable=False),
    Column("options", JSON, nullable=False),
    Column("accuracy", Double),
    Column("attacked", Integer, nullable=False),
    Column("seconds", Double),
    Column("error", Text),
)
Table(
    "certifier_results", metadata,
    Column("evaluation_id", Integer, ForeignKey("evaluations.id"), primary_key=True),
    Column("certifier", String(100), primary_key=True),
    Column("options", JSON, nullable=False),
    Column("accuracy", Double),
    Column("samples", Integer, nullable=False),
    Column("mean_radius", Double),
    Column("median_radius", Double),
    Column("seconds", Double),
    Column("error", Text),
)
Table(
    "samples", metadata,
    Column("evaluation_id", Integer, ForeignKey("evaluations.id"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("label", Integer, nullable=False),
    Column("prediction", Integer, nullable=False),
)
Table(
    "sample_attacks", metadata,
    Column("evaluation_id", Integer, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("attack", String(100), primary_key=True),
    Column("survived", Boolean, nullable=False),
    ForeignKeyConstraint(["evaluation_id", "idx"], ["samples.evaluation_id", "samples.idx"]),
)
Table(
    "sample_certificates", metadata,
    Column("evaluation_id", Integer, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("certifier", String(100), primary_key=True),
    Column("certified", Boolean, nullable=False),
    Column("radius", Double),
    ForeignKeyConstraint(["evaluation_id", "idx"], ["samples.evaluation_id", "samples.idx"]),
)

#: Revision 1's tables, children after parents.
OLD_TABLES = ("schema_meta", "runs", "results", "attack_results", "certifier_results", "samples", "sample_attacks", "sample_certificates")

#: Per result table: its columns after the key (the same in both revisions).
RESULT_COLUMNS = {
    "results": "eval_samples, clean_accuracy, robust_accuracy, certified_accuracy, not_applicable",
    "attack_results": "attack, label, options, accuracy, attacked, seconds, error",
    "certifier_results": "certifier, options, accuracy, samples, mean_radius, median_radius, seconds, error",
    "samples": "idx, label, prediction",
    "sample_attacks": "idx, attack, survived",
    "sample_certificates": "idx, certifier, certified, radius",
}

RUN_COLUMNS = (
    "id, trainer, dataset, norm, eps, preset, seed, epochs, status, config, device, environment, created_at, finished_at, train_seconds, error"
)


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    # Revision 1's tables step aside (their index names are taken again), revision 2's are created, the rows copied.
    op.drop_index("ix_runs_status_threat", table_name="runs")
    op.drop_index("ix_runs_threat", table_name="runs")
    for name in OLD_TABLES:
        op.rename_table(name, f"rev1_{name}")
    if postgresql:
        _free_postgresql_names(bind)
    metadata.create_all(bind)
    bind.execute(insert(schema_meta).values(id=1, version=3, database_id=uuid.uuid4().hex))

    empty = "'{}'::json" if postgresql else "'{}'"
    bind.execute(text(
        f"INSERT INTO runs ({RUN_COLUMNS}, origin, heartbeat_at, checkpoint, weights_path, weights_sha256, weights_bytes, training, resumes) "
        f"SELECT {RUN_COLUMNS}, 'trained', NULL, NULL, NULL, NULL, NULL, {empty}, 0 FROM rev1_runs ORDER BY id"
    ))
    # The evaluation section of the run's configuration; {} where the configuration has none (or cannot be read).
    if postgresql:
        section = f"CASE WHEN json_typeof(r.config -> 'evaluation') = 'object' THEN r.config -> 'evaluation' ELSE {empty} END"
    else:
        section = (f"CASE WHEN json_valid(r.config) AND json_type(r.config, '$.evaluation') = 'object' "
                   f"THEN json_extract(r.config, '$.evaluation') ELSE {empty} END")
    bind.execute(text(
        "INSERT INTO evaluations (run_id, created_at, seconds, config, environment) "
        f"SELECT r.id, COALESCE(r.finished_at, r.created_at), r.eval_seconds, {section}, r.environment "
        "FROM rev1_runs r JOIN rev1_results x ON x.run_id = r.id ORDER BY r.id"
    ))
    for name, columns in RESULT_COLUMNS.items():
        prefixed = ", ".join(f"o.{c.strip()}" for c in columns.split(","))
        bind.execute(text(
            f"INSERT INTO {name} (evaluation_id, {columns}) "
            f"SELECT e.id, {prefixed} FROM rev1_{name} o JOIN evaluations e ON e.run_id = o.run_id"
        ))
    for name in ("runs", *RESULT_COLUMNS):
        _check_copied(bind, name)
    _keep_run_ids_unique(bind, postgresql)
    for name in reversed(OLD_TABLES):
        op.drop_table(f"rev1_{name}")


def downgrade() -> None:
    raise NotImplementedError("the store is never downgraded: restore the backup `harness db upgrade` made")


def _check_copied(bind: Connection, name: str) -> None:
    """Every row of revision 1's table is in revision 2's (a result of a run without a summary would have no evaluation)."""
    old = bind.execute(text(f"SELECT count(*) FROM rev1_{name}")).scalar_one()
    new = bind.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
    if old != new:
        raise HarnessError(
            f"cannot upgrade: {old - new} of the {old} rows of table {name} belong to no evaluation (a run without a results row); "
            "nothing was changed"
        )


def _keep_run_ids_unique(bind: Connection, postgresql: bool) -> None:
    """The next run id stays above every id ever handed out, as revision 1 kept it."""
    if postgresql:
        bind.execute(text(
            "SELECT setval(pg_get_serial_sequence('runs', 'id'), "
            "GREATEST((SELECT max(id) FROM runs), (SELECT last_value FROM rev1_runs_id_seq)))"
        ))
        return
    seen = bind.execute(text("SELECT max(seq) FROM sqlite_sequence WHERE name IN ('rev1_runs', 'runs')")).scalar_one()
    if seen is not None:
        bind.execute(text("DELETE FROM sqlite_sequence WHERE name = 'runs'"))
        bind.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', :seq)"), {"seq": seen})


def _free_postgresql_names(bind: Connection) -> None:
    """Index-backed constraint names and sequences are schema-wide in PostgreSQL: give revision 1's theirs."""
    for name in ("runs", "schema_meta"):  # the tables whose integer key is a SERIAL
        bind.execute(text(f"ALTER SEQUENCE IF EXISTS {name}_id_seq RENAME TO rev1_{name}_id_seq"))
    rows = bind.execute(text(
        "SELECT c.relname, k.conname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        "WHERE k.contype = 'p' AND c.relname LIKE 'rev1\\_%' AND c.relnamespace = current_schema()::regnamespace"
    )).all()
    for table, constraint in rows:
        if not constraint.startswith("rev1_"):
            bind.execute(text(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{constraint}" TO "rev1_{constraint}"'))
