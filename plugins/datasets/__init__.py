"""The built-in datasets: MNIST, Fashion-MNIST and CIFAR-10, from their official files."""

from __future__ import annotations

from harness import Dataset, hookimpl
from harness_plugins.datasets.cifar import CIFAR10
from harness_plugins.datasets.mnist import MNIST, FashionMNIST

__all__ = ["CIFAR10", "MNIST", "FashionMNIST"]


@hookimpl
def register_datasets() -> list[type[Dataset]]:
    return [MNIST, FashionMNIST, CIFAR10]
