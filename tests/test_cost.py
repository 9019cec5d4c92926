"""What each attack and certifier costs: wall time, samples per second, peak memory (process RSS on the CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness import Attacker, Certificate, Certifier, ThreatModel
from harness.cost import RSS, measure, rss_bytes
from harness.evaluation import evaluate

CPU = torch.device("cpu")
BIG = 256 * 2**20  # bytes a component holds for a moment


class Hungry(Certifier):
    """Certifies nothing, holding a large buffer (touched, so resident) while it runs."""

    name = "hungry"
    description = "allocates BIG bytes while certifying (test)"
    norms = ("inf",)

    def certify(self, model, images, labels, threat):
        buffer = torch.ones(BIG // 4, dtype=torch.float32)
        assert buffer.sum() > 0
        del buffer
        return Certificate(certified=torch.zeros(len(labels), dtype=torch.bool))


class Light(Attacker):
    name = "light"
    description = "returns the clean images (test)"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        return images


def test_a_component_that_holds_memory_shows_it_in_its_peak_and_every_cost_is_recorded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    images = torch.full((30, 1, 4, 4), 128, dtype=torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    before = rss_bytes()
    r = evaluate(model, images, labels, ThreatModel("inf", 0.1), attackers=[Light()], certifiers=[Hungry()], device=CPU, batch_size=10).result
    hungry, light = r.certifier("hungry").cost, r.attack("light").cost
    assert hungry.memory_kind == light.memory_kind == RSS
    assert hungry.peak_memory_bytes >= before + BIG * 0.9  # the buffer was seen while it was held
    assert light.peak_memory_bytes < hungry.peak_memory_bytes
    for cost, samples in ((hungry, 30), (light, 30)):
        assert cost.seconds > 0 and cost.samples_per_second == samples / cost.seconds
    assert r.certifier("hungry").seconds == hungry.seconds


def test_measure_counts_the_samples_it_is_told_and_none_when_there_were_none():
    with measure(CPU) as meter:
        meter.samples = 0
    assert meter.cost().samples_per_second is None and meter.cost().seconds >= 0
    with measure(CPU) as meter:
        meter.samples = 5
    assert meter.cost().samples_per_second == 5 / meter.seconds


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_the_peak_is_what_the_component_allocated_there():
    device = torch.device("cuda")
    held = torch.ones(2**28, device=device)  # allocated before: not the component's
    with measure(device) as meter:
        buffer = torch.ones(BIG // 4, device=device)
        del buffer
    assert meter.memory_kind == "cuda-allocated"
    # The peak counts what was held already (4 * 2**28 bytes) and the buffer on top of it; nothing else of that size.
    assert 4 * 2**28 + BIG <= meter.peak_memory_bytes < 4 * 2**28 + 2 * BIG
    del held
