"""``lipschitz-margin`` and ``interval``: certificates from what a model knows about itself.

* ``lipschitz-margin``: certified iff the logit margin exceeds ``2·eps·L``,
  where ``L`` bounds the Lipschitz constant of every logit (models implement
  :class:`harness.components.LipschitzBounded`). Yields a radius.
* ``interval``: interval bounds of the logits over the input box clipped to
  ``[0, 1]`` (models implement :class:`harness.components.IntervalBounded`);
  certified iff the label's lower bound beats every other logit's upper bound.
"""

from __future__ import annotations

import torch
from torch import nn

from harness import Certificate, Certifier, IntervalBounded, LipschitzBounded
from harness.threat import ThreatModel
from harness_plugins.lib import citations
from harness_plugins.lib.margins import MARGIN_SLACK, full_float32, runner_up


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


class IntervalCertifier(Certifier):
    name = "interval"
    description = "interval bounds of the logits over the input box clipped to [0, 1]"
    source = citations.IBP
    norms = ("inf",)

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
        lower = (images - threat.eps).clamp(0, 1)
        upper = (images + threat.eps).clamp(0, 1)
        with torch.no_grad():
            low, high = model.interval_bounds(lower, upper)  # type: ignore[attr-defined]
        worst_label = low.gather(1, labels[:, None])[:, 0]
        return Certificate(certified=worst_label > runner_up(high, labels))

