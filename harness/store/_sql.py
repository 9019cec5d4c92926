"""The SQLAlchemy backend of :class:`~harness.store.Store`; reach it through :func:`~harness.store.open_store`.

The tables are in :mod:`harness.store._schema`, their revisions in
:mod:`harness.store._migrate`. Opening checks, before anything is written,
that the database is a harness database at a revision this code knows, with
every table and column; an older one is upgraded when that is safe (a SQLite
file, writable, whose write lock is free right now), and refused otherwise
with a line saying to run ``harness db upgrade``.

On SQLite, SQLAlchemy emits ``BEGIN`` itself instead of the ``sqlite3``
module (whose legacy mode does not begin before DDL or SELECT), so schema
creation and upgrades are transactional; writes begin ``IMMEDIATE`` so that
a second writer waits on the busy timeout instead of failing on a lock
upgrade. A read-only store opens the file with ``mode=ro`` (``immutable=1``
where even that cannot work: a write-ahead-logged file on read-only media),
takes no lock a writer waits on, and waits on no writer (write-ahead logging,
which every writable open switches the file to).

Rows are read through :func:`_checked`, which converts each value itself, so
that one unreadable row (invalid JSON, a text where a number belongs) leaves
its run out of a listing, with a warning, instead of failing the query.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, quote_plus

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Double,
    Engine,
    Float,
    Integer,
    NullPool,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.engine import URL, CursorResult, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType, TypeEngine

from harness.errors import HarnessError, UsageError, one_line
from harness.results import (
    OUTCOMES,
    RADIUS_METHODS,
    AttackResult,
    CertifierResult,
    Cost,
    EvaluationResult,
    GradientMasking,
    RadiusStats,
    SampleResult,
)
from harness.store import (
    EXTERNAL,
    FAILED,
    FINISHED,
    INTERRUPTED,
    ORIGINS,
    RUNNING,
    STATUSES,
    EvaluationRecord,
    Revision,
    RunInfo,
    RunRecord,
    Store,
    StoreGone,
    StoreUnavailable,
    Upgrade,
    WeightsFile,
    _migrate,
    best_evaluation,
)
from harness.store._schema import (
    LEGACY_VERSION,
    REVISION,
    AttackResultRow,
    AttackRow,
    CertificateRow,
    CertifierResultRow,
    EvaluationRow,
    ResultRow,
    RunRow,
    SampleRow,
    SchemaMeta,
    metadata,
    table,
)
from harness.threat import EPS_REL_TOL, same_eps

_BUSY_TIMEOUT_S = 30.0
#: A read-only store waits this long at most, and only on what SQLite itself is doing (a log recovery), never on a writer.
_READ_TIMEOUT_S = 5.0
#: The PostgreSQL advisory lock that schema creation and upgrades hold (any fixed number: "harness" in ASCII).
_SCHEMA_LOCK = 0x68_61_72_6E_65_73_73
_BEGIN = "harness_sqlite_begin"  # execution option: the statement that begins a SQLite transaction


class SqlStore(Store):
    """A :class:`~harness.store.Store` in any database SQLAlchemy reaches; SQLite by default."""

    def __init__(self, engine: Engine, name: str, *, readonly: bool = False, path: Path | None = None) -> None:
        """Wrap an engine whose schema is ready; use :meth:`open`. ``name`` is how errors refer to it; ``path`` its SQLite file."""
        self._engine = engine
        self._writer = engine.execution_options(**{_BEGIN: "BEGIN IMMEDIATE"})
        self._name = name
        self.name = name  # how messages name the database (its password hidden)
        self._readonly = readonly
        self._path = path
        self.warnings: list[str] = []
        self._identity = _file_identity(path)
        self._database_id = self._read_database_id()

    @classmethod
    def open(cls, url: str, *, readonly: bool = False) -> SqlStore:
        """Open the database at ``url`` (a SQLAlchemy URL, or a file path meaning SQLite); see :func:`harness.store.open_store`.

        Every failure is a one-line :class:`UsageError` naming ``url`` (its password hidden).
        """
        target = _Target.resolve(url, readonly=readonly)
        notes: list[str] = []
        engine = target.engine(readonly=readonly)
        try:
            revision = _read(engine, target.name, _migrate.revision_of)
            if revision is None or revision < REVISION:
                if readonly and revision is None:
                    raise UsageError(f"cannot open database {target.name!r}: it is empty (harness run creates the schema)")
                if target.path is None and revision is not None:
                    raise _run_db_upgrade(target, "it is a server database, to be backed up first")
                done = _upgrade_if_safe(target, automatic=True, empty=revision is None)
                if done.from_revision != done.to_revision:
                    notes.append(str(done))
            _read(engine, target.name, _migrate.check_tables)
            if target.path is not None and not readonly:
                _use_wal(engine)
            store = cls(engine, target.name, readonly=readonly, path=target.path)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise UsageError(f"cannot open database {target.name!r}: {target.hide(_one_line(exc))}") from None
        except BaseException:
            engine.dispose()
            raise
        store.warnings.extend(notes)
        return store

    # -- writes ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """The one scope every write goes through: commit at the end, roll back on any exception.

        It checks first that the database is still the one opened (:class:`StoreGone`), and turns what the
        database could not do now (busy, full, I/O, connection lost) into :class:`StoreUnavailable`.
        """
        if self._readonly:
            raise HarnessError(f"database {self._name!r} was opened read-only: cannot write to it")
        self._check_file()
        session = Session(self._writer)
        try:
            self._check_database_id(session)
            yield session
            session.commit()
        except DBAPIError as exc:
            _rollback(session)
            if _unavailable(exc):
                raise StoreUnavailable(f"cannot write to database {self._name!r}: {self._cause(exc)}") from exc
            raise
        except BaseException:
            _rollback(session)
            raise
        finally:
            session.close()

    def create_run(self, info: RunInfo) -> int:
        if info.origin not in ORIGINS:
            raise ValueError(f"a run's origin is one of {', '.join(ORIGINS)}, not {info.origin!r}")
        now = _now()
        return self._insert_run(info, status=RUNNING, created_at=now, heartbeat_at=now)

    def create_external_run(self, info: RunInfo, weights: WeightsFile) -> int:
        now = _now()
        return self._insert_run(info, status=FINISHED, created_at=now, finished_at=now, origin=EXTERNAL, **_weights(weights))

    def _insert_run(self, info: RunInfo, **values: Any) -> int:
        row = RunRow(
            trainer=info.trainer,
            dataset=info.dataset,
            norm=str(info.norm),
            eps=float(info.eps),
            preset=info.preset,
            seed=int(info.seed),
            epochs=None if info.epochs is None else int(info.epochs),
            config=_plain_json("config", info.config),
            device=info.device,
            environment=_plain_json("environment", info.environment),
            origin=info.origin,
            training={},
            resumes=0,
        )
        for key, value in values.items():
            setattr(row, key, value)
        _check_lengths(RunRow, {c.name: getattr(row, c.name, None) for c in table(RunRow).columns})
        with self._write() as session:
            session.add(row)
            session.flush()
            run_id = row.id
        return run_id

    def heartbeat(self, run_id: int, *, checkpoint: dict[str, Any] | None = None) -> None:
        """Set the heartbeat to now (and the last checkpoint when given); HarnessError if the run is not ``running``."""
        values: dict[str, Any] = {"heartbeat_at": _now()}
        if checkpoint is not None:
            values["checkpoint"] = _plain_json("checkpoint", checkpoint)
        with self._write() as session:
            self._update(session, run_id, (RUNNING,), "record a heartbeat", **values)

    def record_training(
        self,
        run_id: int,
        *,
        train_seconds: float,
        weights: WeightsFile | None,
        training: dict[str, Any],
        config: dict[str, Any],
    ) -> None:
        values = {
            "train_seconds": float(train_seconds),
            "training": _plain_json("training", training),
            "config": _plain_json("config", config),
            "heartbeat_at": _now(),
            **_weights(weights),
        }
        with self._write() as session:
            self._update(session, run_id, (RUNNING,), "record its training", **values)

    def record_evaluation(
        self,
        run_id: int,
        *,
        result: EvaluationResult,
        samples: list[SampleResult],
        config: dict[str, Any],
        environment: dict[str, Any],
        seconds: float,
        run_config: dict[str, Any] | None = None,
        finish: bool = False,
    ) -> int:
        """Store the evaluation, its result and its per-sample results in one transaction; return its id.

        Raises UsageError if there is no such run, HarnessError if the run is not ``running``
        (``finish=True``) or ``finished`` (``finish=False``: a re-evaluation), or if a number is not
        finite. Any failure leaves the run as it was.
        """
        if run_config is not None and not finish:
            raise ValueError("run_config replaces a run's configuration when the evaluation finishes it: give finish=True")
        _check_finite(run_id, result)
        evaluation = EvaluationRow(
            run_id=run_id,
            created_at=_now(),
            seconds=float(seconds),
            config=_plain_json("evaluation config", config),
            environment=_plain_json("evaluation environment", environment),
        )
        rows = _result_rows(result, samples)
        with self._write() as session:
            # The run's row goes first: on SQLite the write lock is already held; elsewhere it locks the row.
            if finish:
                values: dict[str, Any] = {"status": FINISHED, "finished_at": _now(), "heartbeat_at": _now(), "error": None}
                if run_config is not None:
                    values["config"] = _plain_json("config", run_config)
                self._update(session, run_id, (RUNNING,), "record its evaluation and finish it", **values)
            else:
                self._update(session, run_id, (FINISHED,), "record another evaluation of it")
            session.add(evaluation)
            session.flush()
            evaluation_id = evaluation.id
            # Core inserts with a list of dicts: one executemany per table.
            for row_class, dicts in rows:
                if dicts:
                    session.execute(insert(table(row_class)), [{"evaluation_id": evaluation_id, **d} for d in dicts])
        return evaluation_id

    def resume_run(self, run_id: int, environment: dict[str, Any]) -> RunRecord:
        values = {
            "status": RUNNING,
            "environment": _plain_json("environment", environment),
            "resumes": RunRow.resumes + 1,
            "error": None,
            "finished_at": None,
            "heartbeat_at": _now(),
        }
        with self._write() as session:
            status = session.scalar(select(RunRow.status).where(RunRow.id == run_id))
            if status is None:
                raise self._no_run(run_id)
            if status == FINISHED:
                raise UsageError(f"run {run_id} in {self._name} is finished: there is nothing to resume (harness eval {run_id} evaluates it again)")
            self._update(session, run_id, (INTERRUPTED, FAILED, RUNNING), "resume it", **values)
        return self.get_run(run_id)

    def mark_ended(self, run_id: int, status: str, error: str, *, train_seconds: float | None = None) -> None:
        """Set ``failed`` or ``interrupted``, the error and the end time; ``train_seconds`` only if given.

        Only a ``running`` run can be ended: HarnessError otherwise, UsageError if there is none.
        """
        if status not in (FAILED, INTERRUPTED):
            raise ValueError(f"a run can only be marked {FAILED!r} or {INTERRUPTED!r}, not {status!r}")
        values: dict[str, Any] = {"status": status, "error": _text(error), "finished_at": _now()}
        if train_seconds is not None:
            values["train_seconds"] = float(train_seconds)
        with self._write() as session:
            self._update(session, run_id, (RUNNING,), f"mark it {status}", **values)

    def _update(self, session: Session, run_id: int, statuses: tuple[str, ...], doing: str, **values: Any) -> None:
        """Update a run whose status is one of ``statuses`` (only check it when there is nothing to set), or raise naming why not."""
        if values:
            statement = update(table(RunRow)).where(RunRow.id == run_id, RunRow.status.in_(statuses)).values(**values)
            if cast(CursorResult[Any], session.execute(statement)).rowcount == 1:
                return
        status = session.scalar(select(RunRow.status).where(RunRow.id == run_id))
        if status is None:
            raise self._no_run(run_id)
        if not values and status in statuses:
            return
        raise HarnessError(f"run {run_id} in {self._name} is {status}, not {' or '.join(statuses)}: cannot {doing}")

    # -- reads ----------------------------------------------------------------------------------

    def get_run(self, run_id: int) -> RunRecord:
        with self._reading() as session:
            found = self._load(session, [RunRow.id == run_id], warn=False)
        if not found:
            raise self._no_run(run_id)
        record, problems = found[0]
        if record is None:
            raise HarnessError(f"run {run_id} in {self._name} cannot be read: {problems}")
        return record

    def list_runs(
        self,
        *,
        status: str | None = None,
        dataset: str | None = None,
        norm: str | None = None,
        eps: float | None = None,
    ) -> list[RunRecord]:
        conditions: list[ColumnElement[bool]] = []
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
        with self._reading() as session:
            found = self._load(session, conditions, warn=True)
        records = []
        for record, _ in found:
            if record is None:
                continue
            if eps is None or same_eps(record.info.eps, eps):
                records.append(record)
        return records

    def _load(self, session: Session, conditions: list[ColumnElement[bool]], *, warn: bool) -> list[tuple[RunRecord | None, str]]:
        """The runs matching ``conditions`` by id, each a record or None with what is wrong (``warn``: also added to :attr:`warnings`)."""
        runs = list(_checked(session, table(RunRow), conditions, [RunRow.id]))
        evaluations = _evaluations(session, [values["id"] for values, _ in runs])
        found: list[tuple[RunRecord | None, str]] = []
        for values, problems in runs:
            run_id = values["id"]
            records: list[EvaluationRecord] = []
            for evaluation, more in evaluations.get(run_id, []):
                problems += more
                if evaluation is not None:
                    records.append(evaluation)
            for column, known in (("status", STATUSES), ("origin", ORIGINS)):
                if column in values and values[column] not in known:
                    problems.append(f"runs.{column} holds {_short(values[column])}, not one of {', '.join(known)}")
            if problems:
                said = "; ".join(problems)
                warning = f"run {run_id} in {self._name} cannot be read and is left out: {said}"
                if warn and warning not in self.warnings:
                    self.warnings.append(warning)
                found.append((None, said))
                continue
            found.append((_record(values, records), ""))
        return found

    def samples(self, run_id: int, evaluation_id: int | None = None) -> list[SampleResult]:
        """The per-sample results of an evaluation (default: the run's best), by sample index; attacks and certifiers by name.

        UsageError if there is no such run, or the evaluation is not one of the run's.
        """
        record = self.get_run(run_id)
        if evaluation_id is None:
            if record.best is None:
                return []
            evaluation_id = record.best.id
        elif evaluation_id not in [e.id for e in record.evaluations]:
            theirs = ", ".join(str(e.id) for e in record.evaluations) or "none"
            raise UsageError(f"run {run_id} in {self._name} has no evaluation {evaluation_id} (its evaluations: {theirs})")
        try:
            with self._reading() as session:
                return _samples(session, evaluation_id)
        except (ValueError, TypeError, KeyError) as exc:
            raise HarnessError(
                f"the per-sample results of run {run_id} (evaluation {evaluation_id}) in {self._name} cannot be read: {one_line(exc)}"
            ) from None

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        """A read-only session; what the database could not do now is a :class:`StoreUnavailable`."""
        session = Session(self._engine)
        try:
            yield session
        except DBAPIError as exc:
            if _unavailable(exc):
                raise StoreUnavailable(f"cannot read database {self._name!r}: {self._cause(exc)}") from exc
            raise StoreGone(f"database {self._name!r} cannot be read any more: {self._cause(exc)}") from exc
        finally:
            session.close()

    # -- is it still there? --------------------------------------------------------------------

    def check_alive(self) -> None:
        self._check_file()
        with Session(self._engine) as session:
            try:
                self._check_database_id(session)
            except DBAPIError as exc:  # what _check_database_id lets through: the database could not answer now
                raise StoreUnavailable(f"cannot read database {self._name!r}: {self._cause(exc)}") from exc

    def _check_file(self) -> None:
        if self._path is None:
            return
        identity = _file_identity(self._path)
        if identity is None:
            raise StoreGone(f"database {self._name!r} is gone: its file {self._path} was deleted")
        if identity != self._identity:
            raise StoreGone(f"database {self._name!r} is gone: its file {self._path} was replaced by another file")

    def _check_database_id(self, session: Session) -> None:
        try:
            found = session.scalar(select(SchemaMeta.database_id).where(SchemaMeta.id == 1))
        except DBAPIError as exc:
            if _unavailable(exc):
                raise
            raise StoreGone(f"database {self._name!r} is no longer a harness database: {self._cause(exc)}") from exc
        if found != self._database_id:
            raise StoreGone(f"database {self._name!r} was replaced by another database (its id is {found!r}, not {self._database_id!r})")

    def _read_database_id(self) -> str | None:
        with Session(self._engine) as session:
            return session.scalar(select(SchemaMeta.database_id).where(SchemaMeta.id == 1))

    def close(self) -> None:
        self._engine.dispose()

    def _no_run(self, run_id: int) -> UsageError:
        return UsageError(f"no run with id {run_id} in {self._name}")

    def _cause(self, exc: BaseException) -> str:
        cause = _one_line(exc)
        if isinstance(exc, OperationalError) and ("locked" in cause or "lock timeout" in cause):
            cause += f" (busy for more than {_BUSY_TIMEOUT_S:g} s)"
        return cause


# -- reading rows one value at a time ---------------------------------------------------------------


def _checked(
    session: Session, source: Table, conditions: list[ColumnElement[bool]], order_by: list[Any]
) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Each row's values, converted and type-checked one by one, and what could not be (``table.column ...``)."""
    dialect = session.get_bind().dialect
    columns = list(source.columns)
    statement = select(*(type_coerce(c, NullType()).label(c.name) for c in columns)).where(*conditions).order_by(*order_by)
    rows = session.connection().execute(statement)
    # The driver's type of each column (some dialects' conversions depend on it), then SQLAlchemy's conversion for it.
    driver_types = [d[1] for d in rows.cursor.description] if rows.cursor is not None and rows.cursor.description else [None] * len(columns)
    converters: list[Callable[[Any], Any] | None] = [
        c.type.dialect_impl(dialect).result_processor(dialect, driver_type) for c, driver_type in zip(columns, driver_types)
    ]
    for raw in rows:
        values: dict[str, Any] = {}
        problems: list[str] = []
        for column, convert, value in zip(columns, converters, raw):
            where = f"{source.name}.{column.name}"
            if value is None:
                if not column.nullable:
                    problems.append(f"{where} is empty")
                values[column.name] = None
                continue
            try:
                converted = convert(value) if convert is not None else value
            except (ValueError, TypeError) as exc:
                problems.append(f"{where} holds {_short(value)}, which cannot be read ({one_line(exc)})")
                continue
            expected = _expected(column.type)
            if expected is not None and not _is(converted, expected):
                problems.append(f"{where} holds {_short(value)}, not {expected[1]}")
                continue
            values[column.name] = float(converted) if expected is _NUMBER else converted
        yield values, problems


_NUMBER: tuple[tuple[type, ...], str] = ((int, float), "a number")
_INTEGER: tuple[tuple[type, ...], str] = ((int,), "an integer")
_TEXT: tuple[tuple[type, ...], str] = ((str,), "a text")
_OBJECT: tuple[tuple[type, ...], str] = ((dict,), "a JSON object")
_TIME: tuple[tuple[type, ...], str] = ((datetime,), "a date and time")


def _expected(column_type: TypeEngine[Any]) -> tuple[tuple[type, ...], str] | None:
    if isinstance(column_type, Double | Float):
        return _NUMBER
    if isinstance(column_type, Integer):
        return _INTEGER
    if isinstance(column_type, JSON):
        return _OBJECT
    try:
        python_type = column_type.python_type
    except NotImplementedError:
        return None
    return {str: _TEXT, datetime: _TIME}.get(python_type)


def _is(value: Any, expected: tuple[tuple[type, ...], str]) -> bool:
    return isinstance(value, expected[0]) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _evaluations(session: Session, run_ids: list[int]) -> dict[int, list[tuple[EvaluationRecord | None, list[str]]]]:
    """The evaluations of the given runs, oldest first, with their results; each a record or None, and what is wrong."""
    found: dict[int, list[tuple[EvaluationRecord | None, list[str]]]] = {}
    for chunk in (run_ids[i : i + 500] for i in range(0, len(run_ids), 500)):
        evaluations = list(_checked(session, table(EvaluationRow), [EvaluationRow.run_id.in_(chunk)], [EvaluationRow.id]))
        ids = [values["id"] for values, _ in evaluations]
        summaries = {v["evaluation_id"]: (v, p) for v, p in _checked(session, table(ResultRow), [ResultRow.evaluation_id.in_(ids)], [])}
        parts: dict[int, list[tuple[dict[str, Any], list[str]]]] = {}
        for row_class, key in ((AttackResultRow, AttackResultRow.attack), (CertifierResultRow, CertifierResultRow.certifier)):
            source = table(row_class)
            for values, problems in _checked(session, source, [source.c.evaluation_id.in_(ids)], [key]):
                parts.setdefault(values["evaluation_id"], []).append(({"kind": source.name, **values}, problems))
        for values, problems in evaluations:
            evaluation_id, run_id = values["id"], values["run_id"]
            problems = [f"evaluation {evaluation_id}: {p}" for p in problems]
            summary, more = summaries.get(evaluation_id, ({}, [f"{ResultRow.__tablename__} has no row for it"]))
            problems += [f"evaluation {evaluation_id}: {p}" for p in more]
            attacks: list[AttackResult] = []
            certifiers: list[CertifierResult] = []
            for part, more in parts.get(evaluation_id, []):
                problems += [f"evaluation {evaluation_id}: {p}" for p in more]
                if more:
                    continue
                cost = Cost(seconds=part["seconds"], samples_per_second=part["samples_per_second"],
                            peak_memory_bytes=part["peak_memory_bytes"], memory_kind=part["memory_kind"])
                if part["kind"] == AttackResultRow.__tablename__:
                    stages = part["stages"] or {}
                    bad = [k for k, v in stages.items() if not _is(v, _NUMBER)]
                    if bad:
                        problems.append(f"evaluation {evaluation_id}: attack_results.stages holds {_short(stages[bad[0]])} for stage "
                                        f"{bad[0]!r}, not a number")
                        continue
                    attacks.append(AttackResult(name=part["attack"], label=part["label"], options=part["options"], accuracy=part["accuracy"],
                                                attacked=part["attacked"], seconds=part["seconds"], error=part["error"], cost=cost,
                                                stages={str(k): float(v) for k, v in stages.items()},
                                                gradient_free=bool(part["gradient_free"])))
                else:
                    mean, median = part["mean_radius"], part["median_radius"]
                    median = median if median is not None else mean
                    radius = None if mean is None or median is None else RadiusStats(mean=mean, median=median)
                    certifiers.append(CertifierResult(name=part["certifier"], options=part["options"], accuracy=part["accuracy"],
                                                      samples=part["samples"], radius=radius, seconds=part["seconds"], error=part["error"],
                                                      cost=cost, timeouts=part["timeouts"], errors=part["errors"],
                                                      sample_error=part["sample_error"], radius_method=part["radius_method"],
                                                      radius_tolerance=part["radius_tolerance"], sound=bool(part["sound"])))
            record = None
            if not problems:
                masked = (summary["zero_gradient_fraction"], summary["gradient_free_breaks"], summary["unreliable"])
                result = EvaluationResult(
                    samples=summary["eval_samples"],
                    clean_accuracy=summary["clean_accuracy"],
                    robust_accuracy=summary["robust_accuracy"],
                    certified_accuracy=summary["certified_accuracy"],
                    attacks=tuple(attacks),
                    certifiers=tuple(certifiers),
                    not_applicable=dict(summary["not_applicable"]),
                    masking=None if all(v is None for v in masked) else GradientMasking(
                        zero_gradient_fraction=masked[0], gradient_free_breaks=masked[1],
                        unreliable=None if masked[2] is None else bool(masked[2])),
                )
                record = EvaluationRecord(id=evaluation_id, run_id=run_id, created_at=values["created_at"], seconds=values["seconds"],
                                          config=values["config"], environment=values["environment"], result=result)
            found.setdefault(run_id, []).append((record, problems))
    return found


def _record(values: dict[str, Any], evaluations: list[EvaluationRecord]) -> RunRecord:
    info = RunInfo(
        trainer=values["trainer"],
        dataset=values["dataset"],
        norm=values["norm"],
        eps=values["eps"],
        preset=values["preset"],
        seed=values["seed"],
        epochs=values["epochs"],
        config=values["config"],
        device=values["device"],
        environment=values["environment"],
        origin=values["origin"],
    )
    weights = None
    if values["weights_path"] is not None:
        weights = WeightsFile(path=values["weights_path"], sha256=values["weights_sha256"] or "", bytes=values["weights_bytes"] or 0)
    return RunRecord(
        id=values["id"],
        info=info,
        status=values["status"],
        created_at=values["created_at"],
        finished_at=values["finished_at"],
        train_seconds=values["train_seconds"],
        error=values["error"],
        heartbeat_at=values["heartbeat_at"],
        checkpoint=values["checkpoint"],
        weights=weights,
        training=values["training"],
        resumes=values["resumes"],
        evaluations=evaluations,
        best=best_evaluation(evaluations),
    )


def _samples(session: Session, evaluation_id: int) -> list[SampleResult]:
    """The per-sample results of an evaluation; ValueError naming the first value that is not what its column holds."""
    by_index: dict[int, SampleResult] = {}
    sample_rows = session.execute(
        select(SampleRow.idx, _raw(SampleRow.label), _raw(SampleRow.prediction))
        .where(SampleRow.evaluation_id == evaluation_id)
        .order_by(SampleRow.idx)
    )
    for idx, label, prediction in sample_rows:
        by_index[idx] = SampleResult(index=_int(idx, "samples.idx"), label=_int(label, "samples.label"),
                                     prediction=_int(prediction, "samples.prediction"))
    attack_rows = session.execute(
        select(AttackRow.idx, AttackRow.attack, _raw(AttackRow.survived), _raw(AttackRow.broken_by))
        .where(AttackRow.evaluation_id == evaluation_id)
        .order_by(AttackRow.idx, AttackRow.attack)
    )
    for idx, attack, survived, broken_by in attack_rows:
        by_index[idx].attacks[attack] = _bool(survived, "sample_attacks.survived")
        if broken_by is not None:
            if not isinstance(broken_by, str):
                raise ValueError(f"sample_attacks.broken_by holds {_short(broken_by)}, not a text")
            by_index[idx].broken_by[attack] = broken_by
    certificate_rows = session.execute(
        select(CertificateRow.idx, CertificateRow.certifier, _raw(CertificateRow.certified), _raw(CertificateRow.radius),
               _raw(CertificateRow.outcome))
        .where(CertificateRow.evaluation_id == evaluation_id)
        .order_by(CertificateRow.idx, CertificateRow.certifier)
    )
    for idx, certifier, certified, radius, outcome in certificate_rows:
        if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int | float)):
            raise ValueError(f"sample_certificates.radius holds {_short(radius)}, not a number")
        if outcome not in OUTCOMES:
            raise ValueError(f"sample_certificates.outcome holds {_short(outcome)}, not one of {', '.join(OUTCOMES)}")
        by_index[idx].certificates[certifier] = (_bool(certified, "sample_certificates.certified"), None if radius is None else float(radius))
        by_index[idx].outcomes[certifier] = outcome
    return list(by_index.values())


def _raw(column: Any) -> Any:
    """A column as the driver gives it, without SQLAlchemy's conversion (which would read any text as True)."""
    return type_coerce(column, NullType())


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} holds {_short(value)}, not an integer")
    return value


def _bool(value: Any, where: str) -> bool:
    if value not in (0, 1) or not isinstance(value, int):  # SQLite stores booleans as 0 and 1; other drivers give bools
        raise ValueError(f"{where} holds {_short(value)}, not a boolean")
    return bool(value)


# -- writing rows -------------------------------------------------------------------------------------


def _result_rows(result: EvaluationResult, samples: list[SampleResult]) -> list[tuple[type, list[dict[str, Any]]]]:
    """The rows of an evaluation's result and samples, without their ``evaluation_id``, parents first."""
    masking = result.masking or GradientMasking()
    summary = {
        "eval_samples": int(result.samples),
        "clean_accuracy": float(result.clean_accuracy),
        "robust_accuracy": _float(result.robust_accuracy),
        "certified_accuracy": _float(result.certified_accuracy),
        "not_applicable": dict(result.not_applicable),
        "zero_gradient_fraction": _float(masking.zero_gradient_fraction),
        "gradient_free_breaks": None if masking.gradient_free_breaks is None else int(masking.gradient_free_breaks),
        "unreliable": None if masking.unreliable is None else bool(masking.unreliable),
    }
    attack_rows = [
        {"attack": a.name, "label": a.label, "options": _plain_json("attack options", a.options),
         "accuracy": _float(a.accuracy), "attacked": int(a.attacked), "seconds": _float(a.seconds), "error": _text(a.error),
         **_cost(a.cost), "stages": {str(k): float(v) for k, v in a.stages.items()}, "gradient_free": bool(a.gradient_free)}
        for a in result.attacks
    ]
    for c in result.certifiers:
        if c.radius_method is not None and c.radius_method not in RADIUS_METHODS:
            raise HarnessError(f"certifier {c.name!r}: radius method {c.radius_method!r} is not one of {', '.join(RADIUS_METHODS)}; "
                               "nothing was stored")
    certifier_rows = [
        {"certifier": c.name, "options": _plain_json("certifier options", c.options),
         "accuracy": _float(c.accuracy), "samples": int(c.samples),
         "mean_radius": None if c.radius is None else float(c.radius.mean),
         "median_radius": None if c.radius is None else float(c.radius.median),
         "seconds": _float(c.seconds), "error": _text(c.error), **_cost(c.cost),
         "timeouts": int(c.timeouts), "errors": int(c.errors), "sample_error": _text(c.sample_error),
         "radius_method": c.radius_method, "radius_tolerance": _float(c.radius_tolerance), "sound": bool(c.sound)}
        for c in result.certifiers
    ]
    sample_rows: list[dict[str, Any]] = []
    sample_attack_rows: list[dict[str, Any]] = []
    certificate_rows: list[dict[str, Any]] = []
    for s in samples:
        idx = int(s.index)
        sample_rows.append({"idx": idx, "label": int(s.label), "prediction": int(s.prediction)})
        for attack, survived in s.attacks.items():
            sample_attack_rows.append({"idx": idx, "attack": attack, "survived": bool(survived), "broken_by": s.broken_by.get(attack)})
        for certifier, (certified, radius) in s.certificates.items():
            certificate_rows.append({"idx": idx, "certifier": certifier, "certified": bool(certified),
                                     "radius": None if radius is None else float(radius),
                                     "outcome": _outcome(idx, certifier, bool(certified), s.outcomes.get(certifier))})
    checks: list[tuple[type, list[dict[str, Any]]]] = [
        (AttackResultRow, attack_rows),
        (CertifierResultRow, certifier_rows),
        (AttackRow, [{"attack": a} for a in {a for s in samples for a in s.attacks}]),
        (AttackRow, [{"broken_by": b} for b in {b for s in samples for b in s.broken_by.values()}]),
        (CertificateRow, [{"certifier": c} for c in {c for s in samples for c in s.certificates}]),
    ]
    for row_class, checked in checks:
        for values in checked:
            _check_lengths(row_class, values)
    return [
        (ResultRow, [summary]),
        (AttackResultRow, attack_rows),
        (CertifierResultRow, certifier_rows),
        (SampleRow, sample_rows),
        (AttackRow, sample_attack_rows),
        (CertificateRow, certificate_rows),
    ]


def _cost(cost: Cost) -> dict[str, Any]:
    return {
        "samples_per_second": _float(cost.samples_per_second),
        "peak_memory_bytes": None if cost.peak_memory_bytes is None else int(cost.peak_memory_bytes),
        "memory_kind": cost.memory_kind,
    }


def _outcome(idx: int, certifier: str, certified: bool, outcome: str | None) -> str:
    """A certificate's outcome (from its verdict where the sample gives none); HarnessError if it is unknown or contradicts the verdict."""
    if outcome is None:
        return "certified" if certified else "not-certified"
    if outcome not in OUTCOMES:
        raise HarnessError(f"sample {idx}: certifier {certifier!r} has outcome {outcome!r}, not one of {', '.join(OUTCOMES)}; nothing was stored")
    if (outcome == "certified") != certified:
        raise HarnessError(f"sample {idx}: certifier {certifier!r} has outcome {outcome!r} but certified={certified}; nothing was stored")
    return outcome


def _text(message: str | None) -> str | None:
    """An error message as a database text: a NUL character (an exception's message can hold one; PostgreSQL's text cannot) as ``\\x00``."""
    return None if message is None else message.replace("\x00", "\\x00")


def _check_lengths(row_class: type, values: dict[str, Any]) -> None:
    """Every text fits its column's length: PostgreSQL would refuse a longer one, SQLite keep it; both refuse it here, the same way.

    :raises HarnessError: naming the column, its length and the value; nothing is stored.
    """
    for column in table(row_class).columns:
        length = getattr(column.type, "length", None)
        value = values.get(column.name)
        if length is not None and isinstance(value, str) and len(value) > length:
            raise HarnessError(f"{column.table.name}.{column.name} holds at most {length} characters, and {_short(value)} has {len(value)}; "
                               "nothing was stored")


def _weights(weights: WeightsFile | None) -> dict[str, Any]:
    if weights is None:
        return {"weights_path": None, "weights_sha256": None, "weights_bytes": None}
    return {"weights_path": str(weights.path), "weights_sha256": str(weights.sha256), "weights_bytes": int(weights.bytes)}


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _check_finite(run_id: int, result: EvaluationResult) -> None:
    """Every number of the result is finite (a non-finite accuracy means a bug upstream): HarnessError naming them."""
    values: dict[str, float | None] = {
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "certified_accuracy": result.certified_accuracy,
    }
    if result.masking is not None:
        values["zero_gradient_fraction"] = result.masking.zero_gradient_fraction
    for a in result.attacks:
        values[f"attack {a.name!r} accuracy"] = a.accuracy
        values[f"attack {a.name!r} samples per second"] = a.cost.samples_per_second
        for stage, accuracy in a.stages.items():
            values[f"attack {a.name!r} stage {stage!r} accuracy"] = accuracy
    for c in result.certifiers:
        values[f"certifier {c.name!r} accuracy"] = c.accuracy
        values[f"certifier {c.name!r} samples per second"] = c.cost.samples_per_second
        values[f"certifier {c.name!r} radius tolerance"] = c.radius_tolerance
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
    """The driver's own message when there is one (without SQLAlchemy's statement and links, or PostgreSQL's context), on one line."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        primary = getattr(getattr(exc.orig, "diag", None), "message_primary", None)  # psycopg: the message without DETAIL/CONTEXT
        return " ".join(primary.split()) if isinstance(primary, str) and primary.strip() else one_line(exc.orig)
    return one_line(exc)


def _unavailable(exc: DBAPIError) -> bool:
    """Whether the database could not do it now, for a reason outside the harness: busy, full, I/O, connection lost."""
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    message = _one_line(exc).lower()
    return not any(s in message for s in ("no such table", "no such column", "syntax error", "has no column"))


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    except SQLAlchemyError:  # the connection the rollback needed is gone: nothing was committed anyway
        pass


def _file_identity(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


# -- opening ----------------------------------------------------------------------------------------


class _Target:
    """What ``--db`` named: how messages name it (password hidden), its SQLAlchemy URL and, for SQLite, its file."""

    def __init__(self, name: str, url: URL, path: Path | None, secrets: list[str]) -> None:
        self.name, self.url, self.path, self._secrets = name, url, path, secrets

    @classmethod
    def resolve(cls, url: str, *, readonly: bool) -> _Target:
        secrets: list[str] = []
        if url.strip() == ":memory:":
            raise UsageError(f"cannot use database {url!r}: an in-memory database keeps nothing; give a file path or a server URL")
        if "://" in url:
            try:
                sa_url = make_url(url)
            except (ArgumentError, ValueError):  # a port that is not a number is a ValueError
                raise UsageError(f"cannot open database {_hide_url_text(url)!r}: not a valid SQLAlchemy URL") from None
            if sa_url.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2; harness depends on psycopg 3
                sa_url = sa_url.set(drivername="postgresql+psycopg")
            plain = [s for s in (sa_url.password, *(_query_secrets(sa_url))) if s]
            secrets = sorted({*plain, *(quote(s, safe="") for s in plain), *(quote_plus(s) for s in plain)}, key=len, reverse=True)
            name = _hide_url_text(url)  # as the user wrote it, but never its passwords
            for secret in secrets:
                name = name.replace(secret, "***")
        else:
            name = url
            sa_url = URL.create("sqlite", database=str(Path(url).expanduser().absolute()))
        path = None
        if sa_url.get_backend_name() == "sqlite":
            database = sa_url.database or ""
            if database in ("", ":memory:") or database.startswith("file:") and "memory" in database:
                raise UsageError(f"cannot use database {name!r}: an in-memory database keeps nothing; give a file path or a server URL")
            if database.startswith("file:"):
                raise UsageError(f"cannot open database {name!r}: give the SQLite file as a path (sqlite:///path/to/results.db), not a file: URI")
            path = Path(database).expanduser().absolute()
            _check_sqlite_file(name, path, readonly=readonly)
        return cls(name, sa_url, path, secrets)

    def hide(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message

    def engine(self, *, readonly: bool, timeout: float | None = None, foreign_keys: bool = True) -> Engine:
        """An engine for this database; SQLite writers wait ``timeout`` seconds for the lock (default: the busy timeout)."""
        sqlite = self.path is not None
        try:
            if self.path is not None and readonly:
                engine = create_engine("sqlite://", creator=_read_only_connector(self.path), poolclass=NullPool)
            elif sqlite:
                wait = _BUSY_TIMEOUT_S if timeout is None else timeout
                engine = create_engine(self.url, connect_args={"timeout": wait})
            else:
                engine = create_engine(self.url, pool_pre_ping=True, connect_args=_server_connect_args(self.url))
                if readonly and engine.dialect.name == "postgresql":
                    engine = engine.execution_options(postgresql_readonly=True)
        except NoSuchModuleError:
            raise UsageError(f"cannot open database {self.name!r}: unknown database dialect {self.url.drivername!r}") from None
        except ImportError as exc:
            raise UsageError(f"cannot open database {self.name!r}: its driver is not installed ({exc})") from None
        except (ArgumentError, TypeError) as exc:
            raise UsageError(f"cannot open database {self.name!r}: {self.hide(_one_line(exc))}") from None
        if sqlite:
            event.listen(engine, "connect", _sqlite_connect(foreign_keys=foreign_keys))
            event.listen(engine, "begin", _sqlite_begin)
        return engine


def _server_connect_args(url: URL) -> dict[str, Any]:
    """PostgreSQL: a write waits on another's lock at most the busy timeout (then StoreUnavailable, as with SQLite's busy
    timeout), and an unreachable server is given up on after 10 s; what the URL sets itself is kept.

    Schema creation waits on the same timeout (not SQLite's zero wait of an automatic upgrade): it takes a moment, and
    processes that open one new database together must each get it.
    """
    if url.get_backend_name() != "postgresql":
        return {}
    wait = _BUSY_TIMEOUT_S
    args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        args["connect_timeout"] = 10
    if "options" not in url.query:
        args["options"] = f"-c lock_timeout={max(1, round(wait * 1000))}"
    return args


def database_name(url: str) -> str:
    """How messages name the database at ``url``: as written, with every password (the userinfo's, query parameters named
    like one, and their URL-encoded forms) replaced by ``***``; a file path as it is. Opens nothing."""
    if "://" not in url:
        return url
    try:
        return _Target.resolve(url, readonly=True).name
    except UsageError:  # not a URL SQLAlchemy reads: hide what looks like a password
        return _hide_url_text(url)


def _secret(key: str) -> bool:
    return "password" in key.lower() or "secret" in key.lower() or key.lower() in ("token", "passfile")


def _query_secrets(url: URL) -> list[str]:
    found: list[str] = []
    for key, value in url.query.items():
        if _secret(key):
            found.extend([value] if isinstance(value, str) else list(value))
    return found


def _hide_url_text(url: str) -> str:
    """A URL with anything that looks like a password replaced: the userinfo's, and query parameters named like one."""
    url = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"((?:password|secret|token)[^=&]*=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def _check_sqlite_file(name: str, path: Path, *, readonly: bool) -> None:
    """The reasons SQLite would only report as 'unable to open database file', said plainly; a read never creates a file."""
    directory = path.parent

    def fail(reason: str) -> UsageError:
        return UsageError(f"cannot open database {name!r}: {reason}")

    if path.is_dir():
        raise fail(f"{path} is a directory")
    if readonly:
        if not path.exists():
            raise UsageError(f"no database at {name!r} (harness run creates it)")
        if not os.access(path, os.R_OK):
            raise fail(f"{path} is not readable")
        return
    if not directory.exists():
        raise fail(f"directory {directory} does not exist")
    if not directory.is_dir():
        raise fail(f"{directory} is not a directory")
    # SQLite writes a journal beside the file, so the directory must be writable as well as the file.
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise fail(f"{path} is not readable and writable (the read commands can read it)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise fail(f"directory {directory} is not writable (the read commands can read a database in it)")


def _read_only_connector(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections that open the file read-only (``mode=ro``), or ``immutable=1`` where a write-ahead log cannot be read otherwise."""
    uri = path.as_uri()
    mode = ["ro"]

    def connect() -> sqlite3.Connection:
        if mode[0] == "ro":
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=_READ_TIMEOUT_S, check_same_thread=False)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                # A write-ahead-logged file needs its -shm beside it, which a read-only directory or file cannot give.
                if "unable to open" not in str(exc) and "readonly" not in str(exc) and "read-only" not in str(exc):
                    raise
                mode[0] = "immutable"
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=_READ_TIMEOUT_S, check_same_thread=False)

    return connect


def _sqlite_connect(*, foreign_keys: bool) -> Callable[[Any, Any], None]:
    def connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (see the module docstring); _sqlite_begin emits it.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")

    return connect


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN, "BEGIN"))


def _read(engine: Engine, name: str, check: Callable[[Connection, str], Any]) -> Any:
    with engine.connect() as conn:
        return check(conn, name)


def _upgrade_if_safe(target: _Target, *, automatic: bool, empty: bool = False) -> Upgrade:
    """Create the schema of an empty database, or upgrade an older one: only when safe if ``automatic``, else as ``harness db upgrade``.

    An automatic upgrade takes the write lock only if it is free now; the schema of an ``empty`` database (as read before
    the lock) is created waiting the busy timeout for it, so that processes starting together on a new database (a sweep)
    each open it, the first creating the schema.
    """
    if automatic and target.path is not None and target.path.exists():
        if not os.access(target.path, os.W_OK):
            raise _run_db_upgrade(target, "its file is read-only")
        if not os.access(target.path.parent, os.W_OK | os.X_OK):
            raise _run_db_upgrade(target, "its directory is read-only")
    engine = target.engine(readonly=False, timeout=0.0 if automatic and not empty else None, foreign_keys=False)
    try:
        with engine.connect() as conn:
            try:
                conn.execution_options(**{_BEGIN: "BEGIN IMMEDIATE"}).begin()
                if conn.dialect.name == "postgresql":
                    # SQLite's BEGIN IMMEDIATE, on a server: processes opening one empty database at once create its schema once
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            except OperationalError as exc:
                if automatic and "locked" in str(exc):
                    raise _run_db_upgrade(target, "another process is writing to it now") from None
                raise
            current = _migrate.revision_of(conn, target.name)  # again, under the lock
            if current is None:
                metadata.create_all(conn)
                conn.execute(insert(table(SchemaMeta)).values(id=1, version=LEGACY_VERSION, database_id=uuid.uuid4().hex))
                _migrate.stamp_new(conn)
                done = Upgrade(target.name, REVISION, REVISION, None)
            else:
                if automatic and current < REVISION and target.path is None:
                    raise _run_db_upgrade(target, "it is a server database, to be backed up first")
                done = _migrate.upgrade(conn, target.name, current, target.path)
            conn.commit()
        if target.path is not None:
            _use_wal(engine)
    finally:
        engine.dispose()
    return done


def _use_wal(engine: Engine) -> None:
    """Switch a harness SQLite file to write-ahead logging, if it is not yet: readers (a leaderboard) then never wait on a writer.

    The mode persists in the file. SQLite refuses the switch inside a transaction, so it goes through the driver's
    connection, which never begins one; a file busy now keeps its mode (the next writable open tries again).
    """
    raw = engine.raw_connection()
    try:
        connection = cast(sqlite3.Connection, raw.driver_connection)
        connection.execute("PRAGMA busy_timeout = 5000")  # a reader polling the file holds a shared lock for a moment
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error:
        pass
    finally:
        raw.close()


def _run_db_upgrade(target: _Target, why: str) -> UsageError:
    return UsageError(
        f"database {target.name!r} is at an older revision than this harness's {REVISION} and cannot be upgraded automatically "
        f"({why}): run `harness db upgrade --db {target.name}`"
    )


def upgrade_database(url: str) -> Upgrade:
    """``harness db upgrade``: bring the database to the newest revision (waiting for the write lock), a SQLite file backed up first."""
    target = _Target.resolve(url, readonly=True)
    try:
        return _upgrade_if_safe(target, automatic=False)
    except SQLAlchemyError as exc:
        raise UsageError(f"cannot upgrade database {target.name!r}: {target.hide(_one_line(exc))}; nothing was changed") from None


def database_revision(url: str) -> Revision:
    """``harness db current``: the database's revision; never writes, never creates a file."""
    target = _Target.resolve(url, readonly=True)
    engine = target.engine(readonly=True)
    try:
        return Revision(target.name, _read(engine, target.name, _migrate.revision_of), REVISION)
    except SQLAlchemyError as exc:
        raise UsageError(f"cannot open database {target.name!r}: {target.hide(_one_line(exc))}") from None
    finally:
        engine.dispose()
