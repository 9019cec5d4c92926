"""auto_LiRPA's CROWN under l2 on CRM networks: patches and matrix modes agree, and no bound beats an attack."""

import pytest
import torch

from harness_plugins.crm.model import crm_net
from harness_plugins.lib.lirpa import bounds as lirpa_bounds
from harness_plugins.lib.lirpa.bounds import LiRPABounds, auto_lirpa_installed

pytestmark = pytest.mark.skipif(not auto_lirpa_installed(), reason="auto_LiRPA is not installed")


def attacked_margins(net, x, y, eps, steps=100):
    """The smallest margin z_y − z_j (per class j) PGD-L2 finds in the ball: an upper bound on the true minimum."""
    best = None
    for j in range(net[-1].out_features):
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(steps):
            z = net(x + delta)
            margin = z.gather(1, y[:, None])[:, 0] - z[:, j]
            (grad,) = torch.autograd.grad(margin.sum(), delta)
            with torch.no_grad():
                step = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, 1, 1, 1)
                delta -= 0.05 * eps * step
                norms = delta.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
                delta *= (eps / norms).clamp(max=1)
        with torch.no_grad():
            z = net(x + delta)
            m = (z.gather(1, y[:, None])[:, 0] - z[:, j])[:, None]
        best = m if best is None else torch.cat([best, m], 1)
    return best


@pytest.mark.parametrize("input_range", ["unit", "symmetric"])
def test_crown_l2_margins_are_sound_and_mode_independent(input_range):
    torch.manual_seed(0)
    net = crm_net("4c3f", 1, 12, 4, input_range=input_range, channel_scale=0.125).eval()
    x, y = torch.rand(6, 1, 12, 12), torch.randint(0, 4, (6,))
    eps = 0.3
    bounds = LiRPABounds(net, x)
    assert bounds.conv_mode == "patches" and bounds.l2_native  # the frozen 1×1 conv is a linear first layer
    crown = bounds.margins_l2(x, eps, y, "crown").detach()
    bounds._build(lirpa_bounds.BOUND_OPTS)  # the dense "matrix" mode
    assert torch.allclose(bounds.margins_l2(x, eps, y, "crown").detach(), crown, atol=1e-4)
    attacked = attacked_margins(net, x, y, eps)
    others = torch.ones_like(crown, dtype=torch.bool).scatter(1, y[:, None], False)
    assert bool((crown[others] <= attacked[others] + 1e-5).all())
    # Not vacuous: the bounds are within reach of the attack at this radius.
    assert float((attacked[others] - crown[others]).min()) < 1.0
