"""The CRM trainer: the code's schedules and split, and training that does enlarge certified radii."""

import math

import pytest
import torch
from torch.utils.data import random_split

from harness import DatasetInfo, ThreatModel
from harness.scaffold import Step
from harness.train import TrainContext, TrainData
from harness_plugins.crm.augment import RandomAffine
from harness_plugins.crm.model import crm_net
from harness_plugins.crm.trainer import CRMOptions, CRMTrainer, holdout_split
from harness_plugins.lib.liplt.chain import Chain
from harness_plugins.lib.liplt.power import PowerIteration, RowSumEstimate, pairwise


def test_lr_is_constant_then_geometric_down_to_lr_min_and_the_robust_term_starts_at_its_epoch():
    trainer = CRMTrainer(CRMOptions(epochs=400, lr=1e-3, lr_decay_epoch=25, lr_min=1e-6, robust_start_epoch=10))
    values = [trainer.schedule(Step(e, i, 3, 400)) for e in range(400) for i in range(3)]
    assert all(values[3 * e]["lr"] == values[3 * e + i]["lr"] for e in range(400) for i in range(3))  # once an epoch
    assert [v["robust"] for v in values[:31]] == [0.0] * 30 + [1.0] and all(v["robust"] == 1.0 for v in values[30:])
    lrs = [v["lr"] for v in values[::3]]
    assert lrs[:25] == [1e-3] * 25
    gamma = (1e-6 / 1e-3) ** (1 / 375)
    assert lrs[25] == pytest.approx(1e-3 * gamma, rel=1e-12)  # the code's first decayed epoch (9.817e-4)
    assert lrs[-1] == pytest.approx(1e-6, rel=1e-9)
    ratios = {round(b / a, 12) for a, b in zip(lrs[25:], lrs[26:])}
    assert len(ratios) == 1 and 0 < ratios.pop() < 1


def test_holdout_is_the_codes_random_split_after_manual_seed_1():
    torch.manual_seed(1)
    train, _ = random_split(range(1000), [0.9, 0.1])
    assert holdout_split(1000, 0.9).tolist() == sorted(train.indices)
    assert holdout_split(10, 1.0).tolist() == list(range(10))


@pytest.mark.parametrize(("fraction", "given", "enough"), [(0.9, 1, 2), (0.3, 3, 4), (0.5, 1, 2)])
def test_a_holdout_that_leaves_no_training_sample_says_how_many_are_enough(fraction, given, enough):
    from harness import UsageError

    info = DatasetInfo(name="t", num_classes=2, shape=(1, 2, 2), mean=(0.5,), std=0.25)
    data = TrainData(info, torch.zeros(given, 1, 2, 2, dtype=torch.uint8), torch.zeros(given, dtype=torch.long))
    ctx = TrainContext(ThreatModel("2", 0.5), torch.device("cpu"), 0, torch.Generator().manual_seed(0))
    trainer = CRMTrainer(CRMOptions(train_fraction=fraction))
    with pytest.raises(UsageError, match=rf"which leaves none of {given}; give --train-samples {enough} or more"):
        trainer.training_data(data, ctx)
    more = TrainData(info, torch.zeros(enough, 1, 2, 2, dtype=torch.uint8), torch.zeros(enough, dtype=torch.long))
    assert len(trainer.training_data(more, ctx)) >= 1


def test_random_affine_keeps_shape_and_fills_outside_with_grey():
    images = torch.rand(16, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = RandomAffine(degrees=0, translate=0.5)(images, g)
    assert out.shape == images.shape
    shifted = ~torch.isclose(out, images).all(1)  # translated pixels differ; uncovered ones are grey
    assert shifted.any()
    assert bool(((out == 0.5) | torch.isin(out, images)).all())
    assert torch.equal(RandomAffine()(images, g), images)


INFO = DatasetInfo(name="blobs", num_classes=3, shape=(1, 8, 8), mean=(0.5,), std=0.25)


def blobs(n: int, g: torch.Generator):
    centres = torch.stack([torch.full((8, 8), 0.25), torch.full((8, 8), 0.75), (torch.arange(64) % 2).float().reshape(8, 8)])
    labels = torch.randint(0, 3, (n,), generator=g)
    images = (centres[labels] + 0.1 * torch.randn(n, 8, 8, generator=g)).clamp(0, 1)[:, None]
    return (images * 255).round().to(torch.uint8), labels


def train(norm: str, lam: float):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = blobs(512, g)
    net = crm_net("4c3f", 1, 8, 3, channel_scale=0.125)
    o = CRMOptions(epochs=6, lr=3e-3, lr_decay_epoch=6, batch_size=64, lam=lam, r0=1.0, temperature=5.0, robust_start_epoch=2,
                   power_iterations=3, linf_refresh=5, train_fraction=1.0)
    CRMTrainer(o).fit(net, TrainData(INFO, x, y), TrainContext(threat=ThreatModel(norm, 0.5), device=torch.device("cpu"), seed=0, generator=g))
    test_x, test_y = blobs(256, torch.Generator().manual_seed(1))
    images = test_x.float() / 255
    chain = Chain.from_module(net, images[:2])
    with torch.no_grad():
        norms = PowerIteration(chain, torch.Generator().manual_seed(0)).norms(200) if norm == "2" else RowSumEstimate(chain, refresh=1).norms()
        constants = pairwise(chain, norm, norms)
        logits = net(images)
    correct = logits.argmax(1) == test_y
    top = logits.gather(1, test_y[:, None])
    d = (top - logits) / constants[test_y].where(constants[test_y] > 0, torch.ones(()))
    d.scatter_(1, test_y[:, None], math.inf)
    radius = torch.where(correct, d.amin(1), torch.zeros(()))
    return net, correct.float().mean().item(), radius.median().item()


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_the_certified_radius_term_enlarges_radii(norm):
    net, accuracy, radius = train(norm, lam=1.0)
    _, ce_accuracy, ce_radius = train(norm, lam=0.0)
    assert not net.training
    assert accuracy > 0.9 and ce_accuracy > 0.9
    assert radius > 1.5 * ce_radius
