"""The built-in datasets: MNIST, Fashion-MNIST, CIFAR-10 and TinyImageNet, from their official files."""

from __future__ import annotations

from harness import Dataset, hookimpl
from harness_plugins.datasets.cifar import CIFAR10
from harness_plugins.datasets.mnist import MNIST, FashionMNIST
from harness_plugins.datasets.tinyimagenet import TinyImageNet

__all__ = ["CIFAR10", "MNIST", "FashionMNIST", "TinyImageNet"]


@hookimpl
def register_datasets() -> list[type[Dataset]]:
    return [MNIST, FashionMNIST, CIFAR10, TinyImageNet]
