"""Built-in plugin ``torchattacks``: the attacks every method is evaluated with.

Registers ``pgd`` (l_inf) and ``pgd-l2`` (l2), torchattacks' PGD and PGDL2
with the v2 paper's settings (:mod:`.pgd`). torchattacks is imported only
when an attack runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl

if TYPE_CHECKING:
    from harness import Attacker


@hookimpl
def register_attackers() -> list[type[Attacker]]:
    from harness_plugins.torchattacks.pgd import PGD, PGDL2

    return [PGD, PGDL2]
