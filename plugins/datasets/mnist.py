"""MNIST and Fashion-MNIST: four gzipped IDX files each, in ``root/<name>/``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from harness import Dataset, Source, UsageError
from harness.data import DatasetInfo, Splits, fetch, gunzip, read_idx

TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: The decompressed sizes of the official files (MNIST's and Fashion-MNIST's are the same): a header, then 60,000 or
#: 10,000 28×28 images or labels of one byte.
OFFICIAL_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}


class IdxDataset(Dataset):
    """A dataset in the MNIST layout: ``<file>.gz`` for each of the official file names.

    Each file is checked by the sha256 of its *decompressed* payload, not by
    the md5 of the ``.gz``: re-compressing a file (as mirrors and caches do)
    changes the ``.gz`` bytes but never the payload, so this accepts every
    faithful copy and still rejects any altered data. A file is decompressed
    no further than its official size (``sizes``), so a small ``.gz`` that
    inflates to gigabytes is refused after reading that much. Subclasses (and
    tests) set ``mirrors`` and ``sha256`` (and ``sizes`` for larger files).
    """

    #: Base URLs tried in order; the file name is appended.
    mirrors: ClassVar[tuple[str, ...]]
    #: sha256 of each decompressed payload, by official file name (without ``.gz``).
    sha256: ClassVar[dict[str, str]]
    #: The size of each decompressed payload (at most), by official file name: a file that decompresses past it is refused.
    sizes: ClassVar[dict[str, int]] = OFFICIAL_SIZES

    def load(self, root: Path, *, download: bool = True) -> Splits:
        folder = Path(root) / self.name
        train_images, train_labels = (self._read(folder, name, download) for name in TRAIN_FILES)
        test_images, test_labels = (self._read(folder, name, download) for name in TEST_FILES)
        return Splits(
            *self._check(train_images, train_labels, folder, TRAIN_FILES),
            *self._check(test_images, test_labels, folder, TEST_FILES),
        )

    def _read(self, folder: Path, name: str, download: bool) -> torch.Tensor:
        filename = f"{name}.gz"
        urls = [mirror + filename for mirror in self.mirrors]
        path = fetch(folder / filename, urls, download=download)
        # Decompressed no further than the official size and checked before it is parsed: a gzip bomb costs nothing.
        payload = gunzip(path, url=urls[0], max_bytes=self.sizes[name], sha256=self.sha256[name])
        try:
            return read_idx(payload)
        except ValueError as e:
            raise UsageError(f"corrupt data file {path}: {e}; delete it and download it again from {urls[0]}") from e

    def _check(
        self, images: torch.Tensor, labels: torch.Tensor, folder: Path, names: tuple[str, str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """N×H×W images and N labels in range, as N×1×H×W uint8 and int64."""
        where = f"{folder / names[0]}.gz and {folder / names[1]}.gz"
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.info.shape[1:]:
            raise UsageError(
                f"malformed data in {where}: images are {images.dtype} {tuple(images.shape)}, "
                f"expected uint8 N×{self.info.shape[1]}×{self.info.shape[2]}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise UsageError(f"malformed data in {where}: {images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        if labels.numel() and int(labels.max()) >= self.info.num_classes:
            raise UsageError(f"malformed data in {where}: label {int(labels.max())} is not below {self.info.num_classes}")
        return images.unsqueeze(1), labels.long()


class MNIST(IdxDataset):
    name = "mnist"
    description = "Handwritten digits: 60,000 training and 10,000 test 28×28 grey images, 10 classes."
    source = Source(
        title="Gradient-based learning applied to document recognition",
        authors="LeCun, Bottou, Bengio, Haffner",
        venue="Proceedings of the IEEE 1998",
        url="http://yann.lecun.com/exdb/mnist/",
    )
    info = DatasetInfo(name="mnist", num_classes=10, shape=(1, 28, 28), mean=(0.1307,), std=0.3081)
    mirrors = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
    # sha256 of the decompressed official files, as listed in shared/data/CHECKSUMS.txt
    # (the payloads of http://yann.lecun.com/exdb/mnist/).
    sha256 = {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }


class FashionMNIST(IdxDataset):
    name = "fashion-mnist"
    description = "Zalando clothing images: 60,000 training and 10,000 test 28×28 grey images, 10 classes."
    source = Source(
        title="Fashion-MNIST: a novel image dataset for benchmarking machine learning algorithms",
        authors="Xiao, Rasul, Vollgraf",
        venue="arXiv 2017",
        url="https://arxiv.org/abs/1708.07747",
        code="github.com/zalandoresearch/fashion-mnist",
    )
    info = DatasetInfo(name="fashion-mnist", num_classes=10, shape=(1, 28, 28), mean=(0.2860,), std=0.3520)
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    # sha256 of the decompressed official files, as listed in shared/data/CHECKSUMS.txt
    # (the payloads of github.com/zalandoresearch/fashion-mnist, data/fashion/).
    sha256 = {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    }
