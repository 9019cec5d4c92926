"""``liplt-estimate``: the CRM code's protocol (training's power-iteration vectors plus as many iterations), not a bound.

On a CRM network trained for a few steps here, its constants must be at most
the sound ones (power iteration estimates norms from below) and its verdicts
a superset of ``liplt``'s; the vectors must travel with the weights, and
weights saved before they were kept must still load.
"""

import pytest
import torch

from harness import DatasetInfo, ThreatModel
from harness.train import TrainContext, TrainData
from harness_plugins.crm.model import crm_net
from harness_plugins.crm.trainer import CRMOptions, CRMTrainer
from harness_plugins.lib.liplt.constants import constants_for
from harness_plugins.lib.liplt.estimate import estimated_constants
from harness_plugins.liplt.certifiers import EstimateOptions, LipLTCertifier, LipLTEstimateCertifier

INFO = DatasetInfo(name="blobs", num_classes=3, shape=(1, 8, 8), mean=(0.5,), std=0.25)
EPS = 0.5


def blobs(n: int, g: torch.Generator):
    centres = torch.stack([torch.full((8, 8), 0.25), torch.full((8, 8), 0.75), (torch.arange(64) % 2).float().reshape(8, 8)])
    labels = torch.randint(0, 3, (n,), generator=g)
    images = (centres[labels] + 0.1 * torch.randn(n, 8, 8, generator=g)).clamp(0, 1)[:, None]
    return (images * 255).round().to(torch.uint8), labels


@pytest.fixture(scope="module")
def trained():
    """A 4C3F at 1/8 width, trained 3 short epochs with 3 power iterations per step (the radius term from epoch 1)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = blobs(256, g)
    net = crm_net("4c3f", 1, 8, 3, channel_scale=0.125)
    options = CRMOptions(epochs=3, lr=3e-3, lr_decay_epoch=3, batch_size=64, lam=1.0, r0=1.0, robust_start_epoch=1,
                         power_iterations=3, train_fraction=1.0)
    context = TrainContext(threat=ThreatModel("2", EPS), device=torch.device("cpu"), seed=0, generator=g)
    CRMTrainer(options).fit(net, TrainData(INFO, x, y), context)
    test_x, test_y = blobs(128, torch.Generator().manual_seed(1))
    return net, test_x.float() / 255, test_y


def test_training_keeps_its_power_iteration_vectors_in_the_model(trained):
    net, _, _ = trained
    assert net.power_iterations == 3 and net.pairwise == "liplt" and len(net.power_vectors) > 0
    assert {"power_vector_0", "power_iteration_count", "power_pairwise"} <= set(net.state_dict())


def test_its_constants_are_at_most_the_sound_ones_and_its_verdicts_a_superset_of_liplt(trained):
    net, x, y = trained
    threat = ThreatModel("2", EPS)
    estimate = estimated_constants(net, x)
    sound = constants_for(net, x, "2", "liplt")
    off = ~torch.eye(3, dtype=torch.bool)
    assert bool((estimate[off] > 0).all())
    assert bool((estimate[off] <= sound[off] * (1 + 1e-6)).all())
    gap = 1 - (estimate[off] / sound[off]).mean().item()
    assert gap > 0  # an estimate, below the sound constant

    paper, certified = LipLTEstimateCertifier(), LipLTCertifier()
    assert paper.applies_to(net, threat) and not paper.sound and certified.sound
    ours, theirs = certified.certify(net, x, y, threat), paper.certify(net, x, y, threat)
    assert bool((ours.certified <= theirs.certified).all())
    assert bool((theirs.radius >= ours.radius * (1 - 1e-6)).all())
    assert 0 < int(ours.certified.sum()) <= int(theirs.certified.sum()) < len(y)  # neither vacuous nor everything


def test_more_iterations_move_the_estimate_towards_the_sound_constants_and_leave_the_saved_vectors(trained):
    net, x, _ = trained
    saved = [v.clone() for v in net.power_vectors]
    state = torch.random.get_rng_state()
    few, many = estimated_constants(net, x, 1), estimated_constants(net, x, 200)
    assert bool((many >= few * (1 - 1e-5)).all())
    assert all(torch.equal(a, b) for a, b in zip(saved, net.power_vectors))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert LipLTEstimateCertifier(EstimateOptions(iterations=200)).options.iterations == 200


def test_the_vectors_travel_with_the_weights_and_old_weights_still_load(trained):
    net, x, y = trained
    threat = ThreatModel("2", EPS)
    fresh = crm_net("4c3f", 1, 8, 3, channel_scale=0.125).eval()
    reason = LipLTEstimateCertifier().not_applicable_reason(fresh, threat)
    assert reason is not None and "keeps no power-iteration vectors" in reason
    fresh.load_state_dict(net.state_dict(), strict=True)
    assert torch.equal(LipLTEstimateCertifier().certify(fresh, x, y, threat).radius, LipLTEstimateCertifier().certify(net, x, y, threat).radius)

    old = {k: v for k, v in net.state_dict().items() if not k.startswith("power_")}  # saved before the vectors were kept
    older = crm_net("4c3f", 1, 8, 3, channel_scale=0.125).eval()
    older.load_state_dict(old, strict=True)
    assert older.power_vectors == [] and not LipLTEstimateCertifier().applies_to(older, threat)
    assert LipLTCertifier().applies_to(older, threat)  # the sound certifiers still read the network as a chain
    net_again = crm_net("4c3f", 1, 8, 3, channel_scale=0.125).eval()
    net_again.load_state_dict(net.state_dict(), strict=True)
    net_again.load_state_dict(old, strict=True)  # loading weights without vectors drops the ones it had
    assert net_again.power_vectors == []


def test_the_sound_bound_propagation_certifiers_still_bound_the_network_with_its_vectors(trained):
    """auto_LiRPA traces the module with its state: the vectors, tensors, must not get in the way."""
    from harness_plugins.lib.lirpa.bounds import auto_lirpa_installed
    from harness_plugins.lirpa.certifiers import IBPCertifier

    if not auto_lirpa_installed():
        pytest.skip("auto_LiRPA is not installed")

    net, x, y = trained
    threat = ThreatModel("2", EPS)
    assert IBPCertifier().applies_to(net, threat)
    certified = IBPCertifier().certify(net, x[:8], y[:8], threat).certified
    assert certified.shape == (8,)


def test_it_is_for_l2_only(trained):
    net, _, _ = trained
    assert LipLTEstimateCertifier().not_applicable_reason(net, ThreatModel("inf", 0.1)) == "it certifies l_2 only"
