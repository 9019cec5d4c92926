"""Datasets as the rest of the harness sees them, and helpers for dataset plugins."""

from harness.data.augment import Augmentation
from harness.data.files import default_data_dir, fetch, gunzip, md5sum, sha256sum, verify
from harness.data.idx import read_idx
from harness.data.types import DatasetInfo, Splits

__all__ = [
    "Augmentation",
    "DatasetInfo",
    "Splits",
    "default_data_dir",
    "fetch",
    "gunzip",
    "md5sum",
    "read_idx",
    "sha256sum",
    "verify",
]
