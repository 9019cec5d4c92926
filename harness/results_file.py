"""Results that could not be recorded: written to a file beside the weights, imported later.

A run's evaluation costs hours; a database that is locked past the busy
timeout, on a full disk, deleted or replaced during the run must not cost it.
The runner retries its final write and then writes everything it would have
recorded (the run, its training record, the evaluation with every per-sample
result) to ``results.json`` in the run's directory; ``harness import FILE``
records it in a database later, as a new run if the database does not know it.

The file is plain JSON (``format`` 2; format 1, from before per-sample outcomes and costs, is still read), written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.checkpoint import write_text_atomic
from harness.errors import UsageError, one_line
from harness.results import AttackResult, CertifierResult, Cost, EvaluationResult, GradientMasking, RadiusStats, SampleResult

FORMAT = 2
#: Formats this harness reads: 1 (before per-sample outcomes, costs and the masking check) and 2.
READS = (1, 2)
FILENAME = "results.json"


def result_to_json(result: EvaluationResult) -> dict[str, Any]:
    return asdict(result)


def result_from_json(data: dict[str, Any]) -> EvaluationResult:
    """The inverse of :func:`result_to_json`; a format-1 result (without costs, stages, outcomes or the masking check) reads with those
    fields at their defaults."""

    def radius(value: dict[str, float] | None) -> RadiusStats | None:
        return None if value is None else RadiusStats(mean=float(value["mean"]), median=float(value["median"]))

    def cost(value: dict[str, Any] | None, seconds: float | None) -> Cost:
        return Cost(seconds=seconds) if value is None else Cost(**value)

    masking = data.get("masking")
    return EvaluationResult(
        samples=int(data["samples"]),
        clean_accuracy=float(data["clean_accuracy"]),
        robust_accuracy=data.get("robust_accuracy"),
        certified_accuracy=data.get("certified_accuracy"),
        attacks=tuple(AttackResult(**{**a, "cost": cost(a.get("cost"), a.get("seconds"))}) for a in data.get("attacks", ())),
        certifiers=tuple(
            CertifierResult(**{**c, "radius": radius(c.get("radius")), "cost": cost(c.get("cost"), c.get("seconds"))})
            for c in data.get("certifiers", ())
        ),
        not_applicable=dict(data.get("not_applicable", {})),
        masking=None if masking is None else GradientMasking(**masking),
    )


def samples_to_json(samples: list[SampleResult]) -> list[dict[str, Any]]:
    return [
        {"index": s.index, "label": s.label, "prediction": s.prediction, "attacks": s.attacks,
         "certificates": {name: list(value) for name, value in s.certificates.items()}, "outcomes": s.outcomes, "broken_by": s.broken_by}
        for s in samples
    ]


def samples_from_json(rows: list[dict[str, Any]]) -> list[SampleResult]:
    """The inverse of :func:`samples_to_json`; format 1 has no outcomes (the store derives them from the verdicts) and no stages."""
    return [
        SampleResult(
            index=int(r["index"]), label=int(r["label"]), prediction=int(r["prediction"]),
            attacks={str(k): bool(v) for k, v in r.get("attacks", {}).items()},
            certificates={str(k): (bool(v[0]), None if v[1] is None else float(v[1])) for k, v in r.get("certificates", {}).items()},
            outcomes={str(k): str(v) for k, v in r.get("outcomes", {}).items()},
            broken_by={str(k): str(v) for k, v in r.get("broken_by", {}).items()},
        )
        for r in rows
    ]


@dataclass
class PendingResults:
    """Everything a run would have recorded after training: what ``results.json`` holds."""

    database: str  # where the run was meant to be recorded (password hidden)
    run_id: int | None  # its id there, if it was created
    run: dict[str, Any]  # the RunInfo fields
    training: dict[str, Any]  # train_seconds, weights (path, sha256, bytes), training history
    evaluation: dict[str, Any]  # config, environment, seconds
    result: EvaluationResult
    samples: list[SampleResult]
    reason: str  # why it was not recorded
    #: The fingerprint of the file it was read from, as written (a format-1 file's, which reading fills with newer defaults).
    read_fingerprint: str | None = None

    def fingerprint(self) -> str:
        """The sha256 of the result and per-sample outcomes: what makes two results files the same results."""
        if self.read_fingerprint is not None:
            return self.read_fingerprint
        return _fingerprint(result_to_json(self.result), samples_to_json(self.samples))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "database": self.database,
            "run_id": self.run_id,
            "run": self.run,
            "training": self.training,
            "evaluation": self.evaluation,
            "result": result_to_json(self.result),
            "samples": samples_to_json(self.samples),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> PendingResults:
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        if data.get("format") not in READS or isinstance(data.get("format"), bool):
            raise ValueError(f"format {data.get('format')!r}, this harness reads formats {', '.join(map(str, READS))}")
        for key, kind in (("database", str), ("run", dict), ("training", dict), ("evaluation", dict), ("result", dict), ("samples", list)):
            if not isinstance(data.get(key), kind):
                raise ValueError(f"its field {key!r} is missing or not a JSON {'object' if kind is dict else kind.__name__}")
        if data.get("run_id") is not None and (not isinstance(data["run_id"], int) or isinstance(data["run_id"], bool)):
            raise ValueError(f"its run_id {data['run_id']!r} is not an integer")
        if not isinstance(data["run"].get("config"), dict) or not isinstance(data["evaluation"].get("config"), dict):
            raise ValueError("its run or evaluation has no configuration object")
        return cls(
            database=str(data["database"]),
            run_id=data.get("run_id"),
            run=dict(data["run"]),
            training=dict(data["training"]),
            evaluation=dict(data["evaluation"]),
            result=result_from_json(data["result"]),
            samples=samples_from_json(data["samples"]),
            reason=str(data.get("reason", "")),
            read_fingerprint=_fingerprint(data["result"], data["samples"]),
        )


def _fingerprint(result: Any, samples: Any) -> str:
    return hashlib.sha256(json.dumps([result, samples], sort_keys=True).encode()).hexdigest()


def write_pending(path: Path, pending: PendingResults) -> Path:
    """Write ``pending`` to ``path`` atomically; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(pending.to_json(), indent=1, allow_nan=False) + "\n")
    return path


def read_pending(path: Path) -> PendingResults:
    """Read a results file; a missing, unreadable or malformed one is a one-line UsageError naming it."""
    try:
        data = json.loads(Path(path).read_text())
        return PendingResults.from_json(data)
    except FileNotFoundError:
        raise UsageError(f"no results file at {str(path)!r}") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UsageError(f"{str(path)!r} is not a harness results file: {one_line(exc)}") from None
