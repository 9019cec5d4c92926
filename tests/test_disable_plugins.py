"""Disabling any one built-in plugin leaves every other one working, or fails at start-up naming what is missing.

For each built-in plugin, the harness is started without it
(``HARNESS_DISABLE_PLUGINS``) and every remaining trainer plans its MNIST
``quick`` run (names, presets, options, components, all resolved). A plan
either succeeds, or fails with one line that names the missing component by
its registered name (``linf_dist_net`` when ``lpdist`` is off, ``mnist`` when
``datasets`` is).
"""

import pytest

from harness.catalog import Catalog
from harness.errors import HarnessError
from harness.plugins import load_plugins
from harness.runner import RunRequest, plan_run
from harness.testing import builtin_plugins

#: What each plugin registers that others name (its absence is the expected failure), by plugin.
PROVIDES = {"lpdist": "linf_dist_net", "datasets": "mnist"}
RUNS = {
    "linf_v2": RunRequest(trainer="linf_v2", dataset="mnist", preset="quick", device="cpu"),
    "linf_v1": RunRequest(trainer="linf_v1", dataset="mnist", preset="quick", device="cpu"),
    "linf_mlp": RunRequest(trainer="linf_mlp", dataset="mnist", preset="quick", device="cpu"),
    "crm": RunRequest(trainer="crm", dataset="mnist", norm="2", eps=1.58, preset="quick", device="cpu"),
}


@pytest.mark.parametrize("disabled", builtin_plugins())
def test_every_other_plugin_keeps_working_or_names_the_missing_dependency(disabled, monkeypatch):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGINS", disabled)
    loaded = load_plugins(only=builtin_plugins())
    assert disabled not in loaded.names() and loaded.failures == []
    catalog = Catalog.build(loaded)
    for trainer, request in RUNS.items():
        if trainer == disabled:
            continue
        try:
            plan = plan_run(catalog, request)
        except HarnessError as exc:
            message = str(exc)
            assert disabled in PROVIDES, f"disabling {disabled!r} broke {trainer!r}: {message}"
            assert "\n" not in message and repr(PROVIDES[disabled]) in message, message
            assert disabled in message  # and says which plugin is left out
            continue
        # The evaluation is made of what is left: every certifier of the norm still loaded, and nothing else.
        expected = {e.key for e in catalog.entries["certifier"]}
        assert {plan.key(c) for c in plan.certifiers} == expected and plan.certifiers, trainer


def test_disabling_lpdist_names_the_model_in_one_line(harness_cli, monkeypatch):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGINS", "lpdist")
    r = harness_cli("run", "--plugin", "linf_v2", "--dataset", "mnist", "--preset", "quick")
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1
    assert r.err == (
        "plugin error: trainer 'linf_v2' is unavailable: model 'linf_dist_net': no loaded plugin registers it, but trainer 'linf_v1' "
        "and trainer 'linf_v2' name it; correct the name, or install or enable the plugin that registers it "
        "(disabled by HARNESS_DISABLE_PLUGINS: lpdist)\n"
    )


@pytest.mark.parametrize(("disabled", "lines"), [("lpdist", 1), ("datasets", 4), ("linf_v2", 0), ("torchattacks", 0)])
def test_disabling_a_builtin_is_one_problem_per_missing_name(disabled, lines, monkeypatch):
    monkeypatch.setenv("HARNESS_DISABLE_PLUGINS", disabled)
    catalog = Catalog.build(load_plugins(only=builtin_plugins()))
    problems = [str(p) for p in catalog.problems]
    assert len(problems) == lines, problems
    for line in problems:
        assert "no loaded plugin registers it" in line and f"disabled by HARNESS_DISABLE_PLUGINS: {disabled}" in line
    if disabled == "datasets":  # the papers' numbers go with the datasets they are for; the trainers stay
        assert catalog.reported == [] and {"linf_v2", "crm"} <= set(catalog.names("trainer"))
