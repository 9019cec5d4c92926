"""harness.data.files and harness.data.idx: hashing, fetching, verifying, the IDX format."""

from __future__ import annotations

import gzip
import hashlib
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import default_data_dir, fetch, gunzip, md5sum, read_idx, sha256sum, verify
from harness.errors import UsageError

UNREACHABLE = "http://127.0.0.1:9/x"  # the discard port: refused at once, no network needed


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def assert_one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# -- hashing and locations -------------------------------------------------------------------


def test_digests_of_files_and_bytes_match_hashlib(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several chunks and a remainder
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert md5sum(path) == md5sum(data) == hashlib.md5(data).hexdigest()
    assert sha256sum(path) == sha256sum(data) == hashlib.sha256(data).hexdigest()


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("HARNESS_DATA")
    assert default_data_dir() == tmp_path / "xdg" / "harness" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "harness" / "data"


# -- fetch -----------------------------------------------------------------------------------


def test_fetch_returns_an_existing_file_without_downloading(tmp_path: Path) -> None:
    path = tmp_path / "here.gz"
    path.write_bytes(b"x")
    assert fetch(path, [UNREACHABLE], download=True) == path


def test_fetch_missing_without_download_names_the_file_and_the_url(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.gz"
    with pytest.raises(UsageError) as error:
        fetch(path, ["https://example.org/file.gz", "https://mirror.example.org/file.gz"], download=False)
    message = assert_one_line(error)
    assert str(path) in message
    assert "https://example.org/file.gz" in message
    assert "--data-dir" in message and "HARNESS_DATA" in message
    assert not path.parent.exists()


def test_fetch_from_an_unreachable_url_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.gz"
    with pytest.raises(UsageError) as error:
        fetch(path, [UNREACHABLE], download=True)
    message = assert_one_line(error)
    assert str(path) in message and UNREACHABLE in message and "download failed" in message
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # no .part left behind


def test_fetch_tries_the_next_url_and_renames_into_place(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "origin.bin"
    source.write_bytes(b"payload" * 1000)
    path = tmp_path / "a" / "b" / "file.bin"
    assert fetch(path, [UNREACHABLE, source.as_uri()], download=True) == path
    assert path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]
    assert source.as_uri() in capsys.readouterr().err


# -- verify and gunzip -----------------------------------------------------------------------


def test_verify_accepts_matching_checksums(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    verify(path, md5=hashlib.md5(b"abc").hexdigest(), sha256=hashlib.sha256(b"abc").hexdigest().upper())
    verify(path, sha256=hashlib.sha256(b"other").hexdigest(), content=b"other")


def test_verify_mismatch_names_file_digests_and_url(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with pytest.raises(UsageError) as error:
        verify(path, md5="0" * 32, url="https://example.org/f")
    message = assert_one_line(error)
    assert f"checksum mismatch for {path}" in message
    assert "expected md5 " + "0" * 32 in message and hashlib.md5(b"abc").hexdigest() in message
    assert "https://example.org/f" in message


def test_verify_of_content_says_what_was_checked(tmp_path: Path) -> None:
    path = tmp_path / "f.gz"
    with pytest.raises(UsageError, match=r"\(decompressed payload\): expected sha256"):
        verify(path, sha256="0" * 64, content=b"abc", what="decompressed payload")


def test_gunzip_of_a_corrupt_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(b"hello" * 100)[:-12])  # truncated
    with pytest.raises(UsageError, match="corrupt data file .*f.gz.*https://example.org/f.gz"):
        gunzip(path, url="https://example.org/f.gz")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(UsageError, match="corrupt data file"):
        gunzip(path)


def test_gunzip_checks_the_sha256_and_the_size_while_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "f.gz"
    content = np.random.default_rng(0).bytes(3 * (1 << 20) + 5)  # several chunks
    path.write_bytes(gzip.compress(content))
    digest = hashlib.sha256(content).hexdigest()
    assert gunzip(path, max_bytes=len(content), sha256=digest.upper()) == content  # exactly the size is fine
    with pytest.raises(UsageError) as error:
        gunzip(path, sha256="0" * 64, url="https://example.org/f.gz")
    assert assert_one_line(error) == (
        f"checksum mismatch for {path} (decompressed payload): expected sha256 {'0' * 64}, got {digest}; "
        "delete it and download it again from https://example.org/f.gz")
    with pytest.raises(UsageError, match=f"corrupt data file .*f.gz: it decompresses to more than {len(content) - 1:,} bytes"):
        gunzip(path, max_bytes=len(content) - 1, sha256=digest)


def test_a_gzip_bomb_is_refused_after_max_bytes_without_inflating(tmp_path: Path, gzip_bomb: bytes) -> None:
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip_bomb)  # 200 MB of zeros
    tracemalloc.start()
    try:
        with pytest.raises(UsageError) as error:
            gunzip(path, max_bytes=1 << 20, url="https://example.org/bomb.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert assert_one_line(error) == (
        f"corrupt data file {path}: it decompresses to more than 1,048,576 bytes, the size of the file it should hold; "
        "delete it and download it again from https://example.org/bomb.gz")
    assert peak < 8 << 20  # about max_bytes read, not the 200 MB the file inflates to


# -- IDX -------------------------------------------------------------------------------------


def test_read_idx_round_trips_ubyte() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    tensor = read_idx(idx_bytes(array))
    assert tensor.dtype == torch.uint8 and tensor.shape == (2, 3, 4)
    assert torch.equal(tensor, torch.from_numpy(array))
    labels = read_idx(idx_bytes(np.array([5, 0, 4], dtype=np.uint8)))
    assert labels.tolist() == [5, 0, 4]


def test_read_idx_reads_big_endian_ints() -> None:
    array = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    tensor = read_idx(idx_bytes(array, code=0x0C))
    assert tensor.dtype == torch.int32 and tensor.tolist() == array.tolist()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">i", 0), "not IDX"),
        (b"\x00\x00\x0a\x01" + struct.pack(">i", 0), "type code 0x0a"),
        (b"\x00\x00\x08\x02" + struct.pack(">i", 1), "declares 2 dimensions"),
        (b"\x00\x00\x08\x01" + struct.pack(">i", 3) + b"\x01\x02", "must be 11 bytes, got 10"),
        (b"\x00\x00\x08\x01" + struct.pack(">i", 3) + b"\x01\x02\x03\x04", "must be 11 bytes, got 12"),
    ],
)
def test_read_idx_rejects_malformed_data(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_idx(data)
