"""Built-in certifiers that apply to any model implementing the matching protocol.

* ``lipschitz-margin``: certified iff the logit margin exceeds ``2·eps·L``,
  where ``L`` bounds the Lipschitz constant of every logit (models implement
  :class:`harness.components.LipschitzBounded`). Yields a radius.
* ``interval``: interval bounds of the logits over the input box clipped to
  ``[0, 1]`` (models implement :class:`harness.components.IntervalBounded`);
  certified iff the label's lower bound beats every other logit's upper bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from harness import Certificate, Certifier, IntervalBounded, LipschitzBounded, Source, hookimpl
from harness.threat import ThreatModel

#: Relative slack on the margin for float32 rounding in the forward pass (TF32 off: see full_float32).
MARGIN_SLACK = 1e-5


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Forward passes whose margins a certificate trusts run in full float32 precision.

    On NVIDIA GPUs cuDNN convolutions default to TF32 (10-bit mantissas): on an H100 a
    6C2F's margins then err by up to ~100× MARGIN_SLACK (measured), which would make
    radii too large. This turns TF32 off for convolutions and matrix products.
    """
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def runner_up(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The largest logit other than the label's, per row."""
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return others.amax(1)


class LipschitzMargin(Certifier):
    name = "lipschitz-margin"
    description = "margin > 2·eps·L, with L the model's bound on every logit's Lipschitz constant"
    source = Source(
        title="Lipschitz-margin training: scalable certification of perturbation invariance for deep neural networks",
        authors="Tsuzuku, Sato, Sugiyama",
        venue="NeurIPS 2018",
    )
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
    source = Source(
        title="On the effectiveness of interval bound propagation for training verifiably robust models",
        authors="Gowal et al.",
        venue="arXiv 2018",
    )
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


@hookimpl
def register_certifiers() -> list[type[Certifier]]:
    return [LipschitzMargin, IntervalCertifier]
