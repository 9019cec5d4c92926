"""The ``relu_mlp`` model: a fully connected ReLU network as a plain ``nn.Sequential``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness import DatasetInfo, Model
from harness.options import doc_field


@dataclass(frozen=True)
class ReluMLPOptions:
    width: int = doc_field(256, "units per hidden layer")
    depth: int = doc_field(1, "hidden layers (deeper nets make the product bound looser)")

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 0:
            raise ValueError(f"width must be >= 1 and depth >= 0, got width {self.width}, depth {self.depth}")


class ReluMLP(Model):
    name = "relu_mlp"
    description = "fully connected ReLU network (nn.Sequential of Flatten, Linear, ReLU) on raw [0,1] pixels"
    Options = ReluMLPOptions

    def build(self, data: DatasetInfo) -> nn.Module:
        # No normalisation layer: the inputs stay raw [0,1] pixels, so eps needs no rescaling and the
        # network is a chain of Linear and ReLU layers only, which every Lipschitz certifier can read.
        layers: list[nn.Module] = [nn.Flatten()]
        width = data.input_size
        for _ in range(self.options.depth):
            layers += [nn.Linear(width, self.options.width), nn.ReLU()]
            width = self.options.width
        layers.append(nn.Linear(width, data.num_classes))
        return nn.Sequential(*layers)
