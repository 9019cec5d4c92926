"""Built-in plugin: auto_LiRPA's bounds (Xu et al., NeurIPS 2020) as certifiers.

Registers the ``ibp``, ``crown-ibp`` and ``crown`` certifiers
(:mod:`.certifiers`): margin bounds of conventional networks, or of the head
of a :class:`harness.FeatureHead` model over its feature bounds. The bounds
themselves (:mod:`.bounds`) are shared with trainers (IBP and CROWN-IBP
losses). auto_LiRPA 0.3 is optional: it is imported only when a bound is
computed, through the patches of :mod:`.compat`; without it the certifiers
do not apply.
"""

from __future__ import annotations

from harness import Certifier, hookimpl
from harness_plugins.lirpa.certifiers import CROWNCertifier, CROWNIBPCertifier, IBPCertifier


@hookimpl
def register_certifiers() -> list[type[Certifier]]:
    return [IBPCertifier, CROWNIBPCertifier, CROWNCertifier]
