"""The evaluation's samples and batches, and merging per-sample tensors over the processes of a multi-process evaluation."""

from __future__ import annotations

from typing import Any

import torch

from harness import distributed
from harness.distributed import World

#: Seed of the evaluation subset: fixed, so every run sees the same samples.
SUBSET_SEED = 0


def eval_indices(n_test: int, samples: int | None, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Indices of the test samples to evaluate: all, or a fixed seeded subset, sorted."""
    if samples is None or samples >= n_test:
        return torch.arange(n_test)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_test, generator=generator)[:samples].sort().values


def batches(n: int, batch_size: int, world: World | None = None) -> list[slice]:
    """The batches of ``n`` rows; with ``world``, this rank's: batch k goes to rank k mod size (each batch is one
    process's batch, rows and size, so a deterministic component gives each row what one process gives it)."""
    slices = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return slices if world is None else slices[world.rank :: world.size]


def merge(t: torch.Tensor, world: World | None) -> torch.Tensor:
    """Every rank's rows of ``t`` (zero elsewhere on each rank) on every rank: exact, as x + 0 = x."""
    if world is None:
        return t
    if t.dtype == torch.bool:
        return distributed.all_reduce(t.to(torch.int32)) > 0
    return distributed.all_reduce(t)


def first_problem(problem: str | None, world: World | None) -> str | None:
    """The first rank's problem (in rank order), the same on every rank."""
    if world is None:
        return problem
    return next((p for p in distributed.gather_objects(problem) if p is not None), None)


def gather(value: Any, world: World | None) -> list[Any]:
    """Every rank's ``value`` in rank order (``[value]`` in one process)."""
    return [value] if world is None else distributed.gather_objects(value)
