"""CIFAR-10 from the official python tarball, read in place, or from its extracted folder."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import IO, ClassVar

import numpy as np
import torch

from harness import Dataset, Source, UsageError
from harness.data import DatasetInfo, Splits, fetch, verify

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
TEST_BATCHES = ("test_batch",)


class CIFAR10(Dataset):
    """CIFAR-10: ``root/cifar10/cifar-10-python.tar.gz``, or ``root/cifar10/cifar-10-batches-py/``.

    The tarball is read without extracting it. An extracted folder, if there
    is one, is used instead, each batch checked by its own md5. The checksums
    and the URL are class attributes so that a subclass (a test) can point
    them at other data.
    """

    name = "cifar10"
    description = "Tiny natural images: 50,000 training and 10,000 test 32×32 colour images, 10 classes."
    source = Source(
        title="Learning multiple layers of features from tiny images",
        authors="Krizhevsky",
        venue="Technical report, University of Toronto 2009",
        url="https://www.cs.toronto.edu/~kriz/cifar.html",
    )
    info = DatasetInfo(name="cifar10", num_classes=10, shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=0.2009)

    url: ClassVar[str] = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    tarball: ClassVar[str] = "cifar-10-python.tar.gz"
    # The official md5s, from https://www.cs.toronto.edu/~kriz/cifar.html (the tarball)
    # and as torchvision's CIFAR10 checks them (the batches).
    tarball_md5: ClassVar[str] = "c58f30108f718f92721af3b95e74349a"
    batch_md5: ClassVar[dict[str, str]] = {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    }

    def load(self, root: Path, *, download: bool = True) -> Splits:
        folder = Path(root) / self.name
        extracted = folder / BATCHES_DIR
        batches = self._read_folder(extracted) if extracted.is_dir() else self._read_tarball(folder, download)
        train = [self._decode(batches[name], f"{name} of {self.name}") for name in TRAIN_BATCHES]
        test = [self._decode(batches[name], f"{name} of {self.name}") for name in TEST_BATCHES]
        return Splits(
            torch.cat([images for images, _ in train]),
            torch.cat([labels for _, labels in train]),
            torch.cat([images for images, _ in test]),
            torch.cat([labels for _, labels in test]),
        )

    def _read_tarball(self, folder: Path, download: bool) -> dict[str, dict]:
        path = fetch(folder / self.tarball, [self.url], download=download)
        verify(path, md5=self.tarball_md5, url=self.url)
        wanted = {f"{BATCHES_DIR}/{name}": name for name in TRAIN_BATCHES + TEST_BATCHES}
        batches = {}
        try:
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        batches[wanted[member.name]] = _unpickle(tar.extractfile(member))
        except (OSError, EOFError, tarfile.TarError) as e:
            raise UsageError(f"corrupt data file {path}: {e}; delete it and download it again from {self.url}") from e
        missing = sorted(set(wanted) - {f"{BATCHES_DIR}/{name}" for name in batches})
        if missing:
            raise UsageError(f"malformed data file {path}: it lacks {', '.join(missing)}")
        return batches

    def _read_folder(self, extracted: Path) -> dict[str, dict]:
        batches = {}
        for name in TRAIN_BATCHES + TEST_BATCHES:
            path = extracted / name
            if not path.is_file():
                raise UsageError(
                    f"missing data file {path}; the folder {extracted} is incomplete: extract {self.url} "
                    f"there again, or remove the folder to read {self.tarball} instead"
                )
            verify(path, md5=self.batch_md5[name], url=self.url)
            with open(path, "rb") as f:
                batches[name] = _unpickle(f)
        return batches

    def _decode(self, batch: dict, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """N×3072 rows (the red, green then blue 32×32 planes) as N×3×32×32 uint8, and labels."""
        data = np.asarray(batch.get(b"data"))
        labels = np.asarray(batch.get(b"labels"), dtype=np.int64)
        c, h, w = self.info.shape
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != c * h * w:
            raise UsageError(f"malformed batch {where}: data is {data.dtype} {data.shape}, expected uint8 N×{c * h * w}")
        if labels.shape != (data.shape[0],):
            raise UsageError(f"malformed batch {where}: {data.shape[0]} images but labels of shape {labels.shape}")
        if labels.size and not (0 <= labels.min() and labels.max() < self.info.num_classes):
            raise UsageError(f"malformed batch {where}: labels outside 0..{self.info.num_classes - 1}")
        images = torch.from_numpy(data.reshape(-1, c, h, w).copy())
        return images, torch.from_numpy(labels)


def _unpickle(f: IO[bytes] | None) -> dict:
    # The official CIFAR-10 batches are Python 2 pickles; there is no other format to
    # read. Unpickling can run arbitrary code, so callers reach this only after the
    # file's md5 (or the tarball's) matched the official one.
    if f is None:
        raise OSError("a batch in the tarball is not a regular file")
    return pickle.load(f, encoding="bytes")
