import pytest

from harness import Model, Trainer, hookimpl
from harness.errors import PluginError, UsageError
from harness.plugins import make_plugin_manager
from harness.catalog import Catalog


class Twin(Trainer):
    name = "linf_v2"
    description = "a second trainer with a taken name"
    model = "linf_dist_net"


class Impostor:
    name = "impostor"


class WrongKind(Model):
    name = "wrong"
    description = "a model offered as a trainer"


class Plugin:
    def __init__(self, trainers):
        self.trainers = trainers

    @hookimpl
    def register_trainers(self):
        return self.trainers


def build(*trainers):
    return Catalog.from_plugin_manager(make_plugin_manager(extra=[Plugin(list(trainers))]))


def test_duplicate_names_name_both_plugins():
    with pytest.raises(PluginError) as exc:
        build(Twin)
    assert "'linf_v2'" in str(exc.value) and "linf_v2" in str(exc.value) and "registered twice" in str(exc.value)


@pytest.mark.parametrize("bad", [Impostor, WrongKind])
def test_non_components_and_wrong_kinds_are_rejected(bad):
    with pytest.raises(PluginError):
        build(bad)


def test_unknown_lookup_suggests_the_closest(registry):
    with pytest.raises(UsageError) as exc:
        registry.get("trainer", "linf_v3")
    assert "did you mean 'linf_v2'" in str(exc.value) and "available:" in str(exc.value)


def test_builtin_components_are_registered(registry):
    assert "linf_v2" in registry.names("trainer")
    assert {"lipschitz-margin", "interval"} <= set(registry.names("certifier"))
    assert "pgd" in registry.names("attacker")
    assert {"mnist", "fashion-mnist", "cifar10"} <= set(registry.names("dataset"))
    assert registry.plugin_components["linf_v2"]["trainer"] == ["linf_v2"]
