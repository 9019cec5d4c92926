"""Data files on disk: where they live, fetching them, checking them.

Generic helpers for dataset plugins; nothing here knows a dataset by name.
Every failure a user can fix (a missing file, no network, a corrupt download)
is a one-line :class:`~harness.errors.UsageError` that names the file and
where to get it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import sys
import urllib.request
import zlib
from pathlib import Path

from harness.errors import UsageError, one_line

#: Environment variable: the folder datasets are read from and downloaded to.
DATA_ENV = "HARNESS_DATA"

DOWNLOAD_TIMEOUT_S = 30.0

_CHUNK = 1 << 20


def default_data_dir() -> Path:
    """``$HARNESS_DATA`` if set, else ``$XDG_CACHE_HOME/harness/data`` (``~/.cache/harness/data``)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "harness" / "data"


def _digest(algorithm: str, source: Path | bytes) -> str:
    h = hashlib.new(algorithm)
    if isinstance(source, bytes | bytearray | memoryview):
        h.update(source)
        return h.hexdigest()
    with open(source, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5sum(source: Path | bytes) -> str:
    """Hex md5 of a file (read in chunks) or of bytes."""
    return _digest("md5", source)


def sha256sum(source: Path | bytes) -> str:
    """Hex sha256 of a file (read in chunks) or of bytes."""
    return _digest("sha256", source)


def _missing(path: Path, urls: list[str], reason: str = "") -> UsageError:
    where = f"; download it from {urls[0]}" if urls else "; download it"
    because = f" ({reason})" if reason else ""
    return UsageError(
        f"missing data file {path}{because}{where} and put it there "
        f"(or point --data-dir / {DATA_ENV} at a folder that has it)"
    )



def fetch(path: Path, urls: list[str], *, download: bool) -> Path:
    """Return ``path``, downloading it first from the first of ``urls`` that answers.

    The download goes to ``<path>.part`` and is renamed into place only once
    complete, so an interrupted download never looks like a finished file.
    Raises :class:`UsageError` naming the file and the first URL when the file
    is missing and ``download`` is false, or when every URL fails.
    """
    path = Path(path)
    if path.exists():
        return path
    if not download or not urls:
        raise _missing(path, urls)
    part = path.with_suffix(path.suffix + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _missing(path, urls, f"cannot create its folder: {one_line(e)}") from e
    failures = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
                # Said only once the server answered: offline, the user sees one line, the error.
                print(f"downloading {url} to {path}", file=sys.stderr, flush=True)
                shutil.copyfileobj(response, out, _CHUNK)
            os.replace(part, path)
            return path
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {one_line(e)}")
            part.unlink(missing_ok=True)
    raise _missing(path, urls, "download failed: " + "; ".join(failures))


def verify(
    path: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    content: bytes | None = None,
    what: str | None = None,
    url: str | None = None,
) -> None:
    """Check ``path`` against the expected md5 and/or sha256; raise :class:`UsageError` if off.

    :param content: bytes to check instead of the file itself, e.g. the
        decompressed payload of a ``.gz`` file; ``path`` then only names it.
    :param what: what was checked, for the message (e.g. "decompressed payload").
    :param url: where to download the file again, for the message.
    """
    source: Path | bytes = content if content is not None else Path(path)
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = _digest(algorithm, source)
        if actual != expected.lower():
            raise _mismatch(path, algorithm, expected, actual, what, url)


def _mismatch(path: Path, algorithm: str, expected: str, actual: str, what: str | None, url: str | None) -> UsageError:
    label = f" ({what})" if what else ""
    again = f" from {url}" if url else ""
    return UsageError(
        f"checksum mismatch for {path}{label}: expected {algorithm} {expected}, got {actual}; delete it and download it again{again}"
    )


def gunzip(path: Path, *, url: str | None = None, max_bytes: int | None = None, sha256: str | None = None) -> bytes:
    """The decompressed content of a ``.gz`` file, decompressed in chunks.

    A few kilobytes of gzip can decompress to gigabytes, so give ``max_bytes``
    (the size of the expected content) for any file that comes from elsewhere:
    reading stops one byte past it. With ``sha256`` the content is checked as it
    is read, before anything parses it.

    :raises UsageError: naming the file, if it is not valid gzip, decompresses
        to more than ``max_bytes``, or its content's sha256 is not ``sha256``.
    """
    again = f" from {url}" if url else ""
    digest = hashlib.sha256()
    chunks = []
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK if max_bytes is None else min(_CHUNK, max_bytes + 1 - total)):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise UsageError(
                        f"corrupt data file {path}: it decompresses to more than {max_bytes:,} bytes, the size of the file it "
                        f"should hold; delete it and download it again{again}"
                    )
                digest.update(chunk)
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UsageError(f"corrupt data file {path}: {one_line(e)}; delete it and download it again{again}") from e
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        raise _mismatch(path, "sha256", sha256, digest.hexdigest(), "decompressed payload", url)
    return b"".join(chunks)
