"""Training-time LipLT: power iteration and row sums against explicit matrices; gradients flow."""

import math

import pytest
import torch

from harness_plugins.crm.model import crm_net
from harness_plugins.lib.liplt.chain import Chain, liplt, pair_distances
from harness_plugins.lib.liplt.power import PowerIteration, RowSumEstimate, back_rows, pairwise


@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(0)
    net = crm_net("4c3f", 1, 12, 4, channel_scale=0.125).double().eval()
    return net, Chain.from_module(net, torch.rand(2, 1, 12, 12, dtype=torch.float64))


def explicit(chain, j, k):
    """The matrix of W_k ⋯ W_j (rows: outputs)."""
    n = chain.stages[j].in_features
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *chain.stages[j].in_shape)
    return chain.product(basis, j, k).reshape(n, -1).t()


def test_power_iteration_converges_to_every_partial_products_norm(chain):
    _, ch = chain
    estimate = PowerIteration(ch, torch.Generator().manual_seed(0)).norms(1000)
    assert set(estimate) == {(j, k) for k in range(ch.hidden) for j in range(k + 1)}
    for (j, k), value in estimate.items():
        exact = torch.linalg.matrix_norm(explicit(ch, j, k), 2).item()
        assert value.item() <= exact * (1 + 1e-9)  # power iteration estimates from below
        assert value.item() == pytest.approx(exact, rel=2e-3)


def test_gradients_flow_through_the_iterations_and_vectors_warm_start(chain):
    net, ch = chain
    power = PowerIteration(ch, torch.Generator().manual_seed(0))
    first = power.norms(3)
    constants = pairwise(ch, "2", first)
    constants.sum().backward()
    # Every weight gets a gradient through the constants (biases do not enter them).
    weights = [m.weight for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)
    net.zero_grad()
    # Warm start: a few more iterations from where the last step stopped keep improving, and the
    # next step's graph starts at its own iterations (a second backward would fail otherwise).
    later = power.norms(3)
    assert later[(0, ch.hidden - 1)] >= first[(0, ch.hidden - 1)].detach() * (1 - 1e-9)
    pairwise(ch, "2", later).sum().backward()


def test_pair_distances_are_the_rows_differences(chain):
    _, ch = chain
    rows = back_rows(ch)
    for k in range(-1, ch.hidden):
        matrix = explicit(ch, k + 1, ch.hidden) if k + 1 <= ch.hidden else None
        assert torch.allclose(rows[k + 1].flatten(1), matrix, atol=1e-12)
        for norm, order in (("2", 2), ("inf", 1)):
            got = pair_distances(rows[k + 1], norm)
            for p in range(4):
                for q in range(4):
                    want = 0.0 if p == q else torch.linalg.vector_norm(matrix[p] - matrix[q], order).item()
                    assert got[p, q].item() == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_row_sums_are_exact_right_after_a_sweep(chain):
    _, ch = chain
    estimate = RowSumEstimate(ch, rows=2, refresh=1000).norms()
    for (j, k), value in estimate.items():
        exact = explicit(ch, j, k).abs().sum(1).max().item()
        assert value.item() == pytest.approx(exact, rel=1e-9)


def test_last_layer_naive_fallback_is_m_times_the_last_rows(chain):
    """The code's fallback above 101 classes: LipLT to the last hidden layer, naive after it."""
    _, ch = chain
    norms = {(j, k): torch.linalg.matrix_norm(explicit(ch, j, k), 2) for k in range(ch.hidden) for j in range(k + 1)}
    got = pairwise(ch, "2", norms, "liplt-last-naive")
    last = ch.hidden - 1
    m = liplt(lambda j, k: norms[(j, k)], lambda k: norms[(k + 1, last)], ch.slopes[:last])
    w = explicit(ch, ch.hidden, ch.hidden)
    for p in range(4):
        for q in range(4):
            want = 0.0 if p == q else (m * torch.linalg.vector_norm(w[p] - w[q])).item()
            assert got[p, q].item() == pytest.approx(want, rel=1e-9)
    # And it is never tighter than full pairwise LipLT.
    full = pairwise(ch, "2", norms, "liplt")
    assert bool((full <= got * (1 + 1e-9) + 1e-12).all())
    assert math.isclose(full[0, 0].item(), 0.0)


def test_pair_distances_have_finite_gradients_at_ties():
    """Two equal rows (a zero distance) must not turn a backward pass into NaN."""
    rows = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    pair_distances(rows, "2").sum().backward()
    assert torch.isfinite(rows.grad).all()
