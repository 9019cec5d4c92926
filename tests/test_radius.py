"""Per-sample radii by bisection over eps (harness.radius), through the evaluation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from harness import Certificate, Certifier, ThreatModel
from harness.budget import Budgets
from harness.evaluation import evaluate
from harness.radius import Bisection, ball_covers_box, steps_needed

CPU = torch.device("cpu")


@dataclass
class Tolerance:
    radius_tolerance: float = 0.001


def exact_radius(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: str) -> torch.Tensor:
    """A linear classifier's exact radius per sample (ignoring the [0,1] box): the smallest margin over its dual-norm row gap."""
    w = model[1].weight.double()
    logits = model(images).double()
    gaps = logits.gather(1, labels[:, None]) - logits
    lip = torch.linalg.vector_norm(w[labels][:, None, :] - w[None, :, :], ord=1 if norm == "inf" else 2, dim=2)
    ratio = torch.where(torch.arange(w.shape[0])[None, :] == labels[:, None], torch.inf, gaps / lip)
    return ratio.amin(1).clamp(min=0)


class Margin(Certifier):
    """The linear classifier's exact certificate, without a radius: the harness bisects one."""

    name = "margin"
    description = "exact certificate of a linear classifier, no radius (test)"
    norms = ("inf", "2")
    Options = Tolerance

    def __init__(self, options=None):
        super().__init__(options)
        self.calls = []

    def certify(self, model, images, labels, threat):
        radius = exact_radius(model, images, labels, threat.norm)
        return Certificate(certified=(radius > threat.eps * (1 + 1e-6)) & (model(images).argmax(1) == labels))

    def certify_at(self, model, images, labels, threat, eps):
        self.calls.append(eps.clone())
        radius = exact_radius(model, images, labels, threat.norm)
        return (radius > eps.double() * (1 + 1e-6)) & (model(images).argmax(1) == labels)


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 16, generator=g))
        model[1].bias.zero_()
    images = (torch.rand(120, 1, 4, 4, generator=g) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    labels[:10] = (labels[:10] + 1) % 3  # some misclassified
    return model, images, labels


@pytest.mark.parametrize("norm, eps", [("2", 0.3), ("inf", 0.05)])
def test_bisection_finds_each_samples_radius_within_the_tolerance_from_below(problem, norm, eps):
    model, images, labels = problem
    margin = Margin(Tolerance(0.001))
    run = evaluate(model, images, labels, ThreatModel(norm, eps), attackers=[], certifiers=[margin], device=CPU, batch_size=40)
    c = run.result.certifier("margin")
    assert (c.error, c.radius_method, c.radius_tolerance) == (None, "bisection", 0.001)
    with torch.no_grad():
        exact = exact_radius(model, images.float() / 255, labels, norm)
    top = ball_covers_box(ThreatModel(norm, eps), 16)
    for s in run.samples:
        certified, radius = s.certificates["margin"]
        truth = min(float(exact[s.index]), top)
        if s.label != s.prediction:
            assert radius == 0.0 and not certified
            continue
        assert certified == (radius >= eps)  # the stored radius agrees with the verdict at eps
        assert radius <= truth  # never above what holds: every radius recorded was certified
        assert radius > truth - 0.001 * (1 + 1e-3) - truth * 2e-6  # below the tolerance (and the certifier's own 1e-6 slack)
    radii = [s.certificates["margin"][1] for s in run.samples]
    assert c.radius.mean == pytest.approx(sum(radii) / len(radii))
    # Each batch's steps: one certify_at per halving of the widest bracket, over the samples still open.
    widest = max(top - eps, eps)
    assert len(margin.calls) == 3 * steps_needed(widest, 0.001)
    assert all(len(call) <= 40 for call in margin.calls)


def test_without_a_tolerance_there_is_no_radius_and_a_closed_form_is_named(problem):
    model, images, labels = problem

    class WithRadius(Margin):
        name = "with-radius"

        def certify(self, model, images, labels, threat):
            radius = exact_radius(model, images, labels, threat.norm)
            ok = (radius > threat.eps) & (model(images).argmax(1) == labels)
            return Certificate(certified=ok, radius=torch.where(ok, radius, torch.where(radius > threat.eps, threat.eps, radius)))

    run = evaluate(model, images, labels, ThreatModel("2", 0.3), attackers=[], certifiers=[Margin(Tolerance(0)), WithRadius()], device=CPU)
    plain, closed = run.result.certifier("margin"), run.result.certifier("with-radius")
    assert (plain.radius, plain.radius_method, plain.radius_tolerance) == (None, None, None)
    assert (closed.radius_method, closed.radius_tolerance) == ("closed-form", None)
    assert all(s.certificates["margin"][1] is None for s in run.samples)


def test_a_certify_at_that_is_not_monotone_keeps_a_proven_radius_and_does_not_crash(problem):
    model, images, labels = problem

    class Erratic(Margin):
        name = "erratic"

        def certify_at(self, model, images, labels, threat, eps):
            self.calls.append(eps.clone())
            g = torch.Generator().manual_seed(len(self.calls))
            return torch.rand(len(eps), generator=g) < 0.5  # certifies at random, whatever the radius

    erratic = Erratic(Tolerance(0.01))
    run = evaluate(model, images, labels, ThreatModel("2", 0.3), attackers=[], certifiers=[erratic], device=CPU, batch_size=200)
    c = run.result.certifier("erratic")
    assert c.error is None and c.radius_method == "bisection"
    asked = torch.cat(erratic.calls).double()
    for s in run.samples:
        certified, radius = s.certificates["erratic"]
        assert certified == (radius >= 0.3)
        assert radius in (0.0, 0.3) or bool((asked == radius).any())  # only ever a radius it said yes to


def test_the_budget_stops_the_bisection_with_the_radii_proven_so_far(problem):
    model, images, labels = problem

    class SlowSteps(Margin):
        name = "slow-steps"

        def certify_at(self, model, images, labels, threat, eps):
            if len(self.calls) == 3:
                time.sleep(600)  # interrupted by the budget
            return super().certify_at(model, images, labels, threat, eps)

    slow = SlowSteps(Tolerance(1e-6))
    run = evaluate(model, images, labels, ThreatModel("2", 0.3), attackers=[], certifiers=[slow], device=CPU, batch_size=200,
                   budgets=Budgets(default=3.0))
    c = run.result.certifier("slow-steps")
    assert (c.error, c.timeouts, c.radius_method) == (None, 0, "bisection")  # every verdict at eps came in time
    with torch.no_grad():
        exact = exact_radius(model, images.float() / 255, labels, "2")
    widths = []
    for s in run.samples:
        certified, radius = s.certificates["slow-steps"]
        assert s.outcomes["slow-steps"] == ("certified" if certified else "not-certified")
        if s.label == s.prediction:
            assert radius <= float(exact[s.index]) and certified == (radius >= 0.3)
            widths.append(float(exact[s.index]) - radius)
    assert len(slow.calls) == 3 and max(widths) > 1e-3  # three steps done (the fourth interrupted): far from the tolerance, but proven


def test_malformed_certify_at_verdicts_fail_the_certifier(problem):
    model, images, labels = problem

    class Malformed(Margin):
        name = "malformed"

        def certify_at(self, model, images, labels, threat, eps):
            return torch.ones(len(eps) + 1, dtype=torch.bool)

    r = evaluate(model, images, labels, ThreatModel("2", 0.3), attackers=[], certifiers=[Malformed()], device=CPU).result
    assert r.errors == ["certifier 'malformed': certify_at() returned verdicts of shape (111,) for a batch of 110; expected (110,)"]


def test_the_bisection_on_its_own():
    threat = ThreatModel("inf", 0.25)
    truth = torch.tensor([0.0, 0.1, 0.3, 0.9, 1.5], dtype=torch.float64)
    certified = truth > 0.25
    bisection = Bisection(certified, torch.ones(5, dtype=torch.bool), threat, dimensions=4, tolerance=0.01)
    bisection.run(lambda rows, eps: truth[rows] > eps.double())
    assert bisection.finished and bisection.steps == steps_needed(0.75, 0.01) == math.floor(math.log2(75)) + 1
    assert ((truth.clamp(max=1.0) - bisection.radius) < 0.01).all() and (bisection.radius <= truth).all()
    assert bisection.radius[0] == 0.0 and bisection.radius[4] < 1.0


def test_a_certify_that_writes_into_the_batch_does_not_move_the_bisections_points():
    """certify() gets a copy: one that shifts the images in place must not make the bisection certify other points."""

    class Box(Certifier):
        name = "box"
        description = "exact l_inf certificate of z = (x_0, 0.5) for label 0; writes into its images (test)"
        norms = ("inf",)
        Options = Tolerance

        def certify(self, model, images, labels, threat):
            verdicts = self.certify_at(model, images, labels, threat, torch.full((len(images),), threat.eps))
            images.add_(0.4)  # a sloppy in-place normalisation
            labels.zero_()
            return Certificate(certified=verdicts)

        def certify_at(self, model, images, labels, threat, eps):
            return ((images.flatten(1)[:, 0] - eps.to(images)).clamp(0, 1) > 0.5) & (labels == 0)

    class Model(nn.Module):
        def forward(self, x):
            v = x.flatten(1)[:, :1]
            return torch.cat([v, torch.full_like(v, 0.5)], 1)

    images = torch.tensor([160, 200, 100], dtype=torch.uint8).view(3, 1, 1, 1)
    labels = torch.tensor([0, 0, 1])
    run = evaluate(Model(), images, labels, ThreatModel("inf", 0.05), attackers=[], certifiers=[Box()], device=CPU)
    for s in run.samples:
        certified, radius = s.certificates["box"]
        truth = max(0.0, images[s.index].item() / 255 - 0.5) if s.label == 0 else 0.0
        assert radius <= truth and radius > truth - 0.001


def test_every_batchs_verdict_at_eps_comes_before_any_bisection_spends_the_budget(problem):
    """The verdicts at eps are the certified accuracy; a radius only refines it: the bisection runs on what is left of the
    budget once every batch has its verdict, so a slow bisection never turns later batches into time-outs."""
    model, images, labels = problem

    class SlowSteps(Margin):
        name = "slow-steps"

        def certify_at(self, model, images, labels, threat, eps):
            time.sleep(0.5)
            return super().certify_at(model, images, labels, threat, eps)

    slow = SlowSteps(Tolerance(1e-6))
    run = evaluate(model, images, labels, ThreatModel("2", 0.3), attackers=[], certifiers=[slow, Margin(Tolerance(0))], device=CPU,
                   batch_size=40, budgets=Budgets(per_certifier={"slow-steps": 2.0}))
    c = run.result.certifier("slow-steps")
    assert (c.error, c.timeouts, c.errors, c.radius_method) == (None, 0, 0, "bisection")
    assert [s.certificates["slow-steps"][0] for s in run.samples] == [s.certificates["margin"][0] for s in run.samples]
    with torch.no_grad():
        exact = exact_radius(model, images.float() / 255, labels, "2")
    for s in run.samples:  # the radii proven before the budget ran out, or the verdict's own (eps or 0)
        certified, radius = s.certificates["slow-steps"]
        assert radius <= float(exact[s.index]) and certified == (radius >= 0.3)
