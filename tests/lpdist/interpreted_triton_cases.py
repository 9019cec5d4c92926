"""The Triton l_p-dist kernels on the CPU, through Triton's interpreter: the cases and their runner.

Run as a script (tests/lpdist/test_triton_interpreted.py does, in a subprocess): the interpreter is
chosen by ``TRITON_INTERPRET=1``, which triton reads when it is imported, so it cannot be switched
on inside a test process that may already have imported triton. Prints one JSON line per case:
``{"case", "ok", "message", "plans"}``, or a single ``{"unavailable": reason}`` when Triton's
interpreter cannot run here at all (the tests then skip).

Each case forces the ``triton`` backend, runs ``lp_dist`` forward and backward on float32 CPU
tensors and compares the output and both gradients with the reference backend in float64 (at
p = ∞ with the float32 reference, exactly: the same max, the same first maximiser). Importing
this module has no side effects: the test reads :data:`CASES` to parametrise itself.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field

#: Element-wise tolerance per unit of max(1, p) (float32 rounding, amplified (p − 1)-fold by
#: |r|^(p−1)); gradients get 10× that as absolute tolerance, as in tests/lpdist/test_ops.py.
EPS_PER_P = 2e-6
#: The backward's own normwise error at large p, given the same float32 y as the reference and
#: inputs whose differences are exact: a correctly rounded ratio |d|/y errs by half an ulp (2^-24),
#: which |r|^(p−1) amplifies (p − 1)-fold. On the "spread" data the ratio gives 6.3e-6 at p = 250
#: and 2.0e-5 at p = 1000 (bounds 1.5e-5, 5.9e-5); exp2((p − 1)·(log2|d| − log2 y)) gives 3.3e-5
#: and 9.3e-5 and fails.
SPREAD_BOUND_PER_P = 2**-24
#: Under the identity init at p = 1000 the largest |d| is y itself, and r must come out as exactly
#: 1 (2.4e-7 measured); a·(1/y) without the FMA residual step errs by an ulp there: 5.1e-5.
IDENTITY_BOUND = 1e-6


@dataclass(frozen=True)
class Case:
    batch: int
    outputs: int
    inputs: int
    p: float
    data: str = "identity"  # identity | integers | zeros | spread
    need: str = "both"  # both | x | w
    cap_bytes: int | None = None  # PARTIAL_BYTES_CAP for this case
    expect: tuple[str, ...] = ()  # split paths the case must take: k_slices, o_slices, passes
    backward_bound: float | None = None  # a normwise bound on the backward alone (see _backward_alone)
    dyadic: bool = False  # values on a 2^-10 grid: x − w is exact in float32 (no rounding of d to blame)
    notes: str = field(default="", compare=False)


# Tiles (see _triton._FWD / _BWD): forward 32×32(p=8: 64)×4, backward 32×8×32; the interpreter's
# target is 8 programs, so small shapes take the split paths.
CASES: dict[str, Case] = {
    # B, O, I multiples of no tile; several tiles and blocks in every direction.
    "tiles-p8": Case(40, 70, 37, 8.0),
    "tiles-p9.5": Case(40, 70, 37, 9.5),
    "tiles-p64": Case(40, 70, 37, 64.0),
    "tiles-p1000": Case(40, 70, 37, 1000.0),
    "tiles-inf": Case(40, 70, 37, math.inf),
    "tiles-p1": Case(40, 70, 37, 1.0),
    # Narrow outputs (as 5120 → 10): the forward splits the inputs and combines the slices.
    "narrow-p8": Case(20, 3, 100, 8.0, expect=("k_slices",)),
    "narrow-p9.5": Case(20, 3, 100, 9.5, expect=("k_slices",)),
    "narrow-p1000": Case(20, 3, 100, 1000.0, expect=("k_slices",)),
    "narrow-inf": Case(20, 3, 100, math.inf, expect=("k_slices",)),
    # Few grad_x tiles: the backward splits the outputs into slices with partial grad_x planes.
    "o-slices-p8": Case(20, 70, 40, 8.0, expect=("o_slices",)),
    "o-slices-p9.5": Case(20, 70, 40, 9.5, expect=("o_slices",)),
    # Partial planes over the cap: the backward runs in column passes (with output slices too).
    "passes-p9.5": Case(40, 20, 100, 9.5, cap_bytes=4 * (2 * 20) * 32, expect=("passes",)),
    "passes-slices-p8": Case(20, 70, 100, 8.0, cap_bytes=4 * (70 + 2 * 20) * 32, expect=("passes", "o_slices")),
    # One gradient only (inputs that need none, frozen weights).
    "w-only-p9.5": Case(40, 20, 37, 9.5, need="w"),
    "x-only-p8": Case(40, 20, 37, 8.0, need="x", cap_bytes=1),
    # Zero differences: x rows equal to w rows (y = 0, gradient 0) and equal coordinates (sign 0).
    "zeros-p8": Case(12, 9, 21, 8.0, data="zeros"),
    "zeros-p9.5": Case(12, 9, 21, 9.5, data="zeros"),
    "zeros-inf": Case(12, 9, 21, math.inf, data="zeros"),
    # Small integers: ties everywhere; p = ∞ must keep the first maximiser, across slices too.
    "ties-inf": Case(40, 70, 37, math.inf, data="integers"),
    "ties-narrow-inf": Case(20, 3, 100, math.inf, data="integers", expect=("k_slices",)),
    # The −10 identity init at p = 1000: |x − w| ≈ 10, finite all the same.
    "identity-p1000": Case(24, 30, 40, 1000.0, backward_bound=IDENTITY_BOUND, dyadic=True),
    # Every |x − w| ≈ 10 (many comparable terms near the max): the ratio keeps float32 precision.
    "spread-p250": Case(24, 30, 40, 250.0, data="spread", backward_bound=SPREAD_BOUND_PER_P * 249, dyadic=True),
    "spread-p1000": Case(24, 30, 40, 1000.0, data="spread", backward_bound=SPREAD_BOUND_PER_P * 999, dyadic=True),
}


def _inputs(case: Case):
    import torch

    g = torch.Generator().manual_seed(0)
    b, o, i = case.batch, case.outputs, case.inputs
    if case.data == "spread":
        x = 0.05 * torch.rand(b, i, generator=g)
        w = -10 + 0.1 * torch.randn(o, i, generator=g)
    elif case.data == "integers":
        x = torch.randint(-3, 4, (b, i), generator=g).float()
        w = torch.randint(-3, 4, (o, i), generator=g).float()
    else:
        x = (torch.rand(b, i, generator=g) - 0.13) / 0.31
        w = torch.randn(o, i, generator=g)
        w[torch.arange(o), torch.arange(o) % i] = -10.0  # the identity init
        if case.data == "zeros":
            x[: min(b, o) // 2] = w[: min(b, o) // 2]  # whole rows equal: y = 0
            x[:, ::3] = 0.5
            w[:, ::3] = 0.5  # equal coordinates: d = 0
    if case.dyadic:
        x, w = (torch.round(t * 1024) / 1024 for t in (x, w))
    grad = torch.randn(b, o, generator=g)
    return x, w, grad


def _run(case: Case, backend: str, x, w, grad):
    import torch

    from harness_plugins.lib.lpdist import lp_dist, ops

    os.environ[ops.BACKEND_ENV] = backend
    x = x.detach().clone().requires_grad_(case.need in ("both", "x"))
    w = w.detach().clone().requires_grad_(case.need in ("both", "w"))
    y = lp_dist(x, w, case.p)
    wanted = [t for t in (x, w) if t.requires_grad]
    grads = iter(torch.autograd.grad(y, wanted, grad.to(y.dtype)))
    gx = next(grads) if x.requires_grad else None
    gw = next(grads) if w.requires_grad else None
    return y.detach(), gx, gw


def _compare(case: Case, got, want) -> list[str]:
    import torch

    problems = []
    tol = EPS_PER_P * max(1.0, case.p)
    for name, a, b in zip(("y", "grad_x", "grad_w"), got, want):
        if (a is None) != (b is None):
            problems.append(f"{name}: computed {a is not None}, expected {b is not None}")
            continue
        if a is None:
            continue
        if not bool(torch.isfinite(a).all()):
            problems.append(f"{name}: not finite")
            continue
        if math.isinf(case.p):
            if not torch.equal(a, b):
                problems.append(f"{name}: differs from the float32 reference at {int((a != b).sum())} entries")
            continue
        atol = tol if name == "y" else tol * 10
        try:
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=atol)
        except AssertionError as exc:
            problems.append(f"{name}: {str(exc).strip().splitlines()[-3:]}")
    return problems


def _normwise(a, b) -> float:
    return float((a.double() - b).abs().max() / b.abs().max())


def _backward_alone(case: Case, x, w, grad) -> list[str]:
    """The backward alone, fed the same float32 y as the float64 reference backward."""
    from harness_plugins.lib.lpdist import _reference, _triton

    y = _triton.p_forward(x, w, case.p)
    got = _triton.p_backward(x, w, y, grad, case.p, True, True)
    want = _reference.p_backward(x.double(), w.double(), y.double(), grad.double(), case.p, True, True)
    bound = case.backward_bound
    errors = {name: _normwise(a, b) for name, a, b in zip(("grad_x", "grad_w"), got, want)}
    return [f"backward alone, {name}: normwise error {err:.2e} > {bound:.1e}" for name, err in errors.items() if err > bound]


def run_case(name: str, case: Case) -> dict:
    from harness_plugins.lib.lpdist import _triton

    plans: list[tuple[str, object]] = []

    def recording(fn, kind):
        def wrapper(*args, **kwargs):
            plan = fn(*args, **kwargs)
            plans.append((kind, plan, args[2]))
            return plan

        return wrapper

    saved = (_triton.plan_forward, _triton.plan_backward, _triton.PARTIAL_BYTES_CAP)
    _triton.plan_forward = recording(saved[0], "forward")
    _triton.plan_backward = recording(saved[1], "backward")
    if case.cap_bytes is not None:
        _triton.PARTIAL_BYTES_CAP = case.cap_bytes
    x, w, grad = _inputs(case)
    try:
        got = _run(case, "triton", x, w, grad)
    finally:
        _triton.plan_forward, _triton.plan_backward, _triton.PARTIAL_BYTES_CAP = saved
    if math.isinf(case.p):
        want = _run(case, "reference", x, w, grad)
    else:
        want = _run(case, "reference", x.double(), w.double(), grad.double())
    problems = _compare(case, got, want)
    if case.backward_bound is not None:
        problems += _backward_alone(case, x, w, grad)
    taken = set()
    for kind, plan, inputs in plans:
        if kind == "forward" and plan.k_slices > 1:
            taken.add("k_slices")
        if kind == "backward" and plan.o_slices > 1:
            taken.add("o_slices")
        if kind == "backward" and plan.passes(inputs) > 1:
            taken.add("passes")
    problems += [f"the case never took the {path} path (plans: {plans})" for path in case.expect if path not in taken]
    # A backend that cannot load is replaced by the reference silently: make sure the kernels ran.
    if not any(kind == "forward" for kind, _, _ in plans):
        problems.append("the Triton forward never ran")
    if not any(kind == "backward" for kind, _, _ in plans) and not math.isinf(case.p):
        problems.append("the Triton backward never ran")
    return {"case": name, "ok": not problems, "message": "; ".join(problems), "plans": [repr(p) for _, p, _ in plans]}


def _probe() -> str | None:
    """Why Triton's interpreter cannot run a trivial kernel here, or None when it can."""
    try:
        import torch
        import triton
        import triton.language as tl

        @triton.jit
        def _double(X, N, BLOCK: tl.constexpr):
            r = tl.arange(0, BLOCK)
            tl.store(X + r, tl.load(X + r, mask=r < N) * 2, mask=r < N)

        t = torch.ones(3)
        _double[(1,)](t, 3, BLOCK=4)
        if t.tolist() != [2.0, 2.0, 2.0]:
            return f"the interpreter computed {t.tolist()} for [2, 2, 2]"
    except Exception as exc:  # noqa: BLE001 (any failure of the probe means: no interpreter here)
        return f"Triton's interpreter cannot run here: {type(exc).__name__}: {exc}"
    return None


def main(names: list[str]) -> int:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("TRITON_INTERPRET=1 must be set before triton is imported")
    os.environ["TRITON_INTERPRET"] = "1"
    reason = _probe()
    if reason is not None:
        print(json.dumps({"unavailable": reason}), flush=True)
        return 0
    for name in names or list(CASES):
        print(json.dumps(run_case(name, CASES[name])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
