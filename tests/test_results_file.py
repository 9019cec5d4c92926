"""The results file (``results.json``): format 2 keeps every field of an evaluation; format 1 files are still read."""

from __future__ import annotations

import hashlib
import json

from harness.results import AttackResult, CertifierResult, Cost, EvaluationResult, GradientMasking, RadiusStats, SampleResult
from harness.results_file import FORMAT, PendingResults, read_pending, write_pending


def pending(result: EvaluationResult, samples: list[SampleResult]) -> PendingResults:
    return PendingResults(database="runs.db", run_id=3, run={"config": {"request": {}}}, training={}, evaluation={"config": {}},
                          result=result, samples=samples, reason="the database was locked")


def test_format_2_round_trips_costs_stages_outcomes_and_the_masking_check(tmp_path):
    result = EvaluationResult(
        samples=2, clean_accuracy=1.0, robust_accuracy=0.5, certified_accuracy=0.0,
        attacks=(AttackResult("autoattack", "AutoAttack", accuracy=0.5, attacked=2, seconds=3.0,
                              cost=Cost(3.0, 0.75, 2**20, "rss"), stages={"apgd-ce": 1.0, "square": 0.5}),),
        certifiers=(CertifierResult("ibp", accuracy=0.0, samples=2, radius=RadiusStats(0.01, 0.01), timeouts=1, errors=1,
                                    sample_error="raised RuntimeError: x", radius_method="bisection", radius_tolerance=0.001),
                    CertifierResult("liplt-estimate", accuracy=0.5, samples=2, sound=False)),
        masking=GradientMasking(zero_gradient_fraction=0.5, gradient_free_breaks=1, unreliable=True),
    )
    samples = [
        SampleResult(0, 1, 1, {"autoattack": True}, {"ibp": (False, 0.02)}, {"ibp": "timeout"}),
        SampleResult(1, 2, 2, {"autoattack": False}, {"ibp": (False, None)}, {"ibp": "error"}, broken_by={"autoattack": "square"}),
    ]
    path = write_pending(tmp_path / "results.json", pending(result, samples))
    assert json.loads(path.read_text())["format"] == FORMAT == 2
    read = read_pending(path)
    assert (read.result, read.samples) == (result, samples)
    assert read.fingerprint() == pending(result, samples).fingerprint()


def test_a_format_1_file_reads_with_the_new_fields_at_their_defaults_and_keeps_its_fingerprint(tmp_path):
    old_result = {"samples": 1, "clean_accuracy": 1.0, "robust_accuracy": 1.0, "certified_accuracy": 1.0,
                  "attacks": [{"name": "pgd", "label": "PGD-100", "options": {}, "accuracy": 1.0, "attacked": 1, "seconds": 2.0,
                               "error": None}],
                  "certifiers": [{"name": "ibp", "options": {}, "accuracy": 1.0, "samples": 1, "radius": None, "seconds": 1.0,
                                  "error": None}],
                  "not_applicable": {}}
    old_samples = [{"index": 0, "label": 1, "prediction": 1, "attacks": {"pgd": True}, "certificates": {"ibp": [True, None]}}]
    data = {"format": 1, "database": "runs.db", "run_id": 3, "run": {"config": {}}, "training": {}, "evaluation": {"config": {}},
            "result": old_result, "samples": old_samples, "reason": "locked"}
    (tmp_path / "old.json").write_text(json.dumps(data))
    read = read_pending(tmp_path / "old.json")
    (attack,), (certifier,) = read.result.attacks, read.result.certifiers
    assert (attack.cost, attack.stages, attack.gradient_free) == (Cost(seconds=2.0), {}, False)
    assert (certifier.cost, certifier.timeouts, certifier.sound, certifier.radius_method) == (Cost(seconds=1.0), 0, True, None)
    assert read.result.masking is None
    assert read.samples == [SampleResult(0, 1, 1, {"pgd": True}, {"ibp": (True, None)}, {"ibp": "certified"})]
    # What the harness that wrote it computed (an import of it is recognised as the same results).
    written = json.dumps([old_result, old_samples], sort_keys=True)
    assert read.fingerprint() == hashlib.sha256(written.encode()).hexdigest()
