"""What ``harness show`` and the end-of-run summary say about an evaluation: costs, time-outs, radii, stages, masking."""

from __future__ import annotations

import json

from harness.results import AttackResult, CertifierResult, Cost, EvaluationResult, GradientMasking, RadiusStats, SampleResult
from harness.store import RunInfo

RESULT = EvaluationResult(
    samples=1000,
    clean_accuracy=0.99,
    robust_accuracy=0.9,
    certified_accuracy=0.85,
    attacks=(
        AttackResult("autoattack", "AutoAttack", accuracy=0.9, attacked=990, seconds=125.0,
                     cost=Cost(125.0, 7.92, 3 * 2**30 // 2, "cuda-allocated"),
                     stages={"apgd-ce": 0.91, "apgd-t": 0.905, "fab-t": 0.905, "square": 0.9}),
        AttackResult("pgd", "PGD-100", accuracy=0.91, attacked=990, seconds=12.0, cost=Cost(12.0, 82.5, 200 * 2**20, "rss")),
    ),
    certifiers=(
        CertifierResult("interval", accuracy=0.85, samples=1000, radius=RadiusStats(0.3125, 0.33), seconds=3.0,
                        cost=Cost(3.0, 333.0, 2**20, "rss"), timeouts=7, errors=100, sample_error="raised RuntimeError: out of memory",
                        radius_method="bisection", radius_tolerance=0.001),
        CertifierResult("liplt-estimate", accuracy=0.87, samples=1000, radius=RadiusStats(0.4, 0.41), radius_method="closed-form",
                        sound=False),
    ),
    not_applicable={"crown": "too big"},
    masking=GradientMasking(zero_gradient_fraction=0.0125, gradient_free_breaks=3, unreliable=True),
)


def test_show_gives_costs_outcomes_radii_stages_and_the_masking_check(harness_cli, harness_store):
    run_id = harness_store.create_run(RunInfo("linf_v2", "mnist", "inf", 0.3, "quick", 0, 1, {}, "cpu", {}))
    harness_store.record_training(run_id, train_seconds=61.0, weights=None, training={}, config={})
    samples = [SampleResult(0, 1, 1, {"autoattack": False, "pgd": True}, {"interval": (False, 0.0)}, {"interval": "timeout"},
                            broken_by={"autoattack": "square"})]
    harness_store.record_evaluation(run_id, result=RESULT, samples=samples, config={}, environment={}, seconds=140.0, finish=True)
    text = harness_cli("show", str(run_id), "--samples", "1").out
    assert "time        train 61s, eval 2.3m" in text
    assert "robust accuracy     90.00%: the per-sample worst case over 2 attacks (AutoAttack 90.00%, PGD-100 91.00%)" in text
    assert "certified accuracy  85.00% (certified by any sound certifier)" in text
    assert ("gradient masking    zero input gradient on 1.25% of the samples; gradient-free attacks alone broke 3 of 1000 samples "
            "(UNRELIABLE: more than 0.2 % of the samples, AutoAttack's threshold)") in text
    rows = {line.split()[1]: line for line in text.splitlines() if line.strip().startswith(("attack ", "certifier "))}
    assert "robust 90.00% (attacked 990)" in rows["autoattack"] and "7.92/s" in rows["autoattack"]
    assert "1.5 GiB CUDA allocated" in rows["autoattack"] and "2.1m" in rows["autoattack"]
    assert ("certified 85.00% of 1000; 7 time-outs, 100 errors; radius mean 0.3125 median 0.33 (bisection, tolerance 0.001)"
            in rows["interval"]) and "1.0 MiB RSS" in rows["interval"] and "333/s" in rows["interval"]
    assert "estimate" in rows["liplt-estimate"] and "paper protocol (estimate, not a certificate): 87.00% of 1000" in rows["liplt-estimate"]
    assert "did not apply: too big" in rows["crown"]
    assert "autoattack stages (robust accuracy after each): apgd-ce 91.00% → apgd-t 90.50% → fab-t 90.50% → square 90.00%" in text
    assert "interval: first per-sample error: raised RuntimeError: out of memory" in text
    assert "timeout r=0" in text.split("\nsamples:\n")[1]  # the sample's outcome in the per-sample table
    shown = json.loads(harness_cli("show", str(run_id), "--format", "json", "--samples", "1").out)
    assert shown["result"]["masking"] == {"zero_gradient_fraction": 0.0125, "gradient_free_breaks": 3, "unreliable": True}
    assert shown["samples"][0]["outcomes"] == {"interval": "timeout"} and shown["samples"][0]["broken_by"] == {"autoattack": "square"}


def test_the_end_of_run_summary_names_the_worst_case_and_each_certifiers_radii():
    from harness import evaluation_report

    lines = evaluation_report.summary_lines(RESULT)
    assert lines[0] == "robust accuracy 90.00%: the per-sample worst case over 2 attacks (AutoAttack 90.00%, PGD-100 91.00%)"
    assert "interval: radius mean 0.3125 median 0.33 (bisection, tolerance 0.001); 7 time-outs, 100 errors" in lines
    assert "liplt-estimate: radius mean 0.4 median 0.41 (closed form); paper protocol (estimate, not a certificate)" in lines
    assert lines[-1].startswith("gradient masking: zero input gradient on 1.25%")


def test_the_run_summary_line_names_an_estimate_apart_from_the_certifiers_behind_certified():
    from harness.render import _result_line
    from harness.results import CertifierResult, EvaluationResult

    r = EvaluationResult(samples=200, clean_accuracy=0.895, robust_accuracy=0.53, certified_accuracy=0.425, certifiers=(
        CertifierResult(name="liplt", accuracy=0.425, samples=200),
        CertifierResult(name="liplt-estimate", accuracy=0.44, samples=200, sound=False),
    ))
    line = _result_line(r)
    certified, estimate = line.split("paper protocol, not certified:")
    assert "liplt 42.50" in certified and "liplt-estimate" not in certified
    assert "liplt-estimate 44.00" in estimate
