"""The GPU path: Triton kernels tiled like a matrix product.

Forward: a program computes a BLOCK_B × BLOCK_O tile of outputs, streaming
BLOCK_K-wide slices of x and w through registers, so each loaded element is
reused BLOCK_O (or BLOCK_B) times, as in a GEMM. p = ∞ keeps the running max
and its first index; finite p keeps a running max m and a sum of (|d|/m)^p
rescaled whenever m grows (the streaming normalisation of the original v1
kernels), so large p never overflows; p = 8 skips the normalisation (as the
v2 kernels do below p = 10) and the caller checks the sums, recomputing with
the normalised kernel if any overflowed or underflowed.

Backward of finite p: ``Σ_o g·sign(x − w)·(|x − w|/y)^(p−1)`` for a
BLOCK_B × BLOCK_K tile of grad_x, streaming over outputs; grad_w is the same
kernel with x and w swapped. The p = ∞ backward is a scatter done by torch.

p is a runtime argument except for the p = 8 and p = ∞ specialisations, so the
p schedule runs three kernels per direction, never one per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # no Triton: the dispatcher falls back to the reference backend
    raise ImportError("triton is not installed") from exc

from harness_plugins.lib.lpdist import _reference

FAST_INT_P = 8
_MODE_INF, _MODE_P8, _MODE_GENERAL = 0, 1, 2


class BuildError(RuntimeError):
    """Triton cannot compile or launch its kernels on this device."""


@triton.jit
def _pow(r, p, MODE: tl.constexpr):
    # r >= 0. MODE p8: repeated squaring; general: exp2(p·log2 r), 0 at r = 0.
    if MODE == 1:
        r2 = r * r
        r4 = r2 * r2
        return r4 * r4
    else:
        return tl.where(r > 0, tl.exp2(p * tl.log2(tl.maximum(r, 1e-30))), 0.0)


@triton.jit
def _forward_kernel(
    X, W, Y, IDX, B, O, K, stride_x, stride_w, p,  # noqa: E741 (the matrix dimensions' names)
    MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_o = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    ro = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    rk = tl.arange(0, BLOCK_K)
    m = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
    acc = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.float32)
    idx = tl.zeros((BLOCK_B, BLOCK_O), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        xt = tl.load(X + rb[:, None] * stride_x + kk[None, :], mask=(rb[:, None] < B) & (kk[None, :] < K), other=0.0)
        wt = tl.load(W + ro[:, None] * stride_w + kk[None, :], mask=(ro[:, None] < O) & (kk[None, :] < K), other=0.0)
        d = tl.abs(xt[:, None, :] - wt[None, :, :])  # BLOCK_B × BLOCK_O × BLOCK_K
        if MODE == 0:
            d = tl.where((kk < K)[None, None, :], d, -1.0)  # padding never wins
            blk = tl.max(d, axis=2)
            arg = tl.argmax(d, axis=2, tie_break_left=True) + k0
            better = blk > m  # strict: an earlier index keeps ties
            idx = tl.where(better, arg, idx)
            m = tl.where(better, blk, m)
        elif MODE == 1:
            acc += tl.sum(_pow(d, p, MODE), axis=2)  # padding contributes |0 − 0|^8 = 0
        else:
            m_new = tl.maximum(m, tl.max(d, axis=2))
            safe = tl.where(m_new > 0, m_new, 1.0)
            acc = acc * _pow(m / safe, p, MODE) + tl.sum(_pow(d / safe[:, :, None], p, MODE), axis=2)
            m = m_new
    mask = (rb[:, None] < B) & (ro[None, :] < O)
    out = rb[:, None] * O + ro[None, :]
    if MODE == 0:
        tl.store(Y + out, m, mask=mask)
        tl.store(IDX + out, idx, mask=mask)
    elif MODE == 1:
        tl.store(Y + out, acc, mask=mask)  # the sum; the caller checks it and takes the 8th root
    else:
        y = m * tl.exp2(tl.log2(tl.maximum(acc, 1e-30)) / p)
        tl.store(Y + out, tl.where(m > 0, y, 0.0), mask=mask)


@triton.jit
def _grad_kernel(
    X, W, Y, G, OUT, B, O, K, stride_x, stride_w, p,  # noqa: E741 (the matrix dimensions' names)
    MODE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # OUT[b, k] = Σ_o G[b, o]·sign(X[b, k] − W[o, k])·(|X[b, k] − W[o, k]| / Y[b, o])^(p−1)
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    ro = tl.arange(0, BLOCK_O)
    xt = tl.load(X + rb[:, None] * stride_x + rk[None, :], mask=(rb[:, None] < B) & (rk[None, :] < K), other=0.0)
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for o0 in range(0, O, BLOCK_O):
        oo = o0 + ro
        wt = tl.load(W + oo[:, None] * stride_w + rk[None, :], mask=(oo[:, None] < O) & (rk[None, :] < K), other=0.0)
        # Padding outputs get y = inf, so their ratio is 0 (with y = 1 a large |d| would overflow to inf·0).
        yo = tl.load(Y + rb[:, None] * O + oo[None, :], mask=(rb[:, None] < B) & (oo[None, :] < O), other=float("inf"))
        go = tl.load(G + rb[:, None] * O + oo[None, :], mask=(rb[:, None] < B) & (oo[None, :] < O), other=0.0)
        d = xt[:, None, :] - wt[None, :, :]  # BLOCK_B × BLOCK_O × BLOCK_K
        r = d / yo[:, :, None]  # |r| <= 1
        if MODE == 1:
            r2 = r * r
            term = r2 * r2 * r2 * r  # r^7 keeps the sign of d
        else:
            term = _pow(tl.abs(r), p - 1.0, MODE) * tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
        acc += tl.sum(go[:, :, None] * term, axis=1)
    tl.store(OUT + rb[:, None] * K + rk[None, :], acc, mask=(rb[:, None] < B) & (rk[None, :] < K))


# Tile sizes: a BLOCK_B × BLOCK_O × BLOCK_K block of differences lives in registers. Chosen with
# scripts/tune_triton_tiles.py on an H100 at B=512, 5120→5120 (the fastest of 36 forward and 36
# backward configurations per mode).
_FWD = {
    0: {"BLOCK_B": 32, "BLOCK_O": 32, "BLOCK_K": 4, "num_warps": 4},  # p = ∞
    1: {"BLOCK_B": 32, "BLOCK_O": 64, "BLOCK_K": 4, "num_warps": 4},  # p = 8
    2: {"BLOCK_B": 32, "BLOCK_O": 32, "BLOCK_K": 4, "num_warps": 4},  # general p
}
_BWD = {"BLOCK_B": 16, "BLOCK_O": 16, "BLOCK_K": 64, "num_warps": 4}


def _ready(x: Tensor, w: Tensor) -> bool:
    return x.is_cuda and x.dtype == torch.float32 or (x.device.type == "cpu" and _interpreting())


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _launch(kernel, grid, *args, **meta):
    try:
        kernel[grid](*args, **meta)
    except Exception as exc:
        # Compilation and resource errors come from triton's own modules; anything else is a bug.
        if type(exc).__module__.startswith("triton"):
            raise BuildError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        raise


def _forward(x: Tensor, w: Tensor, p: float, mode: int) -> tuple[Tensor, Tensor | None]:
    b, k = x.shape
    o = w.shape[0]
    y = torch.empty(b, o, device=x.device, dtype=torch.float32)
    idx = torch.empty(b, o, device=x.device, dtype=torch.int32) if mode == _MODE_INF else y
    tiles = _FWD[mode]
    grid = (triton.cdiv(b, tiles["BLOCK_B"]), triton.cdiv(o, tiles["BLOCK_O"]))
    _launch(_forward_kernel, grid, x, w, y, idx, b, o, k, x.stride(0), w.stride(0), float(p), MODE=mode, **tiles)
    return y, (idx if mode == _MODE_INF else None)


def _grad_first(x: Tensor, w: Tensor, y: Tensor, g: Tensor, p: float, mode: int) -> Tensor:
    b, k = x.shape
    o = w.shape[0]
    out = torch.empty_like(x)
    grid = (triton.cdiv(b, _BWD["BLOCK_B"]), triton.cdiv(k, _BWD["BLOCK_K"]))
    _launch(_grad_kernel, grid, x, w, y, g, out, b, o, k, x.stride(0), w.stride(0), float(p), MODE=mode, **_BWD)
    return out


# --------------------------------------------------------------------------- the backend interface


def inf_forward(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    if not _ready(x, w):
        return _reference.inf_forward(x, w, with_index)
    y, idx = _forward(x, w, 0.0, _MODE_INF)
    return y, (idx.to(torch.int64) if with_index else None)


def p_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    if not _ready(x, w):
        return _reference.p_forward(x, w, p)
    if p == FAST_INT_P:
        total, _ = _forward(x, w, p, _MODE_P8)
        if bool(torch.isfinite(total).all()) and bool((total > torch.finfo(torch.float32).tiny * 2**24).all()):
            return total.pow(1.0 / FAST_INT_P)
    return _forward(x, w, p, _MODE_GENERAL)[0]


def p_backward(
    x: Tensor, w: Tensor, y: Tensor, grad: Tensor, p: float, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    if not _ready(x, w):
        return _reference.p_backward(x, w, y, grad, p, need_x, need_w)
    mode = _MODE_P8 if p == FAST_INT_P else _MODE_GENERAL
    grad_x = _grad_first(x, w, y, grad, p, mode) if need_x else None
    grad_w = _grad_first(w, x, y.t().contiguous(), grad.t().contiguous(), p, mode) if need_w else None
    return grad_x, grad_w
