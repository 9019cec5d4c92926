"""The CRM loss against a direct computation of the paper's and code's definitions."""

import math

import torch

from harness_plugins.crm.loss import radii, robust_term


def direct(logits, labels, lip, r0, t, kind="softmax", misclassified=False, scale=1.0):
    total = 0.0
    for z, y, in zip(logits.tolist(), labels.tolist()):
        p = max(range(len(z)), key=lambda j: z[j])
        d = [scale * (z[p] - z[j]) / lip[p][j] for j in range(len(z)) if j != p]
        if (p != y and not misclassified) or min(d) >= r0:
            continue
        total += math.log(sum(math.exp(-t * v) for v in d)) / t if kind == "softmax" else math.exp(-t * min(d)) / t
    return total / len(logits)


def test_robust_term_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 5, (64,), generator=g)
    labels[:32] = logits[:32].argmax(1)  # half correctly classified
    lip = torch.rand(5, 5, generator=g, dtype=torch.float64) + 0.5
    lip = (lip + lip.t()) / 2
    lip.fill_diagonal_(0)
    for kind in ("softmax", "max"):
        for misclassified in (False, True):
            for scale in (1.0, 2.0):
                term, penalised = robust_term(
                    logits, labels, lip, r0=1.0, temperature=3.0, kind=kind, misclassified=misclassified, radius_scale=scale
                )
                expected = direct(logits, labels, lip.tolist(), 1.0, 3.0, kind, misclassified, scale)
                assert math.isclose(term.item(), expected, rel_tol=1e-9, abs_tol=1e-12)
                assert 0 < penalised.sum() < 64


def test_radii_are_measured_from_the_anchor_class():
    logits = torch.tensor([[3.0, 1.0, 0.0]])
    lip = torch.tensor([[0.0, 2.0, 4.0], [2.0, 0.0, 1.0], [4.0, 1.0, 0.0]])
    d = radii(logits, lip, torch.tensor([0]))
    assert d[0, 0] == math.inf and d[0, 1] == 1.0 and d[0, 2] == 0.75


def test_robust_term_is_differentiable_in_the_constants():
    logits = torch.tensor([[2.0, 1.0, 0.5]], requires_grad=True)
    lip = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], requires_grad=True)
    term, _ = robust_term(logits, torch.tensor([0]), lip, r0=10.0, temperature=1.0)
    term.backward()
    # A larger constant means a smaller radius, so a larger penalty.
    assert lip.grad[0, 1] > 0 and lip.grad[0, 2] > 0
    assert logits.grad[0, 0] < 0
