"""The ``global-lipschitz`` certifier: a margin larger than ``c·eps·L`` (see :mod:`.bounds` for the proof)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness import Certificate, Certifier, ThreatModel
from harness_example import bounds, sources


class GlobalLipschitz(Certifier):
    name = "global-lipschitz"
    description = "margin > c·eps·L with L the product of the layers' norms (c = 2 for l_inf, √2 for l2); ReLU MLPs"
    source = sources.LMT
    norms = ("inf", "2")

    def not_applicable_reason(self, model: nn.Module, threat: ThreatModel) -> str | None:
        reason = super().not_applicable_reason(model, threat)  # the norm
        if reason is not None:
            return reason
        return bounds.refusal(model)

    def certify(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel) -> Certificate:
        # The margins and L in float64, so that they are the exact network's up to 1e-16; the slack covers
        # the float32 network the evaluation checks the promise on.
        exact = copy.deepcopy(model).double()
        with torch.no_grad():
            logits = exact(images.double())
            lipschitz = bounds.lipschitz_bound(exact, threat.norm)
        margins = logits.gather(1, labels[:, None]) - logits
        margins.scatter_(1, labels[:, None], float("inf"))  # no margin against the label itself
        margin = margins.amin(1) - bounds.SLACK * logits.abs().amax(1).clamp(min=1.0)
        radius = (margin / (bounds.margin_factor(threat.norm) * lipschitz)).nan_to_num(nan=0.0).clamp(min=0.0)
        return Certificate(certified=radius > threat.eps, radius=radius)
