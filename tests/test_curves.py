"""Certified accuracy at a radius (harness.curves): the one definition, case by case, and its curve against it."""

import random

import pytest

from harness import curves
from harness.results import CertifierResult, EvaluationResult, SampleResult

EPS = 0.3


def sample(certificates, outcomes=None, label=1, prediction=1, index=0):
    return SampleResult(index=index, label=label, prediction=prediction, certificates=certificates, outcomes=outcomes or {})


def at(s, r, certifiers=("a",)):
    return curves.certified_at(s, r, eps=EPS, certifiers=certifiers)


def test_a_radius_above_r_certifies_at_r_and_not_at_it():
    s = sample({"a": (True, 0.5)})
    assert [at(s, r) for r in (0.0, 0.1, 0.3, 0.49, 0.5, 0.6)] == [True, True, True, True, False, False]


def test_a_sample_not_certified_at_eps_counts_below_its_radius():
    s = sample({"a": (False, 0.2)})
    assert [at(s, r) for r in (0.0, 0.19, 0.2, 0.3)] == [True, True, False, False]


def test_a_certificate_at_eps_without_a_radius_holds_up_to_eps_exactly():
    for s in (sample({"a": (True, None)}), sample({"a": (True, EPS)})):  # no radius; a bisection that found exactly eps
        assert [at(s, r) for r in (0.0, 0.2, EPS, EPS + 1e-9, 0.5)] == [True, True, True, False, False]


def test_misclassified_samples_time_outs_and_errors_count_at_no_radius():
    assert not at(sample({"a": (True, 0.5)}, prediction=2), 0.1)
    for bad in ("timeout", "error"):
        s = sample({"a": (False, 0.25)}, outcomes={"a": bad})  # a radius proven before it ran out of time: not counted
        assert curves.outcome(s, "a") == bad and not at(s, 0.0) and not at(s, 0.1)


def test_outcomes_of_old_runs_are_derived_from_certified():
    old = sample({"a": (True, None), "b": (False, 0.1)})
    assert (curves.outcome(old, "a"), curves.outcome(old, "b"), curves.outcome(old, "c")) == ("certified", "not-certified", None)


def test_only_sound_standing_certifiers_count_and_any_of_them_suffices():
    result = EvaluationResult(samples=1, clean_accuracy=1.0, certifiers=(
        CertifierResult("a", accuracy=0.0, samples=1),
        CertifierResult("b", accuracy=1.0, samples=1),
        CertifierResult("estimate", accuracy=1.0, samples=1, sound=False),
        CertifierResult("broken", error="raised"),
    ))
    assert curves.counted(result) == ("a", "b")
    s = sample({"a": (False, 0.1), "b": (True, None), "estimate": (True, 0.9)})
    counted = curves.counted(result)
    assert at(s, 0.2, counted) and at(s, 0.05, counted) and not at(s, 0.31, counted)  # b up to eps; the estimate's 0.9 is not counted
    assert at(s, 0.5, ("estimate",))  # counted only when asked for by name (a curve of the estimate alone)


def test_accuracy_is_over_every_sample_and_equals_the_stored_number_at_eps():
    samples = [sample({"a": (True, 0.5)}), sample({"a": (False, 0.2)}), sample({"a": (True, None)}), sample({}),
               sample({"a": (True, 0.4)}, prediction=0)]
    assert curves.accuracy_at(samples, EPS, eps=EPS, certifiers=["a"]) == pytest.approx(2 / 5)
    assert curves.accuracy_at(samples, 0.1, eps=EPS, certifiers=["a"]) == pytest.approx(3 / 5)
    assert curves.accuracy_at(samples, 0.45, eps=EPS, certifiers=["a"]) == pytest.approx(1 / 5)
    assert curves.accuracy_at([], 0.1, eps=EPS, certifiers=["a"]) is None
    with pytest.raises(ValueError, match="radius must be >= 0"):
        curves.accuracy_at(samples, -0.1, eps=EPS, certifiers=["a"])


def test_the_curve_is_a_step_function_that_drops_at_eps_where_certificates_at_eps_stop():
    samples = [sample({"a": (True, 0.5)}), sample({"a": (False, 0.2)}), sample({"a": (True, None)}), sample({"a": (False, 0.0)})]
    curve = curves.certified_curve(samples, EPS, ["a"])
    assert curve.radii == (0.0, 0.2, EPS, 0.5)
    assert curve.at == (0.75, 0.5, 0.5, 0.0) and curve.after == (0.75, 0.5, 0.25, 0.0)
    xs, ys = curve.steps()
    assert xs == [0.0, 0.2, EPS, EPS, 0.5] and ys == [0.75, 0.5, 0.5, 0.25, 0.0]
    assert [curve.accuracy(r) for r in (0.1, 0.2, EPS, 0.4, 0.7)] == [0.75, 0.5, 0.5, 0.25, 0.0]


def test_the_curve_agrees_with_the_definition_everywhere_on_random_samples():
    rng = random.Random(0)
    names = ["a", "b"]
    samples = []
    for i in range(300):
        certificates, outcomes = {}, {}
        for name in names:
            if rng.random() < 0.2:
                continue  # outside a costly certifier's subset
            radius = rng.choice([None, round(rng.uniform(0, 0.6), 2), EPS, 0.0])
            certified = radius is None and rng.random() < 0.5 or radius is not None and radius >= EPS
            certificates[name] = (certified, radius)
            outcomes[name] = rng.choice(["timeout", "error"]) if rng.random() < 0.1 else ("certified" if certified else "not-certified")
        samples.append(sample(certificates, outcomes, prediction=1 if rng.random() < 0.9 else 0, index=i))
    curve = curves.certified_curve(samples, EPS, names)
    points = sorted({*curve.radii, *(r + 1e-6 for r in curve.radii), *(rng.uniform(0, 0.7) for _ in range(50))})
    for r in points:
        assert curve.accuracy(r) == pytest.approx(curves.accuracy_at(samples, r, eps=EPS, certifiers=names)), r
    assert all(a >= b for a, b in zip(curve.steps()[1], curve.steps()[1][1:], strict=False))  # never rises
    certified_at_eps = sum(s.prediction == s.label and any(curves.outcome(s, n) == "certified" for n in names) for s in samples) / len(samples)
    assert curve.accuracy(EPS) == pytest.approx(certified_at_eps)


def test_has_radii_tells_certifiers_that_store_radii_from_those_that_do_not():
    samples = [sample({"a": (True, None), "b": (False, 0.1)})]
    assert curves.has_radii(samples, ["b"]) and not curves.has_radii(samples, ["a"]) and not curves.has_radii([], ["a", "b"])
