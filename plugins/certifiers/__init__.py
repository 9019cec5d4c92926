"""Built-in plugin ``certifiers``: certifiers for any model that implements the matching protocol.

Registers ``lipschitz-margin`` (models that are :class:`harness.LipschitzBounded`)
and ``interval`` (models that are :class:`harness.IntervalBounded`), in
:mod:`.margins`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl

if TYPE_CHECKING:
    from harness import Certifier


@hookimpl
def register_certifiers() -> list[type[Certifier]]:
    from harness_plugins.certifiers.margins import IntervalCertifier, LipschitzMargin

    return [LipschitzMargin, IntervalCertifier]
