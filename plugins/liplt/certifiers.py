"""Pairwise Lipschitz certificates of feed-forward networks: ``liplt`` and ``lipschitz-naive``.

Both bound ``Lip(z_p − z_q) ≤ L_pq`` for every class pair with the sound norms
of :mod:`.sound`, and certify sample ``i`` with label ``y`` at the radius

    r_i = min_{j ≠ y} (z_y − z_j − slack) / L_yj  (clamped at 0),

certified iff ``r_i > eps``. ``liplt`` uses the LipLT recursion (Theorem 3.3
of the paper), ``lipschitz-naive`` the product of the layers' norms times
``‖(e_p − e_q)ᵀ W_L‖``. Radii are in raw pixel units: a model's normalisation
is one of its layers, so it is part of the chain. The ``dense_limit`` option
trades the l2 computation's time for tightness (:data:`.sound.DENSE_LIMIT`).

The constants are computed once per model state: they are cached per model
object (weakly) and keyed on each parameter's and buffer's storage and
version counter, so that an evaluation computes them once and training (any
in-place update: optimiser steps, ``load_state_dict``) makes them stale.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from harness import Certificate, Certifier, HarnessError
from harness.options import doc_field
from harness.threat import ThreatModel
from harness_plugins.certifiers import MARGIN_SLACK, full_float32
from harness_plugins.liplt.chain import ACTIVATIONS, SOURCE, Chain, NotAChain
from harness_plugins.liplt.sound import DENSE_LIMIT, pairwise_constants

#: Leaf layers a chain is read from (batch norm and dropout only in eval mode).
LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, nn.Identity, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, *ACTIVATIONS,
)

#: model → {(norm, method, input shape, device, dense limit): (copy of the weights, constants)}
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[list[Tensor], Tensor]]] = weakref.WeakKeyDictionary()


def sequential_chain(model: nn.Module) -> bool:
    """Whether ``model`` is a tree of plain ``nn.Sequential`` containers over layers a :class:`Chain` reads.

    Then its forward pass is the sequence of its leaves, which is what the
    chain assumes (:meth:`Chain.from_module` checks it again on real inputs).
    """
    leaves = []
    for module in model.modules():
        if next(module.children(), None) is not None:
            if type(module) is not nn.Sequential:
                return False
            continue
        leaves.append(module)
    if not all(_readable(layer) for layer in leaves):
        return False
    owned = {id(p) for layer in leaves for p in layer.parameters(recurse=False)}
    return bool(leaves) and all(id(p) in owned for p in model.parameters())


def _readable(layer: nn.Module) -> bool:
    kind = type(layer)
    if kind not in LAYERS:
        return False
    if kind is nn.Conv2d:
        return layer.padding_mode == "zeros"
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        return not layer.training and layer.track_running_stats
    if kind is nn.Dropout:
        return not layer.training
    return True


def _state(model: nn.Module) -> list[Tensor]:
    """A copy of the model's weights: every parameter and buffer (writes through ``.data`` bump no version counter)."""
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]


def _same_state(model: nn.Module, state: list[Tensor]) -> bool:
    now = [*model.parameters(), *model.buffers()]
    return len(now) == len(state) and all(a.shape == b.shape and torch.equal(a.detach(), b) for a, b in zip(now, state))


def constants_for(
    model: nn.Module,
    example: Tensor,
    norm: Literal["2", "inf"],
    method: Literal["liplt", "naive"] = "liplt",
    *,
    dense_limit: int = DENSE_LIMIT,
) -> Tensor:
    """Sound pairwise constants ``L`` (K×K float64, on ``example``'s device, 0 on the diagonal) of ``model``.

    ``L[p, q]`` bounds the Lipschitz constant of ``z_p − z_q`` in ``norm``
    (w.r.t. raw inputs). ``example`` is a batch of inputs (a few suffice):
    it fixes the input shape and checks the reading of the model. Cached per
    model object and weight state.

    :raises HarnessError: if the model is not a feed-forward chain of supported layers.
    """
    key = (norm, method, tuple(example.shape[1:]), example.device, dense_limit)
    cached = _CACHE.setdefault(model, {}).get(key)
    if cached is not None and _same_state(model, cached[0]):
        return cached[1]
    state = _state(model)
    try:
        chain = Chain.from_module(model, example[:16].detach())
    except NotAChain as e:
        raise HarnessError(f"{type(model).__name__} is not a feed-forward chain LipLT can bound: {e}") from e
    constants = pairwise_constants(chain, norm, method, dense_limit=dense_limit, device=example.device)
    _CACHE[model][key] = (state, constants)
    return constants


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
    source = SOURCE
    Options = PairwiseOptions

    def applies_to(self, model: nn.Module, threat: ThreatModel) -> bool:
        return threat.norm in self.norms and sequential_chain(model)

    def certify(self, model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel) -> Certificate:
        limit = self.options.dense_limit
        constants = constants_for(model, images, threat.norm, self.method, dense_limit=limit)  # type: ignore[arg-type]
        with torch.no_grad(), full_float32():
            logits = model(images).double()
        radius = pairwise_radius(logits, labels, constants)
        return Certificate(certified=radius > threat.eps, radius=radius)


def pairwise_radius(logits: Tensor, labels: Tensor, constants: Tensor) -> Tensor:
    """``min_{j≠y} (z_y − z_j − slack)/L_yj``, clamped at 0 (``inf`` where no ``j`` can overtake ``y``)."""
    # float32 rounding in the forward pass moves each margin by at most about MARGIN_SLACK·max|z|.
    slack = MARGIN_SLACK * logits.abs().amax(1, keepdim=True).clamp(min=1.0)
    margin = logits.gather(1, labels[:, None]) - logits - slack
    lipschitz = constants.to(logits.device)[labels]
    # L_yj = 0: z_y − z_j is constant, so the margin never shrinks (or never becomes positive).
    infinite = torch.where(margin > 0, torch.inf, -torch.inf).to(margin)
    ratio = torch.where(lipschitz > 0, margin / lipschitz.clamp(min=torch.finfo(torch.float64).tiny), infinite)
    ratio = ratio.scatter(1, labels[:, None], torch.inf)
    return ratio.amin(1).clamp(min=0)


class LipLTCertifier(PairwiseLipschitzCertifier):
    name = "liplt"
    description = "LipLT pairwise Lipschitz constants (loop transformation, exact or sound norms of partial products)"
    method = "liplt"


class NaiveLipschitzCertifier(PairwiseLipschitzCertifier):
    name = "lipschitz-naive"
    description = "pairwise Lipschitz constants as the product of layer norms times ‖w_p − w_q‖"
    method = "naive"
