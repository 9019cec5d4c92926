"""The reference backend: chunked pure PyTorch, on any device and dtype.

Always correct and always available: the compiled CPU path and the Triton GPU
path are tested against it, and it takes over whenever they cannot run. Every
pass works on blocks of at most :data:`CHUNK_ELEMENTS` elements of the B×O×I
difference tensor, so memory stays O(B·O + O·I + B·I) plus one block.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

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


# --------------------------------------------------------------------------- the backend interface


def inf_forward(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    if not with_index:
        # cdist is exact at p = ∞ (a max of |x − w|) and does not build the B×O×I tensor.
        return torch.cdist(x, w, p=float("inf")), None
    return _inf_forward(x, w)


def p_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    return _p_forward(x, w, p)


def p_backward(
    x: Tensor, w: Tensor, y: Tensor, grad: Tensor, p: float, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    return _p_backward(x, w, y, grad, p, need_x, need_w)


def inf_bounds(lower: Tensor, upper: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    return _inf_bounds(lower, upper, w)
