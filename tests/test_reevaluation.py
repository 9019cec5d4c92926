"""A trained model is a record of its own: `harness eval` evaluates it again (or a model trained elsewhere) as a new evaluation."""

from __future__ import annotations

import json

import pytest
import torch

TINY = [
    "--preset", "quick", "--epochs", "1", "--train-samples", "600", "--eval-samples", "32",
    "--set", "model.width=32", "--set", "model.depth=3", "--set", "attacker.pgd.steps=3", "--attack", "pgd",
]


@pytest.fixture
def trained(harness_cli, shared_data):
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--data-dir", str(shared_data), *TINY)
    assert r.code == 0, r.err
    return shared_data


def _show(harness_cli, run_id: int = 1) -> dict:
    r = harness_cli("show", str(run_id), "--format", "json", "--samples", "1000")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_eval_with_a_certifier_subset_records_a_second_evaluation_that_show_lists(trained, harness_cli):
    again = harness_cli("eval", "1", "--certifier", "interval", "--attack", "pgd", "--eval-samples", "32", "--data-dir", str(trained))
    assert again.code == 0, again.err
    assert "run 1, evaluation 2" in again.out
    shown = _show(harness_cli)
    first, second = shown["evaluations"]
    assert [c["name"] for c in first["result"]["certifiers"]] == ["interval", "lipschitz-margin"]
    assert [c["name"] for c in second["result"]["certifiers"]] == ["interval"]
    # The same weights on the same samples: the same clean accuracy and the same interval certificates.
    assert second["result"]["clean_accuracy"] == first["result"]["clean_accuracy"]
    assert second["result"]["certifiers"][0]["accuracy"] == first["result"]["certifiers"][0]["accuracy"]
    # The leaderboard shows the model once, with its most complete evaluation (the first: two certifiers), and says which.
    text = harness_cli("show", "1").out
    assert "evaluation 1 (" in text and "evaluation 2 (" in text and "the leaderboard's: the most complete" in text
    board = json.loads(harness_cli("leaderboard", "--format", "json").out)
    (row,) = [r for g in board for r in g["rows"] if r["kind"] == "measured"]
    assert row["run_id"] == 1 and row["evaluation_id"] == 1 and row["evaluations"] == 2
    assert "1 eval 1 of 2" in harness_cli("leaderboard").out


def test_the_reloaded_model_reproduces_the_evaluated_predictions(trained, harness_cli, tmp_path):
    """model.pt holds everything the evaluated outputs need (the dist layers' p = ∞ included)."""
    from harness.reevaluation import load_weights
    from harness.testing import make_catalog

    shown = _show(harness_cli)
    spec = shown["info"]["config"]["model"]
    catalog = make_catalog()
    model_cls = catalog.entry("model", spec["name"]).component
    from harness.options import parse_options

    dataset = catalog.entry("dataset", "mnist").component()
    model = model_cls(parse_options(model_cls.Options, spec["options"], "model")).build(dataset.info)
    load_weights(tmp_path / "runs" / "run-1" / "model.pt", model)
    splits = dataset.load(trained)
    samples = shown["samples"]
    index = torch.tensor([s["index"] for s in samples])
    with torch.no_grad():
        predictions = model.eval()(splits.test_images[index].float() / 255).argmax(1)
    assert predictions.tolist() == [s["prediction"] for s in samples]


def test_eval_refuses_a_changed_weights_file_and_a_run_without_weights(trained, harness_cli, tmp_path, shared_data):
    weights = tmp_path / "runs" / "run-1" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    r = harness_cli("eval", "1", "--data-dir", str(shared_data))
    assert r.code == 2 and "changed since training" in r.err
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--data-dir", str(shared_data), *TINY, "--no-save")
    assert r.code == 0, r.err
    r = harness_cli("eval", "2", "--data-dir", str(shared_data))
    assert r.code == 2 and "no saved weights" in r.err
    r = harness_cli("eval", "1", "--model", "crm_net")
    assert r.code == 2 and "--model cannot be given with RUN_ID 1" in r.err


def test_eval_of_weights_trained_elsewhere_is_an_external_run(trained, harness_cli, tmp_path):
    state = torch.load(tmp_path / "runs" / "run-1" / "model.pt", weights_only=True)["state_dict"]
    torch.save(state, tmp_path / "elsewhere.pt")
    r = harness_cli(
        "eval", "--weights", "elsewhere.pt", "--model", "linf_dist_net", "--dataset", "mnist", "--eps", "0.1",
        "--set", "model.width=32", "--set", "model.depth=3", "--set", "attacker.pgd.steps=3", "--attack", "pgd", "--eval-samples", "32",
        "--data-dir", str(trained),
    )
    assert r.code == 0, r.err
    shown = _show(harness_cli, 2)
    assert shown["info"]["origin"] == "external" and shown["status"] == "finished"
    assert shown["weights"]["path"].endswith("elsewhere.pt") and len(shown["weights"]["sha256"]) == 64
    assert shown["evaluations"][0]["result"]["clean_accuracy"] == _show(harness_cli, 1)["evaluations"][0]["result"]["clean_accuracy"]
    board = harness_cli("leaderboard").out
    assert "external linf_dist_net" in board
    shown_text = harness_cli("show", "2").out
    assert "none: an external model (linf_dist_net)" in shown_text and "None" not in shown_text.split("configuration:")[0]
    wrong = harness_cli("eval", "--weights", "elsewhere.pt", "--model", "linf_dist_net", "--dataset", "mnist", "--eps", "0.1",
                        "--data-dir", str(trained))
    assert wrong.code == 2 and "does not fit the model" in wrong.err


def test_unsafe_weights_are_refused_without_being_executed(trained, harness_cli, tmp_path):
    import pickle

    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    r = harness_cli("eval", "--weights", "evil.pt", "--model", "linf_dist_net", "--dataset", "mnist", "--eps", "0.1",
                    "--data-dir", str(trained))
    assert r.code == 2 and "cannot read weights file" in r.err and len(r.err.strip().splitlines()) == 1
    assert not marker.exists()


def test_an_evaluation_is_reproducible_whatever_the_global_random_state(trained, harness_cli, tmp_path):
    """The attacks' random starts are seeded: the same model, samples and components give the same evaluation."""
    from harness.store import open_store

    for seed in (1, 2):
        torch.manual_seed(seed)  # the CLI runs in this process: a different global state before each evaluation
        r = harness_cli("eval", "1", "--eval-samples", "32", "--attack", "pgd", "--set", "attacker.pgd.steps=1", "--data-dir", str(trained))
        assert r.code == 0, r.err
    store = open_store(str(tmp_path / "results.db"), readonly=True)
    try:
        first, second = store.get_run(1).evaluations[1:]
        assert [a.accuracy for a in first.result.attacks] == [a.accuracy for a in second.result.attacks]
        assert store.samples(1, first.id) == store.samples(1, second.id)
    finally:
        store.close()


def test_evaluating_leaves_the_callers_random_state_as_it_was():
    from harness.evaluation import evaluate
    from harness.options import parse_options
    from harness.testing import make_catalog
    from harness.threat import ThreatModel

    pgd = make_catalog().entry("attacker", "pgd").component
    attacker = pgd(parse_options(pgd.Options, {"steps": 2}, "pgd"))  # its random start draws from the global RNG

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    images = torch.randint(0, 256, (6, 1, 2, 2), dtype=torch.uint8)
    labels = torch.randint(0, 3, (6,))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    first = evaluate(model, images, labels, ThreatModel("inf", 0.1), attackers=[attacker], certifiers=[], device=torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(8)  # another state before the second evaluation: the same outcome
    second = evaluate(model, images, labels, ThreatModel("inf", 0.1), attackers=[attacker], certifiers=[], device=torch.device("cpu"))
    assert first.samples == second.samples


def test_a_lookup_in_a_database_that_does_not_exist_creates_none(harness_cli, tmp_path):
    for args in (["eval", "3"], ["run", "--resume", "4"]):
        r = harness_cli(*args)
        assert r.code == 2 and f"no database at 'results.db', so no run {args[-1]}" in r.err
    assert not (tmp_path / "results.db").exists()
