"""Built-in plugin: LipLT (Fazlyab et al., NeurIPS 2023) and naive Lipschitz certificates.

Registers the ``liplt`` and ``lipschitz-naive`` certifiers
(:mod:`.certifiers`), for l2 and l_inf, and ``liplt-estimate``, the CRM
code's own protocol (an estimate, not a certificate: ``sound = False``), for l2: certified radii from pairwise
Lipschitz constants ``L_pq`` of ``z_p − z_q``. They apply to feed-forward
networks built from plain ``nn.Sequential`` containers (linear and
convolutional layers, average pooling, eval-mode batch norm, element-wise
activations), such as the ``crm_net`` models. The reading of the network, the
LipLT recursion and its sound norms are library code
(:mod:`harness_plugins.lib.liplt`), which the ``crm`` trainer shares (its
training uses the library's power-iteration estimates instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl

if TYPE_CHECKING:
    from harness import Certifier


@hookimpl
def register_certifiers() -> list[type[Certifier]]:
    from harness_plugins.liplt.certifiers import LipLTCertifier, LipLTEstimateCertifier, NaiveLipschitzCertifier

    return [LipLTCertifier, NaiveLipschitzCertifier, LipLTEstimateCertifier]
