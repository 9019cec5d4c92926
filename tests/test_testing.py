"""harness.testing, the kit for plugin authors: its helpers catch what they promise to catch.

The fixtures themselves are used throughout the suite and by the example plugin's
own tests (examples/harness-example-plugin/tests, run by test_example_plugin.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import Attacker, AttackStages, Certificate, Certifier, Model, ThreatModel
from harness.scaffold import BatchLoss, EpochTrainer, Step
from harness.testing import check_attacker_in_ball, check_certifier_sound, make_catalog, tiny_info, train_tiny

THREAT = ThreatModel("inf", 0.1)


class Linear(Model):
    name = "linear"
    description = "a linear classifier (test)"

    def build(self, data):
        return nn.Sequential(nn.Flatten(), nn.Linear(data.input_size, data.num_classes))


@dataclass(frozen=True)
class CEOptions:
    epochs: int = 5
    batch_size: int = 32


class CE(EpochTrainer):
    name = "ce"
    description = "cross-entropy, Adam (test)"
    model = "linear"
    Options = CEOptions

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=0.05)

    def schedule(self, step: Step) -> dict[str, float]:
        return {"lr": 0.05}

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, values: Mapping[str, float]) -> BatchLoss:
        logits = model(images)
        return BatchLoss(F.cross_entropy(logits, labels), logits)


@pytest.fixture(scope="module")
def run():
    return train_tiny(CE(), Linear(), THREAT)


def test_train_tiny_trains_like_a_run_seeded_and_in_eval_mode(run):
    assert not run.model.training and run.images.dtype == torch.float32 and float(run.images.max()) <= 1
    assert run.images.shape[1:] == tiny_info().shape
    with torch.no_grad():
        assert (run.model(run.images).argmax(1) == run.labels).float().mean() > 0.95
    again = train_tiny(CE(), Linear(), THREAT)
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values()))


class Step2Eps(Attacker):
    name = "too-far"
    description = "steps 2·eps (test)"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        return (images + 2 * threat.eps).clamp(0, 1)


class InPlace(Attacker):
    name = "in-place"
    description = "moves the clean images themselves (test)"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        return images.add_(2 * threat.eps)


class Corner(Attacker):
    name = "corner"
    description = "the +eps corner of the box (test)"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        return (images + threat.eps).clamp(0, 1)


def test_check_attacker_in_ball_returns_the_points_of_an_attack_that_keeps_to_the_ball(run):
    adversarial = check_attacker_in_ball(Corner(), run.model, run.images, run.labels, THREAT)
    assert torch.equal(adversarial, (run.images + THREAT.eps).clamp(0, 1))


@pytest.mark.parametrize(("attacker", "expected"), [(Step2Eps(), r"too-far: perturb\(\) returned points outside the l_inf eps=0.1 ball"),
                                                    (InPlace(), "in-place changed the clean images in place")])
def test_check_attacker_in_ball_names_an_attack_that_leaves_the_ball(run, attacker, expected):
    with pytest.raises(AssertionError, match=expected):
        check_attacker_in_ball(attacker, run.model, run.images.clone(), run.labels, THREAT)


class TwoCorners(Attacker):
    name = "two-corners"
    description = "the -eps corner, then the +eps corner (test)"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        return AttackStages({"minus": (images - threat.eps).clamp(0, 1), "plus": (images + threat.eps).clamp(0, 1)})


def test_check_attacker_in_ball_checks_every_stage_and_returns_the_worst_case(run):
    strong = ThreatModel("inf", 0.5)
    adversarial = check_attacker_in_ball(TwoCorners(), run.model, run.images, run.labels, strong)
    minus, plus = (run.images - 0.5).clamp(0, 1), (run.images + 0.5).clamp(0, 1)
    with torch.no_grad():
        broken_minus = run.model(minus).argmax(1) != run.labels
    assert bool(broken_minus.any()) and not bool(broken_minus.all())
    assert torch.equal(adversarial[broken_minus], minus[broken_minus]) and torch.equal(adversarial[~broken_minus], plus[~broken_minus])

    class FarStage(TwoCorners):
        name = "far-stage"

        def perturb(self, model, images, labels, threat):
            return AttackStages({"ok": images.clone(), "far": (images + 2 * threat.eps).clamp(0, 1)})

    with pytest.raises(AssertionError, match=r"far-stage: perturb\(\)'s stage 'far' returned points outside"):
        check_attacker_in_ball(FarStage(), run.model, run.images, run.labels, THREAT)


class Everything(Certifier):
    name = "everything"
    description = "certifies every sample (test; unsound)"
    norms = ("inf",)

    def certify(self, model, images, labels, threat):
        return Certificate(certified=torch.ones(len(labels), dtype=torch.bool))


def test_check_certifier_sound_catches_an_unsound_certifier_and_passes_a_sound_one(run):
    strong = ThreatModel("inf", 0.5)  # the linear model's label flips somewhere in this box
    with pytest.raises(AssertionError, match="everything certified sample"):
        check_certifier_sound(Everything(), run.model, run.images, run.labels, strong)
    naive = make_catalog().get("certifier", "lipschitz-naive")()  # a built-in, by name
    certified = check_certifier_sound(naive, run.model, run.images, run.labels, THREAT, attackers=[Corner()], min_certified=0.5)
    assert certified.dtype == torch.bool
    with pytest.raises(AssertionError, match="the check would be vacuous"):
        check_certifier_sound(naive, run.model, run.images, run.labels, strong, min_certified=0.5)
