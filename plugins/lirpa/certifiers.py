"""auto_LiRPA's IBP, CROWN-IBP and CROWN as certifiers of conventional networks and heads.

A certifier applies to

* a :class:`harness.FeatureHead` model whose feature bounds are sound for
  l_inf: it bounds ``model.head`` over :meth:`~harness.FeatureHead.feature_bounds`
  of the image box clipped to ``[0, 1]``;
* a *conventional* network (see :func:`harness_plugins.lib.lirpa.bounds.conventional`) under l_inf (the image
  box clipped to ``[0, 1]``) or l2 (the whole ball, unclipped: a superset,
  so sound).

A sample is certified iff every margin lower bound ``z_y − z_j`` (j ≠ y) is
positive. No closed-form radius: the harness bisects over eps for one
(``radius_tolerance``, on by default for ``ibp`` under l_inf only); under l_inf each step
bounds every sample over its own box in one pass (:meth:`LiRPACertifier.certify_at`).
The ``BoundedModule`` is built once per bounded module and kept while
that module lives, keyed by object identity (rebuilt when the input moves to
another device): replacing a module's layers after it was certified needs a
new module object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from harness import Certificate, Certifier, FeatureHead, HarnessError
from harness.options import doc_field
from harness.threat import ThreatModel
from harness_plugins.lib import citations
from harness_plugins.lib.lirpa.bounds import auto_lirpa_installed, bounds_for, unbounded_parts
from harness_plugins.lib.margins import full_float32
from harness_plugins.lib.radius import RADIUS_TOLERANCE_DOC, check_tolerance, per_sample


@dataclass(frozen=True)
class LiRPAOptions:
    max_samples: int = doc_field(
        0,
        "certify at most this many samples (a fixed seeded subset); 0: all, except CROWN on "
        "convolutional networks: 100 on a CPU, 1000 on a GPU (seconds per sample on a CPU)",
    )
    radius_tolerance: float = doc_field(0.0, RADIUS_TOLERANCE_DOC + ". Off by default (CROWN's passes are costly).")

    def __post_init__(self) -> None:
        if self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0 (0: automatic), got {self.max_samples}")
        check_tolerance(self.radius_tolerance)


@dataclass(frozen=True)
class IBPOptions(LiRPAOptions):
    radius_tolerance: float = doc_field(
        0.001, RADIUS_TOLERANCE_DOC + ". On by default under l_inf: an IBP pass costs about one forward pass"
    )
    l2_radius: bool = doc_field(
        False,
        "bisect under l2 too: auto_LiRPA 0.3 takes one radius per pass there, so each step costs one pass per sample "
        "still open (hundreds of passes per batch); off by default",
    )


#: CROWN's default sample budget on convolutional networks, per device type.
CROWN_CONV_SAMPLES = {"cpu": 100, "cuda": 1000}
#: Samples CROWN bounds at once on a convolutional network.
CROWN_CONV_CHUNK = 25


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


class LiRPACertifier(Certifier):
    """Certified iff every margin lower bound is positive; no radius.

    ``crown-ibp`` and ``crown`` report the element-wise maximum of their margin
    bounds and IBP's: both are sound, so the maximum is, and neither is ever
    looser than ``ibp``.
    """

    method: ClassVar[str]
    norms = ("inf", "2")
    Options = LiRPAOptions

    def sample_limit(self, model: nn.Module, threat: ThreatModel) -> int | None:
        if self.options.max_samples:
            return self.options.max_samples
        bounded = model.head if isinstance(model, FeatureHead) else model
        if self.method == "crown" and _has_conv(bounded):
            device = next((p.device.type for p in bounded.parameters()), "cpu")
            return CROWN_CONV_SAMPLES.get(device, CROWN_CONV_SAMPLES["cpu"])
        return None

    def not_applicable_reason(self, model: nn.Module, threat: ThreatModel) -> str | None:
        reason = super().not_applicable_reason(model, threat)
        if reason:
            return reason
        if not auto_lirpa_installed():
            return "auto_LiRPA is not installed (pip install --no-deps auto-lirpa==0.3)"
        name = type(model).__name__
        if isinstance(model, FeatureHead):
            if threat.norm != "inf":
                return f"{name}'s feature bounds are l_inf boxes; they cannot bound an l_{threat.norm} ball"
            if not model.supports_feature_bounds("inf"):
                return f"{name}'s feature bounds are not sound in its current state"
            unbounded = unbounded_parts(model.head)
            return f"{name}'s head has what auto_LiRPA cannot bound: {', '.join(unbounded)}" if unbounded else None
        unbounded = unbounded_parts(model)
        return f"{name} has what auto_LiRPA cannot bound: {', '.join(unbounded)}" if unbounded else None

    def certify(self, model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel) -> Certificate:
        return Certificate(certified=self._certified(model, images, labels, threat, None))

    def certify_at(self, model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel, eps: Tensor) -> Tensor:
        """Under l_inf one pass, each sample bounded over its own box ``images[i] ± eps[i]`` clipped to ``[0, 1]``.

        Under l2 auto_LiRPA 0.3 takes one radius per bound (its operators read a
        scalar eps), so the samples are certified one distinct radius at a time.
        """
        if threat.norm == "2":
            return super().certify_at(model, images, labels, threat, eps)
        return self._certified(model, images, labels, threat, eps)

    def _certified(self, model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel, eps: Tensor | None) -> Tensor:
        # CROWN's intermediate bounds on a convolutional network take ~100 MB per sample (a 4C3F
        # batch of 500 asked an H100 for 48 GiB): bound such networks a few samples at a time.
        bounded = model.head if isinstance(model, FeatureHead) else model
        step = CROWN_CONV_CHUNK if self.method == "crown" and _has_conv(bounded) else len(images)
        certified = []
        with torch.no_grad(), full_float32():
            for start in range(0, len(images), step):
                part = slice(start, start + step)
                margins = self.margins(model, images[part], labels[part], threat, None if eps is None else eps[part])
                certified.append(margins.scatter(1, labels[part, None], math.inf).amin(1) > 0)
        return torch.cat(certified)

    def margins(self, model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel, eps: Tensor | None = None) -> Tensor:
        """Lower bounds (B×K) of ``z_y − z_j`` over the threat model's ball around each image; 0 at ``j = y``.

        :param eps: l_inf only: one radius per image instead of ``threat.eps``.
        """
        if isinstance(model, FeatureHead) and threat.norm != "inf":
            raise HarnessError(f"{self.name}: feature bounds are l_inf boxes; they cannot certify {threat}")
        if threat.norm == "2":
            if eps is not None:
                raise HarnessError(f"{self.name}: auto_LiRPA bounds an l2 ball of one radius at a time")
            bounds = bounds_for(model, images)
            return self._tightest(lambda method: bounds.margins_l2(images, threat.eps, labels, method))
        radius: Tensor | float = threat.eps if eps is None else per_sample(eps, images)
        lower, upper = (images - radius).clamp(0, 1), (images + radius).clamp(0, 1)
        if isinstance(model, FeatureHead):
            lower, upper = model.feature_bounds(lower, upper)
            model = model.head
        bounds = bounds_for(model, lower)
        return self._tightest(lambda method: bounds.margins(lower, upper, labels, method))

    def _tightest(self, margins: Callable[[str], Tensor]) -> Tensor:
        tightest = margins(self.method)
        if self.method != "ibp":
            # Both bounds are sound, so their maximum is: crown-ibp and crown are never looser than ibp.
            tightest = torch.maximum(tightest, margins("ibp"))
        return tightest


class IBPCertifier(LiRPACertifier):
    name = "ibp"
    description = "interval bound propagation (auto_LiRPA), the last layer folded into the margin specification"
    source = citations.AUTO_LIRPA
    method = "ibp"
    Options = IBPOptions

    def radius_tolerance(self, threat: ThreatModel | None = None) -> float | None:
        if threat is not None and threat.norm == "2" and not self.options.l2_radius:
            return None
        return super().radius_tolerance(threat)


class CROWNIBPCertifier(LiRPACertifier):
    name = "crown-ibp"
    description = "CROWN on the margins over IBP intermediate bounds (auto_LiRPA); the max with IBP's margins"
    source = citations.CROWN_IBP
    method = "crown-ibp"


class CROWNCertifier(LiRPACertifier):
    name = "crown"
    description = "CROWN linear relaxation bounds at every layer (auto_LiRPA); the max with IBP's margins"
    source = citations.CROWN
    method = "crown"
