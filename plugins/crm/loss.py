"""The CRM loss (Fazlyab et al., NeurIPS 2023, eq. 8; code ``Losses/CrossEntropy.py``).

With logits ``z``, pairwise Lipschitz constants ``L`` (K×K) and the predicted
class ``p̂ = argmax z`` (the code measures margins from the prediction, not the
label), the radii are ``d_j = (z_p̂ − z_j) / L_p̂j`` for ``j ≠ p̂``. A sample is
*penalised* when it is correctly classified (unless ``misclassified`` is set)
and its smallest radius is below ``r0`` (the "dynamic" margin). The robust
term averages over the **whole** batch:

    R = (1/N) Σ_{penalised} g(d),   g = softmax: (1/t)·logsumexp_{j≠p̂}(−t·d_j)   (minus the soft-min radius),
                                    g = max:     (1/t)·exp(−t·min_j d_j),

and the loss is ``CE(z, y) + λ·R``. Radii are multiplied by ``radius_scale``
before use (1: pixel units; 2: the code's CIFAR-10 [−1, 1] input units).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor


def radii(logits: Tensor, constants: Tensor, anchor: Tensor) -> Tensor:
    """``(z_a − z_j) / L_aj`` per sample (B×K), ``+∞`` at ``j = a``; ``anchor`` is ``a`` per sample."""
    top = logits.gather(1, anchor[:, None])
    lip = constants[anchor]  # B×K
    own = torch.nn.functional.one_hot(anchor, logits.shape[1]).bool()
    safe = torch.where(own, torch.ones_like(lip), lip)
    return torch.where(own, torch.full_like(logits, math.inf), (top - logits) / safe)


def robust_term(
    logits: Tensor,
    labels: Tensor,
    constants: Tensor,
    *,
    r0: float,
    temperature: float,
    kind: Literal["softmax", "max"] = "softmax",
    misclassified: bool = False,
    radius_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``(R, penalised mask)`` of the CRM regulariser for one batch."""
    predicted = logits.argmax(1)
    d = radii(logits, constants, predicted) * radius_scale
    smallest = d.amin(1)
    penalised = smallest < r0
    if not misclassified:
        penalised = penalised & (predicted == labels)
    t = temperature
    if kind == "softmax":
        g = torch.logsumexp(-t * d, dim=1) / t  # exp(−∞) = 0 drops j = p̂
    else:
        g = torch.exp(-t * smallest) / t
    term = torch.where(penalised, g, torch.zeros_like(g)).sum() / logits.shape[0]
    return term, penalised
