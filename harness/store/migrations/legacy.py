"""Revision 1's tables, frozen, and the pre-Alembic upgrade from ``schema_meta`` version 1 to version 2 (revision 1).

Before Alembic, ``schema_meta.version`` was the schema version: 1, the first;
2, ``runs.plugin`` renamed ``trainer`` (one word for a training method) and
the ``metrics`` name/value table (names like ``certified_accuracy/crown``)
replaced by the typed ``results``, ``attack_results`` and ``certifier_results``
tables. Version 2 is Alembic's revision 1.
"""

from __future__ import annotations

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
    select,
    text,
    update,
)

#: ``schema_meta.version`` at revision 1.
VERSION = 2

metadata = MetaData()

schema_meta = Table(
    "schema_meta", metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    CheckConstraint("id = 1", name="ck_schema_meta_one_row"),
)
runs = Table(
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
    Column("config", JSON, nullable=False),
    Column("device", String(200), nullable=False),
    Column("environment", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("train_seconds", Double),
    Column("eval_seconds", Double),
    Column("error", Text),
    CheckConstraint("status IN ('running', 'finished', 'failed', 'interrupted')", name="ck_runs_status"),
    Index("ix_runs_status_threat", "status", "dataset", "norm", "eps"),
    Index("ix_runs_threat", "dataset", "norm", "eps"),
    sqlite_autoincrement=True,
)
results = Table(
    "results", metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("eval_samples", Integer, nullable=False),
    Column("clean_accuracy", Double, nullable=False),
    Column("robust_accuracy", Double),
    Column("certified_accuracy", Double),
    Column("not_applicable", JSON, nullable=False),
)
attack_results = Table(
    "attack_results", metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("attack", String(100), primary_key=True),
    Column("label", String(200), nullable=False),
    Column("options", JSON, nullable=False),
    Column("accuracy", Double),
    Column("attacked", Integer, nullable=False),
    Column("seconds", Double),
    Column("error", Text),
)
certifier_results = Table(
    "certifier_results", metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("certifier", String(100), primary_key=True),
    Column("options", JSON, nullable=False),
    Column("accuracy", Double),
    Column("samples", Integer, nullable=False),
    Column("mean_radius", Double),
    Column("median_radius", Double),
    Column("seconds", Double),
    Column("error", Text),
)
samples = Table(
    "samples", metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("label", Integer, nullable=False),
    Column("prediction", Integer, nullable=False),
)
sample_attacks = Table(
    "sample_attacks", metadata,
    Column("run_id", Integer, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("attack", String(100), primary_key=True),
    Column("survived", Boolean, nullable=False),
    ForeignKeyConstraint(["run_id", "idx"], ["samples.run_id", "samples.idx"]),
)
sample_certificates = Table(
    "sample_certificates", metadata,
    Column("run_id", Integer, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("certifier", String(100), primary_key=True),
    Column("certified", Boolean, nullable=False),
    Column("radius", Double),
    ForeignKeyConstraint(["run_id", "idx"], ["samples.run_id", "samples.idx"]),
)


def upgrade_1_to_2(conn: Connection) -> None:
    """Schema 1 → 2: ``runs.plugin`` becomes ``runs.trainer``; the ``metrics`` name/value rows become typed results.

    Attack labels and component options come from each run's stored
    configuration (where schema 1 kept them), the number of attacked samples
    from the per-sample rows, and certified radii's medians from the
    per-sample certificates; times per component were not recorded before.
    """
    conn.execute(text("ALTER TABLE runs RENAME COLUMN plugin TO trainer"))
    for table in (results, attack_results, certifier_results):
        table.create(conn)
    metrics: dict[int, dict[str, float]] = {}
    for run_id, name, value in conn.execute(text("SELECT run_id, name, value FROM metrics")):
        metrics.setdefault(run_id, {})[name] = value
    for run_id, m in sorted(metrics.items()):
        config = conn.execute(select(runs.c.config).where(runs.c.id == run_id)).scalar_one() or {}
        evaluation = config.get("evaluation", {}) if isinstance(config, dict) else {}
        attackers = {a.get("name"): a for a in evaluation.get("attackers", []) if isinstance(a, dict)}
        certifiers = {c.get("name"): c for c in evaluation.get("certifiers", []) if isinstance(c, dict)}
        n = int(m.get("eval_samples", 0))
        correct = conn.execute(
            text("SELECT count(*) FROM samples WHERE run_id = :r AND label = prediction"), {"r": run_id}
        ).scalar_one()
        per = {kind: {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(kind + "/")}
               for kind in ("robust_accuracy", "certified_accuracy", "certified_samples", "average_radius")}
        conn.execute(insert(results).values(
            run_id=run_id, eval_samples=n, clean_accuracy=m.get("clean_accuracy", 0.0),
            robust_accuracy=m.get("robust_accuracy"), certified_accuracy=m.get("certified_accuracy"),
            not_applicable={name: "not recorded (a schema-1 run)" for name in certifiers if name not in per["certified_accuracy"]},
        ))
        for name, accuracy in sorted(per["robust_accuracy"].items()):
            spec = attackers.get(name, {})
            conn.execute(insert(attack_results).values(
                run_id=run_id, attack=name, label=spec.get("label", name), options=spec.get("options", {}),
                accuracy=accuracy, attacked=correct, seconds=None, error=None,
            ))
        for name, accuracy in sorted(per["certified_accuracy"].items()):
            radii = sorted(r for (r,) in conn.execute(
                text("SELECT radius FROM sample_certificates WHERE run_id = :r AND certifier = :c AND radius IS NOT NULL"),
                {"r": run_id, "c": name},
            ))
            median = None
            if radii:
                # torch.median's convention, as the evaluation computes it now: the lower of the two middle values.
                median = radii[(len(radii) - 1) // 2]
            mean = per["average_radius"].get(name)
            conn.execute(insert(certifier_results).values(
                run_id=run_id, certifier=name, options=certifiers.get(name, {}).get("options", {}), accuracy=accuracy,
                samples=int(per["certified_samples"].get(name, n)), mean_radius=mean,
                median_radius=median if mean is not None else None, seconds=None, error=None,
            ))
    # The configuration as schema 2 writes it: the trainer named once (schema 1 kept "plugin" beside "trainer"),
    # and only the certifiers that ran, with why the others did not.
    for run_id, config in conn.execute(select(runs.c.id, runs.c.config)).all():
        if not isinstance(config, dict):
            continue
        config = dict(config)
        config.pop("plugin", None)
        evaluation = config.get("evaluation")
        ran = {k.split("/", 1)[1] for k in metrics.get(run_id, {}) if k.startswith("certified_accuracy/")}
        if isinstance(evaluation, dict) and run_id in metrics and isinstance(evaluation.get("certifiers"), list):
            listed = [c for c in evaluation["certifiers"] if isinstance(c, dict)]
            evaluation = {**evaluation, "certifiers": [c for c in listed if c.get("name") in ran]}
            evaluation["not_applicable"] = {c.get("name"): "not recorded (a schema-1 run)" for c in listed if c.get("name") not in ran}
            config["evaluation"] = evaluation
        conn.execute(update(runs).where(runs.c.id == run_id).values(config=config))
    conn.execute(text("DROP TABLE metrics"))
    conn.execute(update(schema_meta).values(version=VERSION))
