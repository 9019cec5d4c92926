"""harness.train: what every trainer gets, and the deprecated cosine_lr."""

import warnings

import pytest
import torch

from harness import DatasetInfo
from harness.errors import HarnessDeprecationWarning
from harness.schedules import cosine_annealing
from harness.train import TrainData, cosine_lr


def test_cosine_lr_still_works_with_a_one_line_deprecation_warning():
    with pytest.warns(HarnessDeprecationWarning) as caught:
        value = cosine_lr(0.03, 0.25)
    (warning,) = caught
    message = str(warning.message)
    assert message == "harness.train.cosine_lr is deprecated; use harness.schedules.cosine_annealing(t, base, epochs)"
    assert warning.filename == __file__  # points at the caller
    assert value == cosine_annealing(2.5, 0.03, 10)


@pytest.mark.filterwarnings("ignore::harness.errors.HarnessDeprecationWarning")
def test_cosine_lr_keeps_its_values_bit_for_bit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for epochs in (3, 15, 450):
            for step in range(epochs * 7 + 3):
                t = step / 7
                assert cosine_lr(0.03, t / epochs) == cosine_annealing(t, 0.03, epochs)
        assert cosine_lr(0.1, -1.0) == 0.1 and cosine_lr(0.1, 2.0) == 0.0


def test_batches_cover_every_sample_once_per_epoch():
    info = DatasetInfo(name="t", num_classes=2, shape=(1, 1, 1), mean=(0.0,), std=1.0)
    data = TrainData(info, torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10) % 2)
    batches = list(data.batches(4, torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [4, 4, 2] and data.steps_per_epoch(4) == 3
    seen = torch.cat([x.flatten() for x, _ in batches]) * 255
    assert sorted(seen.round().long().tolist()) == list(range(10))
