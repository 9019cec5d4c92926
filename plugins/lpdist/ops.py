"""The l_p-distance operation of l_inf-dist nets, in pure PyTorch.

``lp_dist(x, w, p)[b, o] = ||x[b] - w[o]||_p`` for ``x`` of shape B×I and
``w`` of shape O×I, differentiable w.r.t. both, on any device, in float32 and
float64. It follows the original CUDA kernels (Zhang et al., ICML 2021,
``norm_dist_cuda.cu`` / ``inf_dist_cuda.cu``):

* finite p is normalised by the per-pair max, ``m·(Σ (|x_i − w_i|/m)^p)^(1/p)``,
  so it stays finite for p up to 1000 when |x − w| ≈ 10–20 (the −10 identity
  init makes that the normal case; ``torch.cdist`` returns inf there);
* p = ∞ back-propagates through one index per output, the first maximiser
  (``torch.amax`` would split the gradient over ties);
* the B×O×I difference tensor is never materialised: every pass works on
  blocks of at most :data:`CHUNK_ELEMENTS` elements, and only x, w and a B×O
  tensor (the output, or the argmax for p = ∞) are kept for the backward.

The chunked loops sit behind ``_inf_forward``, ``_inf_backward``,
``_p_forward``, ``_p_backward`` and ``_inf_bounds`` so that compiled fast
paths can replace them one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["CHUNK_ELEMENTS", "inf_dist_bounds", "lp_dist"]

#: Most elements in one block of the B×O×I difference tensor. Tests lower it to force many blocks.
CHUNK_ELEMENTS: int = 2**22


# --------------------------------------------------------------------------- blocks


def _plan(batch: int, out: int, inp: int) -> tuple[int, int, int]:
    """Block sizes (batch, outputs, inputs) whose product is at most CHUNK_ELEMENTS.

    Whole input rows are preferred, then all outputs, then as many samples as fit; the
    input dimension is split only when one row alone is over the budget.
    """
    budget = max(1, int(CHUNK_ELEMENTS))
    ic = max(1, min(inp, budget))
    oc = max(1, min(out, budget // ic))
    bc = max(1, min(batch, budget // (ic * oc)))
    return bc, oc, ic


def _slices(n: int, step: int) -> Iterator[slice]:
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _diff(x: Tensor, w: Tensor, bs: slice, ob: slice, cols: slice) -> Tensor:
    """``x[bs, cols] − w[ob, cols]`` broadcast to one block (bs × ob × cols)."""
    return x[bs, None, cols] - w[None, ob, cols]


def _exponent(e: float) -> float | int:
    # An int exponent lets torch use its integer-power path (p = 8, the first training phase).
    return int(e) if e == round(e) and abs(e) < 2**31 else e


# --------------------------------------------------------------------------- p = ∞


def _inf_forward(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``max_i |x − w|`` (B×O) and the first maximising index (B×O, int64)."""
    batch, out, inp = x.shape[0], w.shape[0], x.shape[1]
    y = x.new_zeros(batch, out)
    index = torch.zeros(batch, out, dtype=torch.int64, device=x.device)
    bc, oc, ic = _plan(batch, out, inp)
    for bs in _slices(batch, bc):
        for ob in _slices(out, oc):
            best, arg = None, None
            for cols in _slices(inp, ic):
                # torch.max(dim) returns the first maximiser; merging blocks with a strict `>`
                # keeps the earlier block on ties, so the overall rule is "first index wins".
                val, pos = _diff(x, w, bs, ob, cols).abs_().max(dim=-1)
                pos += cols.start
                if best is None:
                    best, arg = val, pos
                else:
                    better = val > best
                    best, arg = torch.where(better, val, best), torch.where(better, pos, arg)
            if best is not None:
                y[bs, ob], index[bs, ob] = best, arg
    return y, index


def _inf_backward(
    x: Tensor, w: Tensor, index: Tensor, grad: Tensor, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Sub-gradient: output (b, o) sends ±grad to its argmax entry of x and ∓grad to that of w."""
    # x[b, i*] and w[o, i*] for i* = index[b, o], gathered as B×O tensors.
    x_at = x.gather(1, index)
    w_at = w.gather(1, index.t()).t()
    signed = grad * torch.sign(x_at - w_at)
    grad_x = torch.zeros_like(x).scatter_add_(1, index, signed) if need_x else None
    grad_w = torch.zeros_like(w).scatter_add_(1, index.t(), -signed.t()) if need_w else None
    return grad_x, grad_w


class _InfDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        y, index = _inf_forward(x, w)
        ctx.save_for_backward(x, w, index)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w, index = ctx.saved_tensors
        return _inf_backward(x, w, index, grad, *ctx.needs_input_grad)


# --------------------------------------------------------------------------- finite p


def _p_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    """``m·(Σ_i (|x_i − w_i|/m)^p)^(1/p)`` with m the per-pair max, 0 where m = 0."""
    batch, out, inp = x.shape[0], w.shape[0], x.shape[1]
    y = x.new_zeros(batch, out)
    e = _exponent(p)
    bc, oc, ic = _plan(batch, out, inp)
    for bs in _slices(batch, bc):
        for ob in _slices(out, oc):
            if ic >= inp:
                a = _diff(x, w, bs, ob, slice(0, inp)).abs_()
                m = a.amax(dim=-1, keepdim=True)
                total = a.div_(torch.where(m > 0, m, 1)).pow_(e).sum(dim=-1)
            else:  # one input row is over the budget: a first pass for the max, a second for the sum
                m = None
                for cols in _slices(inp, ic):
                    block_max = _diff(x, w, bs, ob, cols).abs_().amax(dim=-1, keepdim=True)
                    m = block_max if m is None else torch.maximum(m, block_max)
                scale = torch.where(m > 0, m, 1)
                total = sum(
                    _diff(x, w, bs, ob, cols).abs_().div_(scale).pow_(e).sum(dim=-1) for cols in _slices(inp, ic)
                )
            # The max term is 1, so total ∈ [1, I] and nothing overflows; m = 0 gives 0·0 = 0.
            y[bs, ob] = m.squeeze(-1) * total.pow(1.0 / p)
    return y


def _p_backward(
    x: Tensor, w: Tensor, y: Tensor, grad: Tensor, p: float, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """∂y/∂x_i = sign(x_i − w_i)·(|x_i − w_i|/y)^(p−1) = −∂y/∂w_i, and 0 where y = 0.

    The ratio is at most 1, so this is safe for large p. Differences are recomputed per block.
    """
    batch, out, inp = x.shape[0], w.shape[0], x.shape[1]
    grad_x = torch.zeros_like(x) if need_x else None
    grad_w = torch.zeros_like(w) if need_w else None
    positive = y > 0
    y_safe = torch.where(positive, y, 1)
    g = torch.where(positive, grad, 0)
    e = _exponent(p - 1)
    bc, oc, ic = _plan(batch, out, inp)
    for bs in _slices(batch, bc):
        for ob in _slices(out, oc):
            y_blk, g_blk = y_safe[bs, ob, None], g[bs, ob, None]
            for cols in _slices(inp, ic):
                d = _diff(x, w, bs, ob, cols)
                t = d.abs().div_(y_blk).pow_(e).mul_(d.sign_()).mul_(g_blk)
                if grad_x is not None:
                    grad_x[bs, cols] += t.sum(dim=1)
                if grad_w is not None:
                    grad_w[ob, cols] -= t.sum(dim=0)
    return grad_x, grad_w


class _PDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, p: float) -> Tensor:
        y = _p_forward(x, w, p)
        ctx.save_for_backward(x, w, y)
        ctx.p = p
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, w, y = ctx.saved_tensors
        grad_x, grad_w = _p_backward(x, w, y, grad, ctx.p, *ctx.needs_input_grad[:2])
        return grad_x, grad_w, None


# --------------------------------------------------------------------------- interval bounds


def _inf_bounds(lower: Tensor, upper: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    batch, out, inp = lower.shape[0], w.shape[0], lower.shape[1]
    low = lower.new_zeros(batch, out)
    high = lower.new_zeros(batch, out)
    bc, oc, ic = _plan(batch, out, inp)
    for bs in _slices(batch, bc):
        for ob in _slices(out, oc):
            for cols in _slices(inp, ic):
                below = _diff(lower, w, bs, ob, cols)  # l − w
                above = _diff(upper, w, bs, ob, cols).neg_()  # w − u
                # Per coordinate: the farthest point is the far end, max(u − w, w − l); the nearest
                # is at distance max(l − w, w − u, 0), which is 0 when l ≤ w ≤ u.
                far = torch.maximum(below.abs(), above.abs()).amax(dim=-1)
                near = torch.maximum(below, above).amax(dim=-1).clamp_(min=0)
                high[bs, ob] = torch.maximum(high[bs, ob], far)
                low[bs, ob] = torch.maximum(low[bs, ob], near)
    return low, high


# --------------------------------------------------------------------------- public API


def _check_inputs(x: Tensor, w: Tensor, what: str = "x") -> None:
    if x.dim() != 2 or w.dim() != 2:
        raise ValueError(
            f"expected {what} of shape B×I and w of shape O×I, got {tuple(x.shape)} and {tuple(w.shape)}"
        )
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{what} has {x.shape[1]} features but w has {w.shape[1]}")
    if x.shape[1] == 0:
        raise ValueError("need at least one feature (I >= 1)")
    if x.dtype != w.dtype or x.device != w.device:
        raise ValueError(f"{what} ({x.dtype}, {x.device}) and w ({w.dtype}, {w.device}) must share dtype and device")


def lp_dist(x: Tensor, w: Tensor, p: float) -> Tensor:
    """``y[b, o] = ||x[b] − w[o]||_p`` for ``x`` B×I and ``w`` O×I, differentiable in both.

    :param x: inputs, B×I.
    :param w: weights, one row per output unit, O×I (same dtype and device as ``x``).
    :param p: the norm, ``p >= 1`` or ``math.inf``. At p = ∞ the gradient of each output goes to a
        single coordinate, the first maximiser of ``|x − w|`` (as the original kernels do).
    :returns: distances, B×O.
    :raises ValueError: for p < 1 (or NaN) and for mismatched shapes, dtypes or devices.
    """
    _check_inputs(x, w)
    p = float(p)
    if not p >= 1:
        raise ValueError(f"p must be >= 1 or math.inf, got {p}")
    if math.isinf(p):
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            return _InfDist.apply(x, w)
        # Without a backward no argmax is needed; cdist is exact at p = ∞ (max of |x − w|) and
        # does not build the B×O×I tensor.
        return torch.cdist(x, w, p=math.inf)
    return _PDist.apply(x, w, p)


def inf_dist_bounds(lower: Tensor, upper: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Exact bounds of ``||x − w[o]||_∞`` over the box ``lower <= x <= upper``, per sample and unit.

    ``upper_bound = max_i max(|l_i − w_i|, |u_i − w_i|)``;
    ``lower_bound = max_i (0 if l_i <= w_i <= u_i else min(|l_i − w_i|, |u_i − w_i|))``.
    Both are attained (at a corner of the box, and at ``clamp(w, l, u)``). Not differentiable.

    :param lower: lower corners of the boxes, B×I.
    :param upper: upper corners, B×I, ``upper >= lower``.
    :param w: weights, O×I.
    :returns: ``(lower_bound, upper_bound)``, each B×O.
    :raises ValueError: for mismatched shapes, dtypes or devices, or a box with ``lower > upper``.
    """
    _check_inputs(lower, w, "lower")
    _check_inputs(upper, w, "upper")
    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape")
    with torch.no_grad():
        if bool((lower > upper).any()):
            raise ValueError("every box needs lower <= upper")
        return _inf_bounds(lower, upper, w)
