"""The catalog: components by kind and name, every cross-reference checked once, problems isolated and named."""

from dataclasses import dataclass

import pytest

from harness import Attacker, EpochTrainer, Model, Trainer, hookimpl
from harness.errors import PluginError, UsageError
from harness.plugins import load_plugins
from harness.testing import make_catalog


class Twin(Trainer):
    name = "linf_v2"
    description = "a second trainer with a taken name"
    model = "linf_dist_net"

    def fit(self, model, data, ctx):
        pass


class Impostor:
    name = "impostor"


class WrongKind(Model):
    name = "wrong"
    description = "a model offered as a trainer"

    def build(self, data):
        return None


class Orphan(Trainer):
    name = "orphan"
    description = "trains a model nobody registers"
    model = "no_such_model"

    def fit(self, model, data, ctx):
        pass


class FGSM(Attacker):
    name = "fgsm"
    description = "a one-step attack (test)"
    norms = ("inf",)

    def perturb(self, model, images, labels, threat):
        return images


class OtherFGSM(FGSM):
    description = "another plugin's fgsm (test)"


class Plugin:
    def __init__(self, trainers=(), attackers=()):
        self.trainers, self.attackers = list(trainers), list(attackers)

    @hookimpl
    def register_trainers(self):
        return self.trainers

    @hookimpl
    def register_attackers(self):
        return self.attackers


class Second(Plugin):
    """A second plugin object, named after its class."""


def test_the_same_name_from_two_plugins_is_addressed_by_plugin_and_name():
    catalog = make_catalog(Plugin(attackers=[FGSM]), Second(attackers=[OtherFGSM]), builtins=False)
    assert catalog.problems == [] and catalog.names("attacker") == ["Plugin:fgsm", "Second:fgsm"]
    assert catalog.get("attacker", "Second:fgsm") is OtherFGSM
    with pytest.raises(UsageError) as exc:
        catalog.get("attacker", "fgsm")
    assert "ambiguous" in str(exc.value) and "Plugin:fgsm, Second:fgsm" in str(exc.value)


def test_a_trainer_named_like_a_builtin_leaves_the_builtin_its_name_and_is_qualified():
    catalog = make_catalog(Plugin(trainers=[Twin]))
    builtin = catalog.get("trainer", "linf_v2")
    assert builtin.__module__.startswith("harness_plugins") and catalog.get("trainer", "linf_v2:linf_v2") is builtin
    assert catalog.get("trainer", "Plugin:linf_v2") is Twin
    assert "Plugin:linf_v2" in catalog.names("trainer") and catalog.problems == []
    # Its presets (from linf_v2's own file) still belong to the built-in trainer.
    assert {p.name for p in catalog.presets_for("linf_v2", "mnist")} >= {"quick", "paper-0.3"}


def test_a_third_partys_model_named_like_a_builtin_displaces_nothing():
    class Impersonator(Model):
        name = "linf_dist_net"
        description = "a third party's model with a built-in's name (test)"

        def build(self, data):
            raise NotImplementedError

    class P:
        @hookimpl
        def register_models(self):
            return [Impersonator]

    catalog = make_catalog(P())
    assert catalog.problems == [] and catalog.get("model", "linf_dist_net") is not Impersonator
    assert catalog.get("model", "P:linf_dist_net") is Impersonator
    assert {"linf_v1", "linf_v2"} <= set(catalog.names("trainer"))
    assert catalog.model_entry(catalog.entry("trainer", "linf_v2")).plugin == "lpdist"


def test_the_same_name_twice_in_one_plugin_is_a_problem():
    catalog = make_catalog(Plugin(attackers=[FGSM, OtherFGSM]), builtins=False)
    (problem,) = catalog.problems
    assert "attacker 'fgsm' (plugin 'Plugin'): is registered twice by the same plugin" in str(problem)
    assert catalog.get("attacker", "fgsm") is FGSM


@pytest.mark.parametrize(
    ("bad", "expected"), [(Impostor, "is not a harness component class"), (WrongKind, "is a model, returned by register_trainers")]
)
def test_non_components_and_wrong_kinds_are_left_out_with_a_problem(bad, expected):
    catalog = make_catalog(Plugin(trainers=[bad]), builtins=False)
    (problem,) = catalog.problems
    assert expected in str(problem) and problem.plugin == "Plugin"
    assert catalog.names("trainer") == []


def test_a_trainer_whose_model_is_missing_is_unavailable_and_says_why():
    catalog = make_catalog(Plugin(trainers=[Orphan]))
    (problem,) = catalog.problems
    assert str(problem) == (
        "model 'no_such_model' (plugin 'Plugin'): no loaded plugin registers it, but trainer 'orphan' names it; "
        "correct the name, or install or enable the plugin that registers it"
    )
    with pytest.raises(PluginError, match="trainer 'orphan' is unavailable: model 'no_such_model'"):
        catalog.get("trainer", "orphan")


def test_unknown_lookup_suggests_the_closest(catalog):
    with pytest.raises(UsageError) as exc:
        catalog.get("trainer", "linf_v3")
    assert "did you mean 'linf_v2'" in str(exc.value) and "available:" in str(exc.value)


def test_builtin_components_are_registered(catalog):
    assert catalog.problems == []
    assert "linf_v2" in catalog.names("trainer")
    assert {"lipschitz-margin", "interval"} <= set(catalog.names("certifier"))
    assert "pgd" in catalog.names("attacker")
    assert {"mnist", "fashion-mnist", "cifar10"} <= set(catalog.names("dataset"))
    assert [e.name for e in catalog.entries_of("linf_v2")] == ["linf_v2"]


def test_a_misspelt_hook_leaves_the_plugin_out_with_one_line_naming_the_real_hook():
    class Misspelt:
        @hookimpl
        def register_trainer(self):
            return []

    loaded = load_plugins(entry_points=False, extra=[Misspelt()])
    (failure,) = loaded.failures
    assert "it implements 'register_trainer', which is not a harness hook (did you mean 'register_trainers'?" in str(failure)
    assert "\n" not in str(failure) and "Misspelt" in str(failure) and "HARNESS_DISABLE_PLUGINS=Misspelt" in str(failure)
    assert "Misspelt" not in loaded.names()


def test_a_hook_without_its_mark_and_a_hook_with_wrong_arguments_are_named():
    class Unmarked:
        def register_models(self):
            return []

    class BadArguments:
        @hookimpl
        def register_commands(self, cli, verbose):
            pass

    loaded = load_plugins(entry_points=False, extra=[Unmarked(), BadArguments()])
    unmarked, bad = loaded.failures
    assert "lacks the @harness.hookimpl mark" in unmarked.reason
    assert "verbose" in bad.reason and "\n" not in bad.reason


def test_a_hook_that_raises_is_that_plugins_problem_only():
    class Raises:
        @hookimpl
        def register_models(self):
            raise RuntimeError("cannot import my model")

    catalog = make_catalog(Raises())
    (problem,) = catalog.problems
    assert "hook register_models (plugin 'Raises'): raised RuntimeError: cannot import my model" in str(problem)
    assert "linf_dist_net" in catalog.names("model")


@dataclass(frozen=True)
class NeedsValue:
    size: int  # no default: a run could never start from the defaults


class NoDefaults(Model):
    name = "no_defaults"
    description = "options without defaults (test)"
    Options = NeedsValue

    def build(self, data):
        return None


def test_options_that_cannot_be_built_from_their_defaults_are_a_problem():
    class P:
        @hookimpl
        def register_models(self):
            return [NoDefaults]

    (problem,) = make_catalog(P(), builtins=False).problems
    assert "its Options cannot be built from their defaults" in str(problem)


# -- what a plugin author forgets, found at start-up rather than halfway through a run --------------------------


class NoNorms(Attacker):
    name = "no_norms"
    description = "an attack that does not say which threat models it handles (test)"

    def perturb(self, model, images, labels, threat):
        return images


class NoPerturb(Attacker):
    name = "no_perturb"
    description = "an attack without perturb() (test)"
    norms = ("inf",)


class HalfScaffold(EpochTrainer):
    name = "half"
    description = "a scaffold trainer with its loss only (test)"
    model = "linf_dist_net"

    def loss(self, model, images, labels, values):
        raise AssertionError("never called")


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        (NoNorms, f"attacker 'no_norms' (plugin 'Plugin'): {__name__}.NoNorms declares no norms; "
                  "set norms = ('inf',), ('2',) or ('inf', '2'): the threat models it handles"),
        (NoPerturb, f"attacker 'no_perturb' (plugin 'Plugin'): {__name__}.NoPerturb does not implement perturb(); "
                    "define perturb() as harness.components.Attacker describes"),
        (HalfScaffold, f"trainer 'half' (plugin 'Plugin'): {__name__}.HalfScaffold does not implement optimizer() and schedule(); "
                       "define optimizer() and schedule() as harness.scaffold.EpochTrainer describes"),
    ],
)
def test_a_component_without_norms_or_a_required_method_is_a_problem_naming_the_fix(component, expected):
    kind = "trainers" if issubclass(component, Trainer) else "attackers"
    catalog = make_catalog(Plugin(**{kind: [component]}))
    (problem,) = catalog.problems
    assert str(problem) == expected
    assert component.name not in catalog.names(component.kind)


def test_a_data_file_the_plugin_did_not_install_is_a_problem_naming_package_data(tmp_path):
    class Presets:
        @hookimpl
        def register_presets(self):
            return [tmp_path / "presets.toml"]

    (problem,) = make_catalog(Presets(), builtins=False).problems
    assert str(problem) == (
        f"presets presets.toml (plugin 'Presets'): register_presets returned {tmp_path / 'presets.toml'}, which is not a file; "
        "ship it with the package (setuptools: [tool.setuptools.package-data]) or correct the path"
    )


def test_an_unmarked_misspelt_hook_is_named_too():
    import types

    module = types.ModuleType("sloppy")
    exec("def register_trainer():\n    return []\n", module.__dict__)  # noqa: S102 - a module as a plugin author writes it
    (failure,) = load_plugins(entry_points=False, extra=[module]).failures
    assert "its function 'register_trainer' looks like the hook 'register_trainers' misspelt" in failure.reason
