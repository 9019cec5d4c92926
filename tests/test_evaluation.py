"""The uniform evaluation's sample subsets for costly certifiers, and the l2 attack."""

import pytest
import torch
from torch import nn

from harness import Certificate, Certifier, ThreatModel
from harness.evaluation import evaluate
from harness_plugins.torchattacks.pgd import PGD, PGDL2


class Margin(Certifier):
    """Certifies a linear model's samples exactly (margin over the dual-norm row differences), on a budget."""

    name = "margin"
    description = "exact certificate of a linear classifier (test)"
    norms = ("inf", "2")

    def __init__(self, limit=None):
        super().__init__()
        self.limit = limit
        self.seen = 0

    def sample_limit(self, model, threat):
        return self.limit

    def certify(self, model, images, labels, threat):
        self.seen += len(labels)
        w = model[1].weight.double()
        logits = model(images).double()
        dual = 1 if threat.norm == "inf" else 2
        gaps = logits.gather(1, labels[:, None]) - logits
        lip = torch.linalg.vector_norm(w[labels][:, None, :] - w[None, :, :], ord=dual, dim=2)
        ok = (gaps > threat.eps * lip * (1 + 1e-6)) | (torch.arange(w.shape[0])[None, :] == labels[:, None])
        return Certificate(certified=ok.all(1))


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 16, generator=g))
    images = (torch.rand(200, 1, 4, 4, generator=g) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    labels[:20] = (labels[:20] + 1) % 3  # some misclassified
    return model, images, labels


def test_a_limited_certifier_certifies_a_fixed_subset_and_reports_its_size(problem):
    model, images, labels = problem
    threat = ThreatModel("2", 0.05)
    full, limited = Margin(), Margin(limit=50)
    a = evaluate(model, images, labels, threat, attackers=[], certifiers=[full], device=torch.device("cpu"), batch_size=32)
    b = evaluate(model, images, labels, threat, attackers=[], certifiers=[limited], device=torch.device("cpu"), batch_size=32)
    assert full.seen == 200 and limited.seen == 50
    assert a.result.certifier("margin").samples == 200 and b.result.certifier("margin").samples == 50
    tried = [s for s in b.samples if "margin" in s.certificates]
    assert len(tried) == 50
    by_index = {s.index: s for s in a.samples}
    # Same verdicts where attempted; the accuracy is over the attempted subset.
    assert all(s.certificates["margin"] == by_index[s.index].certificates["margin"] for s in tried)
    assert b.result.certifier("margin").accuracy == pytest.approx(sum(s.certificates["margin"][0] for s in tried) / 50)
    # The subset is fixed: the same rows on a second evaluation.
    c = evaluate(model, images, labels, threat, attackers=[], certifiers=[Margin(limit=50)], device=torch.device("cpu"), batch_size=64)
    assert [s.index for s in c.samples if "margin" in s.certificates] == [s.index for s in tried]


def test_pgd_l2_stays_in_the_ball_and_never_breaks_an_exact_certificate(problem):
    model, images, labels = problem
    threat = ThreatModel("2", 0.3)
    attack = PGDL2()
    assert attack.label() == "L2-PGD-100" and attack.norms == ("2",) and PGD.norms == ("inf",)
    result = evaluate(model, images, labels, threat, attackers=[attack], certifiers=[Margin()], device=torch.device("cpu"))
    r = result.result
    # The evaluation's soundness check passed; the attack is strong on a linear model: it breaks almost
    # every correct, uncertified sample (the rest are points where [0, 1] clipping keeps the hyperplane
    # out of reach, which the certificate ignores).
    assert r.errors == []
    assert 0 < r.certified_accuracy <= r.robust_accuracy < r.clean_accuracy
    assert r.robust_accuracy - r.certified_accuracy < 0.05


class Scaled(nn.Module):
    """A linear classifier whose logits are multiplied by ``scale`` (a diverged model, when it is huge)."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.model(x) * self.scale


def test_logits_past_2_to_the_64_are_refused_as_a_diverged_model_not_evaluated(problem):
    from harness.errors import HarnessError

    model, images, labels = problem
    threat = ThreatModel("inf", 0.05)
    for scale in (1e20, 1e37):
        with torch.no_grad():
            logits = Scaled(model, scale)(images.float() / 255)
        assert torch.isfinite(logits).all() and not torch.isfinite(logits * logits).all()  # finite, but their squares are not
        with pytest.raises(HarnessError) as caught:
            evaluate(Scaled(model, scale), images, labels, threat, attackers=[], certifiers=[], device=torch.device("cpu"))
        message = str(caught.value)
        assert message.startswith("the model's logits reach ") and "beyond 2^64 ≈ 1.8e19" in message and "(did training diverge?)" in message
    # Below the bound the model is evaluated as any other (1e18: large, its squares still finite).
    cpu = torch.device("cpu")
    large = evaluate(Scaled(model, 1e18), images, labels, threat, attackers=[], certifiers=[], device=cpu).result
    assert large.clean_accuracy == evaluate(model, images, labels, threat, attackers=[], certifiers=[], device=cpu).result.clean_accuracy
