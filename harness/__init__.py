"""harness: a plugin host for comparing certified-robustness methods.

The public API for plugin authors is what this package exports (below) and
the modules in :data:`PUBLIC_MODULES`: typed options (:mod:`harness.options`),
dataset helpers (:mod:`harness.data`), the training data and context
(:mod:`harness.train`), the training scaffold (:mod:`harness.scaffold`), its
schedules (:mod:`harness.schedules`) and checkpoints (:mod:`harness.checkpoint`), threat models (:mod:`harness.threat`),
errors (:mod:`harness.errors`), helpers for plugin commands
(:mod:`harness.commands`) and pytest fixtures for plugin authors
(:mod:`harness.testing`). Plugins import nothing else from the host; the rest
(the CLI, the runner, the evaluation, the store, the catalog) may change
between releases. ``tests/test_layering.py`` checks that the built-in plugins
keep to this.

Exports are loaded on first use, so ``import harness`` (and ``harness
--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Modules a plugin may import (besides this package's exports).
PUBLIC_MODULES = (
    "harness",
    "harness.checkpoint",
    "harness.commands",
    "harness.components",
    "harness.data",
    "harness.data.augment",
    "harness.data.files",
    "harness.data.idx",
    "harness.data.types",
    "harness.distributed",
    "harness.errors",
    "harness.hookspecs",
    "harness.options",
    "harness.scaffold",
    "harness.schedules",
    "harness.testing",
    "harness.threat",
    "harness.train",
)

_EXPORTS = {
    "AttackStages": "harness.components",
    "Attacker": "harness.components",
    "Certificate": "harness.components",
    "Certifier": "harness.components",
    "Dataset": "harness.components",
    "FeatureHead": "harness.components",
    "IntervalBounded": "harness.components",
    "LipschitzBounded": "harness.components",
    "Model": "harness.components",
    "Source": "harness.components",
    "Trainer": "harness.components",
    "DatasetInfo": "harness.data.types",
    "Splits": "harness.data.types",
    "HarnessError": "harness.errors",
    "PluginError": "harness.errors",
    "SoundnessError": "harness.errors",
    "UsageError": "harness.errors",
    "TrainingDiverged": "harness.errors",
    "TrainingInterrupted": "harness.errors",
    "hookimpl": "harness.hookspecs",
    "BatchLoss": "harness.scaffold",
    "EpochTrainer": "harness.scaffold",
    "Step": "harness.scaffold",
    "ThreatModel": "harness.threat",
    "TrainContext": "harness.train",
    "TrainData": "harness.train",
}

__all__ = [
    "AttackStages",
    "Attacker",
    "BatchLoss",
    "Certificate",
    "Certifier",
    "Dataset",
    "DatasetInfo",
    "EpochTrainer",
    "FeatureHead",
    "HarnessError",
    "IntervalBounded",
    "LipschitzBounded",
    "Model",
    "PluginError",
    "SoundnessError",
    "Source",
    "Splits",
    "Step",
    "ThreatModel",
    "TrainContext",
    "TrainData",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "UsageError",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from harness.components import (
        Attacker,
        AttackStages,
        Certificate,
        Certifier,
        Dataset,
        FeatureHead,
        IntervalBounded,
        LipschitzBounded,
        Model,
        Source,
        Trainer,
    )
    from harness.data.types import DatasetInfo, Splits
    from harness.errors import HarnessError, PluginError, SoundnessError, TrainingDiverged, TrainingInterrupted, UsageError
    from harness.hookspecs import hookimpl
    from harness.scaffold import BatchLoss, EpochTrainer, Step
    from harness.threat import ThreatModel
    from harness.train import TrainContext, TrainData
