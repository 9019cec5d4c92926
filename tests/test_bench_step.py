"""``harness bench step``: one training step of every built-in trainer, split into its parts, at each phase of its schedule.

Tiny sizes (``--batch-size 8``, narrow nets through ``--set``) and one timed step
per phase: the times are not checked, only that they are there, add up and say
what was measured.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness import Trainer, hookimpl
from harness.scaffold import Step

PARTS = ("forward", "loss", "backward", "optimiser")
TINY = ("--device", "cpu", "--batch-size", "8", "--repeat", "1")

#: Per built-in trainer: its quick preset made tiny, the phases of its schedule, and whether it runs l_p-dist kernels.
CASES = {
    "linf_v1": (("--preset", "quick", "--set", "model.width=16"), ["p = 8", "general p", "p = ∞"], True),
    "linf_v2": (("--preset", "quick", "--set", "model.width=16"), ["p = 8", "general p", "p = ∞"], True),
    "linf_mlp": (("--preset", "quick", "--set", "model.width=16", "--set", "model.hidden=16"),
                 ["p = 8, eps warm-up", "general p, eps warm-up", "general p", "p = ∞"], True),
    "crm": (("--preset", "quick", "--set", "model.channel_scale=0.1", "--set", "trainer.power_iterations=1"),
            ["warm-up (CE)", "robust (CE + λ·R)"], False),
}


def assert_one_line_error(result, *fragments):
    assert result.code == 2, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.err, result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("trainer", sorted(CASES))
def test_every_phase_of_every_builtin_trainer_is_timed_in_parts(harness_cli, trainer):
    options, phases, lpdist = CASES[trainer]
    r = harness_cli("bench", "step", "--plugin", trainer, *options, *TINY, "--json")
    assert r.code == 0, r.err
    records = json.loads(r.out)
    assert [rec["phase"] for rec in records] == phases
    for rec in records:
        assert (rec["plugin"], rec["preset"], rec["dataset"], rec["batch_size"]) == (trainer, "quick", "mnist", 8)
        assert (rec["norm"], rec["eps"]) == (("2", 1.58) if trainer == "crm" else ("inf", 0.3))
        assert rec["device"] == "cpu" and rec["device_name"].startswith("cpu: ") and rec["parameters"] > 0
        assert 0 <= rec["at"] <= 1 and "lr" in rec["values"]
        parts = [rec[f"{part}_ms"] for part in PARTS]
        assert all(ms > 0 for ms in parts), rec
        # The parts are timed inside the step: what is left (the schedule, the divergence checks) is small and not negative.
        assert math.isclose(sum(parts) + rec["other_ms"], rec["step_ms"], rel_tol=1e-9)
        assert 0.5 * rec["step_ms"] <= sum(parts) <= rec["step_ms"] * (1 + 1e-9)
        assert rec["largest"] == max(PARTS, key=lambda part: rec[f"{part}_ms"])
        assert ("l_p-dist backend" in rec["kernels"]) == lpdist


def test_the_table_has_a_header_a_row_per_phase_and_the_largest_parts(harness_cli):
    options, phases, _ = CASES["linf_v1"]
    r = harness_cli("bench", "step", "--plugin", "linf_v1", *options, *TINY)
    assert r.code == 0, r.err
    lines = r.out.strip().splitlines()
    assert lines[0].startswith("plugin linf_v1, preset quick, dataset mnist (l_inf eps=0.3), device cpu")
    assert "parameters, batch 8, l_p-dist backend " in lines[1]
    assert lines[2].split() == ["phase", "at", "step", "ms", "forward", "ms", "loss/bounds", "ms", "backward", "ms", "optimiser", "ms",
                                "other", "ms"]
    assert [line[: len(name)] for line, name in zip(lines[4:-1], phases)] == phases and len(lines) == 5 + len(phases)
    assert lines[-1].startswith("largest part: p = 8: ") and lines[-1].count("%") == len(phases)


def test_at_replaces_the_phases(harness_cli):
    options, _, _ = CASES["linf_v2"]
    r = harness_cli("bench", "step", "--plugin", "linf_v2", *options, *TINY, "--at", "0", "--at", "1", "--json")
    assert r.code == 0, r.err
    first, last = json.loads(r.out)
    assert (first["phase"], first["at"], first["values"]["p"]) == ("at 0", 0.0, 8.0)
    assert (last["phase"], last["at"], last["values"]["p"]) == ("at 1", 1.0, "inf")


def test_the_dataset_sets_the_shape(harness_cli):
    r = harness_cli("bench", "step", "--plugin", "linf_v1", "--dataset", "cifar10", "--preset", "quick", "--set", "model.width=16",
                    *TINY, "--at", "0.5", "--json")
    assert r.code == 0, r.err
    (rec,) = json.loads(r.out)
    assert rec["dataset"] == "cifar10" and rec["parameters"] > 3 * 32 * 32 * 16  # the first layer's weights alone


@pytest.mark.parametrize(("args", "fragments"), [
    (("--plugin", "linf_v3"), ("'linf_v3'", "did you mean 'linf_v2'", "available:", "crm")),
    (("--plugin", "linf_v2", "--preset", "quik"), ("'quik'", "did you mean 'quick'", "paper-0.3")),
    (("--plugin", "linf_v2", "--dataset", "mnsit"), ("'mnsit'", "did you mean 'mnist'", "cifar10")),
    (("--plugin", "linf_v2", "--device", "tpu"), ("'tpu'", "'auto', 'cpu', 'cuda'")),
    (("--plugin", "linf_v2", "--at", "1.5"), ("1.5", "0<=x<=1")),
    (("--plugin", "linf_v2", "--at", "-0.1"), ("-0.1", "0<=x<=1")),
    (("--plugin", "linf_v2", "--batch-size", "0"), ("0", "x>=1")),
])
def test_bad_input_is_one_line_naming_the_value_and_the_choices(harness_cli, args, fragments):
    assert_one_line_error(harness_cli("bench", "step", *args), *fragments)


def test_cuda_without_cuda_is_one_line(harness_cli):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(harness_cli("bench", "step", "--plugin", "linf_v2", "--device", "cuda"), "'cuda'", "valid: auto, cpu")


class PlainFit(Trainer):
    name = "plain-fit"
    description = "a third party's trainer with its own loop"
    model = "linf_dist_net"

    def fit(self, model, data, ctx):
        model.eval()


class PlainFitPlugin:
    @hookimpl
    def register_trainers(self):
        return [PlainFit]


def test_a_trainer_with_its_own_fit_is_refused_in_one_line(harness_cli):
    r = harness_cli("bench", "step", "--plugin", "plain-fit", "--dataset", "mnist", "--eps", "0.1", "--device", "cpu",
                    plugins=[PlainFitPlugin()])
    assert_one_line_error(r, "trainer 'plain-fit' cannot take one training step at a time", "Trainer.steps()", "EpochTrainer")


def phase_names(trainer: str, **options) -> list[str]:
    from harness.testing import make_catalog

    cls = make_catalog().entry("trainer", trainer).component
    return [phase.name for phase in cls(cls.Options(**options)).schedule_phases()]


def test_the_phases_follow_the_options():
    assert phase_names("linf_v2", epochs=10, p_start_epoch=2, p_end_epoch=8, p_end=50.0) == ["p = 8", "general p", "p = 50"]
    assert phase_names("linf_v1", epochs=10, p_start_epoch=0, p_end_epoch=10) == ["general p"]
    assert phase_names("linf_v1", epochs=10, p_start_epoch=4, p_end_epoch=4) == ["p = ∞"]
    assert phase_names("linf_mlp", epochs=10, p_start_epoch=2, p_end_epoch=8, eps_warmup_epochs=1, bound="crown-ibp") == [
        "p = 8, eps warm-up, CROWN-IBP", "p = 8", "general p", "p = ∞"]
    assert phase_names("crm", epochs=10, lr_decay_epoch=5, robust_start_epoch=0) == ["robust (CE + λ·R)"]


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, Step(0, 0, 4, 15)), (0.5, Step(7, 2, 4, 15)), (1.0, Step(14, 3, 4, 15))])
def test_a_fraction_of_training_is_a_step(fraction, expected):
    assert Step.at(fraction, 4, 15) == expected
