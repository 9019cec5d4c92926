"""The l_inf-dist net (Zhang et al., ICML 2021), trained by ``linf_v1`` and ``linf_v2``.

``depth`` dist layers: input → width, (depth − 2) × width → width, width →
classes. Hidden layers have mean-shift normalisation and no bias; the last
layer has a bias and no mean shift; logits are the *negated* outputs of the
last layer. Inputs are raw ``[0,1]`` images; the net normalises them with the
dataset's per-channel mean and one scalar std, so at p = ∞ every logit is
``1/std``-Lipschitz w.r.t. the raw image under l_inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from harness import Model
from harness.data import DatasetInfo
from harness.options import doc_field
from harness_plugins.lib import citations
from harness_plugins.lib.lpdist import LpDistLinear


@dataclass(frozen=True)
class LinfDistNetOptions:
    depth: int = doc_field(5, "number of dist layers, the output layer included (MNIST 5, CIFAR-10 6)")
    width: int = doc_field(5120, "units per hidden layer")
    identity_value: float = doc_field(10.0, "identity-map init: w[i, i mod in] = -identity_value where in <= out (0: off)")
    momentum: float = doc_field(0.1, "momentum of the mean-shift running mean")

    def __post_init__(self) -> None:
        if self.depth < 2 or self.width < 1:
            raise ValueError(f"depth must be >= 2 and width >= 1, got depth {self.depth}, width {self.width}")
        if not 0 < self.momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {self.momentum}")
        if not 0 <= self.identity_value < math.inf:
            raise ValueError(f"identity_value must be a finite number >= 0, got {self.identity_value}")


class LinfDistNet(nn.Module):
    def __init__(self, info: DatasetInfo, options: LinfDistNetOptions) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.std = float(info.std)
        identity = options.identity_value or None
        sizes = [info.input_size] + [options.width] * (options.depth - 1)
        hidden = [
            LpDistLinear(i, o, mean_shift=True, momentum=options.momentum, identity_value=identity)
            for i, o in zip(sizes[:-1], sizes[1:])
        ]
        self.layers = nn.ModuleList(hidden + [LpDistLinear(options.width, info.num_classes, bias=True, identity_value=identity)])

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return ((images - self.mean) / self.std).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self._normalise(images)
        for layer in self.layers:
            h = layer(h)
        return -h

    def _at_infinity(self) -> bool:
        return all(math.isinf(layer.p) for layer in self.layers)

    # harness.components.LipschitzBounded
    def lipschitz_constant(self, norm: str) -> float | None:
        """Every l_inf-dist unit is 1-Lipschitz under l_inf, mean shift and bias are
        translations; normalisation divides by ``std``. Only at p = ∞ and in eval mode."""
        if norm != "inf" or self.training or not self._at_infinity():
            return None
        return 1.0 / self.std

    # harness.components.IntervalBounded
    def supports_interval_bounds(self) -> bool:
        return not self.training and self._at_infinity()

    def interval_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-neuron bounds through every dist layer (the original code's certifier)."""
        low, high = self._normalise(lower), self._normalise(upper)
        for layer in self.layers:
            low, high = layer.interval(low, high)
        return -high, -low


class LinfDistNetModel(Model):
    name = "linf_dist_net"
    description = "l_inf-dist net: fully connected l_p-dist layers, mean shift, identity init"
    source = citations.LINF_DIST_NET
    Options = LinfDistNetOptions

    def build(self, data: DatasetInfo) -> nn.Module:
        return LinfDistNet(data, self.options)
