"""Sound pairwise Lipschitz constants of a model, cached per weight state, and the radii they certify.

``constants_for(model, example, norm, method)`` reads ``model`` as a
:class:`~.chain.Chain` and bounds ``Lip(z_p − z_q) ≤ L_pq`` for every class
pair with the sound norms of :mod:`.sound`, by the LipLT recursion or the
naive product. The constants are computed once per model state: they are
cached per model object (weakly) and compared against a copy of every
parameter and buffer, so an evaluation computes them once and any change of
the weights (optimiser steps, ``load_state_dict``, writes through ``.data``)
makes them stale. :func:`pairwise_radius` turns logits and constants into the
certified radius ``min_{j≠y} (z_y − z_j − slack)/L_yj``.
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
from torch import Tensor, nn

from harness import HarnessError
from harness_plugins.lib.liplt.chain import ACTIVATIONS, Chain, NotAChain
from harness_plugins.lib.liplt.estimate import PowerVectorsSequential
from harness_plugins.lib.liplt.sound import DENSE_LIMIT, pairwise_constants
from harness_plugins.lib.margins import MARGIN_SLACK

#: Leaf layers a chain is read from (batch norm and dropout only in eval mode).
LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, nn.Identity, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, *ACTIVATIONS,
)

#: model → {(norm, method, input shape, device, dense limit): (copy of the weights, constants)}
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[list[Tensor], Tensor]]] = weakref.WeakKeyDictionary()


def sequential_chain(model: nn.Module) -> bool:
    """Whether ``model`` is a tree of plain ``nn.Sequential`` containers over layers a :class:`Chain` reads (see :func:`chain_refusal`)."""
    return chain_refusal(model) is None


def chain_refusal(model: nn.Module) -> str | None:
    """Why ``model`` is not a tree of plain ``nn.Sequential`` containers over readable layers; ``None`` if it is.

    Then its forward pass is the sequence of its leaves, which is what the
    chain assumes (:meth:`Chain.from_module` checks it again on real inputs).
    """
    leaves = []
    for module in model.modules():
        if next(module.children(), None) is not None:
            # Subclasses may override forward; PowerVectorsSequential only keeps extra state (CRM's vectors).
            if type(module) not in (nn.Sequential, PowerVectorsSequential):
                return f"it is not a plain nn.Sequential ({type(module).__name__} has a forward of its own)"
            continue
        leaves.append(module)
    if not leaves:
        return "it has no layers"
    unreadable = sorted({type(layer).__name__ for layer in leaves if not _readable(layer)})
    if unreadable:
        return f"it has layers a Lipschitz chain cannot read: {', '.join(unreadable)}"
    owned = {id(p) for layer in leaves for p in layer.parameters(recurse=False)}
    if not all(id(p) in owned for p in model.parameters()):
        return "it holds parameters outside its layers"
    return None


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
