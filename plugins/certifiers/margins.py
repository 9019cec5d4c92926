"""``lipschitz-margin`` and ``interval``: certificates from what a model knows about itself.

* ``lipschitz-margin``: certified iff the logit margin exceeds ``2·eps·L``,
  where ``L`` bounds the Lipschitz constant of every logit (models implement
  :class:`harness.components.LipschitzBounded`). Yields a radius.
* ``interval``: interval bounds of the logits over the input box clipped to
  ``[0, 1]`` (models implement :class:`harness.components.IntervalBounded`);
  certified iff the label's lower bound beats every other logit's upper bound.
  No closed-form radius: the harness bisects over eps for one (the
  ``radius_tolerance`` option), bounding every sample over its own box in one
  pass per step (:meth:`IntervalCertifier.certify_at`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness import Certificate, Certifier, IntervalBounded, LipschitzBounded
from harness.options import doc_field
from harness.threat import ThreatModel
from harness_plugins.lib import citations
from harness_plugins.lib.margins import MARGIN_SLACK, full_float32, runner_up
from harness_plugins.lib.radius import RADIUS_TOLERANCE_DOC, check_tolerance, per_sample


class LipschitzMargin(Certifier):
    name = "lipschitz-margin"
    description = "margin > 2·eps·L, with L the model's bound on every logit's Lipschitz constant"
    source = citations.LIPSCHITZ_MARGIN
    norms = ("inf", "2")

    def not_applicable_reason(self, model: nn.Module, threat: ThreatModel) -> str | None:
        reason = super().not_applicable_reason(model, threat)
        if reason:
            return reason
        if not isinstance(model, LipschitzBounded):
            return f"{type(model).__name__} does not implement lipschitz_constant() (harness.LipschitzBounded)"
        if model.lipschitz_constant(threat.norm) is None:
            return f"{type(model).__name__} knows no bound on its Lipschitz constant under l_{threat.norm} in its current state"
        return None

    def certify(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel) -> Certificate:
        lipschitz = model.lipschitz_constant(threat.norm)  # type: ignore[attr-defined]
        with torch.no_grad(), full_float32():
            logits = model(images).double()
        margin = logits.gather(1, labels[:, None])[:, 0] - runner_up(logits, labels)
        slack = MARGIN_SLACK * logits.abs().amax(1).clamp(min=1.0)
        # Each logit moves by at most L·eps, so the margin by at most 2·L·eps.
        radius = ((margin - slack) / (2 * lipschitz)).nan_to_num(nan=0.0).clamp(min=0)
        return Certificate(certified=radius > threat.eps, radius=radius)


@dataclass(frozen=True)
class IntervalOptions:
    radius_tolerance: float = doc_field(0.001, RADIUS_TOLERANCE_DOC + " On by default: a certification is one bound pass.")

    def __post_init__(self) -> None:
        check_tolerance(self.radius_tolerance)


class IntervalCertifier(Certifier):
    name = "interval"
    description = "interval bounds of the logits over the input box clipped to [0, 1]"
    source = citations.IBP
    norms = ("inf",)
    Options = IntervalOptions

    def not_applicable_reason(self, model: nn.Module, threat: ThreatModel) -> str | None:
        reason = super().not_applicable_reason(model, threat)
        if reason:
            return reason
        if not isinstance(model, IntervalBounded):
            return f"{type(model).__name__} does not implement interval_bounds() (harness.IntervalBounded)"
        if not model.supports_interval_bounds():
            return f"{type(model).__name__}'s interval bounds are not sound in its current state"
        return None

    def certify(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel) -> Certificate:
        return Certificate(certified=self._certified(model, images, labels, torch.full((len(images),), threat.eps, device=images.device)))

    def certify_at(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, eps: torch.Tensor) -> torch.Tensor:
        """One bound pass: each sample over its own box ``images[i] ± eps[i]`` clipped to ``[0, 1]``."""
        return self._certified(model, images, labels, eps)

    def _certified(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        radius = per_sample(eps, images)
        lower = (images - radius).clamp(0, 1)
        upper = (images + radius).clamp(0, 1)
        with torch.no_grad():
            low, high = model.interval_bounds(lower, upper)  # type: ignore[attr-defined]
        worst_label = low.gather(1, labels[:, None])[:, 0]
        return worst_label > runner_up(high, labels)

