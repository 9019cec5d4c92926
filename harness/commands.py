"""Helpers for plugins that add commands through the ``register_commands(cli)`` hook.

A plugin's commands should look and fail like the built-in ones: the shared
options (:func:`device_option`, :func:`format_option`), the device rule of
``harness run`` (:func:`resolve_device`), plain-text tables
(:func:`text_table`), and :class:`~harness.errors.UsageError` for anything the
user typed wrong (one line, exit status 2; ``harness --debug`` shows the
traceback). Nothing here imports torch until a command runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from harness.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "UsageError", "device_option", "format_option", "resolve_device", "text_table"]

#: What ``--device`` accepts.
DEVICES = ("auto", "cpu", "cuda")

F = Callable[..., Any]


def device_option(f: F) -> F:
    """``--device auto|cpu|cuda`` (default ``auto``: CUDA when present, else the CPU)."""
    return click.option(
        "--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="auto: CUDA when present, else the CPU."
    )(f)


def format_option(choices: Sequence[str]) -> Callable[[F], F]:
    """``--format`` among ``choices`` (the first is the default), passed to the command as ``fmt``."""
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=choices[0], show_default=True, help="Output format.")


def resolve_device(choice: str) -> torch.device:
    """The device ``--device`` names: ``auto`` is CUDA when present; ``cuda`` without CUDA is a UsageError."""
    from harness.env import resolve_device as resolve

    return resolve(choice)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, a dashed rule under the header."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells: Sequence[Any]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
