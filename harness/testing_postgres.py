"""A throwaway PostgreSQL server, for tests and benchmarks: started in a temporary directory, stopped and deleted after.

:class:`PostgresServer` runs ``initdb`` (trust authentication, loopback only)
and ``pg_ctl start`` on a free port of 127.0.0.1, hands out fresh databases
(:meth:`~PostgresServer.new_database`) and stops the server (``-m fast``) and
deletes its directory when closed, or at interpreter exit. The binaries are
found by :func:`find_bindir`. PostgreSQL refuses to run as root: as root the
binaries run as the ``postgres`` user (through ``runuser``, or ``su``), with
the data directory handed to that user.

By hand: ``python -m harness.testing_postgres`` starts one, prints its URL
and keeps it until Ctrl-C.

Messages about a server that would not start end with the tail of its log.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "PostgresNotFound",
    "PostgresServer",
    "PostgresStartFailed",
    "drop_database",
    "empty_schema",
    "find_bindir",
    "fresh_database",
    "server_or_url",
]

#: The user PostgreSQL's binaries run as when this process is root.
SERVICE_USER = "postgres"
_LOG_TAIL = 20


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``) on this machine, or no user to run them as."""


class PostgresStartFailed(RuntimeError):
    """The server binaries were found but the server did not start; the message ends with its log's tail."""


def find_bindir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: ``$HARNESS_PG_BIN``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``
    (newest version first), then ``$PATH``.

    :raises PostgresNotFound: naming every place looked at.
    """
    looked: list[str] = []
    candidates: list[Path] = []
    if os.environ.get("HARNESS_PG_BIN"):
        candidates.append(Path(os.environ["HARNESS_PG_BIN"]))
    looked.append("$HARNESS_PG_BIN" + ("" if candidates else " (unset)"))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            if out:
                candidates.append(Path(out))
    looked.append("pg_config --bindir")

    def version(path: str) -> tuple[int, ...]:
        found = re.search(r"postgresql/([\d.]+)/bin", path)
        return tuple(int(x) for x in found.group(1).split(".") if x) if found else ()

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    looked.append("/usr/lib/postgresql/*/bin")
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    looked.append("$PATH")
    for directory in candidates:
        if all(os.access(directory / exe, os.X_OK) for exe in ("initdb", "pg_ctl")):
            return directory
    raise PostgresNotFound(
        f"no PostgreSQL server binaries (initdb, pg_ctl) in {', '.join(looked)}: install them "
        "(Debian: apt-get install -y postgresql) or set HARNESS_PG_BIN to their directory"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A PostgreSQL server of its own in a temporary directory; a context manager (``with PostgresServer() as server:``).

    :param bindir: where ``initdb`` and ``pg_ctl`` are (default: :func:`find_bindir`).
    :param durable: keep PostgreSQL's ``fsync`` on (off by default: a test server need not survive a power cut,
        and tests run faster without it); a benchmark of real write costs wants it on.
    :param settings: more ``-c name=value`` server settings.
    """

    def __init__(self, bindir: Path | None = None, *, durable: bool = False, settings: dict[str, Any] | None = None) -> None:
        self.bindir = bindir if bindir is not None else find_bindir()
        self.durable = durable
        self.settings = {"max_connections": 200, **(settings or {})}
        self.directory: Path | None = None
        self.port: int | None = None
        self._as_user = os.geteuid() == 0
        self._started = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Make the data directory and start the server; :class:`PostgresStartFailed` with the log's tail if it does not."""
        if self._as_user:
            try:
                user = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                raise PostgresNotFound(f"running as root, and there is no {SERVICE_USER!r} user to run PostgreSQL as") from None
        if self._started:
            return self
        if self.directory is None:  # a new server; else one halted by halt(), started again on its port
            self.directory = Path(tempfile.mkdtemp(prefix="harness-pg-"))
            if self._as_user:
                os.chown(self.directory, user.pw_uid, user.pw_gid)
            atexit.register(self.stop)
            self._run([str(self.bindir / "initdb"), "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                       "--no-locale", "--no-sync"], "initdb")
        data = self.directory / "data"
        options = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.directory), **self.settings}
        if not self.durable:
            options.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        for attempt in range(3):  # another process may take the free port between the probe and the start
            self.port = self.port or _free_port()
            flags = " ".join(f"-c {k}={shlex.quote(str(v))}" for k, v in {"port": self.port, **options}.items())
            try:
                self._run([str(self.bindir / "pg_ctl"), "-D", str(data), "-o", flags, "-l", str(self.log), "-t", "60", "-w", "start"],
                          "pg_ctl start")
                break
            except PostgresStartFailed:
                if attempt == 2 or "already in use" not in self.log_tail():
                    self.stop()
                    raise
                self.port = None
        self._started = True
        if self._watchdog is None:
            self._watchdog = _start_watchdog(os.getpid(), self)
        return self

    def halt(self) -> None:
        """Stop the server but keep its data: :meth:`start` starts it again on the same port (a server that went away, for tests)."""
        if self._started and self.directory is not None:
            self._started = False
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop"], "pg_ctl stop")

    def stop(self) -> None:
        """Stop the server (``-m fast``: open connections are ended) and delete its directory; safe to call twice."""
        if self.directory is None:
            return
        directory, self.directory = self.directory, None
        if self._started:
            self._started = False
            with contextlib.suppress(PostgresStartFailed):
                self._run([str(self.bindir / "pg_ctl"), "-D", str(directory / "data"), "-m", "fast", "-w", "stop"], "pg_ctl stop",
                          log=directory / "postgres.log")
        shutil.rmtree(directory, ignore_errors=True)
        atexit.unregister(self.stop)
        if self._watchdog is not None:
            watchdog, self._watchdog = self._watchdog, None
            with contextlib.suppress(OSError):
                watchdog.kill()
            watchdog.wait()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it offers -----------------------------------------------------------------------

    @property
    def log(self) -> Path:
        """The server's log file."""
        if self.directory is None:
            raise RuntimeError("the server is not started")
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database of this server (user ``postgres``, no password: trust on loopback)."""
        if not self._started:
            raise RuntimeError("the server is not started")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database with a fresh name; return its URL."""
        return fresh_database(self.url())

    def log_tail(self, lines: int = _LOG_TAIL) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, RuntimeError):
            return ""

    def _run(self, argv: list[str], what: str, *, log: Path | None = None) -> None:
        if self._as_user:
            runuser = shutil.which("runuser")
            argv = [runuser, "-u", SERVICE_USER, "--", *argv] if runuser else ["su", SERVICE_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/", stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresStartFailed(f"{what} failed: {exc}") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            tail = self.log_tail() if log is None else ""
            raise PostgresStartFailed(f"{what} failed (exit {done.returncode}): {output}" + (f"\n-- server log --\n{tail}" if tail else ""))


def _start_watchdog(owner: int, server: PostgresServer) -> subprocess.Popen[bytes]:
    """A process that stops ``server`` and deletes its directory when process ``owner`` is gone without doing it (a test
    session killed with SIGKILL, or by a timeout: no atexit runs). It lives in its own session, so a signal to the
    owner's process group does not end it first."""
    if server.directory is None:
        raise RuntimeError("the server has no directory yet")
    return subprocess.Popen(
        [sys.executable, "-m", "harness.testing_postgres", "--watch", str(owner), str(server.bindir), str(server.directory)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/",
    )


def _watch(owner: int, bindir: Path, directory: Path, poll_s: float = 0.5) -> None:
    """The watchdog's loop: wait while ``owner`` lives (or until its server's directory is gone: stopped as it should be)."""
    import time

    while directory.exists():
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass  # alive, another user's
        time.sleep(poll_s)
    else:
        return
    server = PostgresServer(bindir)
    server.directory, server._started = directory, True
    server.stop()


def fresh_database(url: str) -> str:
    """Create an empty database, ``harness_test_<hex>``, on the server of ``url`` (whose user may create databases); return its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"harness_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, *, via: str | None = None) -> None:
    """Drop the database of ``url`` (connections to it ended: ``WITH (FORCE)``), connected to ``via`` (another database of
    the server; default: its ``postgres`` database)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    target = make_url(url)
    engine = create_engine(via or target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        engine.dispose()


def empty_schema(url: str) -> None:
    """Empty the database of ``url``: its ``public`` schema dropped with everything in it and made again."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def server_or_url(url: str | None = None) -> Iterator[str]:
    """The URL of a PostgreSQL server to make databases on: ``url`` if given, else a throwaway server's, stopped afterwards."""
    if url:
        yield url
        return
    with PostgresServer() as server:
        yield server.url()


def main() -> None:
    """``python -m harness.testing_postgres``: start a throwaway server, print its URL, keep it until Ctrl-C."""
    import signal

    if len(sys.argv) == 5 and sys.argv[1] == "--watch":
        _watch(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    try:
        server = PostgresServer().start()
    except (PostgresNotFound, PostgresStartFailed) as exc:
        sys.exit(f"error: {exc}")
    try:
        print(server.url(), flush=True)
        print(f"(data and log in {server.directory}; Ctrl-C stops the server and deletes them)", file=sys.stderr, flush=True)
        for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGINT too where a shell started us with it ignored
            signal.signal(stop, lambda *_: sys.exit(0))
        signal.pause()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
