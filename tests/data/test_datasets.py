"""The built-in datasets plugin: MNIST and Fashion-MNIST from the shared files, CIFAR-10 from a
tiny tarball in the official layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import harness_plugins.datasets as datasets_plugin
from harness.components import Dataset
from harness.data import Splits
from harness.errors import UsageError
from harness.testing import make_catalog
from harness_plugins.datasets.cifar import CIFAR10
from harness_plugins.datasets.mnist import MNIST, FashionMNIST

SHARED_DATA = Path(os.environ.get("HARNESS_TEST_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def shared(name: str) -> Path:
    """The shared data root, or skip when it lacks ``name``."""
    folder = SHARED_DATA / name
    if not all((folder / f"{file}.gz").is_file() for file in IDX_FILES):
        pytest.skip(f"{name} IDX files not found in {SHARED_DATA} (set HARNESS_TEST_DATA to a folder with {name}/)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def mnist() -> Splits:
    return MNIST().load(shared("mnist"), download=False)


@pytest.fixture(scope="module")
def fashion() -> Splits:
    return FashionMNIST().load(shared("fashion-mnist"), download=False)


# -- registration ----------------------------------------------------------------------------


def test_plugin_registers_the_four_datasets() -> None:
    catalog = make_catalog(datasets_plugin, builtins=False)
    assert sorted(cls.name for cls in catalog.components("dataset")) == ["cifar10", "fashion-mnist", "mnist", "tinyimagenet"]


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST, CIFAR10])
def test_metadata(cls: type[Dataset]) -> None:
    cls.validate_class()
    assert cls.info.name == cls.name
    assert cls.info.num_classes == 10
    assert len(cls.info.mean) == cls.info.shape[0]
    assert cls.source is not None and cls.source.url


# -- MNIST and Fashion-MNIST from the shared files -------------------------------------------


def check_idx_splits(splits: Splits) -> None:
    assert splits.train_images.shape == (60000, 1, 28, 28)
    assert splits.test_images.shape == (10000, 1, 28, 28)
    for images, labels in ((splits.train_images, splits.train_labels), (splits.test_images, splits.test_labels)):
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert int(labels.min()) == 0 and int(labels.max()) == 9
        assert int(images.min()) == 0 and int(images.max()) == 255


def test_mnist(mnist: Splits) -> None:
    check_idx_splits(mnist)
    assert int(mnist.train_labels[0]) == 5
    assert int(torch.bincount(mnist.train_labels, minlength=10).min()) >= 5000
    assert int(torch.bincount(mnist.test_labels, minlength=10).min()) >= 800
    mean = mnist.train_images.float().div(255).mean().item()
    assert mean == pytest.approx(MNIST.info.mean[0], abs=1e-3)


def test_fashion_mnist(fashion: Splits) -> None:
    check_idx_splits(fashion)
    assert torch.bincount(fashion.train_labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(fashion.test_labels, minlength=10).tolist() == [1000] * 10
    mean = fashion.train_images.float().div(255).mean().item()
    assert mean == pytest.approx(FashionMNIST.info.mean[0], abs=1e-3)


@pytest.fixture
def mnist_copy(tmp_path: Path) -> Path:
    """A writable copy of the shared MNIST files; returns the root."""
    shutil.copytree(shared("mnist") / "mnist", tmp_path / "mnist")
    return tmp_path


def rewrite_gz(path: Path, change) -> None:
    payload = bytearray(gzip.decompress(path.read_bytes()))
    change(payload)
    path.chmod(0o644)
    path.write_bytes(gzip.compress(bytes(payload), compresslevel=1, mtime=0))


def test_recompressed_files_are_accepted(mnist_copy: Path) -> None:
    # The .gz bytes differ from the originals, the payloads do not: only payloads are checked.
    path = mnist_copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
    before = path.read_bytes()
    rewrite_gz(path, lambda payload: None)
    assert path.read_bytes() != before
    assert MNIST().load(mnist_copy, download=False).test_labels.shape == (10000,)


def test_one_changed_byte_is_a_checksum_mismatch(mnist_copy: Path) -> None:
    path = mnist_copy / "mnist" / "train-labels-idx1-ubyte.gz"

    def change(payload: bytearray) -> None:
        payload[8] = (payload[8] + 1) % 10  # the first label: still a valid IDX file

    rewrite_gz(path, change)
    with pytest.raises(UsageError) as error:
        MNIST().load(mnist_copy, download=False)
    message = str(error.value)
    assert "\n" not in message
    assert f"checksum mismatch for {path}" in message and "expected sha256" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz" in message


def test_a_file_that_is_not_gzip_is_a_usage_error(mnist_copy: Path) -> None:
    path = mnist_copy / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.chmod(0o644)
    path.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(UsageError, match=f"corrupt data file {re.escape(str(path))}"):
        MNIST().load(mnist_copy, download=False)


def test_missing_file_without_download_names_the_file_and_the_url(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as error:
        FashionMNIST().load(tmp_path, download=False)
    message = str(error.value)
    assert f"missing data file {tmp_path / 'fashion-mnist' / 'train-images-idx3-ubyte.gz'}" in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz" in message


def test_unreachable_mirror_is_a_usage_error(tmp_path: Path) -> None:
    class OfflineMNIST(MNIST):
        mirrors = ("http://127.0.0.1:9/mnist/",)

    with pytest.raises(UsageError, match="missing data file .*download failed"):
        OfflineMNIST().load(tmp_path, download=True)
    assert list((tmp_path / "mnist").iterdir()) == []


def write_idx_gz(path: Path, array: np.ndarray) -> str:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload))
    return hashlib.sha256(payload).hexdigest()


def tiny_mnist(root: Path, train_labels: list[int]) -> type[MNIST]:
    """An MNIST subclass whose checksums are those of tiny files written under ``root``."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (len(train_labels), 28, 28)),
        "train-labels-idx1-ubyte": np.array(train_labels),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28)),
        "t10k-labels-idx1-ubyte": np.array([3, 9]),
    }
    digests = {name: write_idx_gz(root / "mnist" / f"{name}.gz", array) for name, array in arrays.items()}

    class TinyMNIST(MNIST):
        sha256 = digests

    return TinyMNIST


def test_tiny_idx_dataset_loads_through_a_subclass(tmp_path: Path) -> None:
    splits = tiny_mnist(tmp_path, [1, 2, 3])().load(tmp_path, download=False)
    assert splits.train_images.shape == (3, 1, 28, 28) and splits.train_labels.tolist() == [1, 2, 3]
    assert splits.test_labels.tolist() == [3, 9]


def test_a_gzip_bomb_in_place_of_a_file_is_refused_past_the_official_size(tmp_path: Path, gzip_bomb: bytes) -> None:
    cls = tiny_mnist(tmp_path, [1, 2, 3])
    bomb = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bomb.write_bytes(gzip_bomb)  # 200 MB of zeros where 10,008 bytes belong
    tracemalloc.start()
    try:
        with pytest.raises(UsageError) as error:
            cls().load(tmp_path, download=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(error.value) == (
        f"corrupt data file {bomb}: it decompresses to more than 10,008 bytes, the size of the file it should hold; "
        "delete it and download it again from https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz")
    assert peak < 4 << 20  # the tiny files and 10,009 bytes of the bomb, not 200 MB


def test_labels_out_of_range_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="label 10 is not below 10"):
        tiny_mnist(tmp_path, [1, 10])().load(tmp_path, download=False)


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    cls = tiny_mnist(tmp_path, [1, 2])
    labels = np.array([1, 2, 3])
    digest = write_idx_gz(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", labels)
    cls.sha256 = {**cls.sha256, "train-labels-idx1-ubyte": digest}
    with pytest.raises(UsageError, match="2 images but labels of shape"):
        cls().load(tmp_path, download=False)


# -- CIFAR-10 from a tiny tarball in the official layout --------------------------------------

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def cifar_batches() -> dict[str, dict[bytes, object]]:
    """Official-format batches: 5×20 training and 10 test images, random but for one known image."""
    rng = np.random.default_rng(1)
    batches = {}
    for name, n in [*((b, 20) for b in TRAIN_BATCHES), ("test_batch", 10)]:
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
    # Rows hold the red, then green, then blue 32×32 plane, each row-major.
    known = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    known[1024 + 1 * 32 + 2] = 222  # green, row 1, column 2
    batches["data_batch_2"][b"data"][3] = known
    return batches


def pickled(batch: dict) -> bytes:
    return pickle.dumps(batch, protocol=2)


def write_tarball(path: Path, batches: dict[str, dict], *, skip: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    members = {name: pickled(batch) for name, batch in batches.items() if name != skip}
    members["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10, b"num_vis": 3072}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def check_cifar(splits: Splits, batches: dict[str, dict]) -> None:
    assert splits.train_images.shape == (100, 3, 32, 32) and splits.train_images.dtype == torch.uint8
    assert splits.test_images.shape == (10, 3, 32, 32)
    expected = np.concatenate([batches[b][b"data"] for b in TRAIN_BATCHES]).reshape(-1, 3, 32, 32)
    assert torch.equal(splits.train_images, torch.from_numpy(expected))
    assert splits.train_labels.tolist() == sum((batches[b][b"labels"] for b in TRAIN_BATCHES), [])
    assert splits.test_labels.dtype == torch.int64
    assert splits.test_labels.tolist() == batches["test_batch"][b"labels"]
    assert torch.equal(splits.test_images, torch.from_numpy(batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)))
    known = splits.train_images[20 + 3]
    assert known[0].unique().tolist() == [10] and known[2].unique().tolist() == [30]
    assert int(known[1, 1, 2]) == 222 and int(known[1, 2, 1]) == 20


def test_cifar_from_a_tarball(tmp_path: Path) -> None:
    batches = cifar_batches()
    md5 = write_tarball(tmp_path / "cifar10" / "cifar-10-python.tar.gz", batches)

    class TinyCifar(CIFAR10):
        tarball_md5 = md5

    check_cifar(TinyCifar().load(tmp_path, download=False), batches)
    assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()  # read in place


def test_cifar_tarball_with_the_wrong_md5(tmp_path: Path) -> None:
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    write_tarball(path, cifar_batches())
    with pytest.raises(UsageError, match=f"checksum mismatch for {re.escape(str(path))}: expected md5 {CIFAR10.tarball_md5}"):
        CIFAR10().load(tmp_path, download=False)


def test_cifar_tarball_lacking_a_batch(tmp_path: Path) -> None:
    md5 = write_tarball(tmp_path / "cifar10" / "cifar-10-python.tar.gz", cifar_batches(), skip="data_batch_4")

    class TinyCifar(CIFAR10):
        tarball_md5 = md5

    with pytest.raises(UsageError, match="lacks cifar-10-batches-py/data_batch_4"):
        TinyCifar().load(tmp_path, download=False)


def test_cifar_missing_tarball_names_the_file_and_the_url(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as error:
        CIFAR10().load(tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "cifar10" / "cifar-10-python.tar.gz") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


def write_folder(root: Path, batches: dict[str, dict]) -> dict[str, str]:
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    digests = {}
    for name, batch in batches.items():
        data = pickled(batch)
        (folder / name).write_bytes(data)
        digests[name] = hashlib.md5(data).hexdigest()
    return digests


def test_cifar_from_an_extracted_folder(tmp_path: Path) -> None:
    batches = cifar_batches()
    digests = write_folder(tmp_path, batches)

    class TinyCifar(CIFAR10):
        batch_md5 = digests

    check_cifar(TinyCifar().load(tmp_path, download=False), batches)


def test_cifar_extracted_folder_checks_each_batch(tmp_path: Path) -> None:
    digests = write_folder(tmp_path, cifar_batches())

    class TinyCifar(CIFAR10):
        batch_md5 = {**digests, "data_batch_3": "0" * 32}

    path = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    with pytest.raises(UsageError, match=f"checksum mismatch for {re.escape(str(path))}: expected md5 0+,"):
        TinyCifar().load(tmp_path, download=False)
    path.unlink()
    with pytest.raises(UsageError, match=f"missing data file {re.escape(str(path))}; the folder .* is incomplete"):
        TinyCifar().load(tmp_path, download=False)


def test_real_cifar10_if_present() -> None:
    if not (SHARED_DATA / "cifar10" / "cifar-10-python.tar.gz").is_file():
        pytest.skip(f"cifar10/cifar-10-python.tar.gz not found in {SHARED_DATA}")
    splits = CIFAR10().load(SHARED_DATA, download=False)
    assert splits.train_images.shape == (50000, 3, 32, 32) and splits.test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(splits.train_labels, minlength=10).tolist() == [5000] * 10
    assert splits.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
