"""The l_inf-dist net + MLP head (Zhang et al., ICML 2021, Section 6 and Appendix F).

A dist backbone — fully connected (``MLPFeature``: ``depth`` l_p-dist layers
of ``width`` units) or convolutional (Appendix F, Table 8: five 3×3 dist
convolutions 3→128→128→256 (stride 2)→256→256, then a dist layer to
``width``) — every layer with mean shift, no bias, −10 identity init where
in ≤ out; then a conventional head FC(hidden) + tanh + FC(classes).

The head's weights follow the code's parametrisation (``BoundLinear``: weights
N(0, 1) multiplied by 1/√fan_in in the forward pass, bias 0). Here the head is
a plain ``nn.Linear`` initialised N(0, 1/fan_in) and the trainer gives its
weights the learning rate lr/√fan_in: under Adam (and decoupled decay) the two
are the same optimisation, and auto_LiRPA can trace a plain ``nn.Linear``.

At p = ∞ in eval mode the backbone is certified by exact interval bounds
(the image box clipped to [0, 1]); the head by auto_LiRPA (the ``ibp``,
``crown-ibp`` and ``crown`` certifiers), through :class:`harness.FeatureHead`.
TinyImageNet (64×64) is centre-cropped to ``input_size`` (56 in the paper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from harness import Model, UsageError
from harness.data import DatasetInfo
from harness.options import doc_field
from harness_plugins.lib import citations
from harness_plugins.lib.lpdist import LpDistConv2d, LpDistLinear, lp_layers

#: Appendix F, Table 8: (out channels, stride) of the five 3×3 dist convolutions (padding 1).
CONV_LAYERS = ((128, 1), (128, 1), (256, 2), (256, 1), (256, 1))


@dataclass(frozen=True)
class LinfDistNetMLPOptions:
    backbone: Literal["mlp", "conv"] = doc_field("mlp", "dist backbone: fully connected, or the convolutional net of Appendix F")
    depth: int = doc_field(5, "dist layers of the fully connected backbone (MNIST 4, CIFAR-10 5)")
    width: int = doc_field(5120, "units of each fully connected dist layer (the conv backbone's last layer: 512)")
    hidden: int = doc_field(512, "units of the head's tanh layer")
    channel_scale: float = doc_field(1.0, "conv backbone: multiply Table 8's channel counts (128/256) by this")
    input_size: int = doc_field(0, "centre-crop larger images to this size (TinyImageNet 56; 0: the dataset's)")
    identity_value: float = doc_field(10.0, "identity-map init: w[i, i mod in] = -identity_value where in <= out (0: off)")
    momentum: float = doc_field(0.1, "momentum of the mean-shift running mean")

    def __post_init__(self) -> None:
        if self.depth < 1 or self.width < 1 or self.hidden < 1:
            raise ValueError(f"need depth, width and hidden >= 1, got {self.depth}, {self.width}, {self.hidden}")
        if not 0 < self.channel_scale < math.inf or self.input_size < 0:
            raise ValueError(f"need channel_scale > 0 and input_size >= 0, got {self.channel_scale}, {self.input_size}")
        if not 0 < self.momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {self.momentum}")
        if not 0 <= self.identity_value < math.inf:
            raise ValueError(f"identity_value must be a finite number >= 0, got {self.identity_value}")


def make_head(features: int, hidden: int, classes: int) -> nn.Sequential:
    """FC(hidden) + tanh + FC(classes), weights N(0, 1/fan_in), biases 0."""
    head = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, classes))
    with torch.no_grad():
        for layer in (head[0], head[2]):
            nn.init.normal_(layer.weight, 0.0, 1.0 / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
    return head


class LinfDistNetMLP(nn.Module):
    def __init__(self, info: DatasetInfo, options: LinfDistNetMLPOptions) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.std = float(info.std)
        channels, height, width = info.shape
        size = options.input_size or height
        if size > min(height, width):
            raise UsageError(
                f"model option input_size {size} is larger than the {height}×{width} images of {info.name!r}; "
                f"give at most {min(height, width)} (0: the images' size)"
            )
        self.input_size = size
        identity = options.identity_value or None
        shift = {"mean_shift": True, "momentum": options.momentum, "identity_value": identity}
        self.conv = nn.ModuleList()
        if options.backbone == "conv":
            for out, stride in CONV_LAYERS:
                out = max(1, round(out * options.channel_scale))
                self.conv.append(LpDistConv2d(channels, out, 3, stride=stride, padding=1, **shift))
                channels, size = out, (size + 2 - 3) // stride + 1
            sizes = [channels * size * size, options.width]
        else:
            sizes = [channels * size * size] + [options.width] * options.depth
        self.dense = nn.ModuleList(LpDistLinear(i, o, **shift) for i, o in zip(sizes[:-1], sizes[1:]))
        self.head = make_head(options.width, options.hidden, info.num_classes)

    def _normalise(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        if h > self.input_size or w > self.input_size:  # the paper's test-time centre crop
            top, left = (h - self.input_size) // 2, (w - self.input_size) // 2
            images = images[..., top : top + self.input_size, left : left + self.input_size]
        return (images - self.mean) / self.std

    def features(self, images: Tensor) -> Tensor:
        h = self._normalise(images)
        for layer in self.conv:
            h = layer(h)
        h = h.flatten(1)
        for layer in self.dense:
            h = layer(h)
        return h

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    # harness.components.FeatureHead
    def supports_feature_bounds(self, norm: str) -> bool:
        return norm == "inf" and not self.training and all(math.isinf(layer.p) for layer in lp_layers(self))

    def feature_bounds(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Exact per-neuron interval bounds through every dist layer (the original certifier)."""
        low, high = self._normalise(lower), self._normalise(upper)
        for layer in self.conv:
            low, high = layer.interval(low, high)
        low, high = low.flatten(1), high.flatten(1)
        for layer in self.dense:
            low, high = layer.interval(low, high)
        return low, high


class LinfDistNetMLPModel(Model):
    name = "linf_dist_net_mlp"
    description = "l_inf-dist net + MLP: a dist backbone (fully connected or conv) and an FC-tanh-FC head"
    source = citations.LINF_DIST_NET
    Options = LinfDistNetMLPOptions

    def build(self, data: DatasetInfo) -> nn.Module:
        return LinfDistNetMLP(data, self.options)
