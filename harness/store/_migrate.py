"""Which revision a database is at, and bringing it to the newest one with Alembic (``migrations/``).

:func:`revision_of` reads the revision without writing anything and refuses,
in one line, what harness cannot open: a database of something else, an
unknown or newer revision. :func:`upgrade` runs in **one transaction** on a
connection that holds the write lock: a backup copy of a SQLite file first
(SQLite's backup API, beside the file), then, for a database from before
Alembic, the old schema-1 → 2 step and a stamp of revision 1, then Alembic's
upgrade to the newest revision, then SQLite's foreign-key check; any failure
rolls all of it back. SQLite's foreign keys are off on that connection (the
engine's ``connect`` hook): tables are rebuilt, and SQLite cannot switch
them off inside a transaction.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, inspect, text

from harness.errors import HarnessError, UsageError
from harness.store import Upgrade
from harness.store._schema import REVISION, metadata
from harness.store.migrations import legacy

MIGRATIONS = Path(__file__).parent / "migrations"
#: The revisions harness knows, oldest first (Alembic's revision ids are these numbers as strings).
REVISIONS = tuple(range(1, REVISION + 1))
#: Where a database from before Alembic at ``schema_meta.version`` 1 stands: one step before revision 1.
SCHEMA_1 = 0


def revision_of(conn: Connection, name: str) -> int | None:
    """The database's revision (:data:`SCHEMA_1` for a schema-1 database from before Alembic); None when it has no tables.

    UsageError, one line, for anything else: another program's database, an unknown or a newer revision.
    """
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return None
    if "alembic_version" in tables:
        values = [v for (v,) in conn.execute(text("SELECT version_num FROM alembic_version"))]
        if len(values) != 1:
            raise UsageError(f"cannot open database {name!r}: its alembic_version table holds {len(values)} revisions, not one")
        return _known(values[0], name)
    if "schema_meta" not in tables:
        ours = sorted(tables & (set(metadata.tables) | set(legacy.metadata.tables) | {"metrics"}))
        if ours:
            raise UsageError(f"cannot open database {name!r}: it has harness table(s) {', '.join(ours)} but no schema revision")
        listed = ", ".join(sorted(tables)[:10]) + (", ..." if len(tables) > 10 else "")
        raise UsageError(f"{name!r} is not a harness database (it has tables {listed}); give another --db")
    versions = [v for (v,) in conn.execute(text("SELECT version FROM schema_meta"))]
    if len(versions) != 1 or versions[0] is None:
        raise UsageError(f"cannot open database {name!r}: its schema_meta table holds no version")
    version = versions[0]
    if version in (1, legacy.VERSION) and not isinstance(version, bool):
        return SCHEMA_1 if version == 1 else 1
    raise UsageError(f"cannot open database {name!r}: its schema version {version!r} is not one harness knows (1 or 2, before revisions)")


def _known(value: Any, name: str) -> int:
    number = int(value) if isinstance(value, str) and value.isdigit() else None
    if number is not None and number > REVISION:
        raise UsageError(f"database {name!r} was written by a newer harness (revision {number}; this harness knows up to {REVISION})")
    if number not in REVISIONS or str(number) != value:
        known = ", ".join(map(str, REVISIONS))
        raise UsageError(f"cannot open database {name!r}: its revision {value!r} is not a harness revision (known: {known})")
    return number


def check_tables(conn: Connection, name: str) -> None:
    """Every table and column of the newest revision is there: UsageError naming the first one missing."""
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in present:
            raise UsageError(f"cannot open database {name!r}: its table {table.name!r} is missing (revision {REVISION} has it)")
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in columns]
        if missing:
            raise UsageError(f"cannot open database {name!r}: its table {table.name!r} has no column {missing[0]!r} (revision {REVISION} has it)")


def upgrade(conn: Connection, name: str, current: int, path: Path | None) -> Upgrade:
    """Bring the database from ``current`` to the newest revision, in the transaction ``conn`` is in (it holds the write lock).

    ``path``: the SQLite file, backed up first; None for a server database.
    """
    if current == REVISION:
        return Upgrade(name, current, current, None)
    backup = _backup(conn, path, current) if path is not None else None
    if current == SCHEMA_1:
        legacy.upgrade_1_to_2(conn)
    config = _config(conn)
    if current <= 1 and "alembic_version" not in inspect(conn).get_table_names():
        command.stamp(config, "1")
    command.upgrade(config, str(REVISION))
    if conn.dialect.name == "sqlite":
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise HarnessError(
                f"cannot upgrade database {name!r}: it would leave {len(broken)} rows whose foreign keys point nowhere "
                f"(first: {tuple(broken[0])}); nothing was changed"
            )
    return Upgrade(name, current, REVISION, None if backup is None else str(backup))


def stamp_new(conn: Connection) -> None:
    """Record a database just created at the newest revision as such."""
    command.stamp(_config(conn), str(REVISION))


def _config(conn: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = conn
    return config


def _backup(conn: Connection, path: Path, current: int) -> Path:
    """A copy of the database as it is (with what the write-ahead log holds), beside it: ``NAME.rev1-backup-<UTC time>``."""
    label = "schema1" if current == SCHEMA_1 else f"rev{current}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{label}-backup-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{label}-backup-{stamp}-{n}")
    try:
        # A connection of its own: SQLite refuses to back up through the one holding the write lock. While that lock is
        # held nobody else writes, and this one has not written yet, so the copy is the database as the upgrade finds it.
        source = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()
    except (sqlite3.Error, OSError) as exc:
        target.unlink(missing_ok=True)
        raise UsageError(f"cannot back up database {str(path)!r} to {str(target)!r} before upgrading it: {exc}; nothing was changed") from None
    return target
