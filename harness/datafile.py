"""Reading the TOML data files plugins register (presets, reported results)."""

from __future__ import annotations

import tomllib
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from harness.errors import PluginError


def read_data_file(path: Path | Traversable, plugin: str, what: str) -> tuple[str, dict[str, Any]]:
    """``(origin, data)``: where the file comes from (for messages) and its parsed content."""
    origin = f"{getattr(path, 'name', path)} (plugin {plugin!r})"
    try:
        return origin, tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PluginError(f"cannot read {what} {origin}: {exc}") from None


def check_keys(raw: dict[str, Any], allowed: set[str], required: set[str], where: str) -> None:
    """A table has only ``allowed`` keys and all ``required`` ones; else the plugin's bug."""
    unknown, missing = set(raw) - allowed, required - set(raw)
    if unknown or missing:
        raise PluginError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
