"""The SQLAlchemy backend of :class:`~harness.store.Store`; reach it through :func:`~harness.store.open_store`.

One ``runs`` row per run, its metrics in ``metrics``, one ``samples`` row per
evaluated test sample, and one row per (sample, attack) in ``sample_attacks``
and per (sample, certifier) in ``sample_certificates``. ``schema_meta`` holds
the schema version; :data:`_MIGRATIONS` upgrades older databases one version
at a time, so a later schema change goes there (with a frozen database of the
old version kept in the tests).

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
    Text,
    TypeDecorator,
    create_engine,
    event,
    inspect,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from harness.errors import HarnessError, UsageError, one_line
from harness.threat import EPS_REL_TOL, same_eps
from harness.store import FAILED, FINISHED, INTERRUPTED, RUNNING, STATUSES, RunInfo, RunRecord, SampleResult, Store

#: The schema this code writes. Bump it with a migration in :data:`_MIGRATIONS`.
SCHEMA_VERSION = 1

#: ``k -> upgrade from schema k to k + 1``, run inside the transaction that opens the database.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {}

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
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class _Base(DeclarativeBase):
    pass


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
    plugin: Mapped[str] = mapped_column(String(100))
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


class MetricRow(_Base):
    __tablename__ = "metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(Double)


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
            plugin=info.plugin,
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
        metrics: dict[str, float],
        samples: list[SampleResult],
        train_seconds: float,
        eval_seconds: float,
    ) -> None:
        """Store everything and mark the run ``finished`` in one transaction.

        Raises UsageError if there is no such run, HarnessError if it is not ``running``
        (a finished run is never rewritten). Any failure leaves the run as it was.
        """
        bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
        if bad:
            raise HarnessError(f"run {run_id}: metrics {', '.join(bad)} are not finite numbers; nothing was stored")
        metric_rows = [{"run_id": run_id, "name": name, "value": float(value)} for name, value in metrics.items()]
        sample_rows: list[dict[str, Any]] = []
        attack_rows: list[dict[str, Any]] = []
        certificate_rows: list[dict[str, Any]] = []
        for s in samples:
            idx = int(s.index)
            sample_rows.append({"run_id": run_id, "idx": idx, "label": int(s.label), "prediction": int(s.prediction)})
            for attack, survived in s.attacks.items():
                attack_rows.append({"run_id": run_id, "idx": idx, "attack": attack, "survived": bool(survived)})
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
            )
            # Core inserts with a list of dicts: one executemany per table.
            for table, rows in (
                (MetricRow, metric_rows),
                (SampleRow, sample_rows),
                (AttackRow, attack_rows),
                (CertificateRow, certificate_rows),
            ):
                if rows:
                    session.execute(insert(table.__table__), rows)

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
        statement = update(RunRow.__table__).where(RunRow.id == run_id, RunRow.status == RUNNING).values(**values)
        if session.execute(statement).rowcount == 1:
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
            rows = session.execute(select(MetricRow.name, MetricRow.value).where(MetricRow.run_id == run_id))
            return _record(row, {name: value for name, value in rows})

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
            runs = session.scalars(select(RunRow).where(*conditions).order_by(RunRow.id)).all()
            if eps is not None:
                runs = [r for r in runs if same_eps(r.eps, eps)]
            metrics: dict[int, dict[str, float]] = {r.id: {} for r in runs}
            query = select(MetricRow.run_id, MetricRow.name, MetricRow.value).join(RunRow).where(*conditions)
            for run_id, name, value in session.execute(query):
                if run_id in metrics:
                    metrics[run_id][name] = value
            return [_record(r, metrics[r.id]) for r in runs]

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
            conn.execute(insert(SchemaMeta.__table__).values(id=1, version=SCHEMA_VERSION))
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
            conn.execute(update(SchemaMeta.__table__).where(SchemaMeta.id == 1).values(version=k + 1))


# -- helpers ----------------------------------------------------------------------------------------


def _record(row: RunRow, metrics: dict[str, float]) -> RunRecord:
    info = RunInfo(
        plugin=row.plugin,
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
        metrics=metrics,
    )


def _plain_json(what: str, value: dict[str, Any]) -> dict[str, Any]:
    """``value`` unchanged, after checking it is JSON a strict reader accepts (no NaN or infinity)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the run's {what} is not plain JSON: {exc}") from None
    return value


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _one_line(exc: BaseException) -> str:
    """The driver's own message when there is one (without SQLAlchemy's statement and links), on one line."""
    return one_line(exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc)
