"""The ``fgsm`` attacker: one step of size eps along the gradient of the cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness import Attacker, ThreatModel
from harness_example import sources


class FGSM(Attacker):
    name = "fgsm"
    description = "fast gradient sign method: one eps step along the loss gradient's sign (l_inf) or direction (l2)"
    source = sources.FGSM
    norms = ("inf", "2")

    def label(self) -> str:
        return "FGSM"

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
        if threat.norm == "inf":
            step = grad.sign()
        else:
            length = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
            step = grad / length.view(-1, *[1] * (grad.dim() - 1))
        # Clipping to [0, 1] moves every pixel towards the clean one, so the point stays in the ball.
        return (images + threat.eps * step).clamp(0, 1).detach()
