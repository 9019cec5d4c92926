"""Training of the l_inf-dist net + MLP (Zhang et al., ICML 2021, Section 6).

As the original code (``model/model.py``, ``main.py``): the dist backbone's
features ``h`` get the Lipschitz box ``[h − eps_t, h + eps_t]`` (the backbone is
1-Lipschitz under l_inf in the normalised input space, so no bounds are
propagated through it in training); the head's worst-case margins over that
box come from auto_LiRPA, IBP by default (the paper), or CROWN-IBP with the
usual mixing ``β·CROWN-IBP + (1 − β)·IBP``, β going from ``crown_beta_start``
to ``crown_beta_end`` over the eps warm-up (Zhang et al., ICLR 2020). The loss
is IBP cross-entropy, ``kappa·CE(worst logits) + (1 − kappa)·CE(logits)``
(the worst logits are ``−margin lower bounds``, 0 at the label), with kappa
constant (the paper's Table 6 gives 1 − kappa). eps_t grows linearly from 0
over ``eps_warmup_epochs``; p, lr and weight decay as :mod:`harness_plugins.lib.v1_recipe`.

Note the code's box is valid for the p = ∞ backbone; at finite p it is the
same heuristic as the original (features of an l_p-dist layer move by at most
the l_p, not the l_∞, distance of their inputs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from harness.options import doc_field, epochs_field
from harness.scaffold import BatchLoss, Step
from harness.schedules import SchedulePhase, linear, ramp
from harness_plugins.lib import citations
from harness_plugins.lib.lirpa.bounds import bounds_for
from harness_plugins.lib.v1_recipe import V1Options, V1Recipe


@dataclass(frozen=True)
class LinfMLPOptions(V1Options):
    kappa: float = doc_field(0.5, "weight of the robust (IBP) cross-entropy; 1 − kappa goes to the clean one")
    eps_warmup_epochs: float = epochs_field(50, "eps_train grows linearly from 0 over these epochs (e2)")
    bound: Literal["ibp", "crown-ibp"] = doc_field("ibp", "bounds of the head in training: IBP (the paper) or CROWN-IBP")
    crown_beta_start: float = doc_field(1.0, "CROWN-IBP weight β at the start of the eps warm-up")
    crown_beta_end: float = doc_field(0.0, "CROWN-IBP weight β at the end of the eps warm-up (and after)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("crown_beta_start", "crown_beta_end"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


class LinfMLPTrainer(V1Recipe):
    name = "linf_mlp"
    description = "l_inf-dist net + MLP (ICML 2021): Lipschitz box on the features, IBP / CROWN-IBP on the head"
    source = citations.LINF_DIST_NET
    model = "linf_dist_net_mlp"
    models = ("linf_dist_net_mlp",)  # it bounds model.head over model.features' box
    Options = LinfMLPOptions

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Head weights at lr/√fan_in (the code's 1/√fan_in forward multiplier), everything else at lr."""
        head_weights = [m.weight for m in model.head.modules() if isinstance(m, nn.Linear)]
        ids = {id(w) for w in head_weights}
        groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "lr_scale": 1.0}]
        groups += [{"params": [w], "lr_scale": 1 / math.sqrt(w.shape[1])} for w in head_weights]
        return groups

    def schedule(self, step: Step) -> dict[str, float]:
        """The v1 recipe's values, and with CROWN-IBP its weight β, linear over the eps warm-up."""
        o: LinfMLPOptions = self.options
        values = super().schedule(step)
        if o.bound == "crown-ibp":
            values["beta"] = linear(o.crown_beta_start, o.crown_beta_end, ramp(step.t, 0.0, o.eps_warmup_epochs))
        return values

    def schedule_phases(self) -> list[SchedulePhase]:
        """The p phases, each split where the eps warm-up ends; with CROWN-IBP, named where its bounds are mixed in (β > 0)."""
        o: LinfMLPOptions = self.options
        warmup = o.eps_warmup_epochs / o.epochs  # as a fraction of training
        crown = o.bound == "crown-ibp"
        during = ", eps warm-up" + (", CROWN-IBP" if crown and max(o.crown_beta_start, o.crown_beta_end) > 0 else "")
        after = ", CROWN-IBP" if crown and o.crown_beta_end > 0 else ""
        phases = []
        for phase in super().schedule_phases():
            if phase.start < warmup:
                phases.append(SchedulePhase(phase.name + during, phase.start, min(phase.end, warmup)))
            if phase.end > warmup:
                phases.append(SchedulePhase(phase.name + after, max(phase.start, warmup), phase.end))
        return phases

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        o: LinfMLPOptions = self.options
        eps_train = values["eps_train"]
        with self.timer("forward"):
            features = model.features(images)
        # Before the head's forward pass: building the BoundedModule reloads the head's
        # parameters in place, which would invalidate an autograd graph through them.
        bounds = bounds_for(model.head, features)  # built once per head, shared with the certifiers
        with self.timer("forward"):
            logits = model.head(features)
        clean_ce = F.cross_entropy(logits, labels)
        lower, upper = features - eps_train, features + eps_train
        margins = bounds.margins(lower, upper, labels, "ibp", center=features)
        beta = values.get("beta", 0.0)
        if beta > 0:
            crown = bounds.margins(lower, upper, labels, "crown-ibp", center=features)
            margins = beta * crown + (1 - beta) * margins
        robust_ce = F.cross_entropy(-margins, labels)
        loss = o.kappa * robust_ce + (1 - o.kappa) * clean_ce
        verified = (margins.scatter(1, labels[:, None], math.inf).amin(1) > 0).float().mean().item()
        return BatchLoss(loss, logits, {"robust_ce": robust_ce.item(), "verified": verified})
