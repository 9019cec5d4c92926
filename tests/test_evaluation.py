"""The uniform evaluation: sample subsets for costly certifiers, the l2 attack, per-sample outcomes (errors, time-outs), estimates."""

import threading
import time

import pytest
import torch
from torch import nn

from harness import Certificate, Certifier, ThreatModel
from harness.budget import Budgets
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


# -- per-sample outcomes: errors, time-outs, estimates --------------------------------------------------------------------


class RaisesOn(Margin):
    """The margin certificate, except that a batch holding one of ``bad`` (rows of the evaluation) raises."""

    name = "raises-on"

    def __init__(self, bad, images):
        super().__init__()
        self.bad = {bytes(images[i].flatten().tolist()) for i in bad}

    def certify(self, model, images, labels, threat):
        keys = {bytes((x * 255).round().to(torch.uint8).flatten().tolist()) for x in images}
        if keys & self.bad:
            raise RuntimeError("CUDA out of memory on this batch")
        return super().certify(model, images, labels, threat)


def test_a_raising_batch_makes_its_samples_errors_and_the_certifier_goes_on(problem):
    model, images, labels = problem
    threat = ThreatModel("inf", 0.01)
    cpu = torch.device("cpu")
    whole = evaluate(model, images, labels, threat, attackers=[], certifiers=[Margin()], device=cpu, batch_size=50)
    part = evaluate(model, images, labels, threat, attackers=[], certifiers=[RaisesOn([60], images)], device=cpu, batch_size=50)
    c = part.result.certifier("raises-on")
    assert (c.error, c.errors, c.timeouts, c.samples) == (None, 50, 0, 200)
    assert c.sample_error == "raised RuntimeError: CUDA out of memory on this batch"
    for mine, reference in zip(part.samples, whole.samples):
        if 50 <= mine.index < 100:  # the batch that raised: never certified
            assert mine.outcomes["raises-on"] == "error" and mine.certificates["raises-on"] == (False, None)
        else:
            assert mine.certificates["raises-on"] == reference.certificates["margin"]
            assert mine.outcomes["raises-on"] == reference.outcomes["margin"] in ("certified", "not-certified")
    certified = sum(s.certificates["raises-on"][0] for s in part.samples)
    assert c.accuracy == certified / 200 and part.result.certified_accuracy == certified / 200  # over the samples attempted
    # A certifier whose every batch raised fails as a whole, as before.
    every = evaluate(model, images, labels, threat, attackers=[], certifiers=[RaisesOn(range(0, 200, 50), images)], device=cpu,
                     batch_size=50).result
    assert every.errors == ["certifier 'raises-on': raised RuntimeError: CUDA out of memory on this batch"]
    assert every.certified_accuracy is None and every.certifier("raises-on").accuracy is None
    assert every.certifier("raises-on").sample_error is None  # the error says it once


class Slow(Margin):
    """The margin certificate; the ``slow`` call (counting from 0) sleeps ``seconds`` first."""

    name = "slow"

    def __init__(self, slow, seconds):
        super().__init__()
        self.slow, self.seconds, self.calls = slow, seconds, 0

    def certify(self, model, images, labels, threat):
        call, self.calls = self.calls, self.calls + 1
        if call == self.slow:
            time.sleep(self.seconds)
        return super().certify(model, images, labels, threat)


def test_the_time_budget_interrupts_the_batch_running_and_times_out_the_rest(problem):
    model, images, labels = problem
    threat = ThreatModel("inf", 0.01)
    slow = Slow(slow=1, seconds=600)  # interrupted: this test would otherwise take ten minutes
    budgets = Budgets(per_certifier={"slow": 2.0})
    run = evaluate(model, images, labels, threat, attackers=[], certifiers=[slow, Margin()], device=torch.device("cpu"), batch_size=50,
                   budgets=budgets)
    c = run.result.certifier("slow")
    assert (c.error, c.timeouts, c.errors, c.samples) == (None, 150, 0, 200)
    assert slow.calls == 2  # the batches after it were never tried
    outcomes = [s.outcomes["slow"] for s in run.samples]
    assert set(outcomes[50:]) == {"timeout"} and set(outcomes[:50]) <= {"certified", "not-certified"}
    assert all(s.outcomes["margin"] != "timeout" for s in run.samples)  # the budget was the slow certifier's only
    assert c.accuracy == sum(s.certificates["slow"][0] for s in run.samples[:50]) / 200
    assert c.cost.samples_per_second == 50 / c.cost.seconds  # the rate of the samples it certified, not of its time-outs


def test_outside_the_main_thread_the_budget_is_checked_between_batches(problem):
    model, images, labels = problem
    found = {}

    def work():
        slow = Slow(slow=0, seconds=1.5)  # cannot be interrupted here: it overruns the budget, then the rest time out
        found["run"] = evaluate(model, images, labels, ThreatModel("inf", 0.01), attackers=[], certifiers=[slow],
                                device=torch.device("cpu"), batch_size=50, budgets=Budgets(default=0.5))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    c = found["run"].result.certifier("slow")
    assert (c.timeouts, c.errors) == (150, 0)
    assert [s.outcomes["slow"] == "timeout" for s in found["run"].samples] == [False] * 50 + [True] * 150


class Estimate(Margin):
    """An estimate that certifies every correctly classified sample: no promise, as a paper's protocol from below."""

    name = "estimate"
    sound = False

    def certify(self, model, images, labels, threat):
        return Certificate(certified=model(images).argmax(1) == labels)


def test_an_estimate_is_stored_with_its_outcomes_never_counted_as_certified_and_never_unsound(problem):
    model, images, labels = problem
    threat = ThreatModel("inf", 0.1)
    run = evaluate(model, images, labels, threat, attackers=[PGD()], certifiers=[Estimate(), Margin()], device=torch.device("cpu"))
    r = run.result
    estimate, margin = r.certifier("estimate"), r.certifier("margin")
    assert r.errors == [] and estimate.sound is False and margin.sound is True
    broken = [s for s in run.samples if s.label == s.prediction and not s.attacks["pgd"]]
    assert broken and all(s.outcomes["estimate"] == "certified" for s in broken)  # "certified", and broken: not a soundness failure
    assert estimate.accuracy == r.clean_accuracy > margin.accuracy
    assert r.certified_accuracy == margin.accuracy  # only the sound certifier counts


@pytest.mark.parametrize("values, message", [
    (["0"], "--certifier-budget '0': give SECONDS or NAME=SECONDS, with SECONDS a positive number"),
    (["crown=soon"], "--certifier-budget 'crown=soon': give SECONDS or NAME=SECONDS, with SECONDS a positive number"),
    (["inf"], "--certifier-budget 'inf': give SECONDS or NAME=SECONDS, with SECONDS a positive number"),
])
def test_a_bad_budget_is_refused_naming_it(values, message):
    from harness.errors import UsageError

    with pytest.raises(UsageError) as exc:
        Budgets.parse(values)
    assert str(exc.value) == message


def test_budgets_parse_a_default_and_per_certifier_values_and_check_names():
    from harness.errors import UsageError

    budgets = Budgets.parse(["60", "crown=600", "ibp=1.5"])
    assert (budgets.of("crown"), budgets.of("ibp"), budgets.of("interval")) == (600.0, 1.5, 60.0)
    assert budgets.to_json() == {"default": 60.0, "per_certifier": {"crown": 600.0, "ibp": 1.5}} and Budgets().to_json() is None
    with pytest.raises(UsageError, match=r"--certifier-budget crown=...: 'crown' is not a certifier of this evaluation \(valid: ibp, interval\)"):
        budgets.check_names(["interval", "ibp"])


def test_a_runs_budget_is_stored_in_its_evaluation_configuration_only_when_given():
    from harness.runner import RunRequest, plan_run
    from harness.testing import make_catalog

    catalog = make_catalog()
    request = RunRequest(trainer="linf_v2", dataset="mnist", preset="quick", device="cpu", certifiers=["interval"],
                         certifier_budget=Budgets(per_certifier={"interval": 30.0}))
    assert plan_run(catalog, request).config()["evaluation"]["certifier_budget"] == {"default": None, "per_certifier": {"interval": 30.0}}
    plain = plan_run(catalog, RunRequest(trainer="linf_v2", dataset="mnist", preset="quick", device="cpu")).config()
    assert "certifier_budget" not in plain["evaluation"] and "certifier_budget" not in plain["request"]


class Recording(PGD):
    """PGD that remembers which samples it was given and may skip certified ones (as AutoAttack does by default)."""

    name = "recording"

    def __init__(self, skips: bool):
        super().__init__()
        self.skips, self.given = skips, 0

    def attacks_certified(self):
        return not self.skips

    def perturb(self, model, images, labels, threat):
        self.given += len(images)
        return super().perturb(model, images, labels, threat)


class Everything(Margin):
    """Certifies every sample: unsound whenever an attack breaks one."""

    name = "everything"

    def certify(self, model, images, labels, threat):
        return Certificate(certified=torch.ones(len(labels), dtype=torch.bool))


def test_an_attack_that_skips_certified_samples_runs_on_the_rest_after_the_others_and_counts_them_as_surviving(problem):
    model, images, labels = problem
    threat = ThreatModel("inf", 0.05)
    skipping, full = Recording(skips=True), PGD()
    out = evaluate(model, images, labels, threat, attackers=[skipping, full], certifiers=[Margin()], device=torch.device("cpu"))
    r = out.result
    correct = [s for s in out.samples if s.prediction == s.label]
    proven = [s for s in correct if s.certificates["margin"][0]]
    assert 0 < len(proven) < len(correct)
    # It ran after PGD, on the correctly classified samples no certificate covers.
    assert [a.name for a in r.attacks] == ["pgd", "recording"]
    assert skipping.given == len(correct) - len(proven) == r.attack("recording").attacked
    assert r.attack("pgd").attacked == len(correct)
    assert all(s.attacks["recording"] for s in proven)
    # The worst case is unchanged: what a sound certificate proves, no attack breaks.
    assert r.robust_accuracy == sum(all(s.attacks.values()) for s in out.samples) / len(out.samples)


def test_a_certificate_an_earlier_attack_broke_does_not_spare_its_samples_from_a_skipping_attack(problem):
    model, images, labels = problem
    threat = ThreatModel("inf", 0.3)  # large: PGD breaks samples that "everything" claims
    skipping = Recording(skips=True)
    out = evaluate(model, images, labels, threat, attackers=[skipping, PGD()], certifiers=[Everything()], device=torch.device("cpu"))
    assert out.result.certifier("everything").error.startswith("UNSOUND")
    correct = sum(s.prediction == s.label for s in out.samples)
    assert skipping.given == correct == out.result.attack("recording").attacked
