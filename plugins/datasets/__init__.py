"""Built-in plugin ``datasets``: MNIST, Fashion-MNIST, CIFAR-10 and TinyImageNet, from their official files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl

if TYPE_CHECKING:
    from harness import Dataset


@hookimpl
def register_datasets() -> list[type[Dataset]]:
    from harness_plugins.datasets.cifar import CIFAR10
    from harness_plugins.datasets.mnist import MNIST, FashionMNIST
    from harness_plugins.datasets.tinyimagenet import TinyImageNet

    return [MNIST, FashionMNIST, CIFAR10, TinyImageNet]
