"""The fully connected l_p-dist layer of l_inf-dist nets, with mean shift and interval bounds.

Follows the original code (Zhang et al., ICML 2021, ``model/norm_dist.py``; v2
``core/modules/norm_dist.py``): weights N(0, 1) with the "identity-map" init
``w[i, i mod in] = −identity_value`` where in ≤ out, and the order
dist → mean shift → bias.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from harness_plugins.lpdist.ops import inf_dist_bounds, lp_dist

__all__ = ["LpDistLinear", "lp_layers", "set_p"]


class LpDistLinear(nn.Module):
    """``y = ||x − w_o||_p`` per output unit ``o``, then an optional mean shift and bias.

    :param in_features: size of each input row.
    :param out_features: number of units.
    :param bias: add a learnable bias (initialised to 0) after the mean shift.
    :param mean_shift: subtract the batch mean per unit in training (and track it with
        ``momentum`` in the buffer ``running_mean``), the running mean in eval. No variance,
        no affine, as the original ``MeanNorm``/``MeanShift``.
    :param momentum: weight of the new batch mean in ``running_mean``.
    :param identity_value: if not None and ``in_features <= out_features``, set
        ``w[i, i mod in_features] = −identity_value`` for every unit ``i``.

    ``p`` (default 8.0) is an attribute, normally set for a whole model by :func:`set_p`.
    """

    p: float

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = False,
        mean_shift: bool = False,
        momentum: float = 0.1,
        identity_value: float | None = 10.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.mean_shift = mean_shift
        self.momentum = momentum
        self.identity_value = identity_value
        self.p = 8.0
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.register_buffer("running_mean", torch.zeros(out_features) if mean_shift else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight, 0.0, 1.0)
            if self.identity_value is not None and self.in_features <= self.out_features:
                units = torch.arange(self.out_features)
                self.weight[units, units % self.in_features] = -self.identity_value
            if self.bias is not None:
                self.bias.zero_()
            if self.running_mean is not None:
                self.running_mean.zero_()

    def forward(self, x: Tensor) -> Tensor:
        y = lp_dist(x, self.weight, self.p)
        if self.running_mean is not None:
            if self.training:
                mean = y.mean(dim=0)
                with torch.no_grad():
                    self.running_mean.mul_(1 - self.momentum).add_(mean.detach(), alpha=self.momentum)
                y = y - mean
            else:
                y = y - self.running_mean
        if self.bias is not None:
            y = y + self.bias
        return y

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Exact per-unit bounds of the output for inputs in the box ``[lower, upper]`` (B×I each).

        :returns: ``(lower, upper)`` bounds, B×O each.
        :raises RuntimeError: unless the layer is in eval mode with ``p = ∞`` (a training-mode
            mean shift depends on the batch, and finite p has no exact bound here).
        """
        if self.training or not math.isinf(self.p):
            raise RuntimeError(
                f"interval bounds need eval mode and p = inf (training={self.training}, p={self.p}); "
                "call model.eval() and set_p(model, math.inf) first"
            )
        low, high = inf_dist_bounds(lower, upper, self.weight.detach())
        if self.running_mean is not None:
            low, high = low - self.running_mean, high - self.running_mean
        if self.bias is not None:
            low, high = low + self.bias.detach(), high + self.bias.detach()
        return low, high

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, p={self.p}, "
            f"bias={self.bias is not None}, mean_shift={self.mean_shift}"
        )


def lp_layers(module: nn.Module) -> Iterator[LpDistLinear]:
    """Every :class:`LpDistLinear` inside ``module`` (itself included), in ``modules()`` order."""
    return (m for m in module.modules() if isinstance(m, LpDistLinear))


def set_p(module: nn.Module, p: float) -> None:
    """Set ``p`` on every :class:`LpDistLinear` inside ``module``.

    :raises ValueError: for p < 1 (``math.inf`` is allowed).
    """
    p = float(p)
    if not p >= 1:
        raise ValueError(f"p must be >= 1 or math.inf, got {p}")
    for layer in lp_layers(module):
        layer.p = p
