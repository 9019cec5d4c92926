"""TinyImageNet from the official zip, read in place, its decoded images cached beside it."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness import Dataset, Source, UsageError
from harness.data import DatasetInfo, Splits, fetch, verify
from harness.errors import one_line

TOP = "tiny-imagenet-200"
WNIDS = f"{TOP}/wnids.txt"
VAL_ANNOTATIONS = f"{TOP}/val/val_annotations.txt"
#: Bump when what the cache holds, or how it is decoded, changes.
CACHE_FORMAT = 1


class TinyImageNet(Dataset):
    """TinyImageNet: ``root/tinyimagenet/tiny-imagenet-200.zip``.

    The official validation set (50 images a class) is the test split; the
    official ``test/`` folder has no labels and is not read. Class ``i`` is
    the ``i``-th wnid of ``wnids.txt``. Greyscale JPEGs are converted to RGB.

    Decoding 110,000 JPEGs is slow, so the decoded tensors are saved beside
    the zip (``tiny-imagenet-200.decoded.pt``), keyed by the zip's md5: a
    cache that is unreadable, malformed or made from another zip is rebuilt.
    The URL, file name and md5 are class attributes so that a subclass (a
    test) can point them at other data.
    """

    name = "tinyimagenet"
    description = "A 200-class ImageNet subset: 100,000 training and 10,000 test 64×64 colour images."
    source = Source(
        title="Tiny ImageNet visual recognition challenge",
        authors="Le, Yang",
        venue="CS231N course, Stanford 2015",
        url="http://cs231n.stanford.edu/reports/2015/pdfs/yle_project.pdf",
    )
    info = DatasetInfo(name="tinyimagenet", num_classes=200, shape=(3, 64, 64), mean=(0.4802, 0.4481, 0.3975), std=0.2276)

    url: ClassVar[str] = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    archive: ClassVar[str] = "tiny-imagenet-200.zip"
    # The md5 published with the archive (and checked by torchvision-style loaders).
    md5: ClassVar[str] = "90528d7ca1a48142e341f4ef8d21d0de"

    def load(self, root: Path, *, download: bool = True) -> Splits:
        path = fetch(Path(root) / self.name / self.archive, [self.url], download=download)
        verify(path, md5=self.md5, url=self.url)
        # Once verified, the zip's md5 is self.md5: the cache key costs no second pass.
        key = {"format": CACHE_FORMAT, "md5": self.md5.lower()}
        cache = path.with_name(path.name.removesuffix(".zip") + ".decoded.pt")
        splits = self._read_cache(cache, key)
        if splits is None:
            splits = self._read_zip(path)
            _save_atomically(cache, {**key, **vars(splits)})
        return splits

    def _read_zip(self, path: Path) -> Splits:
        try:
            with zipfile.ZipFile(path) as archive:
                wnids = _lines(archive, WNIDS, path)
                if len(wnids) != self.info.num_classes or len(set(wnids)) != len(wnids):
                    raise UsageError(
                        f"malformed data file {path}: {WNIDS} must list {self.info.num_classes} distinct wnids, "
                        f"it lists {len(wnids)} ({len(set(wnids))} distinct)"
                    )
                label = {wnid: i for i, wnid in enumerate(wnids)}
                train = []
                for member in archive.namelist():
                    parts = member.split("/")  # tiny-imagenet-200/train/<wnid>/images/<wnid>_<k>.JPEG
                    if len(parts) != 5 or parts[1] != "train" or parts[3] != "images" or not parts[4].endswith(".JPEG"):
                        continue
                    if parts[2] not in label:
                        raise UsageError(f"malformed data file {path}: {member} is in a class that {WNIDS} does not list")
                    train.append((label[parts[2]], member))
                train.sort()
                test = []
                for row in _lines(archive, VAL_ANNOTATIONS, path):
                    fields = row.split("\t")
                    if len(fields) < 2 or fields[1] not in label:
                        raise UsageError(
                            f"malformed data file {path}: {VAL_ANNOTATIONS} has the row {row!r}, "
                            f"expected a file name then one of the wnids of {WNIDS}"
                        )
                    test.append((label[fields[1]], f"{TOP}/val/images/{fields[0]}"))
                return Splits(*self._decode(archive, train, path), *self._decode(archive, test, path))
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise UsageError(f"corrupt data file {path}: {one_line(e)}; delete it and download it again from {self.url}") from e

    def _decode(
        self, archive: zipfile.ZipFile, members: list[tuple[int, str]], path: Path
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The JPEGs ``members`` (label, member name) as N×3×64×64 uint8 RGB, and their int64 labels."""
        c, h, w = self.info.shape
        images = torch.empty((len(members), c, h, w), dtype=torch.uint8)
        for i, (_, member) in enumerate(members):
            try:
                with Image.open(io.BytesIO(archive.read(member))) as image:
                    rgb = np.array(image.convert("RGB"))
            except KeyError as e:
                raise UsageError(f"malformed data file {path}: it lacks {member}") from e
            except (UnidentifiedImageError, OSError) as e:
                raise UsageError(
                    f"corrupt image {member} in {path}: {one_line(e)}; delete it and download it again from {self.url}"
                ) from e
            if rgb.shape != (h, w, c):
                raise UsageError(f"malformed data file {path}: {member} is {rgb.shape[1]}×{rgb.shape[0]}, expected {w}×{h}")
            images[i] = torch.from_numpy(rgb).permute(2, 0, 1)
        return images, torch.tensor([label for label, _ in members], dtype=torch.int64)

    def _read_cache(self, cache: Path, key: dict[str, object]) -> Splits | None:
        """The cached splits if ``cache`` holds them for ``key``; None (to rebuild) otherwise."""
        try:
            saved = torch.load(cache, weights_only=True)
            if any(saved.get(k) != v for k, v in key.items()):
                return None
            splits = Splits(saved["train_images"], saved["train_labels"], saved["test_images"], saved["test_labels"])
        # A cache is only a copy: whatever is wrong with it (missing, truncated, not a dict,
        # tensors of the wrong kind) means decode the zip again, never fail the load.
        except Exception:  # noqa: BLE001
            return None
        images_ok = all(x.shape[1:] == self.info.shape for x in (splits.train_images, splits.test_images))
        labels_ok = all(
            x.dtype == torch.int64 and (x.numel() == 0 or 0 <= int(x.min()) <= int(x.max()) < self.info.num_classes)
            for x in (splits.train_labels, splits.test_labels)
        )
        return splits if images_ok and labels_ok else None


def _lines(archive: zipfile.ZipFile, member: str, path: Path) -> list[str]:
    """The non-blank lines of a text member, stripped."""
    try:
        text = archive.read(member).decode("utf-8")
    except KeyError as e:
        raise UsageError(f"malformed data file {path}: it lacks {member}") from e
    except UnicodeDecodeError as e:
        raise UsageError(f"malformed data file {path}: {member} is not UTF-8 text") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def _save_atomically(path: Path, data: dict[str, object]) -> None:
    """``torch.save`` to a temporary file renamed into place; a folder that cannot be written is skipped."""
    try:
        fd, part = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    except OSError:
        return  # e.g. a read-only shared data folder: load from the zip each time
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
        os.replace(part, path)
    except OSError:
        Path(part).unlink(missing_ok=True)
