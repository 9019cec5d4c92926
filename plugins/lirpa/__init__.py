"""Built-in plugin: auto_LiRPA's bounds (Xu et al., NeurIPS 2020) as certifiers.

Registers the ``ibp``, ``crown-ibp`` and ``crown`` certifiers
(:mod:`.certifiers`): margin bounds of conventional networks, or of the head
of a :class:`harness.FeatureHead` model over its feature bounds. The bounds
themselves are library code (:mod:`harness_plugins.lib.lirpa`), which trainers
share (the hybrid's IBP and CROWN-IBP losses). auto_LiRPA 0.3 is optional: it
is imported only when a bound is computed; without it the certifiers do not
apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl

if TYPE_CHECKING:
    from harness import Certifier


@hookimpl
def register_certifiers() -> list[type[Certifier]]:
    from harness_plugins.lirpa.certifiers import CROWNCertifier, CROWNIBPCertifier, IBPCertifier

    return [IBPCertifier, CROWNIBPCertifier, CROWNCertifier]
