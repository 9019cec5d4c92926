"""Built-in plugin: LipLT (Fazlyab et al., NeurIPS 2023) and naive Lipschitz certificates.

Registers the ``liplt`` and ``lipschitz-naive`` certifiers
(:mod:`.certifiers`), for l2 and l_inf: certified radii from pairwise
Lipschitz constants ``L_pq`` of ``z_p − z_q``. They apply to feed-forward
networks built from plain ``nn.Sequential`` containers (linear and
convolutional layers, average pooling, eval-mode batch norm, element-wise
activations), such as the ``crm_net`` models. The network is read as a chain
of linear stages (:mod:`.chain`, which also holds the LipLT recursion); the
norms the recursion needs are sound upper bounds (:mod:`.sound`). Training
uses power-iteration estimates instead (:mod:`.power`, for the ``crm``
trainer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl

if TYPE_CHECKING:
    from harness import Certifier


@hookimpl
def register_certifiers() -> list[type[Certifier]]:
    from harness_plugins.liplt.certifiers import LipLTCertifier, NaiveLipschitzCertifier

    return [LipLTCertifier, NaiveLipschitzCertifier]
