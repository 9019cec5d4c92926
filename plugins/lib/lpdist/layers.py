"""The l_p-dist layers of l_inf-dist nets (fully connected, convolutional), with mean shift and interval bounds.

Follows the original code (Zhang et al., ICML 2021, ``model/norm_dist.py``; v2
``core/modules/norm_dist.py``): weights N(0, 1) with the "identity-map" init
``w[i, i mod in] = −identity_value`` where in ≤ out (at the centre pixel for
convolutions), and the order dist → mean shift → bias.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from harness.distributed import batch_mean
from harness_plugins.lib.lpdist.ops import inf_dist_bounds, inf_dist_bounds_conv, lp_dist, lp_dist_conv

__all__ = ["LpDistConv2d", "LpDistLinear", "lp_layers", "set_p"]


def _per_channel(t: Tensor, y: Tensor) -> Tensor:
    """``t`` (one value per output channel) shaped to broadcast against ``y`` (B×O or B×O×H×W)."""
    return t.view(-1, *([1] * (y.dim() - 2)))


def _shift_and_bias(layer: LpDistLinear | LpDistConv2d, y: Tensor) -> Tensor:
    """The mean shift (over every dimension but the channels) and the bias, in the original order."""
    if layer.running_mean is not None:
        if layer.training:
            # One process: y.mean over those dims; several: the global batch's mean (harness.distributed, --batch-stats).
            mean = batch_mean(y, [d for d in range(y.dim()) if d != 1])
            with torch.no_grad():
                layer.running_mean.mul_(1 - layer.momentum).add_(mean.detach(), alpha=layer.momentum)
            y = y - _per_channel(mean, y)
        else:
            y = y - _per_channel(layer.running_mean, y)
    if layer.bias is not None:
        y = y + _per_channel(layer.bias, y)
    return y


def _shift_and_bias_bounds(layer: LpDistLinear | LpDistConv2d, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """The eval-mode shift and bias applied to both bounds: a translation keeps them exact."""
    if layer.running_mean is not None:
        shift = _per_channel(layer.running_mean, low)
        low, high = low - shift, high - shift
    if layer.bias is not None:
        bias = _per_channel(layer.bias.detach(), low)
        low, high = low + bias, high + bias
    return low, high


class _KeepsP(nn.Module):
    """Keeps ``p`` in the state dict (``NAME._extra_state = {"p": p}``): the saved weights of a model
    evaluated at p = ∞ reload at p = ∞, not at the constructor's 8."""

    p: float

    def get_extra_state(self) -> dict[str, float]:
        return {"p": self.p}

    def set_extra_state(self, state: dict[str, float]) -> None:
        p = state["p"] if isinstance(state, dict) else None
        if not isinstance(p, int | float) or isinstance(p, bool) or not p >= 1:
            raise ValueError(f"l_p-dist layer state {state!r} has no p >= 1")
        self.p = float(p)


def _check_interval_mode(layer: LpDistLinear | LpDistConv2d) -> None:
    if layer.training or not math.isinf(layer.p):
        raise RuntimeError(
            f"interval bounds need eval mode and p = inf (training={layer.training}, p={layer.p}); "
            "call model.eval() and set_p(model, math.inf) first"
        )


class LpDistLinear(_KeepsP):
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

    ``p`` (default 8.0) is an attribute, normally set for a whole model by :func:`set_p`; it is
    part of the state dict (``_extra_state``), so reloaded weights compute at the p they were saved at.
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
        return _shift_and_bias(self, lp_dist(x, self.weight, self.p))

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Exact per-unit bounds of the output for inputs in the box ``[lower, upper]`` (B×I each).

        :returns: ``(lower, upper)`` bounds, B×O each.
        :raises RuntimeError: unless the layer is in eval mode with ``p = ∞`` (a training-mode
            mean shift depends on the batch, and finite p has no exact bound here).
        """
        _check_interval_mode(self)
        return _shift_and_bias_bounds(self, *inf_dist_bounds(lower, upper, self.weight.detach()))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, p={self.p}, "
            f"bias={self.bias is not None}, mean_shift={self.mean_shift}"
        )


class LpDistConv2d(_KeepsP):
    """``y[:, o, i, j] = ||patch_ij(x) − w_o||_p`` per output channel ``o``, then an optional mean shift and bias.

    Patches are ``kernel_size``×``kernel_size`` windows over all input channels, taken with zero
    padding as ``F.unfold`` does (the original ``NormDistConv``); see :func:`.lp_dist_conv`.

    :param in_channels: channels of each input image.
    :param out_channels: number of output channels (units).
    :param kernel_size: side of the square window.
    :param stride: step between windows.
    :param padding: zeros added on every side of the image.
    :param bias: add a learnable bias (initialised to 0) per channel after the mean shift.
    :param mean_shift: subtract the mean over batch and pixels per channel in training (and track
        it with ``momentum`` in the buffer ``running_mean``), the running mean in eval. No
        variance, no affine, as the original ``MeanNorm``/``MeanShift``.
    :param momentum: weight of the new batch mean in ``running_mean``.
    :param identity_value: if not None and ``in_channels <= out_channels``, set the centre pixel
        ``w[i, i mod in_channels, k // 2, k // 2] = −identity_value`` for every channel ``i``.

    The weight is ``out_channels``×``in_channels``×``k``×``k``. ``p`` (default 8.0) is an
    attribute, normally set for a whole model by :func:`set_p`; it is part of the state dict
    (``_extra_state``), so reloaded weights compute at the p they were saved at.
    """

    p: float

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        mean_shift: bool = False,
        momentum: float = 0.1,
        identity_value: float | None = 10.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.mean_shift = mean_shift
        self.momentum = momentum
        self.identity_value = identity_value
        self.p = 8.0
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.register_buffer("running_mean", torch.zeros(out_channels) if mean_shift else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight, 0.0, 1.0)
            if self.identity_value is not None and self.in_channels <= self.out_channels:
                units, centre = torch.arange(self.out_channels), self.kernel_size // 2
                self.weight[units, units % self.in_channels, centre, centre] = -self.identity_value
            if self.bias is not None:
                self.bias.zero_()
            if self.running_mean is not None:
                self.running_mean.zero_()

    def _rows(self, weight: Tensor) -> Tensor:
        # O×C×k×k flattened is exactly unfold's channel-major patch order.
        return weight.view(self.out_channels, -1)

    def _check_channels(self, x: Tensor, what: str) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected {what} of shape B×{self.in_channels}×H×W, got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_channels(x, "x")
        y = lp_dist_conv(x, self._rows(self.weight), self.p, self.kernel_size, self.stride, self.padding)
        return _shift_and_bias(self, y)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Exact per-neuron bounds of the output for inputs in the box ``[lower, upper]`` (B×C×H×W each).

        The zero padding is a constant, not part of the box (lower = upper = 0 there).

        :returns: ``(lower, upper)`` bounds, B×O×H'×W' each.
        :raises RuntimeError: unless the layer is in eval mode with ``p = ∞`` (a training-mode
            mean shift depends on the batch, and finite p has no exact bound here).
        """
        _check_interval_mode(self)
        self._check_channels(lower, "lower")
        self._check_channels(upper, "upper")
        w = self._rows(self.weight.detach())
        bounds = inf_dist_bounds_conv(lower, upper, w, self.kernel_size, self.stride, self.padding)
        return _shift_and_bias_bounds(self, *bounds)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, p={self.p}, bias={self.bias is not None}, "
            f"mean_shift={self.mean_shift}"
        )


def lp_layers(module: nn.Module) -> Iterator[LpDistLinear | LpDistConv2d]:
    """Every :class:`LpDistLinear` and :class:`LpDistConv2d` inside ``module`` (itself included).

    In ``modules()`` order.
    """
    return (m for m in module.modules() if isinstance(m, (LpDistLinear, LpDistConv2d)))


def set_p(module: nn.Module, p: float) -> None:
    """Set ``p`` on every l_p-dist layer inside ``module`` (see :func:`lp_layers`).

    :raises ValueError: for p < 1 (``math.inf`` is allowed).
    """
    p = float(p)
    if not p >= 1:
        raise ValueError(f"p must be >= 1 or math.inf, got {p}")
    for layer in lp_layers(module):
        layer.p = p
