"""The ibp, crown-ibp and crown certifiers: where they apply, and that every certificate holds.

On small nets trained here (a conventional MLP normalising inside ``forward``
and a toy :class:`harness.FeatureHead` model with exact feature bounds), a
certified sample must be classified correctly, survive PGD and keep its label
at every point we sample in the box or ball; the nets certify most samples, so
the checks are not vacuous.
"""

import gc
import importlib.util
import sys

import pytest
import torch
from torch import nn

from harness import FeatureHead, ThreatModel
from harness.errors import HarnessError
from harness.evaluation import evaluate
from harness_plugins.lib.lirpa import bounds as lirpa_certifiers
from harness_plugins.lib.lirpa.bounds import EVAL_LAYERS, LAYERS, bounds_for, conventional
from harness_plugins.lirpa.certifiers import CROWNCertifier, CROWNIBPCertifier, IBPCertifier
from harness_plugins.torchattacks.pgd import PGD, PGDOptions

pytestmark = pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="auto_LiRPA is not installed")

NAMES = ("ibp", "crown-ibp", "crown")
EPS = 0.1
L2_EPS = 0.3
#: Radii where the trained nets certify some test samples but not all, and PGD breaks some.
LINF_CASES = [("mlp", 0.15), ("plain-mlp", 0.2), ("feature-head", 0.2)]
L2_CASES = [("mlp", 0.15), ("plain-mlp", 0.7)]
SHAPE = (1, 4, 4)


def all_three():
    return [IBPCertifier(), CROWNIBPCertifier(), CROWNCertifier()]


class Normalised(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor([0.5]).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor([0.25]).view(1, 1, 1, 1))

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


class ToyFeatureHead(nn.Module):
    """Features ``4·s ⊙ (x[index] − 0.5)``: each one monotone in one pixel, so the box bounds are exact."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("index", torch.randperm(16, generator=g)[:10])
        self.register_buffer("sign", torch.randint(0, 2, (10,), generator=g) * 2.0 - 1)
        self.head = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
        self.l2 = False

    def features(self, x):
        return 4 * self.sign * (x.flatten(1)[:, self.index] - 0.5)

    def forward(self, x):
        return self.head(self.features(x))

    def supports_feature_bounds(self, norm: str) -> bool:
        return norm == "inf" or self.l2

    def feature_bounds(self, lower, upper):
        a, b = self.features(lower), self.features(upper)
        return torch.minimum(a, b), torch.maximum(a, b)


def prototypes(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 4×4 images: a fixed pattern each plus noise, 0.6 apart in l_inf."""
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    centres = torch.stack([torch.full((4, 4), 0.2), torch.full((4, 4), 0.8), 0.2 + 0.6 * checker])[:, None]
    labels = torch.randint(0, 3, (n,), generator=g)
    return (centres[labels] + 0.04 * torch.randn(n, *SHAPE, generator=g)).clamp(0, 1), labels


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Module:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return prototypes(640, g), prototypes(200, g)


@pytest.fixture(scope="module")
def trained(data):
    (x, y), _ = data
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    return {"mlp": fit(Normalised(body), x, y), "plain-mlp": fit(plain, x, y), "feature-head": fit(ToyFeatureHead(), x, y)}


def test_the_three_certifiers_are_registered(catalog):
    found = {c.name: c for c in catalog.components("certifier")}
    assert set(NAMES) <= set(found)
    for name in NAMES:
        assert found[name].norms == ("inf", "2")
        assert found[name].source is not None and "auto_LiRPA" in (found[name].source.code or found[name].source.title)


def sampled_points_keep_labels(model, points, y):
    with torch.no_grad():
        return model(points).argmax(1) == y


@pytest.mark.parametrize(("kind", "eps"), LINF_CASES)
def test_linf_certificates_hold(trained, data, kind, eps):
    model = trained[kind]
    _, (x, y) = data
    threat = ThreatModel("inf", eps)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    adv = PGD(PGDOptions(steps=20)).perturb(model, x, y, threat)
    survived = sampled_points_keep_labels(model, adv, y)
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    g = torch.Generator().manual_seed(3)
    points = [lower + torch.rand(x.shape, generator=g) * (upper - lower) for _ in range(20)]
    points += [torch.where(torch.rand(x.shape, generator=g) < 0.5, lower, upper) for _ in range(20)]
    kept = torch.stack([sampled_points_keep_labels(model, p, y) for p in points]).all(0)
    margins, certified = {}, {}
    for certifier in all_three():
        assert certifier.applies_to(model, threat), certifier.name
        result = certifier.certify(model, x, y, threat)
        assert result.radius is None and result.certified.dtype == torch.bool and result.certified.shape == y.shape
        certified[certifier.name] = result.certified
        assert bool((result.certified <= correct).all() and (result.certified <= survived).all()), certifier.name
        assert bool((result.certified <= kept).all()), certifier.name
        margins[certifier.name] = certifier.margins(model, x, y, threat)
    assert 0.25 < certified["crown"].float().mean() <= survived.float().mean()  # not vacuous
    for name in ("crown-ibp", "crown"):
        assert bool((margins[name] >= margins["ibp"]).all()) and bool((certified[name] >= certified["ibp"]).all())
    assert not model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("kind", "eps"), L2_CASES)
def test_l2_certificates_hold(trained, data, kind, eps):
    """The normalised mlp is bounded over the box around the ball (auto_LiRPA's l2 intervals stop at normalisation)."""
    model = trained[kind]
    _, (x, y) = data
    threat = ThreatModel("2", eps)
    g = torch.Generator().manual_seed(4)
    kept = torch.ones_like(y, dtype=torch.bool)
    for i in range(40):
        d = torch.randn(x.shape, generator=g)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps * (torch.rand(len(x), 1, 1, 1, generator=g) if i % 2 else 1)
        kept &= sampled_points_keep_labels(model, x + d, y)  # unclipped: the certificates cover the whole ball
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    certified = {}
    for certifier in all_three():
        assert certifier.applies_to(model, threat), certifier.name
        certified[certifier.name] = certifier.certify(model, x, y, threat).certified
        assert bool((certified[certifier.name] <= correct).all() and (certified[certifier.name] <= kept).all()), certifier.name
    assert certified["crown"].float().mean() > 0.25  # not vacuous


def test_the_evaluation_records_each_certifier(trained, data):
    model = trained["plain-mlp"]
    _, (x, y) = data
    images = (x * 255).round().to(torch.uint8)
    result = evaluate(
        model, images, y, ThreatModel("inf", 0.2), attackers=[PGD(PGDOptions(steps=10))], certifiers=all_three(),
        device=torch.device("cpu"), batch_size=128,
    )
    r = result.result
    crown, crown_ibp, ibp = (r.certifier(name) for name in ("crown", "crown-ibp", "ibp"))
    assert r.errors == []
    assert crown.accuracy >= crown_ibp.accuracy >= ibp.accuracy
    assert crown.accuracy > 0.25
    assert r.certified_accuracy == crown.accuracy <= r.robust_accuracy <= r.clean_accuracy
    assert crown.radius is None
    assert all(set(NAMES) <= set(sample.certificates) for sample in result.samples)


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 3)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


def mlp_with(*middle: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), *middle, nn.Linear(8, 3))


def test_every_listed_layer_is_bounded_soundly_by_each_method():
    torch.manual_seed(0)
    net = Normalised(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1), nn.AvgPool2d(2), nn.Flatten(),
            nn.Identity(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.Sigmoid(), nn.Dropout(0.2),
            nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3),
        )
    )
    with torch.no_grad():
        net(torch.rand(64, *SHAPE))  # batch norm statistics that are not the identity
    net.eval()
    assert {type(m) for m in net.modules() if next(m.children(), None) is None} == set(LAYERS) | set(EVAL_LAYERS)
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(32, *SHAPE, generator=g), torch.randint(0, 3, (32,), generator=g)
    for threat in (ThreatModel("inf", EPS), ThreatModel("2", L2_EPS)):
        worst = None
        for _ in range(100):
            if threat.norm == "inf":
                point = (x + EPS * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
            else:
                d = torch.randn(x.shape, generator=g)
                point = x + d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * L2_EPS
            with torch.no_grad():
                z = net(point)
            margins = z.gather(1, y[:, None]) - z
            worst = margins if worst is None else torch.minimum(worst, margins)
        for certifier in all_three():
            assert certifier.applies_to(net, threat)
            bound = certifier.margins(net, x, y, threat)
            assert bool((bound <= worst + 1e-5 * (1 + worst.abs())).all()), (certifier.name, threat)


def test_what_they_do_not_apply_to(trained, monkeypatch):
    inf, l2 = ThreatModel("inf", EPS), ThreatModel("2", L2_EPS)
    feature_head = trained["feature-head"]
    assert isinstance(feature_head, FeatureHead) and conventional(feature_head.head)

    def applies(model, threat=inf):
        return [c.applies_to(model, threat) for c in all_three()]

    assert applies(mlp_with(Square())) == [False] * 3  # a leaf auto_LiRPA may not know
    assert applies(Scaled().eval()) == [False] * 3  # a parameter outside the leaves
    assert applies(mlp_with(nn.BatchNorm1d(8), nn.ReLU()).train()) == [False] * 3  # batch statistics
    assert applies(mlp_with(nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU()).eval()) == [False] * 3
    assert applies(mlp_with(nn.Dropout()).train()) == [False] * 3
    assert applies(mlp_with(nn.GELU())) == [False] * 3
    assert applies(feature_head, l2) == [False] * 3  # feature bounds are l_inf boxes
    assert applies(feature_head) == [True] * 3
    monkeypatch.setattr(feature_head, "supports_feature_bounds", lambda norm: False)
    assert applies(feature_head) == [False] * 3
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)
    assert applies(trained["mlp"]) == applies(trained["mlp"], l2) == applies(feature_head) == [False] * 3


def test_conventional_networks_apply_under_both_norms():
    for model in (
        mlp_with(nn.ReLU()),
        mlp_with(nn.BatchNorm1d(8), nn.LeakyReLU(), nn.Dropout()).eval(),
        Normalised(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.AvgPool2d(2), nn.Flatten(), nn.Identity(), nn.Linear(2, 3))),
        nn.Linear(16, 3),
    ):
        for threat in (ThreatModel("inf", EPS), ThreatModel("2", L2_EPS)):
            assert all(c.applies_to(model, threat) for c in all_three()), (model, threat)


def test_a_forward_auto_lirpa_cannot_trace_is_a_harness_error():
    class Elu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return nn.functional.elu(self.fc(x.flatten(1)))

    model = Elu()
    certifier = CROWNCertifier()
    assert certifier.applies_to(model, ThreatModel("inf", EPS))  # the leaves cannot tell
    with pytest.raises(HarnessError, match="auto_LiRPA cannot bound Elu"):
        certifier.certify(model, torch.rand(2, *SHAPE), torch.tensor([0, 1]), ThreatModel("inf", EPS))


def test_bounds_are_built_once_per_model_and_freed_with_it():
    model = mlp_with(nn.ReLU()).eval()
    x, y = torch.rand(8, *SHAPE), torch.arange(8) % 3
    for certifier in all_three():
        certifier.certify(model, x, y, ThreatModel("inf", EPS))
        certifier.certify(model, x[:3], y[:3], ThreatModel("2", L2_EPS))
    assert bounds_for(model, x) is bounds_for(model, x[:1])
    assert model in lirpa_certifiers._BOUNDS
    other = mlp_with(nn.ReLU()).eval()
    assert bounds_for(other, x) is not bounds_for(model, x)
    gc.collect()  # models of earlier tests that are garbage already must not be counted as this one's going
    count = len(lirpa_certifiers._BOUNDS)
    del other
    gc.collect()
    assert len(lirpa_certifiers._BOUNDS) == count - 1


#: One radius per sample: four distinct values, each on a quarter of the samples.
RADII = torch.tensor([0.05, 0.15, 0.25, 0.35]).repeat(12)


@pytest.mark.parametrize(("kind", "norm"), [("mlp", "inf"), ("plain-mlp", "inf"), ("feature-head", "inf"), ("plain-mlp", "2")])
def test_certify_at_radii_per_sample_is_certify_at_each_radius_and_monotone(trained, data, kind, norm):
    """The bisection's step: one pass over every sample's own box (l2: one pass per distinct radius) gives the verdicts
    certify() gives at each radius alone; a smaller radius never loses a certificate."""
    model = trained[kind]
    _, (x, y) = data
    x, y = x[: len(RADII)], y[: len(RADII)]
    radii = RADII * (4 if norm == "2" else 1)
    for certifier in all_three():
        threat = ThreatModel(norm, float(radii[0]))
        at = certifier.certify_at(model, x, y, threat, radii)
        assert at.dtype == torch.bool and at.shape == y.shape
        for value in radii.unique().tolist():
            rows = radii == value
            alone = certifier.certify(model, x[rows], y[rows], ThreatModel(norm, value)).certified
            assert torch.equal(at[rows], alone), (certifier.name, value)
        assert 0 < int(at.sum()) < len(y), certifier.name  # not vacuous either way
        assert bool((at <= certifier.certify_at(model, x, y, threat, radii / 2)).all()), certifier.name


def test_radius_tolerance_is_on_for_ibp_only_and_says_its_cost():
    from harness.options import parse_options
    from harness_plugins.lirpa.certifiers import IBPOptions, LiRPAOptions

    assert [c.radius_tolerance() for c in all_three()] == [0.001, None, None]
    # Under l2 auto_LiRPA bounds one radius per pass: ibp bisects there only when told to.
    assert IBPCertifier().radius_tolerance(ThreatModel("2", 1.0)) is None
    assert IBPCertifier(parse_options(IBPOptions, {"l2_radius": True}, "certifier 'ibp'")).radius_tolerance(ThreatModel("2", 1.0)) == 0.001
    assert CROWNCertifier(parse_options(LiRPAOptions, {"radius_tolerance": "0.01"}, "certifier 'crown'")).radius_tolerance() == 0.01
    docs = {name: doc for name, _, _, doc in IBPCertifier.option_docs()}
    assert "log2(range/tolerance) certifications" in docs["radius_tolerance"]
    with pytest.raises(ValueError, match="radius_tolerance must be a finite number >= 0"):
        IBPOptions(radius_tolerance=-1.0)
