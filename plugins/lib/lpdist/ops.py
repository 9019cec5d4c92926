"""The l_p-distance operation of l_inf-dist nets: one module, four backends.

``lp_dist(x, w, p)[b, o] = ||x[b] − w[o]||_p`` for ``x`` of shape B×I and ``w``
of shape O×I, and its convolutional form :func:`lp_dist_conv` (through
``unfold``), differentiable w.r.t. both, following the original CUDA kernels
(Zhang et al., ICML 2021 ``norm_dist_cuda.cu`` / ``inf_dist_cuda.cu``):

* p = ∞ is exact and back-propagates through one index per output, the first
  maximiser (``torch.amax`` would split the gradient over ties): ±g goes to
  that entry of x and ∓g to that entry of w;
* finite p is normalised by the per-pair max, ``m·(Σ (|x_i − w_i|/m)^p)^(1/p)``,
  so it stays finite for p up to 1000 when |x − w| ≈ 10–20 (the −10 identity
  init makes that the normal case; ``torch.cdist`` returns inf there); small
  integer p may skip the normalisation when the sums provably neither overflow
  nor underflow (checked on every call, as the v2 kernels do for p ≤ 10);
* the B×O×I difference tensor is never materialised.

Backends, chosen per call from the tensors' device (override with the
environment variable ``HARNESS_LPDIST_BACKEND=reference|native|compiled|triton``):

* ``triton`` on CUDA float32 tensors: kernels tiled like a matrix product,
  one fused kernel for both gradients (:mod:`._triton`);
* ``native`` on CPU tensors: hand-written C++ kernels built with the host's
  compiler at first use (:mod:`._native`); float32 with finite inputs only,
  everything else it hands to ``compiled``;
* ``compiled`` on CPU tensors: inductor-generated C++ from ``torch.compile``
  (:mod:`._compiled`);
* ``reference``: chunked pure PyTorch on any device (:mod:`._reference`).

A backend chosen automatically that cannot build is retired for the process,
with one warning, and the next takes over (native → compiled → reference on
CPU, triton → reference on CUDA).

How the p schedule maps onto the variants of ``compiled`` (there is no
recompilation per step; ``native`` and ``triton`` take p as a runtime value
too): p = ∞ is one variant; integer p ≤ 10 (the p = 8 phase) one variant per
integer; every other p — the whole relaxation 8 → 1000 — one variant taking p
as a runtime tensor.
"""

from __future__ import annotations

import math
import os
import warnings
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from harness_plugins.lib.lpdist import _reference

__all__ = ["BACKEND_ENV", "backend_name", "inf_dist_bounds", "inf_dist_bounds_conv", "lp_dist", "lp_dist_conv"]

#: Environment variable forcing a backend: reference, native, compiled or triton.
BACKEND_ENV = "HARNESS_LPDIST_BACKEND"
_BACKENDS = ("auto", "reference", "native", "compiled", "triton")
#: What "auto" tries, in order, per device type; the reference backend ends every chain.
_AUTO = {"cuda": ("triton",), "cpu": ("native", "compiled")}
_broken: set[str] = set()


def _load(name: str) -> ModuleType | None:
    """The backend module, or None if it cannot run here (import or first-use failure)."""
    if name in _broken:
        return None
    try:
        if name == "native":
            from harness_plugins.lib.lpdist import _native as module
        elif name == "compiled":
            from harness_plugins.lib.lpdist import _compiled as module
        elif name == "triton":
            from harness_plugins.lib.lpdist import _triton as module
        else:
            return _reference
    except ImportError:
        _broken.add(name)
        return None
    return module


def _choose(t: Tensor) -> ModuleType:
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={choice!r}; valid: {', '.join(_BACKENDS)}")
    if choice != "auto":
        return _load(choice) or _reference
    for name in _AUTO.get(t.device.type, ()):
        module = _load(name)
        if module is not None:
            return module
    return _reference


def backend_name(t: Tensor) -> str:
    """Which backend a call on tensors like ``t`` would use."""
    return _choose(t).__name__.rsplit("._", 1)[-1]


def _run(name: str, t: Tensor, *args):
    """Call ``name`` on the chosen backend.

    A backend chosen automatically that fails to build is retired, with a warning, and the next
    one of the automatic chain takes the call (the native CPU kernels hand float64 to the compiled
    ones, so a failure may come from either); one forced with :data:`BACKEND_ENV` raises instead,
    so that tests of a backend cannot pass on another.
    """
    backend = _choose(t)
    if backend is _reference:
        return getattr(_reference, name)(*args)
    try:
        return getattr(backend, name)(*args)
    except Exception as exc:  # compiler missing, unsupported GPU, ... (each backend's BuildError)
        failed = _failed_backend(exc)
        if failed is None:
            raise
        if os.environ.get(BACKEND_ENV, "auto").strip().lower() not in ("", "auto"):
            raise
        _broken.add(failed)
        warnings.warn(f"l_p-dist backend {failed!r} cannot run here ({exc}); using {backend_name(t)!r}", stacklevel=3)
        return _run(name, t, *args)


def _failed_backend(exc: Exception) -> str | None:
    """The name of the backend whose BuildError ``exc`` is, or None for any other exception."""
    for label in ("native", "compiled", "triton"):
        module = _load(label)
        if module is not None and isinstance(exc, module.BuildError):
            return label
    return None


# --------------------------------------------------------------------------- autograd


def _inf_backward(x: Tensor, w: Tensor, index: Tensor, grad: Tensor, need_x: bool, need_w: bool):
    """Sub-gradient: output (b, o) sends ±grad to its argmax entry of x and ∓grad to that of w."""
    x_at = x.gather(1, index)
    w_at = w.gather(1, index.t()).t()
    signed = grad * torch.sign(x_at - w_at)
    grad_x = torch.zeros_like(x).scatter_add_(1, index, signed) if need_x else None
    grad_w = torch.zeros_like(w).scatter_add_(1, index.t(), -signed.t()) if need_w else None
    return grad_x, grad_w


class _InfDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        y, index = _run("inf_forward", x, x.detach(), w.detach(), True)
        ctx.save_for_backward(x, w, index)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, w, index = ctx.saved_tensors
        return _inf_backward(x.detach(), w.detach(), index, grad.contiguous(), *ctx.needs_input_grad)


class _PDist(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, p: float) -> Tensor:
        y = _run("p_forward", x, x.detach(), w.detach(), p)
        ctx.save_for_backward(x, w, y)
        ctx.p = p
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, w, y = (t.detach() for t in ctx.saved_tensors)  # plain tensors: one compiled variant
        # ∂y/∂x_i = sign(x_i − w_i)·(|x_i − w_i|/y)^(p−1) = −∂y/∂w_i; 0 where y = 0.
        positive = y > 0
        y_safe = torch.where(positive, y, 1).contiguous()
        g = torch.where(positive, grad, 0).contiguous()
        grad_x, grad_w = _run("p_backward", x, x, w, y_safe, g, ctx.p, *ctx.needs_input_grad[:2])
        return grad_x, grad_w, None


# --------------------------------------------------------------------------- public API


def _check_inputs(x: Tensor, w: Tensor, what: str = "x") -> None:
    if x.dim() != 2 or w.dim() != 2:
        raise ValueError(f"expected {what} of shape B×I and w of shape O×I, got {tuple(x.shape)} and {tuple(w.shape)}")
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
    x, w = x.contiguous(), w.contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    if math.isinf(p):
        if needs_grad:
            return _InfDist.apply(x, w)
        return _run("inf_forward", x, x.detach(), w.detach(), False)[0]
    if needs_grad:
        return _PDist.apply(x, w, p)
    return _run("p_forward", x, x.detach(), w.detach(), p)


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
        return _run("inf_bounds", lower, lower, upper, w)


# --------------------------------------------------------------------------- convolutional form


def _patches(x: Tensor, kernel_size: int, stride: int, padding: int) -> tuple[Tensor, int, int]:
    """``x`` (B×C×H×W) as one row per output pixel: (B·H'·W')×(C·k·k), and H', W'."""
    if x.dim() != 4:
        raise ValueError(f"expected images B×C×H×W, got {tuple(x.shape)}")
    b, _, h, w = x.shape
    out_h = (h + 2 * padding - kernel_size) // stride + 1
    out_w = (w + 2 * padding - kernel_size) // stride + 1
    cols = F.unfold(x, kernel_size, padding=padding, stride=stride)  # B × (C·k·k) × L
    return cols.transpose(1, 2).reshape(b * out_h * out_w, -1), out_h, out_w


def _unpatch(y: Tensor, batch: int, out_h: int, out_w: int) -> Tensor:
    return y.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2)


def lp_dist_conv(x: Tensor, w: Tensor, p: float, kernel_size: int, stride: int = 1, padding: int = 0) -> Tensor:
    """The convolutional l_p-dist layer: ``y[b, o, i, j] = ||patch(x)[b, :, i, j] − w[o]||_p``.

    Patches are taken with ``F.unfold`` (zero padding), as the original code does; the unfolded
    input costs ``k²`` times the input's memory, the distances themselves no more than
    :func:`lp_dist`.

    :param x: images, B×C×H×W.
    :param w: weights, O×(C·k·k), in ``unfold``'s channel-major order.
    :returns: B×O×H'×W'.
    """
    rows, out_h, out_w = _patches(x, kernel_size, stride, padding)
    return _unpatch(lp_dist(rows, w, p), x.shape[0], out_h, out_w)


def inf_dist_bounds_conv(
    lower: Tensor, upper: Tensor, w: Tensor, kernel_size: int, stride: int = 1, padding: int = 0
) -> tuple[Tensor, Tensor]:
    """:func:`inf_dist_bounds` for :func:`lp_dist_conv` (the zero padding is exact: it is no interval)."""
    low_rows, out_h, out_w = _patches(lower, kernel_size, stride, padding)
    high_rows, _, _ = _patches(upper, kernel_size, stride, padding)
    low, high = inf_dist_bounds(low_rows, high_rows, w)
    b = lower.shape[0]
    return _unpatch(low, b, out_h, out_w), _unpatch(high, b, out_h, out_w)
