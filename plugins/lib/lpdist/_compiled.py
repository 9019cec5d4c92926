"""The CPU fast path: inductor-generated C++ from ``torch.compile``.

Each kernel is written as a broadcast expression over B×O×I followed by a
reduction; inductor fuses the two into one loop nest that never stores the
B×O×I tensor, vectorised over the reduced dimension and parallel over the
others. Shapes are dynamic, so a new batch size does not recompile.

Compiled variants, and how the p schedule maps onto them:

* p = ∞: one value kernel, one index kernel (only when a backward is needed);
* p = 8 (the schedule's first phase): one forward and one backward kernel
  computing ``|d|^8`` by repeated squaring, without the max normalisation (the
  v2 kernels do the same below p = 10); every call checks that no sum
  overflowed or underflowed, and otherwise recomputes with the normalised
  kernel;
* any other p (the whole exponential relaxation 8 → 1000): one forward and
  one backward kernel that take p as a runtime tensor, so the new p of every
  step runs the same compiled code.

Each kernel is compiled once per dtype. Problems with a dimension of size 1
(where torch.compile would specialise and recompile) go to the reference
backend, which is as fast there.

The backward of finite p is one kernel, ``Σ_o g·sign(x − w)·(|x − w|/y)^(p−1)``
reduced over the outputs; the weight gradient is the same kernel with the roles
of x and w swapped.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from harness_plugins.lib.lpdist import _reference

#: The integer p with an unnormalised repeated-squaring kernel: the p schedule's starting value.
FAST_INT_P = 8


class BuildError(RuntimeError):
    """torch.compile cannot build kernels here (no C++ compiler, unsupported platform)."""


def _int_pow(r: Tensor, n: int) -> Tensor:
    """``r**n`` for a small positive integer by repeated squaring (unrolled at trace time)."""
    result, base = None, r
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    return result if result is not None else torch.ones_like(r)


def _diff(x: Tensor, w: Tensor) -> Tensor:
    return x[:, None, :] - w[None, :, :]


def _inf_value(x: Tensor, w: Tensor) -> Tensor:
    return _diff(x, w).abs().amax(-1)


def _inf_index_key(x: Tensor, w: Tensor, y: Tensor, descending: Tensor) -> Tensor:
    # descending = [I, I−1, ..., 1]: the largest key among the maximisers is the first one. A float
    # max-reduction vectorises far better than an argmax; |x − w| == y exactly because the value
    # kernel computed the same differences.
    hit = _diff(x, w).abs() >= y[:, :, None]
    return (hit * descending).amax(-1)


def _int_forward(x: Tensor, w: Tensor, p: int) -> Tensor:
    return _int_pow(_diff(x, w).abs(), p).sum(-1)


# r^e as exp(e·log r) with both ends floored: log r >= log(1e-30) keeps 0·log 0 out (p = 1), and
# exp(max(e·log r, −60)) never returns a denormal, whose arithmetic is many times slower on x86.
# Each floored term is below 1e-26 while the largest term is 1 (forward) or |g| (backward), so
# the floors change nothing at float32 or float64 resolution.
_R_FLOOR, _LOG_FLOOR = 1e-30, -60.0


def _pow_floored(r: Tensor, e: Tensor) -> Tensor:
    return torch.exp((e * torch.log(r.clamp(min=_R_FLOOR))).clamp(min=_LOG_FLOOR))


def _general_forward(x: Tensor, w: Tensor, p: Tensor) -> Tensor:
    a = _diff(x, w).abs()
    m = a.amax(-1, keepdim=True)
    total = _pow_floored(a / torch.where(m > 0, m, 1), p).sum(-1)
    return m[..., 0] * torch.exp(torch.log(total) / p)


def _int_grad(x: Tensor, w: Tensor, y: Tensor, g: Tensor, p: int) -> Tensor:
    d = _diff(x, w)
    if p == 1:
        term = d.sign()
    else:
        r = d / y[:, :, None]  # |r| <= 1
        term = _int_pow(r, p - 1) if (p - 1) % 2 else _int_pow(r, p - 1) * d.sign()
    return (g[:, :, None] * term).sum(1)


def _general_grad(x: Tensor, w: Tensor, y: Tensor, g: Tensor, p: Tensor) -> Tensor:
    d = _diff(x, w)
    term = _pow_floored(d.abs() / y[:, :, None], p - 1) * d.sign()
    return (g[:, :, None] * term).sum(1)


#: Compiled variants allowed per kernel. A process needs few (per dtype, and the first calls
#: before dynamo marks sizes dynamic); torch's default of 8 is shared with the user's own code.
RECOMPILE_LIMIT = 64


def _call(name: str, *args):
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return _kernel(name)(*args)


@functools.cache
def _kernel(name: str):
    fn = {
        "inf_value": _inf_value,
        "inf_index_key": _inf_index_key,
        "int_forward": _int_forward,
        "general_forward": _general_forward,
        "int_grad": _int_grad,
        "general_grad": _general_grad,
    }[name]
    return torch.compile(fn, dynamic=True, fullgraph=True)


@functools.cache
def _check_build() -> None:
    """Compile and run one tiny kernel once; any failure means the platform cannot compile."""
    try:
        x = torch.rand(3, 5)
        _call("inf_value", x, torch.rand(4, 5))  # the CPU compiler; CUDA builds are checked by use
    except Exception as exc:  # dynamo/inductor raise many types; all mean "no fast path here"
        raise BuildError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _ready(x: Tensor, w: Tensor) -> bool:
    # Inductor also compiles for CUDA (through Triton); the dispatcher picks this backend
    # automatically only for the CPU, and for CUDA only when HARNESS_LPDIST_BACKEND=compiled.
    if min(x.shape[0], w.shape[0], x.shape[1]) < 2:
        return False
    _check_build()
    return True


# --------------------------------------------------------------------------- the backend interface


def inf_forward(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    if not _ready(x, w):
        return _reference.inf_forward(x, w, with_index)
    y = _call("inf_value", x, w)
    if not with_index:
        return y, None
    inp = x.shape[1]
    descending = torch.arange(inp, 0, -1, dtype=x.dtype, device=x.device)
    key = _call("inf_index_key", x, w, y, descending)
    if bool((key <= 0).any()):  # cannot happen with exact arithmetic; never trust a guess
        return _reference.inf_forward(x, w, True)
    return y, (inp - key).to(torch.int64)


def p_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    if not _ready(x, w):
        return _reference.p_forward(x, w, p)
    if p == FAST_INT_P:
        total = _call("int_forward", x, w, FAST_INT_P)
        tiny = torch.finfo(x.dtype).tiny * 2**24
        if bool(torch.isfinite(total).all()) and bool((total > tiny).all()):
            return total.pow(1.0 / FAST_INT_P)
    return _call("general_forward", x, w, torch.tensor(p, dtype=x.dtype))


def p_backward(
    x: Tensor, w: Tensor, y: Tensor, grad: Tensor, p: float, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    if not _ready(x, w):
        return _reference.p_backward(x, w, y, grad, p, need_x, need_w)
    if p == FAST_INT_P:
        kernel, arg = "int_grad", FAST_INT_P
    else:
        kernel, arg = "general_grad", torch.tensor(p, dtype=x.dtype)
    grad_x = _call(kernel, x, w, y, grad, arg) if need_x else None
    # d/dw has the opposite sign of d/dx: the same kernel with x and w swapped gives it directly.
    grad_w = _call(kernel, w, x, y.t().contiguous(), grad.t().contiguous(), arg) if need_w else None
    return grad_x, grad_w


def inf_bounds(lower: Tensor, upper: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """No kernel of this backend's own: the reference's (chunked torch, exact)."""
    return _reference.inf_bounds(lower, upper, w)
