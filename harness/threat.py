"""Threat models: a norm and a radius in raw [0, 1] pixel units."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from harness.errors import UsageError

#: Norms the harness knows by name. Components declare which of these they support.
NORMS = ("inf", "2")


def parse_norm(value: str | float) -> str:
    """Normalise a norm given as ``inf``, ``linf``, ``2``, ``l2`` or a number."""
    text = str(value).strip().lower().removeprefix("l").removeprefix("_")
    if text in ("inf", "infinity", "∞") or text == str(math.inf):
        return "inf"
    if text in ("2", "2.0"):
        return "2"
    raise UsageError(f"unknown norm {value!r}; valid norms: {', '.join(NORMS)}")


def parse_eps(value: str | float) -> float:
    """Parse a radius given as a number or a fraction such as ``8/255``."""
    if isinstance(value, (int, float)):
        eps = float(value)
    else:
        text = str(value).strip()
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", text)
        try:
            eps = float(match.group(1)) / float(match.group(2)) if match else float(text)
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"eps {value!r} is not a number (examples: 0.3, 8/255)") from None
    if not math.isfinite(eps):
        raise UsageError(f"eps {value!r} is not a finite number (examples: 0.3, 8/255)")
    return eps


def format_eps(eps: float) -> str:
    """Show a radius as a short decimal when it is one, else as ``k/255`` when it is one."""
    if float(f"{eps:.4g}") == eps:
        return f"{eps:g}"
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) != 0:
        return f"{round(k)}/255"
    return f"{eps:.6g}"


#: Radii equal to this relative tolerance are the same threat model (8/255 typed as 0.03137);
#: radii that papers compare differ by far more.
EPS_REL_TOL = 1e-4


def same_eps(a: float, b: float) -> bool:
    """Whether two radii name the same threat model."""
    return math.isclose(a, b, rel_tol=EPS_REL_TOL)


@dataclass(frozen=True)
class ThreatModel:
    """Perturbations ``x'`` with ``‖x' − x‖_norm ≤ eps`` and ``x'`` in ``[0, 1]``.

    ``eps`` is always in raw pixel units ([0, 1] images), whatever
    normalisation a model applies inside.
    """

    norm: str
    eps: float

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UsageError(f"unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}")
        if not math.isfinite(self.eps) or self.eps <= 0:
            raise UsageError(f"eps {self.eps:g} is out of range; it must be > 0")
        if self.norm == "inf" and self.eps > 1:
            raise UsageError(f"eps {self.eps:g} is out of range for the l_inf norm; valid: 0 < eps <= 1")

    def __str__(self) -> str:
        return f"l_{self.norm} eps={format_eps(self.eps)}"
