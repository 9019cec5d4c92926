"""The store's tests run against every backend: ``db`` is a database URL, SQLite (a file path) or PostgreSQL.

Tests that take ``db`` run once per backend. Tests about what only SQLite has (its file: deletion,
replacement, permissions, locks, backups, the frozen files of old revisions) use ``tmp_path`` directly
and say so. The PostgreSQL databases come from ``harness_postgres_url`` (harness.testing): a fresh one
per test on a throwaway server, skipped only where there are no PostgreSQL binaries.
"""

from __future__ import annotations

import pytest

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db(backend, tmp_path, request) -> str:
    """A fresh, empty database of ``backend``: the path of a SQLite file not yet there, or a PostgreSQL URL."""
    if backend == "sqlite":
        return str(tmp_path / "runs.db")
    return request.getfixturevalue("harness_postgres_url")

