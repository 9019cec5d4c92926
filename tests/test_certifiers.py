"""Contract tests over every registered certifier, on a small l_inf-dist net trained for real.

A certificate is a promise: every certified sample must be classified
correctly, survive PGD, and keep its label at every point we can sample in the
box (corners included). The trained net certifies most samples, so the checks
are not vacuous.
"""

import math

import pytest
import torch

from harness import DatasetInfo, ThreatModel
from harness.progress import SilentProgress
from harness.train import TrainContext, TrainData
from harness_plugins.lib.lpdist import lp_layers
from harness_plugins.linf_v2.trainer import LinfV2Options, LinfV2Trainer
from harness_plugins.lpdist.models import LinfDistNet, LinfDistNetOptions
from harness_plugins.torchattacks.pgd import PGD, PGDOptions

INFO = DatasetInfo(name="prototypes", num_classes=3, shape=(1, 4, 4), mean=(0.5,), std=0.3)
EPS = 0.1


def prototypes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 4×4 images, each a fixed random pattern plus noise; well separated in l_inf."""
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    centres = torch.stack([torch.full((4, 4), 0.2), torch.full((4, 4), 0.8), 0.2 + 0.6 * checker])[:, None]
    labels = torch.randint(0, 3, (n,), generator=generator)
    images = (centres[labels] + 0.04 * torch.randn(n, 1, 4, 4, generator=generator)).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train_x, train_y = prototypes(640, g)
    test_x, test_y = prototypes(200, g)
    model = LinfDistNet(INFO, LinfDistNetOptions(depth=3, width=32))
    options = LinfV2Options(epochs=30, p_start_epoch=5, p_end_epoch=25, batch_size=64, crop_padding=0, eps_train_ratio=2.0)
    ctx = TrainContext(threat=ThreatModel("inf", EPS), device=torch.device("cpu"), seed=0, generator=g, progress=SilentProgress())
    LinfV2Trainer(options).fit(model, TrainData(INFO, train_x, train_y), ctx)
    return model, test_x.float() / 255, test_y


def test_training_ends_at_infinity_in_eval_mode(trained):
    model, _, _ = trained
    assert not model.training and all(math.isinf(layer.p) for layer in lp_layers(model))


def applicable(catalog, model, threat):
    certifiers = [cls() for cls in catalog.components("certifier")]
    return [c for c in certifiers if c.applies_to(model, threat)]


def test_both_builtin_certifiers_apply_to_a_dist_net_at_infinity(catalog, trained):
    names = {c.name for c in applicable(catalog, trained[0], ThreatModel("inf", EPS))}
    assert {"lipschitz-margin", "interval"} <= names


def test_every_certificate_holds(catalog, trained):
    model, x, y = trained
    threat = ThreatModel("inf", EPS)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert correct.float().mean() > 0.9
    adv = PGD(PGDOptions(steps=50, restarts=2)).perturb(model, x, y, threat)
    with torch.no_grad():
        survived = model(adv).argmax(1) == y
    g = torch.Generator().manual_seed(3)
    lower, upper = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    for certifier in applicable(catalog, model, threat):
        result = certifier.certify(model, x, y, threat)
        certified = result.certified
        assert certified.dtype == torch.bool and certified.shape == y.shape
        assert certified.float().mean() > 0.5, certifier.name  # not vacuous
        assert bool((certified <= correct).all()), certifier.name
        assert bool((certified <= survived).all()), certifier.name
        for _ in range(30):
            corner = torch.where(torch.rand(x.shape, generator=g) < 0.5, lower, upper)
            inside = lower + torch.rand(x.shape, generator=g) * (upper - lower)
            with torch.no_grad():
                for point in (corner, inside):
                    assert bool((certified <= (model(point).argmax(1) == y)).all()), certifier.name
        if result.radius is not None:
            assert bool((certified == (result.radius > EPS)).all()), certifier.name
            assert bool((result.radius >= 0).all())


def test_lipschitz_certificates_are_a_subset_of_interval_certificates(trained):
    """Exact per-neuron bounds through 1-Lipschitz units stay inside the Lipschitz box, and clipping only tightens."""
    from harness_plugins.certifiers.margins import IntervalCertifier, LipschitzMargin

    model, x, y = trained
    for eps in (0.02, EPS, 0.2):
        threat = ThreatModel("inf", eps)
        lip = LipschitzMargin().certify(model, x, y, threat).certified
        box = IntervalCertifier().certify(model, x, y, threat).certified
        assert bool((lip <= box).all())


def test_certifiers_do_not_apply_at_finite_p_or_in_training_mode(catalog):
    model = LinfDistNet(INFO, LinfDistNetOptions(depth=3, width=8))
    threat = ThreatModel("inf", EPS)
    assert applicable(catalog, model, threat) == []  # training mode, p = 8
    model.eval()
    assert applicable(catalog, model, threat) == []  # still p = 8


def test_a_diverged_model_is_an_error_not_a_number(trained):
    from harness.errors import HarnessError
    from harness.evaluation import evaluate

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"))

    _, x, y = trained
    with pytest.raises(HarnessError, match="non-finite logits"):
        evaluate(NaNNet(), (x * 255).to(torch.uint8), y, ThreatModel("inf", EPS), attackers=[], certifiers=[], device=torch.device("cpu"))


def test_interval_certify_at_radii_per_sample_is_certify_at_each_radius_and_monotone(trained):
    """The bisection's step for ``interval``: one bound pass over every sample's own box."""
    from harness_plugins.certifiers.margins import IntervalCertifier

    model, x, y = trained
    radii = torch.tensor([0.05, 0.1, 0.2, 0.3]).repeat(len(y) // 4)
    x, y = x[: len(radii)], y[: len(radii)]
    certifier = IntervalCertifier()
    assert certifier.radius_tolerance() == 0.001  # on by default: a step costs one bound pass
    at = certifier.certify_at(model, x, y, ThreatModel("inf", EPS), radii)
    assert at.dtype == torch.bool and at.shape == y.shape and 0 < int(at.sum()) < len(y)
    for value in radii.unique().tolist():
        rows = radii == value
        assert torch.equal(at[rows], certifier.certify(model, x[rows], y[rows], ThreatModel("inf", value)).certified), value
    assert bool((at <= certifier.certify_at(model, x, y, ThreatModel("inf", EPS), radii / 2)).all())
