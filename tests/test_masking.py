"""The gradient-masking check: zero input gradients, and what a gradient-free attack (or stage) alone breaks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import Attacker, AttackStages, ThreatModel
from harness.data.types import DatasetInfo
from harness.evaluation import evaluate
from harness.masking import UNRELIABLE_FRACTION, gradient_free_breaks, masking_check, zero_gradients
from harness_plugins.lib.lpdist import set_p
from harness_plugins.lpdist.models import LinfDistNet, LinfDistNetOptions

CPU = torch.device("cpu")
INFO = DatasetInfo(name="blobs", num_classes=3, shape=(1, 4, 4), mean=(0.5,), std=0.3)


def per_sample_zero(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[bool]:
    """The reference: one autograd call per sample, on that sample alone."""
    out = []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi)
        out.append(bool((g == 0).all()))
    return out


def linf_dist_net(p: float) -> nn.Module:
    """A small l_inf-dist net whose class 0 wins by a margin of about 1000: its softmax saturates in float32 there, so the
    samples labelled 0 have an exactly zero loss gradient (as a confident l_inf-dist net's often do) and the others do not."""
    torch.manual_seed(0)
    model = LinfDistNet(INFO, LinfDistNetOptions(depth=3, width=8)).eval()
    set_p(model, p)
    with torch.no_grad():
        model.layers[-1].bias[0] -= 1000.0  # the logits are minus the layer's output
    return model


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(32, 1, 4, 4, generator=g) * 255).round().to(torch.uint8)
    labels = torch.randint(0, 3, (32,), generator=g)
    return images, labels


@pytest.mark.parametrize("p", [8.0, math.inf])
def test_the_zero_gradient_fraction_of_an_linf_dist_net_matches_a_per_sample_loop(data, p):
    images, labels = data
    model = linf_dist_net(p)
    x = images.float() / 255
    reference = per_sample_zero(model, x, labels)
    assert 0 < sum(reference) < len(reference)
    assert zero_gradients(model, x, labels).tolist() == reference
    r = evaluate(model, images, labels, ThreatModel("inf", 0.1), attackers=[], certifiers=[], device=CPU, batch_size=16).result
    assert r.masking.zero_gradient_fraction == sum(reference) / len(reference)
    assert (r.masking.gradient_free_breaks, r.masking.unreliable) == (None, None)  # no gradient-free attack ran
    assert all(p.grad is None for p in model.parameters())  # the check leaves the model's gradients alone


class Rounded(nn.Module):
    """A model whose input is rounded to 1/4 steps first: its gradient is zero everywhere (masked), its logits are not."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 3)

    def forward(self, x):
        return self.linear(torch.round(x * 4).div(4).flatten(1))


def test_a_model_that_masks_its_gradient_has_a_zero_gradient_fraction_of_one(data):
    images, labels = data
    r = evaluate(Rounded().eval(), images, labels, ThreatModel("inf", 0.1), attackers=[], certifiers=[], device=CPU).result
    assert r.masking.zero_gradient_fraction == 1.0
    r = evaluate(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval(), images, labels, ThreatModel("inf", 0.1), attackers=[],
                 certifiers=[], device=CPU).result
    assert r.masking.zero_gradient_fraction == 0.0


class Staged(Attacker):
    """Two stages that break chosen samples (by index in the batch): a gradient one, then a gradient-free one."""

    name = "staged"
    description = "two stages with chosen outcomes (test)"
    norms = ("inf",)

    def __init__(self, gradient_breaks, free_breaks):
        super().__init__()
        self.breaks = {"grad": gradient_breaks, "free": free_breaks}

    def perturb(self, model, images, labels, threat):
        def stage(rows):
            adv = images.clone()
            for i in rows:
                if i < len(images):
                    adv[i] = Flip.break_it(model, images[i], labels[i], threat)
            return adv

        return AttackStages({name: stage(rows) for name, rows in self.breaks.items()}, gradient_free=frozenset({"free"}))


class Flip:
    @staticmethod
    def break_it(model, image, label, threat):
        """The l_inf corner of the ball that a linear model classifies worst (it breaks the sample if anything does)."""
        w = model[1].weight
        others = [k for k in range(w.shape[0]) if k != int(label)]
        direction = (w[others[0]] - w[int(label)]).sign().view_as(image)
        return (image + threat.eps * direction).clamp(0, 1)


def test_gradient_free_breaks_count_samples_only_the_gradient_free_stage_broke_and_flag_unreliable():
    correct = torch.tensor([True, True, True, True, False])
    survived = {"pgd": torch.tensor([True, False, True, True, False]), "aa/apgd": torch.tensor([True, True, False, True, False]),
                "aa/square": torch.tensor([False, False, True, False, False])}
    assert gradient_free_breaks(correct, survived, {"aa/square"}) == 2  # samples 0 and 3: 1 was broken by pgd too
    assert gradient_free_breaks(correct, survived, set()) is None
    # Square alone (a custom AutoAttack, or a lone gradient-free attack): nothing to compare with, so no flag.
    assert gradient_free_breaks(correct, {"aa/square": survived["aa/square"]}, {"aa/square"}) is None
    assert masking_check(0.0, 2, 1000).unreliable is False and masking_check(0.0, 3, 1000).unreliable is True  # 0.2 % of 1000
    assert UNRELIABLE_FRACTION == 0.002


def test_stages_are_checked_cumulated_and_feed_the_masking_check():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 16, generator=g) * 20)
    images = (torch.rand(40, 1, 4, 4, generator=g) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    threat = ThreatModel("inf", 0.2)
    attacker = Staged(gradient_breaks=[0, 1, 2], free_breaks=[2, 3, 4])
    run = evaluate(model, images, labels, threat, attackers=[attacker], certifiers=[], device=CPU, batch_size=20)
    r = run.result
    a = r.attack("staged")
    broken = {s.index: s.broken_by.get("staged") for s in run.samples if not s.attacks["staged"]}
    # Rows 0-4 of each batch of 20: rows 0, 1, 2 by "grad" first; 3 and 4 by "free" alone (where the corner breaks them).
    assert broken and set(broken.values()) <= {"grad", "free"}
    assert all(broken.get(i) in ("grad", None) for b in (0, 20) for i in (b, b + 1, b + 2))
    assert all(broken.get(i) in ("free", None) for b in (0, 20) for i in (b + 3, b + 4))
    grad_broken = sum(v == "grad" for v in broken.values())
    assert list(a.stages) == ["grad", "free"]
    assert a.stages == {"grad": (40 - grad_broken) / 40, "free": (40 - len(broken)) / 40} and a.accuracy == a.stages["free"]
    assert r.robust_accuracy == a.accuracy and not a.gradient_free
    free_only = sum(v == "free" for v in broken.values())
    assert r.masking.gradient_free_breaks == free_only > 0 and r.masking.unreliable is True  # > 0.2 % of 40 samples


def test_a_stage_outside_the_ball_is_that_attacks_error():
    class Escaping(Staged):
        name = "escaping"

        def perturb(self, model, images, labels, threat):
            return AttackStages({"ok": images.clone(), "far": (images + 0.5).clamp(0, 1)})

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    images = torch.full((4, 1, 4, 4), 100, dtype=torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)  # every sample correct: every one is attacked
    r = evaluate(model, images, labels, ThreatModel("inf", 0.1), attackers=[Escaping([], [])], certifiers=[], device=CPU).result
    assert r.errors == ["attack 'escaping': perturb()'s stage 'far' returned points outside the l_inf eps=0.1 ball or [0,1] "
                        "(largest perturbation 0.5)"]
