"""harness: a plugin host for comparing certified-robustness methods.

The public API for plugin authors is what this module exports, plus the
helper modules :mod:`harness.options` (typed options), :mod:`harness.data`
(files, checksums, augmentation), :mod:`harness.train` (batches, schedules)
and :mod:`harness.threat`. Plugins import nothing else from the host.
"""

from harness.components import (
    Attacker,
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
from harness.errors import HarnessError, PluginError, SoundnessError, UsageError
from harness.hookspecs import hookimpl
from harness.threat import ThreatModel
from harness.train import TrainContext, TrainData

__all__ = [
    "Attacker",
    "Certificate",
    "Certifier",
    "Dataset",
    "DatasetInfo",
    "HarnessError",
    "FeatureHead",
    "IntervalBounded",
    "LipschitzBounded",
    "Model",
    "PluginError",
    "SoundnessError",
    "Source",
    "Splits",
    "ThreatModel",
    "TrainContext",
    "TrainData",
    "Trainer",
    "UsageError",
    "hookimpl",
]
