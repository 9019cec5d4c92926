"""Every built-in model keeps what its evaluated outputs need in its state dict.

Saved as ``harness run`` saves ``model.pt`` and loaded with ``weights_only=True`` into a freshly
built model, it gives the logits it gave when it was evaluated, bit for bit: the l_p-dist layers'
p (∞ after training, 8 in a fresh model) travels in ``_extra_state``, the mean shifts' running means
as buffers.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.checkpoint import load_weights, save_weights
from harness.testing import make_catalog, tiny_info, tiny_splits
from harness_plugins.lib.lpdist import lp_layers

#: Small options per built-in model (the defaults are paper-sized).
SMALL = {
    "crm_net": {"channel_scale": 0.125},
    "linf_dist_net": {"depth": 3, "width": 16},
    "linf_dist_net_mlp": {"depth": 2, "width": 16, "hidden": 8},
    "linf_dist_net_mlp conv": {"backbone": "conv", "width": 16, "hidden": 8, "channel_scale": 0.05},
}


def built_in_models():
    return {entry.key: entry for entry in make_catalog().sorted_entries("model")}


def test_every_built_in_model_is_covered():
    assert set(built_in_models()) == {case.split()[0] for case in SMALL}


def evaluated_form(key: str, seed: int) -> tuple[torch.nn.Module, Any]:
    """The model as training leaves it: trained-mode passes (running means move), then its trainer's finish()."""
    catalog = make_catalog()
    entry = built_in_models()[key.split()[0]]
    model_cls = entry.component
    options = model_cls.Options(**SMALL[key])
    torch.manual_seed(seed)
    network = model_cls(options).build(tiny_info())
    images = tiny_splits().train_images[:64].float() / 255
    network.train()
    with torch.no_grad():
        network(images)
        network(images.flip(0)[:32])
    trainer = next(t.component for t in catalog.sorted_entries("trainer") if catalog.model_entry(t).key == entry.key)
    trainer().finish(network)
    return network, model_cls(options)


@pytest.mark.parametrize("key", sorted(SMALL))
def test_saved_weights_reloaded_into_a_fresh_model_give_the_evaluated_logits(key, tmp_path):
    network, model = evaluated_form(key, seed=0)
    images = tiny_splits().test_images.float() / 255
    with torch.no_grad():
        evaluated = network(images)
        features = network.features(images) if hasattr(network, "features") else None  # a saturated tanh head hides p
    save_weights(tmp_path / "model.pt", network.state_dict(), {"model": key})

    torch.manual_seed(1)  # other initial weights: everything must come from the file
    fresh = model.build(tiny_info())
    if any(True for _ in lp_layers(fresh)):
        assert all(layer.p == 8.0 for layer in lp_layers(fresh)) and all(layer.p == float("inf") for layer in lp_layers(network))
    state, _ = load_weights(tmp_path / "model.pt")  # torch.load(weights_only=True)
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), evaluated)
        assert features is None or torch.equal(fresh.features(images), features)
