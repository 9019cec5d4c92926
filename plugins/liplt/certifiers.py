"""Pairwise Lipschitz certificates of feed-forward networks: ``liplt`` and ``lipschitz-naive``.

Both bound ``Lip(z_p − z_q) ≤ L_pq`` for every class pair with the sound norms
of :mod:`harness_plugins.lib.liplt.sound`, and certify sample ``i`` with label ``y`` at the radius

    r_i = min_{j ≠ y} (z_y − z_j − slack) / L_yj  (clamped at 0),

certified iff ``r_i > eps``. ``liplt`` uses the LipLT recursion (Theorem 3.3
of the paper), ``lipschitz-naive`` the product of the layers' norms times
``‖(e_p − e_q)ᵀ W_L‖``. Radii are in raw pixel units: a model's normalisation
is one of its layers, so it is part of the chain. The ``dense_limit`` option
trades the l2 computation's time for tightness
(:data:`harness_plugins.lib.liplt.sound.DENSE_LIMIT`). The constants are
computed once per model state (:func:`harness_plugins.lib.liplt.constants.constants_for`).

``liplt-estimate`` is the CRM code's own protocol, not a certificate
(``sound = False``): the same radius from LipLT constants whose norms are
the training's power-iteration vectors plus as many iterations again
(:mod:`harness_plugins.lib.liplt.estimate`), estimates from below. The
harness stores and shows its verdicts as "paper protocol", never as certified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from harness import Certificate, Certifier
from harness.options import doc_field
from harness.threat import ThreatModel
from harness_plugins.lib import citations
from harness_plugins.lib.liplt.constants import chain_refusal, constants_for, pairwise_radius
from harness_plugins.lib.liplt.estimate import estimated_constants, has_power_vectors
from harness_plugins.lib.liplt.sound import DENSE_LIMIT
from harness_plugins.lib.margins import full_float32


@dataclass(frozen=True)
class PairwiseOptions:
    dense_limit: int = doc_field(
        DENSE_LIMIT,
        "l2: largest min(rows, cols) of a product of layers whose norm is computed exactly; "
        "larger ones are bounded (lower: faster on a CPU, looser)",
    )

    def __post_init__(self) -> None:
        if self.dense_limit < 0:
            raise ValueError(f"dense_limit must be >= 0, got {self.dense_limit}")


class PairwiseLipschitzCertifier(Certifier):
    """``r = min_{j≠y} (z_y − z_j − slack)/L_yj`` with sound pairwise constants; certified iff ``r > eps``."""

    method: ClassVar[Literal["liplt", "naive"]]
    norms = ("inf", "2")
    source = citations.CRM_LIPLT
    Options = PairwiseOptions

    def not_applicable_reason(self, model: nn.Module, threat: ThreatModel) -> str | None:
        reason = super().not_applicable_reason(model, threat)
        if reason:
            return reason
        refusal = chain_refusal(model)
        return f"{type(model).__name__}: {refusal}" if refusal else None

    def certify(self, model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel) -> Certificate:
        limit = self.options.dense_limit
        constants = constants_for(model, images, threat.norm, self.method, dense_limit=limit)  # type: ignore[arg-type]
        with torch.no_grad(), full_float32():
            logits = model(images).double()
        radius = pairwise_radius(logits, labels, constants)
        return Certificate(certified=radius > threat.eps, radius=radius)


class LipLTCertifier(PairwiseLipschitzCertifier):
    name = "liplt"
    description = "LipLT pairwise Lipschitz constants (loop transformation, exact or sound norms of partial products)"
    method = "liplt"


class NaiveLipschitzCertifier(PairwiseLipschitzCertifier):
    name = "lipschitz-naive"
    description = "pairwise Lipschitz constants as the product of layer norms times ‖w_p − w_q‖"
    method = "naive"


@dataclass(frozen=True)
class EstimateOptions:
    iterations: int = doc_field(
        0, "power iterations after the training's saved vectors; 0: as many as training ran per step (the code's test.py: MNIST 10)"
    )

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0 (0: the training's count), got {self.iterations}")


class LipLTEstimateCertifier(Certifier):
    """The CRM code's verdicts: ``r = min_{j≠y} (z_y − z_j − slack)/L̂_yj`` with power-iteration estimates ``L̂ ≤ L``."""

    name = "liplt-estimate"
    description = "paper protocol (estimate, not a certificate): LipLT from the training's power-iteration vectors plus as many more (CRM's test.py)"
    source = citations.CRM_LIPLT
    norms = ("2",)
    sound = False
    Options = EstimateOptions

    def not_applicable_reason(self, model: nn.Module, threat: ThreatModel) -> str | None:
        reason = super().not_applicable_reason(model, threat)
        if reason:
            return reason
        refusal = chain_refusal(model)
        if refusal:
            return f"{type(model).__name__}: {refusal}"
        if not has_power_vectors(model):
            return f"{type(model).__name__} keeps no power-iteration vectors from an l2 training (the protocol starts from them)"
        return None

    def certify(self, model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel) -> Certificate:
        constants = estimated_constants(model, images, self.options.iterations)
        with torch.no_grad(), full_float32():
            logits = model(images).double()
        radius = pairwise_radius(logits, labels, constants)
        return Certificate(certified=radius > threat.eps, radius=radius)
