"""The liplt and lipschitz-naive certifiers: where they apply, sound radii, and the constants' cache.

Soundness is checked the strong way: for every certified sample, a 200-step
gradient attack restricted to the ball of 0.99 × its certified radius (its own
radius, the whole ball, not clipped to [0, 1]) never changes the prediction,
while the same attack at a multiple of the radius (8×; 1000× for l_inf through
convolutions, whose induced l_inf norms are large) does change some, so it is
not a toothless attack. The nets are trained for a few steps on a toy task, so
that their margins depend on the input as in real use.
"""

import copy

import pytest
import torch
from torch import nn

from harness import Certificate, DatasetInfo, ThreatModel
from harness.evaluation import evaluate
from harness_plugins.crm.model import crm_net
from harness_plugins.lib import citations
from harness_plugins.lib.liplt import constants as certifiers
from harness_plugins.lib.liplt.constants import constants_for, pairwise_radius, sequential_chain
from harness_plugins.liplt.certifiers import LipLTCertifier, NaiveLipschitzCertifier, PairwiseOptions
from harness_plugins.lpdist.models import LinfDistNet, LinfDistNetOptions
from harness_plugins.torchattacks.pgd import PGDL2, PGDL2Options

BOTH = [LipLTCertifier, NaiveLipschitzCertifier]


def small_crm(input_range: str = "unit", seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return crm_net("4c3f", 1, 12, 5, input_range=input_range, channel_scale=0.125).eval()


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    nested = nn.Sequential(nn.Linear(20, 16), nn.Tanh())
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 20), nn.ReLU(), nested, nn.Linear(16, 4)).eval()


def task(shape: tuple[int, ...], classes: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of one fixed random image per class, in [0, 1]."""
    centres = torch.rand(classes, *shape, generator=torch.Generator().manual_seed(99))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return (centres[labels] + 0.25 * torch.randn(n, *shape, generator=g)).clamp(0, 1), labels


def trained(model: nn.Module, shape: tuple[int, ...], steps: int = 120) -> nn.Module:
    """A few Adam steps of cross-entropy on :func:`task`: margins that depend on the input, as in real use."""
    classes = model(torch.zeros(1, *shape)).shape[1]
    x, y = task(shape, classes, 512, 0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = torch.randint(0, 512, (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


#: name → (builder, input shape)
MODELS = {
    "crm": (small_crm, (1, 12, 12)),
    "crm-symmetric": (lambda: small_crm("symmetric", seed=3), (1, 12, 12)),
    "mlp": (mlp, (1, 6, 6)),
}


@pytest.fixture(scope="module")
def models():
    cache: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}

    def get(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        if name not in cache:
            build, shape = MODELS[name]
            model = trained(build().train(), shape)
            x, y = task(shape, model(torch.zeros(1, *shape)).shape[1], 64, 2)
            cache[name] = (model, x, y)
        return cache[name]

    return get


def inputs(model: nn.Module, shape: tuple[int, ...], n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] labelled by the model's own predictions (every sample has a positive margin)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    with torch.no_grad():
        return x, model(x).argmax(1)


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        return self.body(x)


class MySequential(nn.Sequential):
    pass


def test_both_are_registered(catalog):
    names = {cls.name for cls in catalog.components("certifier")}
    assert {"liplt", "lipschitz-naive"} <= names
    for cls in BOTH:
        assert cls.source == citations.CRM_LIPLT and set(cls.norms) == {"2", "inf"}


@pytest.mark.parametrize("norm", ["2", "inf"])
@pytest.mark.parametrize("cls", BOTH)
def test_applies_to_sequential_chains(cls, norm):
    threat = ThreatModel(norm, 0.1)
    for model in (small_crm(), small_crm("symmetric"), mlp(), nn.Sequential(nn.Linear(3, 2)).eval()):
        assert cls().applies_to(model, threat)


@pytest.mark.parametrize("cls", BOTH)
def test_does_not_apply_to_other_modules(cls):
    threat = ThreatModel("2", 0.1)
    info = DatasetInfo(name="toy", num_classes=3, shape=(1, 4, 4), mean=(0.5,), std=0.3)
    bn_training = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    dropout_training = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    circular_conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
    circular = nn.Sequential(circular_conv, nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    rejected = [
        Wrapped().eval(),  # forward is not the sequence of its layers by construction
        MySequential(*mlp()).eval(),  # a subclass may override forward
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 3)).eval(),
        LinfDistNet(info, LinfDistNetOptions(depth=2, width=8)).eval(),
        bn_training.train(),
        dropout_training.train(),
        circular.eval(),
        nn.Sequential().eval(),
    ]
    for model in rejected:
        assert not sequential_chain(model)
        assert not cls().applies_to(model, threat)
    assert sequential_chain(bn_training.eval()) and sequential_chain(dropout_training.eval())


def test_does_not_apply_to_a_norm_it_does_not_support():
    class L2Only(LipLTCertifier):
        norms = ("2",)

    assert L2Only().applies_to(mlp(), ThreatModel("2", 0.1))
    assert not L2Only().applies_to(mlp(), ThreatModel("inf", 0.1))


def test_pairwise_radius():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5], [1.0, 1.0, -5.0], [4.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    constants = torch.tensor([[0.0, 4.0, 1.0], [4.0, 0.0, 2.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    radius = pairwise_radius(logits, labels, constants)
    slack = certifiers.MARGIN_SLACK
    # sample 0: min((2 − 3s)/4, (3 − 3s)/1); sample 1 is misclassified; sample 2 ties with class 1.
    assert radius[0].item() == pytest.approx((2 - 3 * slack) / 4)
    assert radius[1].item() == 0 and radius[2].item() == 0
    # L = 0 for a pair: that margin never shrinks, so only the other pairs count.
    constants[0, 1] = constants[1, 0] = 0
    assert pairwise_radius(logits, labels, constants)[3].item() == pytest.approx((4 - 4 * slack) / 1)
    assert pairwise_radius(logits[:1, :1], labels[:1], constants[:1, :1]).item() == float("inf")


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, steps: int = 200):
    """Which samples some iterate of a gradient attack inside their own ball (radius ``eps[i]``) misclassifies."""
    g = torch.Generator().manual_seed(7)
    shape = (-1,) + (1,) * (x.dim() - 1)
    radius = eps.float().reshape(shape)
    delta = (torch.rand(x.shape, generator=g) * 2 - 1) * radius
    if norm == "2":
        delta = delta * (radius / delta.flatten(1).norm(dim=1).reshape(shape).clamp(min=1e-12)).clamp(max=1) * 0.5
    step = 10 * radius / steps  # the iterates can travel ten radii: enough to reach any point of the ball
    broken = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta)
        broken |= (logits.argmax(1) != y).detach()
        others = logits.scatter(1, y[:, None], float("-inf"))
        loss = (others.amax(1) - logits.gather(1, y[:, None])[:, 0]).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "2":
                delta = delta + step * grad / grad.flatten(1).norm(dim=1).reshape(shape).clamp(min=1e-12)
                size = delta.flatten(1).norm(dim=1).reshape(shape)
                delta = delta * (radius / size.clamp(min=1e-12)).clamp(max=1)
            else:
                delta = (delta + step * grad.sign()).clamp(-radius, radius)
    with torch.no_grad():
        broken |= model(x + delta).argmax(1) != y
    return broken


@pytest.mark.parametrize(
    "name,norm,teeth",
    [("crm", "2", 8), ("crm-symmetric", "2", 8), ("mlp", "2", 8), ("crm", "inf", 1000), ("mlp", "inf", 8)],
)
def test_certified_radii_hold_against_attacks(models, name, norm, teeth):
    """``teeth``: a multiple of the LipLT radius at which the attack flips some predictions."""
    model, x, y = models(name)
    threat = ThreatModel(norm, 1e-6)
    results = {cls.name: cls().certify(model, x, y, threat) for cls in BOTH}
    for certifier, result in results.items():
        assert isinstance(result, Certificate) and result.certified.dtype == torch.bool
        radius = result.radius
        assert radius.dtype == torch.float64 and radius.shape == y.shape and bool((radius >= 0).all())
        assert torch.equal(result.certified, radius > threat.eps)
        assert result.certified.float().mean() > 0.8, certifier  # the nets fit the task
        rows = result.certified.nonzero().flatten()
        assert not attack(model, x[rows], y[rows], 0.99 * radius[rows], norm).any(), certifier
    rows = results["liplt"].certified.nonzero().flatten()
    assert attack(model, x[rows], y[rows], teeth * results["liplt"].radius[rows], norm).any()


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_liplt_radii_are_never_smaller_than_naive_radii(models, norm):
    model, x, y = models("crm")
    threat = ThreatModel(norm, 1e-3)
    liplt = LipLTCertifier().certify(model, x, y, threat).radius
    naive = NaiveLipschitzCertifier().certify(model, x, y, threat).radius
    assert bool((liplt >= naive).all()) and bool((liplt > naive).any())


def test_a_lower_dense_limit_gives_smaller_radii(models):
    """LipLT's constants grow with every norm it is given, and bounds are never below exact norms."""
    model, x, y = models("crm")
    threat = ThreatModel("2", 1e-3)
    exact = LipLTCertifier().certify(model, x, y, threat).radius
    bounded = LipLTCertifier(PairwiseOptions(dense_limit=0)).certify(model, x, y, threat).radius
    assert bool((bounded <= exact).all()) and bool((bounded < exact).any())
    with pytest.raises(ValueError, match="dense_limit"):
        PairwiseOptions(dense_limit=-1)


def test_radii_are_in_raw_pixel_units():
    """crm_net's x ↦ 2x − 1 is part of the chain: the symmetric net's constants are those of the
    same net with the first convolution's weights doubled and no normalising layer (the two differ
    only in biases, and in what the zero padding pads with, neither of which the constants see)."""
    symmetric = small_crm("symmetric")
    folded = nn.Sequential(*copy.deepcopy(list(symmetric)[1:])).eval()
    with torch.no_grad():
        folded[0].weight.mul_(2)
    x, _ = inputs(symmetric, (1, 12, 12), n=8)
    for norm in ("2", "inf"):
        assert torch.allclose(constants_for(symmetric, x, norm), constants_for(folded, x, norm), rtol=1e-6)


def test_constants_are_cached_per_model_and_weight_state(monkeypatch):
    calls = []
    real = certifiers.pairwise_constants

    def counting(*args, **kwargs):
        calls.append(args[1:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(certifiers, "pairwise_constants", counting)
    model = mlp()
    x, y = inputs(model, (1, 6, 6), n=16)
    threat = ThreatModel("2", 0.01)
    certifier = LipLTCertifier()
    first = certifier.certify(model, x, y, threat).radius
    again = certifier.certify(model, x[:5], y[:5], threat).radius
    assert len(calls) == 1 and torch.equal(again, first[:5])
    before = constants_for(model, x, "2")
    NaiveLipschitzCertifier().certify(model, x, y, threat)
    LipLTCertifier().certify(model, x, y, ThreatModel("inf", 0.01))
    assert calls == [("2", "liplt"), ("2", "naive"), ("inf", "liplt")]

    with torch.no_grad():  # an in-place update, as an optimiser step; every constant goes through W_0
        model[1].weight.mul_(2)
    after = constants_for(model, x, "2")
    assert len(calls) == 4 and torch.allclose(after, 2 * before, rtol=1e-6)

    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    optimiser.step()
    constants_for(model, x, "2")
    assert len(calls) == 5

    other = copy.deepcopy(model)  # a different object, the same weights: its own entry
    assert torch.equal(constants_for(other, x, "2"), constants_for(model, x, "2"))
    assert len(calls) == 6


def test_an_evaluation_with_the_pgd_attack_finds_no_unsound_certificate(models):
    """The harness's own soundness check (certified ∧ broken by PGD raises) over a real evaluation."""
    model, x, labels = models("crm")
    images = (x * 255).round().to(torch.uint8)
    threat = ThreatModel("2", 0.08)
    result = evaluate(
        model, images, labels, threat,
        attackers=[PGDL2(PGDL2Options(steps=50))],
        certifiers=[LipLTCertifier(), NaiveLipschitzCertifier()],
        device=torch.device("cpu"),
    )
    r = result.result
    liplt, naive = r.certifier("liplt"), r.certifier("lipschitz-naive")
    assert r.errors == []
    assert r.robust_accuracy > liplt.accuracy > naive.accuracy
    assert liplt.radius.mean > naive.radius.mean > 0 and liplt.radius.median >= naive.radius.median
