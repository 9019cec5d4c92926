"""The SQLAlchemy backend of :class:`~harness.store.Store`; reach it through :func:`~harness.store.open_store`.

One ``runs`` row per run; once it finished, its evaluation summary in
``results``, one row per attack in ``attack_results`` and per certifier that
ran in ``certifier_results``, one ``samples`` row per evaluated test sample,
and one row per (sample, attack) in ``sample_attacks`` and per (sample,
certifier) in ``sample_certificates``. ``schema_meta`` holds the schema
version; :data:`_MIGRATIONS` upgrades older databases one version at a time,
so a later schema change goes there, with a frozen database of the old version
kept in the tests (``tests/store/data/``).

Schema history: 1, the first; 2, ``runs.plugin`` renamed ``trainer`` (one word
for a training method) and the ``metrics`` name/value table (names like
``certified_accuracy/crown``) replaced by the typed ``results``,
``attack_results`` and ``certifier_results`` tables.

On SQLite, SQLAlchemy emits ``BEGIN`` itself instead of the ``sqlite3``
module (whose legacy mode does not begin before DDL or SELECT), so schema
creation and migrations are transactional; writes begin ``IMMEDIATE`` so that
a second writer waits on the busy timeout instead of failing on a lock upgrade.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Connection,
    DateTime,
    Dialect,
    Double,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, CursorResult, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from harness.errors import HarnessError, UsageError, one_line
from harness.results import AttackResult, CertifierResult, EvaluationResult, RadiusStats, SampleResult
from harness.store import FAILED, FINISHED, INTERRUPTED, RUNNING, STATUSES, RunInfo, RunRecord, Store
from harness.threat import EPS_REL_TOL, same_eps

#: The schema this code writes. Bump it with a migration in :data:`_MIGRATIONS`.
SCHEMA_VERSION = 2

_BUSY_TIMEOUT_S = 30
_BEGIN = "harness_sqlite_begin"  # execution option: the statement that begins a SQLite transaction


class _UtcDateTime(TypeDecorator[datetime]):
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


class _Base(DeclarativeBase):
    pass


def _table(row_class: type[_Base]) -> Table:
    """The Core table of a mapped class (typed as such, for Core inserts and updates)."""
    return cast(Table, row_class.__table__)


class SchemaMeta(_Base):
    __tablename__ = "schema_meta"
    __table_args__ = (CheckConstraint("id = 1", name="ck_schema_meta_one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class RunRow(_Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="ck_runs_status"),
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
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    device: Mapped[str] = mapped_column(String(200))
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(_UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(_UtcDateTime)
    train_seconds: Mapped[float | None] = mapped_column(Double)
    eval_seconds: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)


class ResultRow(_Base):
    """The evaluation summary of a finished run."""

    __tablename__ = "results"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    eval_samples: Mapped[int] = mapped_column(Integer)
    clean_accuracy: Mapped[float] = mapped_column(Double)
    robust_accuracy: Mapped[float | None] = mapped_column(Double)
    certified_accuracy: Mapped[float | None] = mapped_column(Double)
    #: Certifier → why it did not apply to the model.
    not_applicable: Mapped[dict[str, str]] = mapped_column(JSON)


class AttackResultRow(_Base):
    __tablename__ = "attack_results"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    attack: Mapped[str] = mapped_column(String(100), primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    accuracy: Mapped[float | None] = mapped_column(Double)
    attacked: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)


class CertifierResultRow(_Base):
    __tablename__ = "certifier_results"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    certifier: Mapped[str] = mapped_column(String(100), primary_key=True)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    accuracy: Mapped[float | None] = mapped_column(Double)
    samples: Mapped[int] = mapped_column(Integer)
    mean_radius: Mapped[float | None] = mapped_column(Double)
    median_radius: Mapped[float | None] = mapped_column(Double)
    seconds: Mapped[float | None] = mapped_column(Double)
    error: Mapped[str | None] = mapped_column(Text)


class SampleRow(_Base):
    __tablename__ = "samples"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[int] = mapped_column(Integer)
    prediction: Mapped[int] = mapped_column(Integer)


class AttackRow(_Base):
    __tablename__ = "sample_attacks"
    __table_args__ = (ForeignKeyConstraint(["run_id", "idx"], ["samples.run_id", "samples.idx"]),)

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    attack: Mapped[str] = mapped_column(String(100), primary_key=True)
    survived: Mapped[bool] = mapped_column(Boolean)


class CertificateRow(_Base):
    __tablename__ = "sample_certificates"
    __table_args__ = (ForeignKeyConstraint(["run_id", "idx"], ["samples.run_id", "samples.idx"]),)

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    certifier: Mapped[str] = mapped_column(String(100), primary_key=True)
    certified: Mapped[bool] = mapped_column(Boolean)
    radius: Mapped[float | None] = mapped_column(Double)


def _migrate_1_to_2(conn: Connection) -> None:
    """Schema 1 → 2: ``runs.plugin`` becomes ``runs.trainer``; the ``metrics`` name/value rows become typed results.

    Attack labels and component options come from each run's stored
    configuration (where schema 1 kept them), the number of attacked samples
    from the per-sample rows, and certified radii's medians from the
    per-sample certificates; times per component were not recorded before.
    """
    conn.execute(text("ALTER TABLE runs RENAME COLUMN plugin TO trainer"))
    for table in (ResultRow, AttackResultRow, CertifierResultRow):
        _table(table).create(conn)
    metrics: dict[int, dict[str, float]] = {}
    for run_id, name, value in conn.execute(text("SELECT run_id, name, value FROM metrics")):
        metrics.setdefault(run_id, {})[name] = value
    for run_id, m in sorted(metrics.items()):
        config = conn.execute(select(RunRow.config).where(RunRow.id == run_id)).scalar_one() or {}
        evaluation = config.get("evaluation", {}) if isinstance(config, dict) else {}
        attackers = {a.get("name"): a for a in evaluation.get("attackers", []) if isinstance(a, dict)}
        certifiers = {c.get("name"): c for c in evaluation.get("certifiers", []) if isinstance(c, dict)}
        n = int(m.get("eval_samples", 0))
        correct = conn.execute(
            text("SELECT count(*) FROM samples WHERE run_id = :r AND label = prediction"), {"r": run_id}
        ).scalar_one()
        per = {kind: {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(kind + "/")}
               for kind in ("robust_accuracy", "certified_accuracy", "certified_samples", "average_radius")}
        conn.execute(insert(_table(ResultRow)).values(
            run_id=run_id, eval_samples=n, clean_accuracy=m.get("clean_accuracy", 0.0),
            robust_accuracy=m.get("robust_accuracy"), certified_accuracy=m.get("certified_accuracy"),
            not_applicable={name: "not recorded (a schema-1 run)" for name in certifiers if name not in per["certified_accuracy"]},
        ))
        for name, accuracy in sorted(per["robust_accuracy"].items()):
            spec = attackers.get(name, {})
            conn.execute(insert(_table(AttackResultRow)).values(
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
            conn.execute(insert(_table(CertifierResultRow)).values(
                run_id=run_id, certifier=name, options=certifiers.get(name, {}).get("options", {}), accuracy=accuracy,
                samples=int(per["certified_samples"].get(name, n)), mean_radius=mean,
                median_radius=median if mean is not None else None, seconds=None, error=None,
            ))
    # The configuration as schema 2 writes it: the trainer named once (schema 1 kept "plugin" beside "trainer"),
    # and only the certifiers that ran, with why the others did not.
    for run_id, config in conn.execute(select(RunRow.id, RunRow.config)).all():
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
        conn.execute(update(_table(RunRow)).where(RunRow.id == run_id).values(config=config))
    conn.execute(text("DROP TABLE metrics"))


#: ``k -> upgrade from schema k to k + 1``, run inside the transaction that opens the database.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_1_to_2}


class SqlStore(Store):
    """A :class:`~harness.store.Store` in any database SQLAlchemy reaches; SQLite by default."""

    def __init__(self, engine: Engine, name: str) -> None:
        """Wrap an engine whose schema is ready; use :meth:`open`. ``name`` is how errors refer to it."""
        self._engine = engine
        self._writer = engine.execution_options(**{_BEGIN: "BEGIN IMMEDIATE"})
        self._name = name

    @classmethod
    def open(cls, url: str) -> SqlStore:
        """Open the database at ``url`` (a SQLAlchemy URL, or a file path meaning SQLite), creating or upgrading its schema.

        Every failure is a one-line :class:`UsageError` naming ``url``.
        """
        name, sa_url = _resolve(url)
        engine = _create_engine(name, sa_url)
        try:
            _prepare_schema(engine, name)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise UsageError(f"cannot open database {name!r}: {_one_line(exc)}") from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, name)

    # -- writes ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """The one scope every write goes through: commit at the end, roll back on any exception."""
        session = Session(self._writer)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def create_run(self, info: RunInfo) -> int:
        row = RunRow(
            trainer=info.trainer,
            dataset=info.dataset,
            norm=str(info.norm),
            eps=float(info.eps),
            preset=info.preset,
            seed=int(info.seed),
            epochs=None if info.epochs is None else int(info.epochs),
            status=RUNNING,
            config=_plain_json("config", info.config),
            device=info.device,
            environment=_plain_json("environment", info.environment),
            created_at=_now(),
        )
        with self._write() as session:
            session.add(row)
            session.flush()
            run_id = row.id
        return run_id

    def record_results(
        self,
        run_id: int,
        *,
        result: EvaluationResult,
        samples: list[SampleResult],
        config: dict[str, Any],
        train_seconds: float,
        eval_seconds: float,
    ) -> None:
        """Store everything and mark the run ``finished`` in one transaction.

        Raises UsageError if there is no such run, HarnessError if it is not ``running``
        (a finished run is never rewritten) or a number is not finite. Any failure leaves
        the run as it was.
        """
        _check_finite(run_id, result)
        summary = {
            "run_id": run_id,
            "eval_samples": int(result.samples),
            "clean_accuracy": float(result.clean_accuracy),
            "robust_accuracy": _float(result.robust_accuracy),
            "certified_accuracy": _float(result.certified_accuracy),
            "not_applicable": dict(result.not_applicable),
        }
        attack_rows = [
            {"run_id": run_id, "attack": a.name, "label": a.label, "options": _plain_json("attack options", a.options),
             "accuracy": _float(a.accuracy), "attacked": int(a.attacked), "seconds": _float(a.seconds), "error": a.error}
            for a in result.attacks
        ]
        certifier_rows = [
            {"run_id": run_id, "certifier": c.name, "options": _plain_json("certifier options", c.options),
             "accuracy": _float(c.accuracy), "samples": int(c.samples),
             "mean_radius": None if c.radius is None else float(c.radius.mean),
             "median_radius": None if c.radius is None else float(c.radius.median),
             "seconds": _float(c.seconds), "error": c.error}
            for c in result.certifiers
        ]
        sample_rows: list[dict[str, Any]] = []
        sample_attack_rows: list[dict[str, Any]] = []
        certificate_rows: list[dict[str, Any]] = []
        for s in samples:
            idx = int(s.index)
            sample_rows.append({"run_id": run_id, "idx": idx, "label": int(s.label), "prediction": int(s.prediction)})
            for attack, survived in s.attacks.items():
                sample_attack_rows.append({"run_id": run_id, "idx": idx, "attack": attack, "survived": bool(survived)})
            for certifier, (certified, radius) in s.certificates.items():
                certificate_rows.append(
                    {
                        "run_id": run_id,
                        "idx": idx,
                        "certifier": certifier,
                        "certified": bool(certified),
                        "radius": None if radius is None else float(radius),
                    }
                )
        with self._write() as session:
            # The status change goes first: it takes the write lock and refuses a run that is not running.
            self._end_running(
                session,
                run_id,
                "record its results",
                status=FINISHED,
                finished_at=_now(),
                train_seconds=float(train_seconds),
                eval_seconds=float(eval_seconds),
                error=None,
                config=_plain_json("config", config),
            )
            # Core inserts with a list of dicts: one executemany per table.
            for table, rows in (
                (ResultRow, [summary]),
                (AttackResultRow, attack_rows),
                (CertifierResultRow, certifier_rows),
                (SampleRow, sample_rows),
                (AttackRow, sample_attack_rows),
                (CertificateRow, certificate_rows),
            ):
                if rows:
                    session.execute(insert(_table(table)), rows)

    def mark_ended(self, run_id: int, status: str, error: str, *, train_seconds: float | None = None) -> None:
        """Set ``failed`` or ``interrupted``, the error and the end time; ``train_seconds`` only if given.

        Only a ``running`` run can be ended: HarnessError otherwise, UsageError if there is none.
        """
        if status not in (FAILED, INTERRUPTED):
            raise ValueError(f"a run can only be marked {FAILED!r} or {INTERRUPTED!r}, not {status!r}")
        values: dict[str, Any] = {"status": status, "error": error, "finished_at": _now()}
        if train_seconds is not None:
            values["train_seconds"] = float(train_seconds)
        with self._write() as session:
            self._end_running(session, run_id, f"mark it {status}", **values)

    def _end_running(self, session: Session, run_id: int, doing: str, **values: Any) -> None:
        """Update a ``running`` run, or raise naming why it could not be."""
        statement = update(_table(RunRow)).where(RunRow.id == run_id, RunRow.status == RUNNING).values(**values)
        if cast(CursorResult[Any], session.execute(statement)).rowcount == 1:
            return
        status = session.scalar(select(RunRow.status).where(RunRow.id == run_id))
        if status is None:
            raise self._no_run(run_id)
        raise HarnessError(f"run {run_id} in {self._name} is {status}, not {RUNNING}: cannot {doing}")

    # -- reads ----------------------------------------------------------------------------------

    def get_run(self, run_id: int) -> RunRecord:
        with Session(self._engine) as session:
            row = session.get(RunRow, run_id)
            if row is None:
                raise self._no_run(run_id)
            return _record(row, _results(session, [run_id]).get(run_id))

    def list_runs(
        self,
        *,
        status: str | None = None,
        dataset: str | None = None,
        norm: str | None = None,
        eps: float | None = None,
    ) -> list[RunRecord]:
        conditions = []
        if status is not None:
            conditions.append(RunRow.status == status)
        if dataset is not None:
            conditions.append(RunRow.dataset == dataset)
        if norm is not None:
            conditions.append(RunRow.norm == str(norm))
        if eps is not None:
            # A slightly wider range in SQL (it can use the index), then the exact tolerance below.
            slack = 2 * EPS_REL_TOL * abs(eps)
            conditions.append(RunRow.eps.between(eps - slack, eps + slack))
        with Session(self._engine) as session:
            runs = list(session.scalars(select(RunRow).where(*conditions).order_by(RunRow.id)).all())
            if eps is not None:
                runs = [r for r in runs if same_eps(r.eps, eps)]
            results = _results(session, [r.id for r in runs])
            return [_record(r, results.get(r.id)) for r in runs]

    def samples(self, run_id: int) -> list[SampleResult]:
        """The per-sample results, by sample index; attacks and certifiers by name. UsageError if there is no such run."""
        with Session(self._engine) as session:
            if session.get(RunRow, run_id) is None:
                raise self._no_run(run_id)
            by_index: dict[int, SampleResult] = {}
            sample_rows = session.execute(
                select(SampleRow.idx, SampleRow.label, SampleRow.prediction)
                .where(SampleRow.run_id == run_id)
                .order_by(SampleRow.idx)
            )
            for idx, label, prediction in sample_rows:
                by_index[idx] = SampleResult(index=idx, label=label, prediction=prediction)
            attack_rows = session.execute(
                select(AttackRow.idx, AttackRow.attack, AttackRow.survived)
                .where(AttackRow.run_id == run_id)
                .order_by(AttackRow.idx, AttackRow.attack)
            )
            for idx, attack, survived in attack_rows:
                by_index[idx].attacks[attack] = survived
            certificate_rows = session.execute(
                select(CertificateRow.idx, CertificateRow.certifier, CertificateRow.certified, CertificateRow.radius)
                .where(CertificateRow.run_id == run_id)
                .order_by(CertificateRow.idx, CertificateRow.certifier)
            )
            for idx, certifier, certified, radius in certificate_rows:
                by_index[idx].certificates[certifier] = (certified, radius)
        return list(by_index.values())

    def close(self) -> None:
        self._engine.dispose()

    def _no_run(self, run_id: int) -> UsageError:
        return UsageError(f"no run with id {run_id} in {self._name}")


# -- opening ----------------------------------------------------------------------------------------


def _resolve(url: str) -> tuple[str, URL]:
    """How errors name the database (the user's string, password hidden), and its SQLAlchemy URL."""
    if "://" in url:
        try:
            sa_url = make_url(url)
        except ArgumentError:
            raise UsageError(f"cannot open database {url!r}: not a valid SQLAlchemy URL") from None
        name = sa_url.render_as_string(hide_password=True)
    else:
        name = url
        sa_url = URL.create("sqlite", database=str(Path(url).expanduser().absolute()))
    if sa_url.get_backend_name() == "sqlite":
        _check_sqlite_file(name, sa_url.database)
    return name, sa_url


def _check_sqlite_file(name: str, database: str | None) -> None:
    """The reasons SQLite would only report as 'unable to open database file', said plainly."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).absolute()
    directory = path.parent

    def fail(reason: str) -> UsageError:
        return UsageError(f"cannot open database {name!r}: {reason}")

    if not directory.exists():
        raise fail(f"directory {directory} does not exist")
    if not directory.is_dir():
        raise fail(f"{directory} is not a directory")
    if path.is_dir():
        raise fail(f"{path} is a directory")
    # SQLite writes a journal beside the file, so the directory must be writable as well as the file.
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise fail(f"{path} is not readable and writable")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise fail(f"directory {directory} is not writable")


def _create_engine(name: str, sa_url: URL) -> Engine:
    sqlite = sa_url.get_backend_name() == "sqlite"
    try:
        engine = create_engine(sa_url, connect_args={"timeout": _BUSY_TIMEOUT_S} if sqlite else {})
    except NoSuchModuleError:
        raise UsageError(f"cannot open database {name!r}: unknown database dialect {sa_url.drivername!r}") from None
    except ImportError as exc:
        raise UsageError(f"cannot open database {name!r}: its driver is not installed ({exc})") from None
    except (ArgumentError, TypeError) as exc:
        raise UsageError(f"cannot open database {name!r}: {_one_line(exc)}") from None
    if sqlite:
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take BEGIN away from the sqlite3 module (see the module docstring); _sqlite_begin emits it.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL lets readers (a leaderboard) run while a run is being recorded; the setting persists in the file.
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN, "BEGIN"))


def _prepare_schema(engine: Engine, name: str) -> None:
    """Create the schema in a new database, refuse a newer one, migrate an older one: one transaction."""
    with engine.execution_options(**{_BEGIN: "BEGIN IMMEDIATE"}).begin() as conn:
        tables = set(inspect(conn).get_table_names())
        if SchemaMeta.__tablename__ not in tables:
            ours = sorted(tables & set(_Base.metadata.tables))
            if ours:
                raise UsageError(
                    f"cannot open database {name!r}: it has table(s) {', '.join(ours)} but no harness schema version"
                )
            _Base.metadata.create_all(conn)
            conn.execute(insert(_table(SchemaMeta)).values(id=1, version=SCHEMA_VERSION))
            return
        version = conn.scalar(select(SchemaMeta.version).where(SchemaMeta.id == 1))
        if version is None:
            raise UsageError(f"cannot open database {name!r}: its schema_meta table holds no version")
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"database {name!r} was written by a newer harness "
                f"(schema {version}, this harness understands up to {SCHEMA_VERSION})"
            )
        for k in range(version, SCHEMA_VERSION):
            if k not in _MIGRATIONS:
                raise UsageError(f"cannot open database {name!r}: no migration from schema {k} to {k + 1}")
            _MIGRATIONS[k](conn)
            conn.execute(update(_table(SchemaMeta)).where(SchemaMeta.id == 1).values(version=k + 1))


# -- helpers ----------------------------------------------------------------------------------------


def _results(session: Session, run_ids: list[int]) -> dict[int, EvaluationResult]:
    """The evaluation results of the given runs (those that have one), in a few queries."""
    if not run_ids:
        return {}
    found: dict[int, EvaluationResult] = {}
    attacks: dict[int, list[AttackResult]] = {}
    certifiers: dict[int, list[CertifierResult]] = {}
    for chunk in (run_ids[i : i + 500] for i in range(0, len(run_ids), 500)):
        for a in session.scalars(select(AttackResultRow).where(AttackResultRow.run_id.in_(chunk)).order_by(AttackResultRow.attack)):
            attacks.setdefault(a.run_id, []).append(
                AttackResult(name=a.attack, label=a.label, options=a.options or {}, accuracy=a.accuracy, attacked=a.attacked,
                             seconds=a.seconds, error=a.error)
            )
        for c in session.scalars(select(CertifierResultRow).where(CertifierResultRow.run_id.in_(chunk)).order_by(CertifierResultRow.certifier)):
            median = c.median_radius if c.median_radius is not None else c.mean_radius
            radius = None if c.mean_radius is None or median is None else RadiusStats(mean=c.mean_radius, median=median)
            certifiers.setdefault(c.run_id, []).append(
                CertifierResult(name=c.certifier, options=c.options or {}, accuracy=c.accuracy, samples=c.samples, radius=radius,
                                seconds=c.seconds, error=c.error)
            )
        for r in session.scalars(select(ResultRow).where(ResultRow.run_id.in_(chunk))):
            found[r.run_id] = EvaluationResult(
                samples=r.eval_samples,
                clean_accuracy=r.clean_accuracy,
                robust_accuracy=r.robust_accuracy,
                certified_accuracy=r.certified_accuracy,
                attacks=tuple(attacks.get(r.run_id, ())),
                certifiers=tuple(certifiers.get(r.run_id, ())),
                not_applicable=dict(r.not_applicable or {}),
            )
    return found


def _record(row: RunRow, result: EvaluationResult | None) -> RunRecord:
    info = RunInfo(
        trainer=row.trainer,
        dataset=row.dataset,
        norm=row.norm,
        eps=row.eps,
        preset=row.preset,
        seed=row.seed,
        epochs=row.epochs,
        config=row.config,
        device=row.device,
        environment=row.environment,
    )
    return RunRecord(
        id=row.id,
        info=info,
        status=row.status,
        created_at=row.created_at,
        finished_at=row.finished_at,
        train_seconds=row.train_seconds,
        eval_seconds=row.eval_seconds,
        error=row.error,
        result=result,
    )


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _check_finite(run_id: int, result: EvaluationResult) -> None:
    """Every number of the result is finite (a non-finite accuracy means a bug upstream): HarnessError naming them."""
    values: dict[str, float | None] = {
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "certified_accuracy": result.certified_accuracy,
    }
    for a in result.attacks:
        values[f"attack {a.name!r} accuracy"] = a.accuracy
    for c in result.certifiers:
        values[f"certifier {c.name!r} accuracy"] = c.accuracy
        if c.radius is not None:
            values[f"certifier {c.name!r} radius"] = c.radius.mean
    bad = sorted(name for name, value in values.items() if value is not None and not math.isfinite(value))
    if bad:
        verb = "is not a finite number" if len(bad) == 1 else "are not finite numbers"
        raise HarnessError(f"run {run_id}: {', '.join(bad)} {verb}; nothing was stored")


def _plain_json(what: str, value: dict[str, Any]) -> dict[str, Any]:
    """``value`` unchanged, after checking it is JSON a strict reader accepts (no NaN or infinity)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the run's {what} is not plain JSON: {exc}") from None
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _one_line(exc: BaseException) -> str:
    """The driver's own message when there is one (without SQLAlchemy's statement and links), on one line."""
    return one_line(exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc)
