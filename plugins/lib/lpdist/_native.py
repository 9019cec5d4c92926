"""The CPU fast path for float32: hand-written C++ kernels (``native/lpdist.cpp``).

The source is compiled once per machine with the host's C++ compiler and
``-march=native`` into a cache directory (``$HARNESS_CACHE_DIR`` or
``~/.cache/harness``; the file name holds a hash of the source, the compiler,
its flags and the CPU's features, so a shared home directory never serves a
library built for another CPU) and loaded with ctypes, which releases the GIL
during a call. What the kernels do and why they are fast is in the source's
header: register-tiled forward, exp2/log2 polynomials for finite p, vectors of
negligible terms skipped, one backward pass for both gradients, and the p = ∞
argmax from the same pass as the value.

Everything else goes to the inductor backend (:mod:`._compiled`): float64,
non-finite inputs (the bit-level log2 would turn them into finite numbers),
and shapes with a dimension of size 0.

Accuracy: with AVX-512 and 8 <= p < 64 the terms (|x − w|/y)^(p−1) are
raised by tables and a polynomial fitted per call, without forming the
quotient (:func:`power_route` says which route a p takes): each term carries a
few float32 roundings, as a float32 computation of the formula does.
Elsewhere the log2/exp2 polynomials' errors (log2 < 3.9e-7 absolute, exp2 <
7.5e-8 relative) amount to a relative error of about 2e-7·p in a term of the
gradient and 3e-7 in the forward, inside float32's own error at each p (a
rounding error δ of |x − w|/y becomes (p − 1)·δ in its (p − 1)-th power).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from harness_plugins.lib.lpdist import _compiled

SOURCE = Path(__file__).with_name("native") / "lpdist.cpp"
# -ffp-contract=fast: ISO C++ mode (-std=c++17) would otherwise keep every a·b + c of the polynomials two
# roundings and two instructions; fused, p = 8 runs 20 % faster here and each step rounds once.
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
CACHE_ENV = "HARNESS_CACHE_DIR"
#: Terms below 2^-NEGLIGIBLE_LOG2 of the largest possible one are skipped (see the source).
NEGLIGIBLE_LOG2 = 40.0
FAST_INT_P = 8


class BuildError(RuntimeError):
    """No C++ compiler, or the kernels do not compile or load here."""


def _compiler() -> str:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise BuildError("no C++ compiler found (set CXX, or install g++)")


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "harness")
    return Path(root) / "lpdist"


def _build() -> Path:
    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"{compiler} --version failed: {exc}") from exc
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, *FLAGS, platform.machine(), _cpu_features()]).encode())
    target = cache_dir() / f"lpdist-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never load a half-written file.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise BuildError(f"{compiler} failed: {(done.stderr.strip().splitlines() or ['no output'])[0]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


_F, _I64, _INT, _P = ctypes.c_float, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "lpdist_vector_width": ([], _INT),
    "lpdist_all_finite": ([_P, _I64, _INT], _INT),
    "lpdist_inf_forward": ([_P, _P, _P, _P, _I64, _I64, _I64, _INT], None),
    "lpdist_p8_sum": ([_P, _P, _P, _I64, _I64, _I64, _INT], None),
    "lpdist_p_sum": ([_P, _P, _P, _P, _I64, _I64, _I64, _F, _INT], None),
    "lpdist_table_degree": ([_F], _INT),
    "lpdist_peak_pairs": ([_INT, _INT, ctypes.c_double], ctypes.c_double),
    "lpdist_inf_bounds": ([_P, _P, _P, _P, _P, _I64, _I64, _I64, _INT], None),
    "lpdist_p_backward": ([_P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _F, _INT], None),
}


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernels (built on first use). :raises BuildError: where they cannot be built."""
    if platform.system() == "Windows":
        raise BuildError("the native kernels are built for Linux and macOS only")
    path = _build()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise BuildError(f"cannot load {path}: {exc}") from exc
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def vector_width() -> int:
    return library().lpdist_vector_width()


def peak_pairs_per_second(p: float, seconds: float = 0.1, tries: int = 5) -> float:
    """The pair rate of the p = ∞ (``p=inf``) or p = 8 forward's arithmetic alone on this CPU, with torch's
    thread count: its inner loop on operands held in registers (no memory traffic). The ceiling for a forward:
    the best of ``tries`` runs of ``seconds`` (one run can lose its core to other work, never gain one)."""
    return max(library().lpdist_peak_pairs(0 if math.isinf(p) else 1, _threads(), seconds) for _ in range(tries))


def power_route(p: float) -> str:
    """How the float32 kernels raise the terms at this finite p: ``"p8"`` (p = 8 by multiplications),
    ``"table, degree N"`` (AVX-512, 8 <= p < 64) or ``"log2/exp2"``."""
    if p == FAST_INT_P:
        return "p8"
    degree = library().lpdist_table_degree(float(p))
    return f"table, degree {degree}" if degree else "log2/exp2"


def _ready(x: Tensor, w: Tensor) -> bool:
    if x.dtype != torch.float32 or x.device.type != "cpu" or min(x.shape[0], w.shape[0], x.shape[1]) < 1:
        return False
    lib = library()
    # The kernels take log2 by reading float bits: inf and NaN must not get there.
    return all(lib.lpdist_all_finite(_ptr(t), t.numel(), _threads()) for t in (x.contiguous(), w.contiguous()))


def _padded(t: Tensor) -> Tensor:
    """``t`` with zero columns up to a multiple of the vector width (a zero difference adds nothing)."""
    extra = -t.shape[1] % vector_width()
    return (F.pad(t, (0, extra)) if extra else t).contiguous()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _threads() -> int:
    return torch.get_num_threads()


# --------------------------------------------------------------------------- the backend interface


def inf_forward(x: Tensor, w: Tensor, with_index: bool) -> tuple[Tensor, Tensor | None]:
    if not _ready(x, w):
        return _compiled.inf_forward(x, w, with_index)
    xp, wp = _padded(x), _padded(w)
    (b, k), o = xp.shape, wp.shape[0]
    y = torch.empty(b, o)
    index = torch.empty(b, o, dtype=torch.int64) if with_index else None
    library().lpdist_inf_forward(_ptr(xp), _ptr(wp), _ptr(y), _ptr(index), b, o, k, _threads())
    return y, index


def p_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    if not _ready(x, w):
        return _compiled.p_forward(x, w, p)
    xp, wp = _padded(x), _padded(w)
    (b, k), o = xp.shape, wp.shape[0]
    total = torch.empty(b, o)
    if p == FAST_INT_P:
        library().lpdist_p8_sum(_ptr(xp), _ptr(wp), _ptr(total), b, o, k, _threads())
        # Unnormalised: usable only where no sum overflowed or lost its precision to underflow.
        if bool(torch.isfinite(total).all()) and bool((total > torch.finfo(torch.float32).tiny * 2**24).all()):
            return total.pow(1.0 / FAST_INT_P)
    scale = torch.empty(b, o)
    library().lpdist_p_sum(_ptr(xp), _ptr(wp), _ptr(scale), _ptr(total), b, o, k, float(p), _threads())
    # total ∈ [1, I] where scale > 0 (its largest term is 1); scale = 0 gives 0.
    return scale * total.pow(1.0 / p)


def p_backward(
    x: Tensor, w: Tensor, y: Tensor, grad: Tensor, p: float, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    """``y`` is positive and ``grad`` zero where the output was 0 (the caller's guarantee)."""
    if not _ready(x, w):
        return _compiled.p_backward(x, w, y, grad, p, need_x, need_w)
    xp, wp = _padded(x), _padded(w)
    (b, k), o = xp.shape, wp.shape[0]
    y, grad = y.contiguous(), grad.contiguous()
    scale = (1.0 / y).contiguous()
    if p == FAST_INT_P:
        limit = torch.zeros_like(y)
    else:
        # (|d|/y)^(p−1) < 2^-40 below this |d|: such terms are skipped.
        limit = (y * 2.0 ** (-NEGLIGIBLE_LOG2 / (p - 1)) if p > 1 else torch.zeros_like(y)).contiguous()
    # One pass computes every term once for both gradients, so both are always produced.
    grad_x, grad_w = torch.zeros(b, k), torch.zeros(o, k)
    library().lpdist_p_backward(
        _ptr(xp), _ptr(wp), _ptr(grad), _ptr(y), _ptr(scale), _ptr(limit), _ptr(grad_x), _ptr(grad_w), b, o, k, float(p), _threads()
    )
    width = x.shape[1]
    return (grad_x[:, :width] if need_x else None), (grad_w[:, :width] if need_w else None)


def inf_bounds(lower: Tensor, upper: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """The interval bounds of the p = ∞ distance over boxes (the reference's bits, one pass, threads)."""
    if not (_ready(lower, w) and _ready(upper, w)):
        return _compiled.inf_bounds(lower, upper, w)
    lp, up, wp = _padded(lower), _padded(upper), _padded(w)
    (b, k), o = lp.shape, wp.shape[0]
    lo, hi = torch.empty(b, o), torch.empty(b, o)
    library().lpdist_inf_bounds(_ptr(lp), _ptr(up), _ptr(wp), _ptr(lo), _ptr(hi), b, o, k, _threads())
    return lo, hi
