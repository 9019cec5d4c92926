"""Compare the trained weights of two runs bit for bit.

Usage: ``python scripts/compare_training.py OLD_RUN_DIR NEW_RUN_DIR`` where each
directory is a ``runs/run-ID/`` that ``harness run`` wrote (``model.pt``). Prints
max |difference| per tensor of the ``state_dict`` and exits 0 only if every
tensor is bitwise equal (same names, shapes, dtypes and bytes).

Used to check that a refactoring of the training code changes no number: train a
shortened preset with the old and the new code (same seed, same data) and
compare. The scaffold port (branch ``scaffold``) was checked with these runs, each
crossing every phase of its schedule (6 steps an epoch on 3000 samples)::

    COMMON="--train-samples 3000 --eval-samples 100 --device cpu --data-dir DATA \\
        --set attacker.pgd.steps=5 --set certifier.crown.max_samples=5"
    harness run --plugin linf_v2 --dataset mnist --preset quick --epochs 5 $COMMON
    harness run --plugin linf_v1 --dataset mnist --preset quick --epochs 5 $COMMON
    harness run --plugin linf_v1 --dataset mnist --preset quick --epochs 5 --set trainer.eps_warmup_epochs=2 $COMMON
    harness run --plugin linf_mlp --dataset mnist --preset quick --epochs 5 $COMMON
    harness run --plugin linf_mlp --dataset mnist --preset quick --epochs 3 --set trainer.bound=crown-ibp $COMMON
    harness run --plugin crm --dataset mnist --norm 2 --eps 1.58 --preset quick --epochs 6 $COMMON

each with ``--db`` and ``--save-dir`` of its own for the old and the new code, then
``python scripts/compare_training.py OLD/runs/run-1 NEW/runs/run-1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def load(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / "model.pt" if run_dir.is_dir() else run_dir
    # weights_only: a weights file must never run code when it is read (model.pt holds tensors and plain JSON).
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def compare(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor; lines of tensors that differ start with ``DIFF``, missing ones with ``MISSING``."""
    lines = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old or name not in new:
            lines.append(f"MISSING {name}: only in {'new' if name in new else 'old'}")
            continue
        a, b = old[name], new[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            lines.append(f"DIFF    {name}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
            continue
        same = a.numel() == 0 or bool(torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)))
        if a.is_floating_point():
            gap = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        else:
            gap = (a.long() - b.long()).abs().max().item() if a.numel() else 0
        lines.append(f"{'same   ' if same else 'DIFF   '} {name}: {tuple(a.shape)} max |diff| {gap:.3g}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/compare_training.py OLD_RUN_DIR NEW_RUN_DIR (runs/run-ID directories or model.pt files)", file=sys.stderr)
        return 2
    lines = compare(load(Path(argv[0])), load(Path(argv[1])))
    print("\n".join(lines))
    bad = sum(not line.startswith("same") for line in lines)
    print(f"{len(lines) - bad}/{len(lines)} tensors bitwise equal")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
