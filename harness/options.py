"""Typed, closed options for components.

A component declares its options as a frozen dataclass. Values come from a
preset (TOML) and from ``--set key=value`` on the command line; they are
validated once, here: unknown keys are rejected with the closest match, values
are converted to the declared type or rejected with the expected type.

Fields marked with :func:`epochs_field` are epoch counts of a schedule. When a
run overrides the number of epochs (``--epochs N``), every such field is scaled
by ``N / epochs`` so the schedule keeps its shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from harness.errors import UsageError, closest

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """For components without options."""


def epochs_field(default: float, doc: str = "") -> Any:
    """A schedule boundary in epochs; scaled with ``--epochs`` (see module docstring)."""
    return dataclasses.field(default=default, metadata={"epochs": True, "doc": doc})


def doc_field(default: Any, doc: str) -> Any:
    """A field with a one-line description shown by ``harness plugins --verbose``."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        text = str(value)
        for choice in choices:
            if str(choice) == text:
                return choice
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise UsageError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise UsageError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise UsageError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            if math.isnan(value):
                raise UsageError(f"{where}: expected a number, got nan")
            return float(value)
        from harness.threat import parse_eps  # accepts "8/255"

        try:
            number = parse_eps(str(value))
            if math.isnan(number):
                raise UsageError("nan")
            return number
        except UsageError:
            with contextlib.suppress(ValueError):
                if math.isinf(infinite := float(str(value).strip())):  # an option may be infinite (a radius may not)
                    return infinite
            raise UsageError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported option type {tp!r} at {where}")


def parse_options(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Build ``cls`` from ``values``, rejecting unknown keys and ill-typed values.

    :param where: what the options belong to, for error messages
        (for example ``"trainer 'linf_v2'"``).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            hint = closest(key, fields)
            mean = f"did you mean {hint!r}? " if hint else ""
            valid = ", ".join(sorted(fields)) or "none"
            raise UsageError(f"{where} has no option {key!r}; {mean}valid options: {valid}")
        kwargs[key] = _convert(value, hints[key], f"{where} option {key!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        raise UsageError(f"{where}: {exc}") from None


def options_dict(options: Any) -> dict[str, Any]:
    """The options as plain data (for storing with a run)."""
    return dataclasses.asdict(options)


def option_docs(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, description) for each option of ``cls``."""
    hints = get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        tp = hints[f.name]
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        rows.append((f.name, tname, default, f.metadata.get("doc", "")))
    return rows


def scale_epochs(options: Any, epochs: int, total_field: str = "epochs") -> Any:
    """Set ``options.<total_field>`` to ``epochs`` and scale every :func:`epochs_field`."""
    old = getattr(options, total_field)
    if old == epochs:
        return options
    ratio = epochs / old
    changes: dict[str, Any] = {total_field: epochs}
    for f in dataclasses.fields(options):
        if f.metadata.get("epochs") and f.name != total_field:
            changes[f.name] = getattr(options, f.name) * ratio
    return dataclasses.replace(options, **changes)


def has_field(options_cls: type, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(options_cls))


__all__ = [
    "NoOptions",
    "doc_field",
    "epochs_field",
    "has_field",
    "option_docs",
    "options_dict",
    "parse_options",
    "scale_epochs",
]
