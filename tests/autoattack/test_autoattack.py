"""The ``autoattack`` attacker: the package's own attacks, stage by stage, on tiny models.

The stages must add up to exactly what one run of the package's
``run_standard_evaluation`` gives (same seed, same batches), each stage must
break only points every earlier one left, and every point must lie in the
threat model's ball and ``[0, 1]`` (the evaluation's own check).
"""

import pytest
import torch
from torch import nn

from harness import AttackStages, ThreatModel, UsageError
from harness.evaluation import check_in_ball
from harness.evaluation_checks import check_stages
from harness.options import parse_options
from harness.runner import evaluation_components
from harness_plugins.autoattack.attack import AutoAttack, AutoAttackOptions

STANDARD = ["apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The nets are tiny: intra-op threads only cost barriers on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes)).eval()


def batch(model: nn.Module, n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 1×8×8 images labelled by the model itself: every one is classified correctly."""
    images = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return images, model(images).argmax(1)


def survivors(model: nn.Module, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(points).argmax(1) == labels


def cumulative(model, result: AttackStages, labels) -> dict[str, torch.Tensor]:
    """Per stage, which samples survive it and every stage before it."""
    alive = torch.ones(len(labels), dtype=torch.bool)
    out = {}
    for stage, points in result.stages.items():
        alive = alive & survivors(model, points, labels)
        out[stage] = alive.clone()
    return out


@pytest.mark.parametrize("norm, eps", [("inf", 0.04), ("2", 0.4)])
def test_stages_add_up_to_one_run_of_the_package_and_stay_in_the_ball(norm, eps):
    import pyautoattack

    model = mlp()
    images, labels = batch(model)
    threat = ThreatModel(norm, eps)
    # The harness's own check of what an attack returns: every stage's points in the ball and [0, 1].
    clean = images.clone()
    result = AutoAttack().perturb(model, images, labels, threat)
    assert torch.equal(images, clean), "the clean images were changed in place"
    stages, free = check_stages(result, images, threat)
    assert list(stages) == STANDARD and free == {"square"}

    assert isinstance(result, AttackStages) and list(result.stages) == STANDARD
    assert result.gradient_free == {"square"}
    alive = cumulative(model, result, labels)
    final = alive["square"]
    # Each stage breaks only points every earlier stage left (it runs on the survivors only).
    previous = torch.ones(len(labels), dtype=torch.bool)
    for stage, points in result.stages.items():
        broken_here = ~survivors(model, points, labels)
        assert not bool((broken_here & ~previous).any()), stage
        previous = alive[stage]
    assert 0 < int(final.sum()) < len(labels), "eps should leave some points and break others"

    # The package's own full run, with the same seed: the same points survive.
    package = pyautoattack.AutoAttack(model, eps=eps, norm={"inf": "Linf", "2": "L2"}[norm], seed=0, version="standard")
    package.verbose = False
    adversarial, _ = package.run_standard_evaluation(images.clone(), labels)
    assert torch.equal(final, survivors(model, adversarial, labels))


def test_square_breaks_what_the_gradient_attacks_cannot_on_a_model_without_gradients():
    class Rounded(nn.Module):
        """A linear model of the image rounded to 1/4: its input gradient is zero everywhere."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.round(x * 4) / 4)

    model = Rounded(mlp()).eval()
    images, labels = batch(model, n=24, seed=2)
    result = AutoAttack().perturb(model, images.clone(), labels, ThreatModel("inf", 0.15))
    alive = cumulative(model, result, labels)
    broken_by_square = alive["fab-t"] & ~alive["square"]
    assert int(broken_by_square.sum()) > 0


def test_it_runs_on_an_linf_dist_net_whose_gradient_is_sparse():
    from harness import DatasetInfo
    from harness_plugins.lib.lpdist import lp_layers
    from harness_plugins.lpdist.models import LinfDistNet, LinfDistNetOptions

    torch.manual_seed(0)
    info = DatasetInfo(name="random", num_classes=10, shape=(1, 8, 8), mean=(0.5,), std=0.3)
    model = LinfDistNet(info, LinfDistNetOptions(depth=3, width=32)).eval()
    for layer in lp_layers(model):
        layer.p = float("inf")
    images, labels = batch(model, n=16)
    # At this eps APGD-CE breaks every point (a survivor would cost every later stage seconds on a CPU).
    threat = ThreatModel("inf", 0.12)
    result = AutoAttack().perturb(model, images.clone(), labels, threat)
    assert list(result.stages) == STANDARD
    for points in result.stages.values():
        check_in_ball(points, images, threat)
    assert not bool(survivors(model, result.stages["apgd-ce"], labels).any())


def test_with_three_classes_the_dlr_attacks_are_left_out_and_the_rest_run():
    model = mlp(classes=3)
    images, labels = batch(model, n=16)
    result = AutoAttack().perturb(model, images.clone(), labels, ThreatModel("inf", 0.1))
    assert list(result.stages) == ["apgd-ce", "fab-t", "square"]


def test_custom_attacks_run_in_the_order_given_and_the_harness_random_stream_is_untouched():
    model = mlp()
    images, labels = batch(model, n=8)
    state = torch.random.get_rng_state()
    options = parse_options(AutoAttackOptions, {"version": "custom", "attacks": "square,apgd-ce"}, "attacker 'autoattack'")
    attacker = AutoAttack(options)
    result = attacker.perturb(model, images.clone(), labels, ThreatModel("inf", 0.1))
    assert list(result.stages) == ["square", "apgd-ce"] and attacker.label() == "AutoAttack(square+apgd-ce)"
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"version": "custom"}, "version custom needs attacks"),
        ({"attacks": "square"}, "set version=custom"),
        ({"version": "custom", "attacks": "square,square"}, "twice"),
        ({"version": "custom", "attacks": "pgd"}, "'pgd' is not one of"),
    ],
)
def test_bad_options_are_usage_errors_that_say_what_to_do(values, expected):
    with pytest.raises(UsageError, match=expected):
        parse_options(AutoAttackOptions, values, "attacker 'autoattack'")


def test_it_is_in_the_default_evaluation_of_both_norms_beside_pgd(catalog):
    for norm, pgd in (("inf", "pgd"), ("2", "pgd-l2")):
        attackers, _ = evaluation_components(catalog, norm, None, [], {}, {})
        assert {a.name for a in attackers} == {pgd, "autoattack"}
    assert AutoAttack().label() == "AutoAttack"


def test_it_skips_certified_samples_unless_told_to_attack_them():
    assert AutoAttack().attacks_certified() is False
    assert AutoAttack(parse_options(AutoAttackOptions, {"certified": True}, "attacker autoattack")).attacks_certified() is True
