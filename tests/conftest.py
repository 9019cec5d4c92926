"""Fixtures shared by the whole suite: data location and a catalog of the built-in plugins.

The plugin-author fixtures of :mod:`harness.testing` (``harness_cli``,
``harness_catalog``, ``harness_store``, ``harness_tiny_data``) come through its
pytest entry point. Every catalog and CLI run here sees only the built-in
plugins, whatever else is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (MNIST, Fashion-MNIST), or $HARNESS_TEST_DATA."""
    path = Path(os.environ.get("HARNESS_TEST_DATA", REPO.parent / "shared" / "data"))
    if not (path / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no MNIST under {path} (set HARNESS_TEST_DATA)")
    return path


@pytest.fixture
def catalog():
    """A catalog of the built-in plugins only."""
    from harness.testing import make_catalog

    return make_catalog()


@pytest.fixture(scope="session")
def harness_exe() -> str:
    """The installed ``harness`` console script (for subprocess tests)."""
    exe = Path(sys.executable).parent / "harness"
    if not exe.exists():
        pytest.skip("the harness console script is not installed in this environment")
    return str(exe)


@pytest.fixture
def builtin_env(monkeypatch) -> dict[str, str]:
    """Environment for a ``harness`` subprocess that loads only the built-in plugins."""
    from harness.testing import builtin_plugins

    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DB", "HARNESS_DISABLE_PLUGINS")}
    env["HARNESS_ONLY_PLUGINS"] = ",".join(builtin_plugins())
    return env


@pytest.fixture(scope="session")
def gzip_bomb() -> bytes:
    """A gzip file of about 200 KB that decompresses to 200 MB of zeros (made in chunks: never 200 MB in memory)."""
    import zlib

    compressor = zlib.compressobj(9, wbits=31)  # wbits 31: the gzip container
    zeros = bytes(1 << 20)
    return b"".join([*(compressor.compress(zeros) for _ in range(200)), compressor.flush()])


# -- the store's backends: tests that take ``db`` run on SQLite and on PostgreSQL ----------------------------------
# Tests about what only SQLite has (its file: deletion, replacement, permissions, locks, backups, the frozen files of
# old revisions) use tmp_path directly and say so. The PostgreSQL databases come from ``harness_postgres_url``
# (harness.testing): a fresh one per test on a throwaway server, skipped only where there are no PostgreSQL binaries.

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

