"""The GPU path: Triton kernels tiled like a matrix product, forward and backward.

Forward: a program computes a BLOCK_B × BLOCK_O tile of outputs, streaming
BLOCK_K-wide slices of x and w through registers, so each loaded element is
reused BLOCK_O (or BLOCK_B) times, as in a GEMM. p = ∞ keeps the running max
and its first index; finite p keeps a running max m and a sum of (|d|/m)^p
rescaled whenever m grows (the streaming normalisation of the original v1
kernels), so large p never overflows; p = 8 skips the normalisation (as the
v2 kernels do below p = 10) and the caller checks the sums, recomputing with
the normalised kernel if any overflowed or underflowed. When the outputs are
too few to fill the device (5120 → 10), the inputs are split into slices
whose partial maxima / sums are combined in order (:mod:`._triton_plan`).

Backward of finite p, one fused kernel for both gradients: with d = x − w and
r = d / y (a ratio, refined by one FMA residual; at most 1 in magnitude), the
term t = g·sign(d)·|r|^(p−1) of every (b, o, k) is computed once, by the
program owning a BLOCK_B × BLOCK_K tile of grad_x, which streams over the
outputs, sums t over o into grad_x in registers, and writes −Σ_b t of its
samples into that block of samples' partial plane of grad_w. The planes are
summed afterwards in a fixed order, so results are deterministic (no atomics);
they are capped in bytes (:data:`PARTIAL_BYTES_CAP`, the columns done in
passes otherwise), and when grad_x's tiles are too few the outputs are split
into slices with partial grad_x planes. |r|^(p−1) is r^7 by multiplication at
p = 8 and exp2((p − 1)·log2 |r|) otherwise; log2 of the ratio, never
log2|d| − log2 y, which loses ~3e-5 relative at p = 250. The p = ∞ backward is
a scatter to the argmax done by torch (:mod:`.ops`).

p is a runtime argument except for the p = 8 and p = ∞ specialisations, so the
p schedule runs three kernels per direction, never one per step. float32 on
CUDA only (anything else goes to the reference backend); on the CPU the
kernels run only under Triton's interpreter (``TRITON_INTERPRET=1``), which is
how they are tested without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # no Triton: the dispatcher falls back to the reference backend
    raise ImportError("triton is not installed") from exc

from harness_plugins.lib.lpdist import _reference
from harness_plugins.lib.lpdist._triton_plan import Tiles, plan_backward, plan_forward

FAST_INT_P = 8
_MODE_INF, _MODE_P8, _MODE_GENERAL = 0, 1, 2

#: The most bytes of partial grad_w / grad_x planes one backward pass holds (tests lower it).
PARTIAL_BYTES_CAP = 256 * 2**20
#: Programs per multiprocessor that count as a busy GPU (below it, reductions are split).
PROGRAMS_PER_SM = 4
#: The interpreter has no multiprocessors; this small target makes small test shapes split.
INTERPRETED_TARGET_PROGRAMS = 8


class BuildError(RuntimeError):
    """Triton cannot compile or launch its kernels on this device."""


# --------------------------------------------------------------------------- kernels
#
# No nested @triton.jit helpers in the loops: besides being inlined on the GPU anyway, every
# nested call costs the interpreter milliseconds, and its tests run thousands of iterations.


@triton.jit
def _forward_kernel(
    X, W, Y, AUX, B, O, K, k_per_slice, p,  # noqa: E741 (the matrix dimensions' names)
    MODE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Y, AUX: B×O outputs, or S×B×O partials (one plane per slice of inputs) when SPLIT.
    # p = ∞: Y the max, AUX its first index; p = 8: Y the sum of |d|^8; general p: Y the final
    # norm, or when SPLIT the sum of (|d|/m)^p in Y and the slice's max m in AUX.
    pid_b = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_s = tl.program_id(2)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    ro = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    rk = tl.arange(0, BLOCK_K)
    k_lo = pid_s * k_per_slice
    k_hi = tl.minimum(k_lo + k_per_slice, K)
    m = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
    acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
    idx = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.int32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < k_hi
        xt = tl.load(X + rb[:, None] * K + kk[None, :], mask=(rb[:, None] < B) & k_ok[None, :], other=0.0)
        wt = tl.load(W + ro[:, None] * K + kk[None, :], mask=(ro[:, None] < O) & k_ok[None, :], other=0.0)
        d = tl.abs(xt[:, None, :] - wt[None, :, :])  # BLOCK_B × BLOCK_O × BLOCK_K
        if MODE == 0:
            d = tl.where(k_ok[None, None, :], d, -1.0)  # padding never wins
            blk, arg = tl.max(d, axis=2, return_indices=True, return_indices_tie_break_left=True)
            better = blk > m  # strict: an earlier index keeps ties
            idx = tl.where(better, arg + k0, idx)
            m = tl.where(better, blk, m)
        elif MODE == 1:
            d2 = d * d
            d4 = d2 * d2
            acc += tl.sum(d4 * d4, axis=2)  # padding contributes |0 − 0|^8 = 0
        else:
            m_new = tl.maximum(m, tl.max(d, axis=2))
            safe = tl.where(m_new > 0, m_new, 1.0)
            # (m / m_new)^p rescales the old sum; exp2(p·log2 r) with r floored (0 at r = 0).
            old = m / safe
            scale = tl.where(old > 0, tl.exp2(p * tl.log2(tl.maximum(old, 1e-30))), 0.0)
            r = d / safe[:, :, None]
            terms = tl.where(r > 0, tl.exp2(p * tl.log2(tl.maximum(r, 1e-30))), 0.0)
            acc = acc * scale + tl.sum(terms, axis=2)
            m = m_new
    mask = (rb[:, None] < B) & (ro[None, :] < O)
    out = pid_s * B * O + rb[:, None] * O + ro[None, :]
    if MODE == 0:
        tl.store(Y + out, m, mask=mask)
        tl.store(AUX + out, idx, mask=mask)
    elif MODE == 1:
        tl.store(Y + out, acc, mask=mask)  # the sum; the caller checks it and takes the 8th root
    elif SPLIT:
        tl.store(Y + out, acc, mask=mask)
        tl.store(AUX + out, m, mask=mask)
    else:
        y = m * tl.exp2(tl.log2(tl.maximum(acc, 1e-30)) / p)
        tl.store(Y + out, tl.where(m > 0, y, 0.0), mask=mask)


@triton.jit
def _backward_kernel(
    X, W, Y, G, GX, PW, B, O, K, k_first, k_count, o_per_slice, gx_stride_s, gx_stride_b, gx_col0, pm1,  # noqa: E741
    MODE: tl.constexpr, NEED_X: tl.constexpr, NEED_W: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Columns k_first .. k_first + k_count of both gradients, for this program's BLOCK_B samples,
    # BLOCK_K of those columns and its slice of outputs:
    #   GX[slice, b, gx_col0 + c] = Σ_o t[b, o, c]      (grad_x, or its slice's partial plane)
    #   PW[pid_b, o, c]          = −Σ_b t[b, o, c]      (this block of samples' grad_w plane)
    # with t = G[b, o]·sign(d)·(|d| / Y[b, o])^(p − 1), d = X[b, k] − W[o, k], pm1 = p − 1.
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    lk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)  # column within the pass
    b_ok = rb < B
    k_ok = lk < k_count
    xt = tl.load(X + rb[:, None] * K + (k_first + lk)[None, :], mask=b_ok[:, None] & k_ok[None, :], other=0.0)
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    o_lo = pid_s * o_per_slice
    o_hi = tl.minimum(o_lo + o_per_slice, O)
    for o0 in range(o_lo, o_hi, BLOCK_O):
        oo = o0 + tl.arange(0, BLOCK_O)
        o_ok = oo < o_hi
        wt = tl.load(W + oo[:, None] * K + (k_first + lk)[None, :], mask=o_ok[:, None] & k_ok[None, :], other=0.0)
        pair = b_ok[:, None] & o_ok[None, :]
        yo = tl.load(Y + rb[:, None] * O + oo[None, :], mask=pair, other=1.0)
        go = tl.load(G + rb[:, None] * O + oo[None, :], mask=pair, other=0.0)
        # Padding pairs get 1/y = 0, so r = 0 and t = 0 (a ratio of 1 with |d| large would
        # overflow |r|^(p−1) to inf, and inf·0 is NaN).
        inv = tl.where(pair, 1.0 / yo, 0.0)[:, :, None]
        y3 = yo[:, :, None]
        d = xt[:, None, :] - wt[None, :, :]  # BLOCK_B × BLOCK_O × BLOCK_K
        r = d * inv
        r = tl.fma(tl.fma(-r, y3, d), inv, r)  # one residual step: d / y to about half an ulp
        if MODE == 1:
            r2 = r * r
            r4 = r2 * r2
            t = r4 * r2 * r  # r^7 keeps the sign of d
        else:
            a = tl.abs(r)
            mag = tl.where(a > 0, tl.exp2(pm1 * tl.log2(tl.maximum(a, 1e-30))), 0.0)
            t = tl.where(r < 0, -mag, mag)
        t = t * go[:, :, None]
        if NEED_X:
            acc += tl.sum(t, axis=1)
        if NEED_W:
            plane = PW + pid_b * O * k_count
            tl.store(plane + oo[:, None] * k_count + lk[None, :], -tl.sum(t, axis=0), mask=o_ok[:, None] & k_ok[None, :])
    if NEED_X:
        target = GX + pid_s * gx_stride_s + rb[:, None] * gx_stride_b + (gx_col0 + lk)[None, :]
        tl.store(target, acc, mask=b_ok[:, None] & k_ok[None, :])


# Tile sizes: a BLOCK_B × BLOCK_O × BLOCK_K block of differences lives in registers. The forward
# tiles were chosen with scripts/tune_triton_tiles.py on an H100 at B=512, 5120→5120 (the fastest
# of 36 configurations per mode); the fused backward's have not been tuned on a GPU yet.
_FWD = {
    _MODE_INF: Tiles(block_b=32, block_o=32, block_k=4, num_warps=4),
    _MODE_P8: Tiles(block_b=32, block_o=64, block_k=4, num_warps=4),
    _MODE_GENERAL: Tiles(block_b=32, block_o=32, block_k=4, num_warps=4),
}
_BWD = Tiles(block_b=32, block_o=8, block_k=32, num_warps=8)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _ready(x: Tensor, w: Tensor) -> bool:
    if x.dtype != torch.float32 or w.dtype != torch.float32:
        return False
    return x.is_cuda or (x.device.type == "cpu" and _interpreting())


def _target_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETED_TARGET_PROGRAMS
    return _cuda_target_programs(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_target_programs(index: int) -> int:
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(index).multi_processor_count


def _launch(kernel, grid, *args, **meta):
    try:
        kernel[grid](*args, **meta)
    except Exception as exc:
        # Compilation and resource errors come from triton's own modules; anything else is a bug.
        if type(exc).__module__.startswith("triton"):
            raise BuildError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        raise


def _forward(x: Tensor, w: Tensor, p: float, mode: int) -> tuple[Tensor, Tensor | None]:
    """p = ∞: (max, first index); p = 8: (Σ|d|^8, None); general p: (norm, None)."""
    b, k = x.shape
    o = w.shape[0]
    tiles = _FWD[mode]
    plan = plan_forward(b, o, k, tiles, _target_programs(x.device))
    slices = plan.k_slices
    y = torch.empty(slices, b, o, device=x.device, dtype=torch.float32)
    if mode == _MODE_INF:
        aux = torch.empty(slices, b, o, device=x.device, dtype=torch.int32)
    elif mode == _MODE_GENERAL and slices > 1:
        aux = torch.empty_like(y)
    else:
        aux = y  # unused by the kernel
    grid = (triton.cdiv(b, tiles.block_b), triton.cdiv(o, tiles.block_o), slices)
    _launch(_forward_kernel, grid, x, w, y, aux, b, o, k, plan.k_per_slice, float(p),
            MODE=mode, SPLIT=slices > 1, **tiles.meta())
    if mode == _MODE_INF:
        value, index = y[0], aux[0]
        for s in range(1, slices):  # in order, strict: the earliest slice keeps ties (first maximiser)
            better = y[s] > value
            value, index = torch.where(better, y[s], value), torch.where(better, aux[s], index)
        return value, index
    if mode == _MODE_P8 or slices == 1:
        return (y.sum(0) if slices > 1 else y[0]), None
    # General p: y_s = m_s·acc_s^(1/p) per slice, so the total is M·(Σ_s acc_s·(m_s/M)^p)^(1/p).
    top = aux.amax(0)
    ratio = aux / torch.where(top > 0, top, 1)
    total = (y * ratio.pow(p)).sum(0)
    return torch.where(top > 0, top * total.pow(1.0 / p), 0), None


def _backward(x: Tensor, w: Tensor, y: Tensor, g: Tensor, p: float, mode: int, need_x: bool, need_w: bool):
    b, k = x.shape
    o = w.shape[0]
    plan = plan_backward(b, o, k, _BWD, _target_programs(x.device), PARTIAL_BYTES_CAP, need_x, need_w)
    slices = plan.o_slices
    grad_x = torch.empty_like(x) if need_x else None
    grad_w = torch.empty_like(w) if need_w else None
    unused = x  # a pointer the kernel never touches (its NEED_ flag is off)
    for k_first in range(0, k, plan.k_per_pass):
        count = min(plan.k_per_pass, k - k_first)
        if grad_x is not None and slices > 1:
            gx = torch.empty(slices, b, count, device=x.device, dtype=torch.float32)
            gx_strides, gx_col0 = (b * count, count), 0
        else:  # one slice (or no grad_x) writes grad_x in place
            gx = grad_x if grad_x is not None else unused
            gx_strides, gx_col0 = (0, k), k_first
        pw = torch.empty(plan.b_groups, o, count, device=x.device, dtype=torch.float32) if need_w else unused
        grid = (plan.b_groups, triton.cdiv(count, _BWD.block_k), slices)
        _launch(_backward_kernel, grid, x, w, y, g, gx, pw, b, o, k, k_first, count, plan.o_per_slice,
                *gx_strides, gx_col0, float(p) - 1.0, MODE=mode, NEED_X=need_x, NEED_W=need_w, **_BWD.meta())
        # torch's reductions over a leading dimension have a fixed order: deterministic sums.
        if grad_x is not None and slices > 1:
            grad_x[:, k_first:k_first + count] = gx.sum(0)
        if grad_w is not None:
            grad_w[:, k_first:k_first + count] = pw.sum(0)
    return grad_x, grad_w


# --------------------------------------------------------------------------- the backend interface


def inf_forward(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    if not _ready(x, w) or x.numel() == 0 or w.numel() == 0:
        return _reference.inf_forward(x, w, with_index)
    y, idx = _forward(x.contiguous(), w.contiguous(), 0.0, _MODE_INF)
    return y, (idx.to(torch.int64) if with_index else None)


def p_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    if not _ready(x, w) or x.numel() == 0 or w.numel() == 0:
        return _reference.p_forward(x, w, p)
    x, w = x.contiguous(), w.contiguous()
    if p == FAST_INT_P:
        total, _ = _forward(x, w, p, _MODE_P8)
        if bool(torch.isfinite(total).all()) and bool((total > torch.finfo(torch.float32).tiny * 2**24).all()):
            return total.pow(1.0 / FAST_INT_P)
    return _forward(x, w, p, _MODE_GENERAL)[0]


def p_backward(
    x: Tensor, w: Tensor, y: Tensor, grad: Tensor, p: float, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Both gradients from one fused pass; ``y > 0`` everywhere and ``grad`` 0 where y was 0."""
    if not _ready(x, w) or x.numel() == 0 or w.numel() == 0 or not (need_x or need_w):
        return _reference.p_backward(x, w, y, grad, p, need_x, need_w)
    mode = _MODE_P8 if p == FAST_INT_P else _MODE_GENERAL
    return _backward(x.contiguous(), w.contiguous(), y.contiguous(), grad.contiguous(), p, mode, need_x, need_w)


def inf_bounds(lower: Tensor, upper: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """No kernel of this backend's own: the reference's (chunked torch, exact)."""
    return _reference.inf_bounds(lower, upper, w)
