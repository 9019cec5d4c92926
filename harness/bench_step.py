"""``harness bench step``: one training step of any registered trainer, split into its parts.

The run is planned as ``harness run`` plans it (:func:`harness.runner.plan_run`:
the trainer, its preset, the model and their options, ``--set``), and the model
built as it builds it, on synthetic data of the dataset's shape (random pixels
and labels: nothing is downloaded). The trainer prepares the run and takes its
steps through :meth:`harness.Trainer.steps`; at the middle of each phase of its
schedule (:meth:`harness.Trainer.schedule_phases`), or at each fraction of
training asked for, :data:`WARMUP_STEPS` untimed steps, then ``repeat`` timed
ones on one batch. Each part (:data:`PARTS`) is timed by the timer the step
reports to, with the device synchronised around it; ``other`` is the rest of
the step (the schedule, the divergence checks). A phase's row is its timed step
of median total time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.catalog import Catalog
from harness.commands import text_table
from harness.env import device_name, synchronize
from harness.errors import UsageError, unknown_name
from harness.options import has_field
from harness.runner import RunRequest, build_model, jsonable, plan_run
from harness.schedules import SchedulePhase
from harness.threat import ThreatModel
from harness.train import StepTimer, TrainContext, TrainData

#: The parts of a step, in its order, and their column headings.
PARTS = {"forward": "forward", "loss": "loss/bounds", "backward": "backward", "optimiser": "optimiser"}
#: Untimed steps before each phase's timed ones (first-use compilation, the optimiser's state, caches).
WARMUP_STEPS = 2
#: The batch of a trainer without a ``batch_size`` option, unless ``--batch-size`` is given.
DEFAULT_BATCH_SIZE = 128
#: Batches of synthetic training data; the phases' steps are placed at 1/this of an epoch's resolution.
SYNTHETIC_BATCHES = 16


class _Clock(StepTimer):
    """Times each part of a step, the device synchronised around it; a part inside another counts in it alone."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._nested: list[float] = []  # per open part: the time of the parts inside it

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            synchronize(self.device)
            elapsed = time.perf_counter() - start
            inside = self._nested.pop()
            self.seconds[part] = self.seconds.get(part, 0.0) + elapsed - inside
            if self._nested:
                self._nested[-1] += elapsed


@dataclass
class PhaseTiming:
    """One phase's step: its place in training, the scheduled values, the step's time and its parts' (seconds)."""

    phase: str
    at: float
    values: dict[str, float]
    step_s: float
    parts_s: dict[str, float]

    @property
    def other_s(self) -> float:
        return self.step_s - sum(self.parts_s.values())

    @property
    def largest(self) -> str:
        return max(self.parts_s, key=lambda part: self.parts_s[part])


@dataclass
class StepProfile:
    """What ``harness bench step`` measured, and for what."""

    trainer: str
    preset: str | None
    dataset: str
    threat: ThreatModel
    device: str  # the torch device
    device_name: str  # what it is (the CPU's model and threads, the GPU's name)
    parameters: int
    batch_size: int
    kernels: dict[str, str] = field(default_factory=dict)
    phases: list[PhaseTiming] = field(default_factory=list)


def default_dataset(catalog: Catalog, trainer: str, preset: str | None) -> str:
    """The dataset of the trainer's first preset (named ``preset`` if given): what ``--dataset`` defaults to."""
    key = catalog.entry("trainer", trainer).key
    mine = catalog.presets_for(key)
    presets = [p for p in mine if preset is None or p.name == preset]
    if presets:
        return presets[0].dataset
    if mine:
        raise unknown_name(f"preset of {key!r}", str(preset), {p.name for p in mine})
    raise UsageError(f"trainer {key!r} has no preset to take the dataset from; give --dataset ({', '.join(catalog.names('dataset'))})")


def profile(
    catalog: Catalog,
    request: RunRequest,
    *,
    batch_size: int | None = None,
    at: Sequence[float] = (),
    repeat: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> StepProfile:
    """Plan ``request`` as ``harness run`` would and time one training step at each phase (or at each fraction ``at``).

    ``batch_size`` overrides the trainer's ``batch_size`` option (``--set trainer.batch_size``), or is the batch of
    a trainer without one (:data:`DEFAULT_BATCH_SIZE` if not given).
    :raises UsageError: a bad name or value, or a trainer that cannot take one step at a time.
    """
    trainer_cls: Any = catalog.entry("trainer", request.trainer).component
    option = has_field(trainer_cls.Options, "batch_size")
    if batch_size is not None and option:
        request.overrides = (*request.overrides, f"trainer.batch_size={batch_size}")
    plan = plan_run(catalog, request)
    trainer = plan.trainer
    size: int = trainer.options.batch_size if option else batch_size or DEFAULT_BATCH_SIZE
    info = plan.dataset.info
    device = plan.device

    torch.manual_seed(plan.seed)
    model = build_model(plan, info)
    draw = torch.Generator().manual_seed(plan.seed)
    n = size * SYNTHETIC_BATCHES
    data = TrainData(
        info,
        torch.randint(0, 256, (n, *info.shape), dtype=torch.uint8, generator=draw).to(device),
        torch.randint(0, info.num_classes, (n,), generator=draw).to(device),
    )
    ctx = TrainContext(threat=plan.threat, device=device, seed=plan.seed, generator=torch.Generator(device=device).manual_seed(plan.seed))
    steps = trainer.steps(model, data, ctx)
    images, labels = data.images[:size].float().div_(255), data.labels[:size]

    phases = [SchedulePhase(f"at {f:g}", f, f) for f in at] or trainer.schedule_phases()
    result = StepProfile(
        trainer=plan.key(trainer), preset=plan.preset.name if plan.preset else None, dataset=plan.key(plan.dataset),
        threat=plan.threat, device=str(device), device_name=device_name(device), parameters=sum(p.numel() for p in model.parameters()),
        batch_size=size,
    )
    for phase in phases:
        progress(f"{phase.name}: {WARMUP_STEPS} warm-up and {repeat} timed steps at {phase.middle:.3g} of training")
        for _ in range(WARMUP_STEPS):
            steps.step(images, labels, phase.middle, StepTimer())
        timed = []
        for _ in range(repeat):
            clock = _Clock(device)
            synchronize(device)
            start = time.perf_counter()
            values = steps.step(images, labels, phase.middle, clock)
            synchronize(device)
            timed.append((time.perf_counter() - start, clock.seconds, values))
        step_s, seconds, values = sorted(timed, key=lambda t: t[0])[(len(timed) - 1) // 2]
        parts = {part: seconds.get(part, 0.0) for part in PARTS}
        result.phases.append(PhaseTiming(phase.name, phase.middle, dict(values), step_s, parts))
    result.kernels = steps.kernels()
    return result


def records(result: StepProfile) -> list[dict[str, Any]]:
    """One JSON record per phase, with what was measured (times in ms)."""
    rows = []
    for p in result.phases:
        rows.append(jsonable({
            "plugin": result.trainer, "preset": result.preset, "dataset": result.dataset, "norm": result.threat.norm,
            "eps": result.threat.eps, "device": result.device, "device_name": result.device_name, "parameters": result.parameters,
            "batch_size": result.batch_size, "kernels": result.kernels,
            "phase": p.phase, "at": p.at, "values": p.values, "step_ms": 1000 * p.step_s,
            **{f"{part}_ms": 1000 * seconds for part, seconds in p.parts_s.items()},
            "other_ms": 1000 * p.other_s, "largest": p.largest,
        }))
    return rows


def _share(seconds: float, total: float) -> str:
    return f"{1000 * seconds:.1f} ({seconds / total:.0%})"


def table(result: StepProfile) -> str:
    """The header, one row per phase (ms, and each part's share of the step), and the largest part of each phase."""
    r = result
    head = [f"plugin {r.trainer}, preset {r.preset or 'none'}, dataset {r.dataset} ({r.threat}), device {r.device_name}",
            f"{r.parameters:,} parameters, batch {r.batch_size}" + "".join(f", {k} {v}" for k, v in r.kernels.items())]
    header = ["phase", "at", "step ms", *(f"{name} ms" for name in PARTS.values()), "other ms"]
    rows = [[p.phase, f"{p.at:.3g}", f"{1000 * p.step_s:.1f}", *(_share(p.parts_s[part], p.step_s) for part in PARTS),
             _share(p.other_s, p.step_s)] for p in r.phases]
    largest = "; ".join(f"{p.phase}: {PARTS[p.largest]} ({p.parts_s[p.largest] / p.step_s:.0%})" for p in r.phases)
    return "\n".join([*head, text_table(header, rows), f"largest part: {largest}"])


__all__ = ["PARTS", "PhaseTiming", "StepProfile", "default_dataset", "profile", "records", "table"]

