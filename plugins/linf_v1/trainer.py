"""Training of the l_inf-dist net (Zhang et al., ICML 2021) with its code's hinge loss.

Loss (``main.py``, ``Loss`` wrapping ``hinge(mix)``): with
``worse_j = z_j − z_y + θ`` (0 at the label) and θ = 2·eps_train in the
network's normalised units,
``kappa·hinge(worse) + (1 − kappa)·hinge(z − z_y)``, where
``hinge(v) = mix·mean_b max_j relu(v) + (1 − mix)·mean_{b,j} relu(v)``
(every command uses kappa = 1; mix 0.75 on MNIST and CIFAR-10, 1.0 on
Fashion-MNIST). The schedules and the l_p weight decay are in
:mod:`harness_plugins.lib.v1_recipe`. Random crop pads with zeros (torchvision's default), plus a
horizontal flip on CIFAR-10.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from harness.options import doc_field
from harness.scaffold import BatchLoss
from harness_plugins.lib import citations
from harness_plugins.lib.v1_recipe import V1Options, V1Recipe, hinge_mix, margins_to_label


@dataclass(frozen=True)
class LinfV1Options(V1Options):
    hinge_mix: float = doc_field(0.75, "hinge = mix·(max over classes) + (1 − mix)·(mean over classes)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.hinge_mix <= 1:
            raise ValueError(f"hinge_mix must be in [0, 1], got {self.hinge_mix}")


class LinfV1Trainer(V1Recipe):
    name = "linf_v1"
    description = "l_inf-dist net (ICML 2021): hinge loss, l_p relaxation 8 → ∞, l_p weight decay"
    source = citations.LINF_DIST_NET
    model = "linf_dist_net"
    Options = LinfV1Options

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        o: LinfV1Options = self.options
        with self.timer("forward"):
            logits = model(images)
        clean = margins_to_label(logits, labels)
        worse = (clean + 2 * values["eps_train"]).scatter(1, labels[:, None], 0.0)  # θ = 2·eps_train
        loss = o.kappa * hinge_mix(worse, o.hinge_mix)
        if o.kappa < 1:
            loss = loss + (1 - o.kappa) * hinge_mix(clean, o.hinge_mix)
        return BatchLoss(loss, logits)
