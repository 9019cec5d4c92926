"""A feed-forward network as a chain of linear stages and scalar activations, and the LipLT recursion.

A conventional network ``x → W_L φ_{L−1}(W_{L−1} ⋯ φ_0(W_0 x + b_0) ⋯) + b_L``
is read as :class:`Chain`: stages ``W_0 … W_L`` (each a composition of
bias-free linear layers: ``Linear``, ``Conv2d``, ``Flatten``, average pooling,
batch norm in eval mode) separated by element-wise activations whose slopes
lie in ``[α_k, β_k]`` with ``0 ≤ α_k ≤ β_k`` (ReLU ``[0, 1]``, leaky ReLU
``[a, 1]``, tanh ``[0, 1]``, sigmoid ``[0, 1/4]``). :meth:`Chain.from_module`
checks the reading numerically against the module's own forward pass, so a
module whose ``forward`` is not the sequence of its layers is refused rather
than misread.

:func:`liplt` is the recursion of Fazlyab, Entesari, Roy, Chellappa (NeurIPS
2023, Theorem 3.3) for feed-forward nets (``H_k = 0``, ``G_k = I``): with
``c_k = (α_k + β_k)/2`` and ``d_k = (β_k − α_k)/2`` (the loop transformation),

    m_0 = ‖W_0‖,
    m_k = (∏_{i<k} c_i)·‖W_k⋯W_0‖ + Σ_{j<k} d_j·(∏_{j<i<k} c_i)·‖W_k⋯W_{j+1}‖·m_j,
    L_pq = (∏_{i<L} c_i)·‖c_pqᵀ W_L⋯W_0‖ + Σ_{k<L} d_k·(∏_{k<i<L} c_i)·‖c_pqᵀ W_L⋯W_{k+1}‖·m_k,

with ``c_pq = e_p − e_q``. ``m_k`` bounds the Lipschitz constant of
``x ↦ y_k = W_k x_k`` and ``L_pq`` that of ``z_p − z_q``. It holds for any
absolute norm (l2 with spectral norms, l_inf with induced l_inf norms); the
norms come from a callback, so the same recursion serves the sound norms of
certification and the power-iteration estimates of training. :func:`naive`
is the product bound ``(∏_k β_k‖W_k‖)·‖c_pqᵀ W_L‖`` of the same paper's
comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Element-wise activations and their slope bounds (α, β); a callable gets the layer.
ACTIVATIONS: dict[type[nn.Module], Callable[[nn.Module], tuple[float, float]]] = {
    nn.ReLU: lambda m: (0.0, 1.0),
    # A negative slope (α < 0) is refused where the chain is read: the recursion needs 0 ≤ α ≤ β.
    nn.LeakyReLU: lambda m: (min(m.negative_slope, 1.0), max(m.negative_slope, 1.0)),
    nn.Tanh: lambda m: (0.0, 1.0),
    nn.Sigmoid: lambda m: (0.0, 0.25),
}


class NotAChain(ValueError):
    """The module is not a feed-forward chain of supported layers (the message says why)."""


class LinearOp:
    """One linear layer without its bias: ``forward`` maps ``N×in_shape`` to ``N×out_shape``."""

    def __init__(self, layer: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.layer = layer
        self.in_shape = in_shape
        self.out_shape = out_shape

    def forward(self, v: Tensor) -> Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return v @ layer.weight.t().to(v.dtype)
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(v, layer.weight.to(v.dtype), None, layer.stride, layer.padding, layer.dilation, layer.groups)
        if isinstance(layer, nn.Flatten):
            return v.reshape(v.shape[0], *self.out_shape)
        if isinstance(layer, nn.AvgPool2d):
            return layer(v)
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = layer.running_var.to(v.dtype).add(layer.eps).rsqrt()
            if layer.weight is not None:
                scale = scale * layer.weight.to(v.dtype)
            return v * scale.reshape(-1, *([1] * (v.dim() - 2)))
        raise NotAChain(f"no linear operator for {type(layer).__name__}")

    def transpose(self, u: Tensor) -> Tensor:
        """The adjoint: ``N×out_shape`` to ``N×in_shape`` (differentiable in the weights)."""
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return u @ layer.weight.to(u.dtype)
        # padding="same" may pad unevenly, which conv2d_input cannot express: the VJP below handles it.
        if isinstance(layer, nn.Conv2d) and not isinstance(layer.padding, str):
            return torch.nn.grad.conv2d_input(
                (u.shape[0], *self.in_shape), layer.weight.to(u.dtype), u, layer.stride, layer.padding, layer.dilation, layer.groups
            )
        if isinstance(layer, nn.Flatten):
            return u.reshape(u.shape[0], *self.in_shape)
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.forward(u)  # diagonal
        # Any other linear map: the vector-Jacobian product at zero.
        with torch.enable_grad():
            probe = torch.zeros((u.shape[0], *self.in_shape), dtype=u.dtype, device=u.device, requires_grad=True)
            (out,) = torch.autograd.grad(self.forward(probe), probe, u, create_graph=torch.is_grad_enabled())
        return out

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        layer = self.layer
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            if layer.bias is None:
                return None
            b = layer.bias.to(dtype)
            return b if isinstance(layer, nn.Linear) else b.reshape(-1, 1, 1)
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = layer.running_var.to(dtype).add(layer.eps).rsqrt()
            shift = -layer.running_mean.to(dtype) * scale * (1.0 if layer.weight is None else layer.weight.to(dtype))
            if layer.bias is not None:
                shift = shift + layer.bias.to(dtype)
            return shift.reshape(-1, *([1] * (len(self.out_shape) - 1)))
        return None


class Stage:
    """A composition of :class:`LinearOp` (applied in order); the identity when empty."""

    def __init__(self, ops: Sequence[LinearOp], in_shape: tuple[int, ...]) -> None:
        self.ops = list(ops)
        self.in_shape = in_shape
        self.out_shape = self.ops[-1].out_shape if self.ops else in_shape

    @property
    def in_features(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)

    def forward(self, v: Tensor) -> Tensor:
        for op in self.ops:
            v = op.forward(v)
        return v

    def transpose(self, u: Tensor) -> Tensor:
        for op in reversed(self.ops):
            u = op.transpose(u)
        return u

    def affine(self, v: Tensor) -> Tensor:
        """The stage with its biases (for checking the reading against the module)."""
        for op in self.ops:
            v = op.forward(v)
            b = op.bias(v.dtype)
            if b is not None:
                v = v + b
        return v


@dataclass
class Chain:
    """Stages ``W_0 … W_L`` and the slope bounds ``(α_k, β_k)`` of the activation after each ``W_k``, ``k < L``."""

    stages: list[Stage]
    slopes: list[tuple[float, float]]
    input_shape: tuple[int, ...]
    activations: list[nn.Module] = field(default_factory=list)

    @property
    def hidden(self) -> int:
        """``L``: the number of activations (stages before the last)."""
        return len(self.slopes)

    @property
    def num_classes(self) -> int:
        return self.stages[-1].out_features

    def product(self, v: Tensor, start: int, end: int) -> Tensor:
        """``W_end ⋯ W_start v`` for ``v`` shaped ``N×stages[start].in_shape``."""
        for k in range(start, end + 1):
            v = self.stages[k].forward(v)
        return v

    def product_t(self, u: Tensor, start: int, end: int) -> Tensor:
        """``(W_end ⋯ W_start)ᵀ u`` for ``u`` shaped ``N×stages[end].out_shape``."""
        for k in range(end, start - 1, -1):
            u = self.stages[k].transpose(u)
        return u

    def logits(self, x: Tensor) -> Tensor:
        """The network's forward pass as read (for checks)."""
        for k, stage in enumerate(self.stages):
            x = stage.affine(x)
            if k < self.hidden:
                x = self.activations[k](x)
        return x

    @classmethod
    def from_module(cls, module: nn.Module, example: Tensor, *, rtol: float = 1e-4) -> Chain:
        """Read ``module`` (leaves in registration order) as a chain, checked on ``example`` (a batch).

        :raises NotAChain: naming the first unsupported layer, or when the reading
            does not reproduce ``module(example)``.
        """
        # remove_duplicate=False: a module used twice (one ReLU object shared by two places) is read twice.
        leaves = [m for _, m in module.named_modules(remove_duplicate=False) if next(m.children(), None) is None]
        owned = {id(p) for layer in leaves for p in layer.parameters(recurse=False)}
        if not all(id(p) in owned for p in module.parameters()):
            raise NotAChain(f"{type(module).__name__} has parameters outside its layers")
        shape = tuple(example.shape[1:])
        stages: list[Stage] = []
        slopes: list[tuple[float, float]] = []
        acts: list[nn.Module] = []
        ops: list[LinearOp] = []
        stage_in = shape
        probe = example[:1].detach()
        with torch.no_grad():
            for layer in leaves:
                kind = type(layer)
                if kind in ACTIVATIONS:
                    a, b = ACTIVATIONS[kind](layer)
                    if a < 0:
                        raise NotAChain(f"{kind.__name__} with a negative slope ({a:g}) is not monotone")
                    if not ops and slopes:  # two activations in a row: one whose slopes are the products'
                        pa, pb = slopes[-1]
                        products = (pa * a, pa * b, pb * a, pb * b)  # a slope may be negative (leaky ReLU)
                        slopes[-1] = (min(products), max(products))
                        acts[-1] = nn.Sequential(acts[-1], layer)
                    else:
                        stages.append(Stage(ops, stage_in))
                        slopes.append((a, b))
                        acts.append(layer)
                        ops, stage_in = [], tuple(probe.shape[1:])
                    probe = layer(probe)
                    continue
                if kind is nn.Identity or (kind is nn.Dropout and not layer.training):
                    continue
                if kind in (nn.BatchNorm1d, nn.BatchNorm2d) and (layer.training or not layer.track_running_stats):
                    raise NotAChain(f"{kind.__name__} in training mode is not a fixed linear map")
                if kind not in (nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d):
                    raise NotAChain(f"unsupported layer {kind.__name__}")
                if kind is nn.Conv2d and layer.padding_mode != "zeros":
                    raise NotAChain(f"Conv2d with padding_mode={layer.padding_mode!r} (only zero padding)")
                out = layer(probe)
                ops.append(LinearOp(layer, tuple(probe.shape[1:]), tuple(out.shape[1:])))
                probe = out
            stages.append(Stage(ops, stage_in))
            chain = cls(stages=stages, slopes=slopes, input_shape=shape, activations=acts)
            if chain.stages[-1].out_shape != tuple(probe.shape[1:]) or len(chain.stages[-1].out_shape) != 1:
                raise NotAChain("the network does not end in a vector of logits")
            expected = module(example)
            got = chain.logits(example)
        if expected.shape != got.shape or not torch.allclose(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max().clamp(min=1))):
            raise NotAChain(f"{type(module).__name__}.forward is not the sequence of its layers")
        return chain


def pair_index(num_classes: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The unordered class pairs ``p < q``, as two index vectors."""
    return torch.triu_indices(num_classes, num_classes, 1, device=device).unbind(0)


def pair_distances(rows: Tensor, norm: str, *, chunk_entries: int = 1 << 23) -> Tensor:
    """K×K matrix of ``‖r_p − r_q‖₂`` (``norm`` "2") or ``‖r_p − r_q‖₁`` ("inf": the dual of l_inf), 0 on the diagonal.

    From the differences themselves (a Gram matrix would cancel for close rows), in
    chunks of about ``chunk_entries`` elements; differentiable (the square root stays
    away from exact zeros, where its derivative is infinite).
    """
    flat = rows.flatten(1)
    classes, width = flat.shape
    step = max(1, chunk_entries // max(1, classes * width))
    parts = []
    for start in range(0, classes, step):
        diff = flat[start : start + step, None, :] - flat[None, :, :]
        if norm == "2":
            sq = diff.square().sum(-1)
            parts.append(torch.where(sq > 0, sq.clamp(min=torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq)))
        else:
            parts.append(diff.abs().sum(-1))
    return torch.cat(parts)


def liplt(
    norm: Callable[[int, int], Tensor | float],
    pairs: Callable[[int], Tensor],
    slopes: Sequence[tuple[float, float]],
) -> Tensor:
    """The LipLT pairwise constants ``L`` (K×K, 0 on the diagonal) from norm values.

    :param norm: ``norm(j, k) = ‖W_k ⋯ W_j‖`` for ``0 ≤ j ≤ k < L`` (an upper bound,
        for a sound result).
    :param pairs: ``pairs(k)`` is the K×K matrix of ``‖(e_p − e_q)ᵀ W_L ⋯ W_{k+1}‖``,
        for ``k = −1 … L−1`` (``k = −1``: the whole product).
    :param slopes: ``(α_k, β_k)`` of each activation, ``L`` of them.
    """
    c = [(a + b) / 2 for a, b in slopes]
    d = [(b - a) / 2 for a, b in slopes]
    hidden = len(slopes)
    m: list[Tensor | float] = []
    for k in range(hidden):
        total = math.prod(c[:k]) * norm(0, k)
        for j in range(k):
            total = total + d[j] * math.prod(c[j + 1 : k]) * norm(j + 1, k) * m[j]
        m.append(total)
    result = math.prod(c) * pairs(-1)
    for k in range(hidden):
        result = result + d[k] * math.prod(c[k + 1 :]) * pairs(k) * m[k]
    return result


def naive(norm: Callable[[int, int], Tensor | float], pairs: Callable[[int], Tensor], slopes: Sequence[tuple[float, float]]) -> Tensor:
    """The product bound ``(∏_k β_k·‖W_k‖)·‖(e_p − e_q)ᵀ W_L‖`` (K×K), with ``max(|α_k|, β_k)`` for ``β_k``."""
    hidden = len(slopes)
    scale: Tensor | float = 1.0
    for k in range(hidden):
        scale = scale * max(abs(slopes[k][0]), abs(slopes[k][1])) * norm(k, k)
    return scale * pairs(hidden - 1)
