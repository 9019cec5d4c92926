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

    def applies_to(self, model: nn.Module, threat: ThreatModel) -> bool:
        return (
            threat.norm in self.norms
            and isinstance(model, LipschitzBounded)
            and model.lipschitz_constant(threat.norm) is not None
        )

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

    def applies_to(self, model: nn.Module, threat: ThreatModel) -> bool:
        return threat.norm in self.norms and isinstance(model, IntervalBounded) and model.supports_interval_bounds()

    def certify(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel) -> Certificate:
        lower = (images - threat.eps).clamp(0, 1)
        upper = (images + threat.eps).clamp(0, 1)
        with torch.no_grad():
            low, high = model.interval_bounds(lower, upper)  # type: ignore[attr-defined]
        worst_label = low.gather(1, labels[:, None])[:, 0]
        return Certificate(certified=worst_label > runner_up(high, labels))

