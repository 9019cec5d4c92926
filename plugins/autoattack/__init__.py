"""Built-in plugin ``autoattack``: the official AutoAttack (Croce & Hein, ICML 2020) as an attacker.

Registers ``autoattack`` (l_inf and l2, :mod:`.attack`): the ``pyautoattack``
package's own attack objects with its "standard" settings (APGD-CE, APGD-T,
FAB-T, Square), run stage by stage so the harness records each stage's robust
accuracy and what the gradient-free Square breaks that the others did not.
pyautoattack is imported only when the attack runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import hookimpl

if TYPE_CHECKING:
    from harness import Attacker


@hookimpl
def register_attackers() -> list[type[Attacker]]:
    from harness_plugins.autoattack.attack import AutoAttack

    return [AutoAttack]
