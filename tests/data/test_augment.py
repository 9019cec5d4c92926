"""harness.data.augment: batched random crop with padding and horizontal flip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.data import Augmentation


def distinct_images(n: int, c: int = 2, h: int = 5, w: int = 6) -> torch.Tensor:
    """Float images whose every pixel value is different (and nonzero), so windows are unique."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).reshape(n, c, h, w)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def window_offsets(images: torch.Tensor, out: torch.Tensor, pad: int, mode: str) -> list[tuple[int, int]]:
    """For each output image, the (dy, dx) of the window of the padded input that it equals."""
    padded = F.pad(images, (pad, pad, pad, pad), mode="constant" if mode == "zeros" else "replicate")
    h, w = images.shape[-2:]
    offsets = []
    for i in range(images.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert matches, f"output image {i} is no window of its padded input"
        offsets.append(matches[0])
    return offsets


@pytest.mark.parametrize("mode", ["zeros", "edge"])
def test_crop_is_a_shifted_window_of_the_padded_input(mode: str) -> None:
    images = distinct_images(40)
    out = Augmentation(crop_padding=2, padding_mode=mode)(images, generator())
    assert out.shape == images.shape and out.dtype == images.dtype
    offsets = window_offsets(images, out, 2, mode)
    assert len(set(offsets)) > 1  # each image gets its own offset


def test_zeros_padding_brings_in_zeros_and_edge_padding_does_not() -> None:
    images = torch.ones(32, 1, 4, 4)
    zeros = Augmentation(crop_padding=2, padding_mode="zeros")(images, generator())
    edge = Augmentation(crop_padding=2, padding_mode="edge")(images, generator())
    assert (zeros == 0).any() and set(zeros.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(edge, images)


def test_flip_flips_about_half_and_nothing_else() -> None:
    images = distinct_images(1000, c=1, h=2, w=3)
    out = Augmentation(flip=True)(images, generator())
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert bool((flipped ^ kept).all())
    assert 400 <= int(flipped.sum()) <= 600


def test_same_seed_same_augmentation() -> None:
    augment = Augmentation(crop_padding=3, padding_mode="edge", flip=True)
    images = distinct_images(16)
    first = augment(images, generator(7))
    assert torch.equal(first, augment(images, generator(7)))
    assert not torch.equal(first, augment(images, generator(8)))


def test_no_padding_and_no_flip_is_the_identity() -> None:
    augment = Augmentation()
    assert not augment.active
    images = distinct_images(4)
    assert torch.equal(augment(images, generator()), images)
    assert Augmentation(crop_padding=1).active and Augmentation(flip=True).active


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"crop_padding": -1}, "crop_padding"), ({"padding_mode": "reflect"}, "padding_mode")]
)
def test_invalid_settings_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Augmentation(**kwargs)


def test_crop_size_takes_a_random_window_of_that_size() -> None:
    """TinyImageNet in the ICML 2021 paper: random 56×56 crops of the 64×64 images, no padding."""
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = Augmentation(crop_size=5)(images, torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 5, 5)
    for i in range(2):
        windows = [(dy, dx) for dy in range(4) for dx in range(4) if torch.equal(images[i, :, dy:dy + 5, dx:dx + 5], out[i])]
        assert len(windows) == 1
    with pytest.raises(ValueError, match="larger"):
        Augmentation(crop_size=9)(images)
