"""Reading the TOML data files plugins register (presets, reported results).

A file that cannot be read, or is not TOML, is the plugin's bug as a whole
(:class:`~harness.errors.PluginError`). Within a readable file each table
(one preset, one reported row) is checked on its own with :class:`Table`, so
one bad row is reported and left out while the others load.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Generic, TypeVar

from harness.errors import PluginError, UsageError, closest
from harness.threat import ThreatModel, parse_eps, parse_norm


def read_data_file(path: Path | Traversable, plugin: str, what: str) -> tuple[str, dict[str, Any]]:
    """``(origin, data)``: where the file comes from (for messages) and its parsed content."""
    origin = f"{getattr(path, 'name', path)} (plugin {plugin!r})"
    try:
        return origin, tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PluginError(f"cannot read {what} {origin}: {exc}") from None


def tables(data: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """The array of tables ``key`` (``[[presets]]``, ``[[results]]``); PluginError if it is something else."""
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise PluginError(f"{where}: '{key}' must be an array of tables ([[{key}]])")
    return value


class RowError(ValueError):
    """One table of a data file is malformed: the message says which key and why."""


T = TypeVar("T")


@dataclass
class DataFile(Generic[T]):
    """What one data file holds: its valid rows, and ``(name as written, what is wrong)`` for each malformed one."""

    file: str
    rows: list[T]
    problems: list[tuple[str, str]]


def read_rows(
    path: Path | Traversable,
    plugin: str,
    what: str,
    array: str,
    parse: Callable[[Table, dict[str, Any]], T],
    *,
    name_key: str,
    allowed: set[str],
    required: set[str],
) -> DataFile[T]:
    """Read the ``[[array]]`` tables of one file, each checked on its own by ``parse(table, whole file)``.

    :raises PluginError: the file cannot be read, is not TOML, or ``parse`` finds the file itself wrong.
    """
    origin, data = read_data_file(path, plugin, what)
    found: DataFile[T] = DataFile(str(getattr(path, "name", path)), [], [])
    for raw in tables(data, array, f"{what} {origin}"):
        try:
            found.rows.append(parse(Table(raw, allowed, required), data))
        except RowError as exc:
            found.problems.append((str(raw.get(name_key)), str(exc)))
    return found


class Table:
    """Typed access to one TOML table: each getter checks the value's type and raises :class:`RowError`."""

    def __init__(self, raw: dict[str, Any], allowed: set[str], required: set[str]) -> None:
        unknown = sorted(set(raw) - allowed)
        if unknown:
            hint = closest(unknown[0], allowed)
            did_you_mean = f"; did you mean {hint!r}?" if hint else ""
            raise RowError(f"unknown key {unknown[0]!r}{did_you_mean} (keys: {', '.join(sorted(allowed))})")
        missing = sorted(required - set(raw))
        if missing:
            raise RowError(f"missing key {missing[0]!r}")
        self.raw = raw

    def _get(self, key: str, default: Any) -> Any:
        return self.raw.get(key, default)

    def text(self, key: str) -> str:
        """A required, non-empty string."""
        value = self.raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"{key!r} must be a non-empty string, got {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if key not in self.raw else self.text(key)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise RowError(f"{key!r} must be true or false, got {value!r}")
        return value

    def integer(self, key: str) -> int | None:
        value = self._get(key, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise RowError(f"{key!r} must be an integer, got {value!r}")
        return value

    def number(self, key: str) -> float | None:
        value = self._get(key, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RowError(f"{key!r} must be a finite number, got {value!r}")
        return float(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise RowError(f"{key!r} must be a table ([...{key}]), got {value!r}")
        return dict(value)

    def threat(self) -> ThreatModel:
        """``norm`` (default ``inf``) and ``eps`` (a number or ``"k/255"``), checked as a threat model."""
        norm, eps = self._get("norm", "inf"), self._get("eps", None)
        if isinstance(eps, bool) or not isinstance(eps, int | float | str):
            raise RowError(f"'eps' must be a number or a fraction such as \"8/255\", got {eps!r}")
        try:
            return ThreatModel(parse_norm(norm), parse_eps(eps))
        except UsageError as exc:
            raise RowError(str(exc)) from None
