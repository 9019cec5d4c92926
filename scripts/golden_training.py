"""Golden references for the built-in trainers: short, deterministic MNIST trainings and their fingerprints.

Each case (:data:`CASES`) trains one built-in trainer for 3 epochs on 1,000
MNIST training images, on the CPU with one thread, seeded and ordered exactly as
``harness run --train-samples 1000 --device cpu`` does it (:func:`train`), with
its ``quick`` preset scaled down to small widths and schedules that still cross
every phase. The result is a fingerprint (:func:`fingerprint`): per tensor of
the final ``state_dict``, the float64 sum, sum of |x| and sum of squares and a
few elements exactly; and the same sums of the clean logits on 100 test images.

``tests/test_golden_training.py`` retrains every case and compares it with
this platform's ``tests/golden/training-<cpu capability>.json``. This script writes such files and compares
two of them. It imports only API that the code before the training scaffold
(commit 3655b16) already had, so this same file, run with that checkout's
interpreter, gives the old code's numbers::

    .venv/bin/python scripts/golden_training.py --out new.json
    /work/baseline/.venv/bin/python scripts/golden_training.py --out old.json
    .venv/bin/python scripts/golden_training.py --compare old.json new.json

(Run it as a file, not with ``-m``: the interpreter's installed ``harness`` is
the code under test, never this checkout's.) ``--data DIR``: MNIST under
``DIR/mnist`` (default ``../shared/data`` beside the checkout, or
$HARNESS_TEST_DATA); ``--case NAME`` (repeatable); ``--rtol X`` for
``--compare`` (default 0: exact).

Why one thread and no tolerance here: a reduction's rounding depends on how
many threads split it and on the CPU's vector width, and training amplifies a
last-bit difference by two to four orders of magnitude within these 24 steps
(see the test's docstring), so a reference is exact for the platform that made
it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Training images (``harness run --train-samples``) and test images whose logits are fingerprinted (``--eval-samples``).
TRAIN_SAMPLES = 1000
TEST_SAMPLES = 100
#: Elements of each tensor recorded exactly, by position in the flattened tensor (negative from the end).
PROBES = (0, 1, 7, 100, -1)
FORMAT = 1
ABOUT = (
    "Golden references of the built-in trainers: scripts/golden_training.py trains each case and fingerprints it; "
    "tests/test_golden_training.py retrains and compares. Each case's provenance says which code, command, torch, "
    "threads and CPU produced it. Regenerate with HARNESS_REGENERATE_GOLDEN=1 pytest tests/test_golden_training.py."
)


@dataclass(frozen=True)
class Case:
    """One golden training: a trainer and a model with their options, the threat model and the seed.

    ``trainer`` and ``model`` are ``module:Class`` paths of registered
    components, resolved when the case runs, so that this file imports under
    the old tree as well as the new.
    """

    name: str
    trainer: str
    trainer_options: Mapping[str, Any]
    model: str
    model_options: Mapping[str, Any]
    norm: str
    eps: float
    seed: int
    note: str = ""


# Every case: 1,000 images in batches of 128, 8 steps an epoch, the last one a
# partial batch of 104 (the ragged end is exercised); each schedule boundary
# sits on an epoch boundary, so each phase gets a whole epoch of steps. Widths are
# half the quick presets' (CRM's channel_scale is its quick preset's): about a
# second a case on one thread, plus compiling the l_p-dist kernels once.
_LINF_NET = {"depth": 3, "width": 128, "identity_value": 10.0}

CASES: tuple[Case, ...] = (
    Case(
        name="linf_v2",
        trainer="harness_plugins.linf_v2.trainer:LinfV2Trainer",
        trainer_options={"epochs": 3, "p_start_epoch": 1, "p_end_epoch": 2, "eps_train_ratio": 1.5, "lam0": 0.05, "lam_end": 2e-4,
                         "lr": 0.03, "batch_size": 128, "crop_padding": 1, "padding_mode": "edge", "flip": False},
        model="harness_plugins.lpdist.models:LinfDistNetModel",
        model_options=_LINF_NET,
        norm="inf",
        eps=0.3,
        seed=2021,
        note="p = 8 (epoch 0), the relaxation 8 → 1000 with λ decaying (epoch 1), p = ∞ (epoch 2); cosine lr; edge-padded crop",
    ),
    Case(
        name="linf_v1",
        trainer="harness_plugins.linf_v1.trainer:LinfV1Trainer",
        trainer_options={"epochs": 3, "p_start_epoch": 1, "p_end_epoch": 2, "eps_warmup_epochs": 0, "eps_train_ratio": 1.5,
                         "hinge_mix": 0.75, "kappa": 1.0, "lr": 0.02, "weight_decay": 0.005, "batch_size": 128,
                         "crop_padding": 1, "padding_mode": "zeros", "flip": False},
        model="harness_plugins.lpdist.models:LinfDistNetModel",
        model_options=_LINF_NET,
        norm="inf",
        eps=0.3,
        seed=2020,
        note="p = 8 at constant lr (epoch 0), the relaxation with cosine lr (epoch 1), p = ∞ (epoch 2); l_p weight decay",
    ),
    Case(
        name="linf_mlp",
        trainer="harness_plugins.linf_mlp.trainer:LinfMLPTrainer",
        trainer_options={"epochs": 3, "p_start_epoch": 1, "p_end_epoch": 2, "eps_warmup_epochs": 1.5, "eps_train_ratio": 7 / 6,
                         "kappa": 0.5, "bound": "ibp", "lr": 0.02, "weight_decay": 0.005, "batch_size": 128,
                         "crop_padding": 1, "padding_mode": "zeros", "flip": False},
        model="harness_plugins.linf_mlp.model:LinfDistNetMLPModel",
        model_options={"backbone": "mlp", "depth": 3, "width": 128, "hidden": 128, "identity_value": 10.0},
        norm="inf",
        eps=0.3,
        seed=2020,
        note="eps_train warming up over epochs 0-1.5 (across p = 8 and half the relaxation), p = ∞ (epoch 2); IBP head; lr/√fan_in groups",
    ),
    Case(
        name="crm",
        trainer="harness_plugins.crm.trainer:CRMTrainer",
        trainer_options={"epochs": 3, "lr": 1e-3, "lr_decay_epoch": 2, "lr_min": 1e-4, "batch_size": 128, "lam": 30.0,
                         "r0": 2.2, "temperature": 5.0, "robust_start_epoch": 1, "power_iterations": 10},
        model="harness_plugins.crm.model:CRMNetModel",
        model_options={"arch": "4c3f", "channel_scale": 0.25},
        norm="2",
        eps=1.58,
        seed=0,  # the quick preset gives none: harness run's default
        note="CE only (epoch 0), CE + λ·R at lr (epoch 1), lr decayed to lr_min (epoch 2); LipLT power iteration; the 90% split",
    ),
)


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(__import__(module, fromlist=[name]), name)


def load_mnist(data_dir: Path) -> Any:
    """The MNIST splits (uint8), read and checked by the harness's own loader; never downloads."""
    from harness_plugins.datasets.mnist import MNIST

    return MNIST().load(data_dir, download=False)


@contextmanager
def isolated() -> Iterator[None]:
    """One thread and a forked global RNG for the duration, both restored after (a test session goes on)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)


def train(case: Case, splits: Any) -> nn.Module:
    """Train ``case`` on the CPU as ``harness run --train-samples 1000 --device cpu`` does, and return the model.

    The global seed, then the run's generator, then the model's construction:
    ``harness.runner.execute``'s order, so the initial weights and the data
    order are the ones a run with this seed gets.
    """
    from harness.evaluation import eval_indices
    from harness.threat import ThreatModel
    from harness.train import TrainContext, TrainData
    from harness_plugins.datasets.mnist import MNIST

    info = MNIST.info
    trainer_cls, model_cls = _resolve(case.trainer), _resolve(case.model)
    trainer = trainer_cls(trainer_cls.Options(**case.trainer_options))
    builder = model_cls(model_cls.Options(**case.model_options))
    index = eval_indices(splits.train_images.shape[0], TRAIN_SAMPLES)  # the runner's --train-samples subset
    device = torch.device("cpu")
    torch.manual_seed(case.seed)
    generator = torch.Generator(device=device).manual_seed(case.seed)
    model = builder.build(info).to(device)
    data = TrainData(info, splits.train_images[index], splits.train_labels[index])
    ctx = TrainContext(threat=ThreatModel(case.norm, case.eps), device=device, seed=case.seed, generator=generator)
    trainer.fit(model, data, ctx)
    return model


def _tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    flat = t.detach().reshape(-1)
    wide = flat.double()
    n = flat.numel()
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sum": wide.sum().item(),
        "abs_sum": wide.abs().sum().item(),
        "sum_sq": wide.square().sum().item(),
        # float32 and int64 elements are exact as Python floats and ints, and JSON keeps them exactly.
        "elements": {str(i): flat[i].item() for i in sorted({i % n for i in PROBES})} if n else {},
    }


def fingerprint(model: nn.Module, splits: Any) -> dict[str, Any]:
    """Statistics of the final ``state_dict``, and of the clean logits on the ``--eval-samples 100`` test subset."""
    from harness.evaluation import eval_indices

    index = eval_indices(splits.test_images.shape[0], TEST_SAMPLES)
    model.eval()
    with torch.no_grad():
        logits = model(splits.test_images[index].float().div_(255)).double()
    return {
        "state_dict": {name: _tensor_stats(t) for name, t in model.state_dict().items() if isinstance(t, torch.Tensor)},
        "logits": {
            "sum": logits.sum().item(),
            "abs_sum": logits.abs().sum().item(),
            "sum_sq": logits.square().sum().item(),
            "correct": int((logits.argmax(1) == splits.test_labels[index]).sum().item()),
        },
    }


def run_case(case: Case, splits: Any, command: str) -> dict[str, Any]:
    """Train one case (single-threaded, RNG state restored after) and return its JSON entry."""
    with isolated():
        start = time.perf_counter()
        model = train(case, splits)
        seconds = time.perf_counter() - start
        entry = {
            "trainer": case.trainer,
            "model": case.model,
            "trainer_options": dict(case.trainer_options),
            "model_options": dict(case.model_options),
            "threat": {"norm": case.norm, "eps": case.eps},
            "seed": case.seed,
            "train_samples": TRAIN_SAMPLES,
            "test_samples": TEST_SAMPLES,
            "note": case.note,
            "provenance": {**provenance(command), "seconds": round(seconds, 2)},
            **fingerprint(model, splits),
        }
    return entry


def platform_key() -> dict[str, str]:
    """What decides the rounding of a training, beside the code: torch (and its bundled MKL and oneDNN), the ATen
    CPU capability (vector width) and the l_p-dist backend. Two platforms with equal keys give identical numbers."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "lpdist_backend": lpdist_backend(),
    }


def lpdist_backend() -> str:
    """The l_p-dist backend a float32 CPU training uses: the one ``$HARNESS_LPDIST_BACKEND`` forces, else the one
    "auto" picks here (which changed when the native kernels came: a record of "auto" does not say which)."""
    chosen = os.environ.get("HARNESS_LPDIST_BACKEND", "auto").strip().lower() or "auto"
    if chosen != "auto":
        return chosen
    try:
        from harness_plugins.lib.lpdist.ops import backend_name
    except ImportError:  # a checkout from before the backends were named
        return chosen
    return backend_name(torch.zeros(1))


def provenance(command: str) -> dict[str, Any]:
    """Where the numbers came from: the harness checkout and commit that trained, the command, the platform, threads."""
    import harness

    root = Path(harness.__file__).resolve().parents[1]
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "harness": str(root),
        "commit": _git(root, "rev-parse", "HEAD"),
        "dirty": bool(dirty) if dirty is not None else None,
        "command": command,
        **platform_key(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {_cpu_name()}",
        "date": time.strftime("%Y-%m-%d"),
    }


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def select(names: Sequence[str] | None) -> list[Case]:
    """The cases named (all of them when ``names`` is empty); an unknown name stops with the known ones."""
    if not names:
        return list(CASES)
    known = {c.name: c for c in CASES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown case {', '.join(unknown)}; cases: {', '.join(known)}")
    return [known[n] for n in names]


def document(cases: Mapping[str, Any]) -> dict[str, Any]:
    """A reference document holding ``cases`` (name → entry)."""
    return {"format": FORMAT, "about": ABOUT, "cases": dict(cases)}


def write(doc: Mapping[str, Any], path: Path) -> None:
    """Write a reference document as indented JSON (floats as Python's repr, which reads back exactly)."""
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------- comparison

# Never compared: the note, the provenance, and the test accuracy (an argmax, which flips on a near tie
# within any tolerance; the logits' sums pin it already).
_NOT_COMPARED = frozenset({"note", "provenance", "correct"})
# What makes two entries the same training; a difference here makes their numbers incomparable.
_CONFIGURATION = ("trainer", "model", "trainer_options", "model_options", "threat", "seed", "train_samples", "test_samples")


@dataclass(frozen=True)
class Difference:
    """One value that is not exactly equal in two entries.

    ``deviation`` is ``|expected − actual|`` over the value's natural size (see
    :func:`compare_case`); ``inf`` for a structural difference (another
    configuration, a missing tensor, another shape or dtype, a non-finite value).
    """

    where: str
    expected: Any
    actual: Any
    deviation: float

    def __str__(self) -> str:
        size = "structural" if math.isinf(self.deviation) else f"deviation {self.deviation:.3g}"
        return f"{self.where}: {self.expected!r} vs {self.actual!r} ({size})"


def _deviation(e: float, a: float, scale: float) -> float:
    if e == a:
        return 0.0
    if not (math.isfinite(e) and math.isfinite(a)):
        return math.inf
    return abs(e - a) / max(scale, abs(e), abs(a))


def _stats_differences(where: str, expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[Difference]:
    numel = math.prod(expected.get("shape", [1])) or 1
    rms = math.sqrt(expected["sum_sq"] / numel) if "sum_sq" in expected else 0.0
    found = []
    for key in sorted(expected.keys() | actual.keys()):
        if key in _NOT_COMPARED:
            continue
        e, a = expected.get(key), actual.get(key)
        if key == "elements" and isinstance(e, dict) and isinstance(a, dict) and e.keys() == a.keys():
            found += [Difference(f"{where} element {i}", e[i], a[i], _deviation(float(e[i]), float(a[i]), rms)) for i in sorted(e, key=int)]
        elif isinstance(e, float) and isinstance(a, float):
            found.append(Difference(f"{where} {key}", e, a, _deviation(e, a, expected.get("abs_sum", 0.0) if key == "sum" else 0.0)))
        elif e != a:
            found.append(Difference(f"{where} {key}", e, a, math.inf))
    return [d for d in found if d.deviation > 0]


def compare_case(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[Difference]:
    """Every value that differs between two entries of one case; empty if they are identical.

    Deviations are relative to each value's natural size: a sum's to the sum of
    |x| (a sum that cancels to near 0 has no relative precision of its own), a
    probed element's to its tensor's root mean square, a sum of |x| or of
    squares to itself. Shapes, dtypes and probe positions must be equal.
    """
    config = [Difference(key, expected.get(key), actual.get(key), math.inf) for key in _CONFIGURATION if expected.get(key) != actual.get(key)]
    if config:
        return config  # another training: its numbers say nothing
    found = _stats_differences("logits", expected["logits"], actual["logits"])
    e_sd, a_sd = expected["state_dict"], actual["state_dict"]
    for name in sorted(e_sd.keys() | a_sd.keys()):
        if name not in e_sd or name not in a_sd:
            found.append(Difference(name, "present" if name in e_sd else "absent", "present" if name in a_sd else "absent", math.inf))
        else:
            found += _stats_differences(name, e_sd[name], a_sd[name])
    return found


def compare_documents(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, list[Difference]]:
    """The differences of every case of two reference documents (a case in only one of them is structural)."""
    result = {}
    for name in sorted(expected["cases"].keys() | actual["cases"].keys()):
        e, a = expected["cases"].get(name), actual["cases"].get(name)
        if e is None or a is None:
            result[name] = [Difference("case", "present" if e else "absent", "present" if a else "absent", math.inf)]
        else:
            result[name] = compare_case(e, a)
    return result


def summary(differences: Sequence[Difference], rtol: float) -> str:
    """One line: identical, or how many values differ, the largest deviation and how many exceed ``rtol``."""
    if not differences:
        return "identical"
    worst = max(d.deviation for d in differences)
    beyond = sum(d.deviation > rtol for d in differences)
    return f"{len(differences)} values differ, largest deviation {worst:.3g}, {beyond} beyond rtol {rtol:g}"


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, help="train the cases and write their reference JSON here")
    parser.add_argument("--data", type=Path, default=None, help="directory holding mnist/ (default: ../shared/data or $HARNESS_TEST_DATA)")
    parser.add_argument("--case", action="append", default=[], help="train only this case (repeatable)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("EXPECTED", "ACTUAL"), help="compare two reference files")
    parser.add_argument("--rtol", type=float, default=0.0, help="deviation --compare accepts (default 0: exact)")
    args = parser.parse_args(argv)
    if args.compare:
        first, second = (json.loads(p.read_text()) for p in args.compare)
        for label, path, doc in zip(("expected", "actual"), args.compare, (first, second)):
            origins = {(c["provenance"].get("harness"), c["provenance"].get("commit"), c["provenance"].get("torch"),
                        c["provenance"].get("cpu_capability"), c["provenance"].get("threads")) for c in doc["cases"].values()}
            for harness_dir, commit, torch_version, capability, threads in sorted(origins, key=str):
                print(f"{label} {path}: {harness_dir} @ {commit}, torch {torch_version}, {capability}, {threads} thread(s)")
        differences = compare_documents(first, second)
        for name, found in differences.items():
            print(f"{name}: {summary(found, args.rtol)}")
            for difference in sorted(found, key=lambda d: -d.deviation)[:20]:
                print(f"  {difference}")
        return 1 if any(d.deviation > args.rtol for found in differences.values() for d in found) else 0
    if args.out is None:
        parser.error("give --out FILE to train, or --compare EXPECTED ACTUAL")
    data_dir = args.data or Path(os.environ.get("HARNESS_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    command = " ".join([sys.executable, "scripts/golden_training.py", *(argv if argv is not None else sys.argv[1:])])
    splits = load_mnist(data_dir)
    cases = {}
    for case in select(args.case):
        cases[case.name] = entry = run_case(case, splits, command)
        print(f"{case.name}: {entry['provenance']['seconds']} s, {entry['logits']['correct']}/{TEST_SAMPLES} test images right", flush=True)
    write(document(cases), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
