"""The training recipe of the ICML 2021 l_inf-dist net code, shared by ``linf_v1`` and ``linf_mlp``.

Faithful to the paper (Section 7.1, Appendix D, Table 6) and its code
(github.com/zbh2047/L_inf-dist-net, ``main.py``, ``adamw.py``); see
shared/notes/original-implementations.md §2:

* ``--epochs e0,e1,e2,e3,T`` updated per mini-batch: p = 8 until e1, then
  exponential 8 → 1000 until e3, then ∞ until T; lr constant until e1, then
  cosine to 0 at T; eps_train linear from 0 at e0 to its value at e0 + e2
  (e2 = 0: constant from the first step, as every pure-net command). The
  options name them ``p_start_epoch`` (e1), ``p_end_epoch`` (e3),
  ``eps_warmup_epochs`` (e2); e0 is 0 in every command.
* Adam(β 0.9, 0.99, eps 1e-10) with *decoupled* weight decay 5e-3 applied
  before each Adam step and scaled by the current lr: every row of a dist
  layer is decayed by the gradient of ½‖w‖_p² at the layer's current p (only
  its largest entry at p = ∞); every other parameter (biases, an MLP head)
  by plain decoupled decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.train import cosine_lr
from harness_plugins.lpdist import lp_layers

@dataclass(frozen=True)
class V1Schedule:
    """p, lr and eps_train as functions of training progress in epochs (fractional)."""

    epochs: int
    p_start_epoch: float
    p_end_epoch: float
    p_start: float
    p_end: float
    lr: float
    eps_warmup_epochs: float = 0.0

    def p(self, t: float) -> float:
        if t < self.p_start_epoch:
            return self.p_start
        if t >= self.p_end_epoch:
            return math.inf
        r = (t - self.p_start_epoch) / (self.p_end_epoch - self.p_start_epoch)
        return self.p_start * (self.p_end / self.p_start) ** r

    def learning_rate(self, t: float) -> float:
        if t < self.p_start_epoch:
            return self.lr
        span = self.epochs - self.p_start_epoch
        return cosine_lr(self.lr, (t - self.p_start_epoch) / span if span > 0 else 1.0)

    def eps_fraction(self, t: float) -> float:
        """The fraction of eps_train used at ``t``: linear warm-up from 0, then 1."""
        if self.eps_warmup_epochs <= 0:
            return 1.0
        return min(max(t / self.eps_warmup_epochs, 0.0), 1.0)


def lp_decay_direction(rows: Tensor, p: float) -> Tensor:
    """The gradient of ½‖w‖_p² for each row of ``rows`` (O×I), computed without overflow.

    ∇ ½‖w‖_p² = (|w|/‖w‖_p)^(p−2) · w: the ratio is at most 1, so the power
    is safe for any p; it is formed from |w|/max|w| first, as the original
    ``adamw.py`` normalises by the row max. At p = ∞ only each row's largest
    entry (the first one on ties) is decayed.
    """
    if math.isinf(p):
        index = rows.abs().argmax(1, keepdim=True)
        return torch.zeros_like(rows).scatter_(1, index, rows.gather(1, index))
    scaled = rows.abs() / rows.abs().amax(1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
    norm = scaled.pow(p).sum(1, keepdim=True).pow(1 / p)  # in [1, I^(1/p)]: the max entry is 1
    ratio = scaled / norm
    return torch.where(ratio > 0, ratio.pow(p - 2), torch.zeros_like(ratio)) * rows


@torch.no_grad()
def decoupled_weight_decay_(model: nn.Module, lr: float, weight_decay: float) -> None:
    """Apply one step of the v1 weight decay to ``model`` in place (call before ``optimizer.step()``)."""
    if weight_decay == 0:
        return
    decayed: set[int] = set()
    for layer in lp_layers(model):
        rows = layer.weight.view(layer.weight.shape[0], -1)
        rows.sub_(lp_decay_direction(rows, layer.p), alpha=lr * weight_decay)
        decayed.add(id(layer.weight))
    for param in model.parameters():
        if id(param) not in decayed:
            param.mul_(1 - lr * weight_decay)


def hinge_mix(worse: Tensor, mix: float) -> Tensor:
    """The v1 code's ``hinge(mix)``: ``mix·mean_b max_j relu(worse) + (1 − mix)·mean_{b,j} relu(worse)``.

    ``worse`` is B×K with 0 at the label (so the mean over j counts it as 0).
    """
    hinge = worse.clamp_min(0)
    return mix * hinge.amax(1).mean() + (1 - mix) * hinge.mean()


def margins_to_label(logits: Tensor, labels: Tensor) -> Tensor:
    """``z_j − z_y`` for every class j (0 at the label), B×K."""
    return logits - logits.gather(1, labels[:, None])
