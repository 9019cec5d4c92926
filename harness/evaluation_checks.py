"""The evaluation's checks of what components return: a broken contract is a :class:`ComponentFailed` naming it.

Attacks must return points inside the threat model (each stage of a
multi-stage attack too); certifiers well-formed verdicts and radii that agree
with them. :mod:`harness.evaluation` records a failure against the component
and goes on with the others.
"""

from __future__ import annotations

import torch

from harness.components import Attacker, AttackStages, Certificate
from harness.errors import HarnessError, one_line
from harness.threat import ThreatModel


class ComponentFailed(HarnessError):
    """A certifier or attack broke its contract; recorded against it, never raised out of :func:`harness.evaluation.evaluate`."""


def fail_message(exc: BaseException) -> str:
    """How a component's failure is recorded: a contract's own message, else what it raised, on one line."""
    if isinstance(exc, ComponentFailed):
        return str(exc)
    return f"raised {type(exc).__name__}: {one_line(exc)}"


def check_in_ball(adv: object, x: torch.Tensor, threat: ThreatModel, what: str = "perturb()") -> torch.Tensor:
    """An attack must return points inside the threat model; anything else would inflate robustness gaps."""
    if not isinstance(adv, torch.Tensor) or adv.shape != x.shape:
        shape = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
        raise ComponentFailed(f"{what} returned {shape}; expected a tensor of the images' shape {tuple(x.shape)}")
    adv = adv.detach()
    if not bool(torch.isfinite(adv).all()):
        raise ComponentFailed(f"{what} returned non-finite images")
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if threat.norm == "inf" else delta.norm(dim=1)
    slack = 1e-5 * max(threat.eps, 1.0)
    if adv.min() < 0 or adv.max() > 1 or bool((size > threat.eps + slack).any()):
        raise ComponentFailed(f"{what} returned points outside the {threat} ball or [0,1] (largest perturbation {size.max():.6g})")
    return adv


def check_stages(adv: object, x: torch.Tensor, threat: ThreatModel) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
    """What ``perturb()`` returned, as stages in the order run (one stage named ``""`` for a plain tensor), each checked
    in the ball, and the names of the gradient-free stages."""
    if not isinstance(adv, AttackStages):
        return {"": check_in_ball(adv, x, threat)}, frozenset()
    stages = adv.stages
    if not isinstance(stages, dict) or not stages or not all(isinstance(k, str) and k for k in stages):
        raise ComponentFailed("perturb() returned AttackStages whose stages are not a non-empty dict of named tensors")
    free = adv.gradient_free
    if not isinstance(free, frozenset | set) or not set(free) <= set(stages):
        raise ComponentFailed(f"perturb() returned AttackStages whose gradient_free {free!r} are not among its stages {list(stages)}")
    return {name: check_in_ball(images, x, threat, f"perturb()'s stage {name!r}") for name, images in stages.items()}, frozenset(free)


def check_verdicts(verdicts: object, n: int, what: str) -> torch.Tensor:
    """Verdicts for ``n`` samples as a bool tensor on the CPU, or ComponentFailed saying what is malformed."""
    if not isinstance(verdicts, torch.Tensor) or verdicts.shape != (n,):
        shape = tuple(verdicts.shape) if isinstance(verdicts, torch.Tensor) else type(verdicts).__name__
        raise ComponentFailed(f"{what} returned verdicts of shape {shape} for a batch of {n}; expected ({n},)")
    verdicts = verdicts.detach().cpu()
    if verdicts.dtype != torch.bool:
        if verdicts.dtype.is_floating_point or verdicts.dtype.is_complex or not bool(((verdicts == 0) | (verdicts == 1)).all()):
            raise ComponentFailed(f"{what} returned verdicts of dtype {verdicts.dtype}; expected bool")
        verdicts = verdicts.bool()
    return verdicts


def check_certificate(result: object, n: int, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(certified, radius)`` of a batch of ``n`` on the CPU, or ComponentFailed saying what is malformed."""
    if not isinstance(result, Certificate):
        raise ComponentFailed(f"certify() returned {type(result).__name__}; expected a harness.Certificate")
    certified = check_verdicts(result.certified, n, "certify()")
    radius = result.radius
    if radius is None:
        return certified, None
    if not isinstance(radius, torch.Tensor) or radius.shape != (n,):
        shape = tuple(radius.shape) if isinstance(radius, torch.Tensor) else type(radius).__name__
        raise ComponentFailed(f"certify() returned radii of shape {shape} for a batch of {n}; expected ({n},)")
    radius = radius.detach().cpu().double()
    if bool(torch.isnan(radius).any()) or bool((radius < 0).any()):
        raise ComponentFailed("certify() returned NaN or negative radii")
    if bool((certified & (radius < threat.eps)).any()):
        raise ComponentFailed(f"certify() certified samples at radii below eps {threat.eps:g}")
    if bool((~certified & (radius > threat.eps)).any()):
        raise ComponentFailed(f"certify() returned radii above eps {threat.eps:g} for samples it did not certify")
    return certified, radius


def attack_label(attacker: Attacker) -> str:
    """How tables name ``attacker``: its ``label()``; ComponentFailed if that raises or is not a string."""
    try:
        label = attacker.label()
    except Exception as exc:  # a third party's label() must not stop a run  # noqa: BLE001
        raise ComponentFailed(f"label() {fail_message(exc)}") from exc
    if not isinstance(label, str) or not label:
        raise ComponentFailed(f"label() returned {label!r}; expected a non-empty string")
    return label
