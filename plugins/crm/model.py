"""The CRM networks (Fazlyab, Entesari, Roy, Chellappa, NeurIPS 2023; code ``Networks/NetworkArchitectures.py``).

Plain feed-forward ReLU networks, a bias in every layer, ReLU after every
layer but the last, PyTorch's default initialisation. Convolutions are
``(in, out, kernel, stride, padding)``:

* ``4c3f`` (MNIST): (1,32,3,1,1) (32,32,4,2,1) (32,64,3,1,1) (64,64,4,2,1), FC 512, FC 512, FC classes;
* ``6c2f`` (CIFAR-10): (3,32,3,1,1) (32,32,4,2,1) (32,64,3,1,1) (64,64,4,2,1) (64,64,3,1,1) (64,64,4,2,1), FC 512, FC classes;
* ``8c2f`` (TinyImageNet, 64×64): (3,64,3,1,1) (64,64,3,1,0) (64,64,4,2,0) (64,128,3,1,1) (128,128,3,1,1)
  (128,128,4,2,0) (128,256,3,1,1) (256,256,4,2,0), FC 256, FC classes.

``input_range = "symmetric"`` maps ``[0, 1]`` pixels to ``[−1, 1]`` first, as
the code's CIFAR-10 loader (``Normalize(0.5, 0.5)``). It is a frozen 1×1
convolution (weights 2·I, bias −1), so the whole network stays a chain of
``Conv2d``/``Linear``/``ReLU`` that LipLT and auto_LiRPA (l2 included) bound
with respect to raw pixels. ``channel_scale`` shrinks every layer for quick runs.
The network is a :class:`~harness_plugins.lib.liplt.estimate.PowerVectorsSequential`
(an ``nn.Sequential`` in every other respect) so that the trainer's
power-iteration vectors are saved with the weights: the ``liplt-estimate``
certifier runs the code's own protocol from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from harness import Model, UsageError
from harness.data import DatasetInfo
from harness.options import doc_field
from harness_plugins.lib import citations
from harness_plugins.lib.liplt.estimate import PowerVectorsSequential

#: (convolutions (out, kernel, stride, padding), hidden FC widths, input size it was made for).
ARCHITECTURES: dict[str, tuple[tuple[tuple[int, int, int, int], ...], tuple[int, ...], int]] = {
    "4c3f": (((32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)), (512, 512), 28),
    "6c2f": (((32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)), (512,), 32),
    "8c2f": (
        ((64, 3, 1, 1), (64, 3, 1, 0), (64, 4, 2, 0), (128, 3, 1, 1), (128, 3, 1, 1), (128, 4, 2, 0), (256, 3, 1, 1), (256, 4, 2, 0)),
        (256,),
        64,
    ),
}

#: The architecture the paper uses on each dataset.
DEFAULT_ARCH = {"mnist": "4c3f", "fashion-mnist": "4c3f", "cifar10": "6c2f", "tinyimagenet": "8c2f"}


@dataclass(frozen=True)
class CRMNetOptions:
    arch: Literal["auto", "4c3f", "6c2f", "8c2f"] = doc_field("auto", "architecture (auto: the paper's for the dataset)")
    input_range: Literal["unit", "symmetric"] = doc_field("unit", "feed [0,1] pixels as they are, or mapped to [-1,1] (the code's CIFAR-10)")
    channel_scale: float = doc_field(1.0, "multiply every layer's width by this (quick runs)")

    def __post_init__(self) -> None:
        if not 0 < self.channel_scale < math.inf:
            raise ValueError(f"channel_scale must be a positive number, got {self.channel_scale}")


def symmetric_range(channels: int) -> nn.Conv2d:
    """The frozen map ``x ↦ 2x − 1`` (``Normalize(0.5, 0.5)``) as a 1×1 convolution."""
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(2 * torch.eye(channels).reshape(channels, channels, 1, 1))
        conv.bias.fill_(-1.0)
    conv.requires_grad_(False)
    return conv


def crm_net(
    arch: str, channels: int, size: int, classes: int, *, input_range: str = "unit", channel_scale: float = 1.0
) -> PowerVectorsSequential:
    convs, fcs, _ = ARCHITECTURES[arch]
    layers: list[nn.Module] = [symmetric_range(channels)] if input_range == "symmetric" else []
    width = channels
    for out, kernel, stride, padding in convs:
        out = max(1, round(out * channel_scale))
        layers += [nn.Conv2d(width, out, kernel, stride, padding), nn.ReLU()]
        width = out
        size = (size + 2 * padding - kernel) // stride + 1
        if size < 1:
            raise UsageError(f"architecture {arch!r} does not fit {size}-pixel inputs")
    layers.append(nn.Flatten())
    features = width * size * size
    for hidden in fcs:
        hidden = max(1, round(hidden * channel_scale))
        layers += [nn.Linear(features, hidden), nn.ReLU()]
        features = hidden
    layers.append(nn.Linear(features, classes))
    return PowerVectorsSequential(*layers)


class CRMNetModel(Model):
    name = "crm_net"
    description = "CRM's mCnF ReLU networks (4C3F MNIST, 6C2F CIFAR-10, 8C2F TinyImageNet)"
    source = citations.CRM_LIPLT
    Options = CRMNetOptions

    def build(self, data: DatasetInfo) -> nn.Module:
        o: CRMNetOptions = self.options
        arch = DEFAULT_ARCH.get(data.name, "4c3f") if o.arch == "auto" else o.arch
        channels, height, width = data.shape
        if height != width:
            raise UsageError(f"crm_net needs square images, {data.name!r} has {height}×{width}")
        net = crm_net(arch, channels, height, data.num_classes, input_range=o.input_range, channel_scale=o.channel_scale)
        net.input_scale = 2.0 if o.input_range == "symmetric" else 1.0  # model-input radius per pixel radius
        return net
