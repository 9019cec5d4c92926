"""runner.run_arguments: a RunRequest as ``harness run`` arguments, round-tripped through the command's own parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.budget import Budgets
from harness.runner import RunRequest, request_from_json, request_json, run_arguments


def _parsed(args: list[str]) -> RunRequest:
    """The RunRequest ``harness run ARGS`` builds (click's parser, then the command's own conversion)."""
    from harness import cli

    ctx = cli.cli.commands["run"].make_context("run", list(args))
    params = dict(ctx.params)
    for name in ("db", "resume_id", "nproc", "batch_stats"):
        params.pop(name)
    return cli.run_request(params.pop("no_save"), params.pop("attacks"), params.pop("certifiers"), params)


REQUESTS = [
    RunRequest(trainer="linf_v2", dataset="mnist"),
    RunRequest(trainer="linf_v2", dataset="cifar10", eps=8 / 255, norm="inf", preset="quick", model="mlp", epochs=3, seed=7,
               device="cpu", eval_samples=40, eval_batch_size=16, train_samples=990, attacks=["pgd", "toy:fgsm"],
               certifiers=["interval"], overrides=("model.width=64", "trainer.lr=0.01"), data_dir=Path("/data/x"),
               save_dir=Path("/runs/y"), checkpoint_every=2, certifier_budget=Budgets(60.0, {"crown": 3600.0, "ibp": 0.1 + 0.2})),
    RunRequest(trainer="crm", dataset="fashion-mnist", eps=1.58, norm="2", no_preset=True, save_dir=None, device="cuda",
               seed=2**63 - 1),
    RunRequest(trainer="linf_v1", dataset="mnist", eps=0.1 + 0.2, save_dir=Path("relative/runs")),  # a float printed exactly
]


@pytest.mark.parametrize("request_", REQUESTS, ids=range(len(REQUESTS)))
def test_the_command_line_plans_the_same_request(request_, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA", raising=False)
    args = run_arguments(request_)
    assert "--db" not in args  # the database goes through HARNESS_DB (it may hold a password)
    assert request_json(_parsed(args)) == request_json(request_)
    assert request_from_json(request_json(request_)).certifier_budget == request_.certifier_budget


def test_a_request_without_a_budget_is_stored_as_before_budgets_and_read_back_without_one():
    stored = request_json(RunRequest(trainer="linf_v2", dataset="mnist"))
    assert "certifier_budget" not in stored  # what older harnesses stored: a sweep's cell keys stay the same
    assert request_from_json(stored).certifier_budget == Budgets()


def test_a_request_the_command_line_cannot_express_is_a_value_error():
    with pytest.raises(ValueError, match="--attack: an empty list"):
        run_arguments(RunRequest(trainer="linf_v2", dataset="mnist", attacks=[]))
