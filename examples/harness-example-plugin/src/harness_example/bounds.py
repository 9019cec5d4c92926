"""The Lipschitz bound that the ``lmt`` trainer trains and the ``global-lipschitz`` certifier checks.

A module that registers nothing, shared by both components (a component never
imports another plugin; code two components share lives in a module like this).

The claim. Let ``f = W_K ∘ σ ∘ W_{K−1} ∘ … ∘ σ ∘ W_1`` be an ``nn.Sequential`` of
``Flatten``, ``Linear`` and ``ReLU`` layers (``W_i x = A_i x + b_i``), and ``p`` the
threat model's norm (∞ or 2). Then for all inputs ``x, x'``

    ‖f(x) − f(x')‖_p ≤ L·‖x − x'‖_p,   L = ∏_i ‖A_i‖_p,

where ``‖A‖_∞`` is the induced l_∞ norm (the largest absolute row sum, exact) and,
for p = 2, ``‖A‖_F ≥ ‖A‖_2`` (the Frobenius norm bounds the induced l2 norm).
Proof: ``‖A x − A x'‖_p ≤ ‖A‖_p ‖x − x'‖_p`` by the definition of the induced
norm; the bias cancels; ReLU acts element-wise with ``|relu(a) − relu(b)| ≤
|a − b|``, so it does not increase any l_p distance; Flatten reorders entries
and keeps every norm. Compose.

The margin ``m_j(x) = f_y(x) − f_j(x) = (e_y − e_j)ᵀ f(x)`` then moves by at most
``‖e_y − e_j‖_q ‖f(x) − f(x')‖_p ≤ c·L·‖x − x'‖_p`` (Hölder, q dual to p), with
``c = ‖e_y − e_j‖_1 = 2`` for p = ∞ and ``c = ‖e_y − e_j‖_2 = √2`` for p = 2.
So if ``m_j(x) > c·L·eps`` for every ``j ≠ y``, no point of the ball (let alone
of its part inside ``[0, 1]``) changes the label: the certified radius is
``min_j m_j(x) / (c·L)``.

That is exact arithmetic. The evaluation checks the promise on the float32
network, whose logits differ from the exact ones by rounding; the certifier
computes margins in float64 and keeps a slack of :data:`SLACK` relative to the
largest logit (at least 1), far above float32 rounding for networks of this size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: The layers the bound reads.
LAYERS = (nn.Flatten, nn.Linear, nn.ReLU)

#: Margin slack for float32 rounding, relative to the largest logit magnitude (at least 1).
SLACK = 1e-5


def refusal(model: nn.Module) -> str | None:
    """Why the bound does not hold for ``model``, in a few words; ``None`` if it does."""
    if type(model) is not nn.Sequential:
        return f"{type(model).__name__} is not a plain nn.Sequential"
    for index, layer in enumerate(model):
        if not isinstance(layer, LAYERS):
            return f"layer {index} is a {type(layer).__name__}; only Flatten, Linear and ReLU are bounded"
        if isinstance(layer, nn.Flatten) and layer.start_dim != 1:
            return f"layer {index} flattens from dimension {layer.start_dim}, not 1"
    if not any(isinstance(layer, nn.Linear) for layer in model):
        return "it has no Linear layer"
    return None


def margin_factor(norm: str) -> float:
    """``c`` in the module docstring: how much a unit change of every logit moves a margin."""
    return 2.0 if norm == "inf" else math.sqrt(2.0)


def layer_norm(weight: Tensor, norm: str) -> Tensor:
    """An upper bound on the induced ``norm`` of ``weight`` (exact for l_inf); differentiable."""
    if norm == "inf":
        return weight.abs().sum(1).amax()
    return weight.norm()  # Frobenius


def lipschitz_bound(model: nn.Sequential, norm: str) -> Tensor:
    """``L = ∏ ‖A_i‖``: a bound on the Lipschitz constant of the logits from l_``norm`` to l_``norm``.

    Differentiable (the trainer minimises it); call it under ``torch.no_grad()``
    and on float64 weights to certify.
    """
    norms = [layer_norm(layer.weight, norm) for layer in model if isinstance(layer, nn.Linear)]
    return torch.stack(norms).prod()
