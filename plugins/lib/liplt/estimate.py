"""The CRM code's own certification protocol: an estimate of the pairwise constants, not a bound.

CRM's ``test.py`` reloads the power-iteration vectors saved with the trained
network, runs as many further iterations as training ran per step (MNIST 10,
CIFAR-10 5) and certifies with the resulting LipLT constants. Power iteration
estimates each spectral norm from below, so these constants are at most the
sound ones (:mod:`.sound`) and the radii at least as large: a paper-protocol
number, never a certificate.

The vectors must outlive training: :class:`PowerVectorsSequential` is an
``nn.Sequential`` that keeps them in its state dict (as extra state), and
loads weights saved without them (before they were kept) with none.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from harness import HarnessError
from harness_plugins.lib.liplt.chain import Chain, NotAChain
from harness_plugins.lib.liplt.power import PowerIteration, pairwise

#: How the pairwise constants are combined (see :func:`.power.pairwise`): LipLT, or above the code's
#: class limit LipLT up to the last hidden layer and the last layer naively.
METHODS = ("liplt", "liplt-last-naive")


class PowerVectorsSequential(nn.Sequential):
    """An ``nn.Sequential`` that keeps its training's power-iteration vectors (l2) in its state dict.

    Its forward pass is ``nn.Sequential``'s. ``power_vectors`` is empty until a
    trainer stores them (with ``power_iterations``, its iterations per step,
    and ``pairwise``, one of :data:`METHODS`).
    """

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.power_vectors: list[Tensor] = []
        self.power_iterations = 0
        self.pairwise = "liplt"
        self._register_load_state_dict_pre_hook(_without_vectors)

    def keep_power_vectors(self, vectors: list[Tensor], iterations: int, method: str) -> None:
        if method not in METHODS:
            raise ValueError(f"pairwise method {method!r} is not one of {', '.join(METHODS)}")
        self.power_vectors = [v.detach().clone() for v in vectors]
        self.power_iterations = iterations
        self.pairwise = method

    def get_extra_state(self) -> dict[str, Any]:
        return {"power_vectors": list(self.power_vectors), "power_iterations": self.power_iterations, "pairwise": self.pairwise}

    def set_extra_state(self, state: Any) -> None:
        vectors, iterations, method = state.get("power_vectors"), state.get("power_iterations"), state.get("pairwise")
        tensors = isinstance(vectors, list) and all(isinstance(v, Tensor) for v in vectors)
        if not tensors or not isinstance(iterations, int) or method not in METHODS:
            raise ValueError(f"power-iteration state {state!r} is not vectors, an iteration count and a pairwise method")
        self.power_vectors, self.power_iterations, self.pairwise = vectors, iterations, method


def _without_vectors(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Weights saved before the vectors were kept load with none (strict loading would miss the key)."""
    state_dict.setdefault(f"{prefix}_extra_state", {"power_vectors": [], "power_iterations": 0, "pairwise": "liplt"})


def has_power_vectors(model: nn.Module) -> bool:
    return isinstance(model, PowerVectorsSequential) and bool(model.power_vectors)


def estimated_constants(model: nn.Module, example: Tensor, iterations: int = 0) -> Tensor:
    """The code's constants (K×K float64, on ``example``'s device): the saved vectors plus ``iterations`` more
    (0: as many as training ran per step). The model's saved vectors are left as they are.

    :raises HarnessError: if the model keeps no vectors, or they do not fit its chain.
    """
    if not isinstance(model, PowerVectorsSequential) or not model.power_vectors:
        raise HarnessError(f"{type(model).__name__} keeps no power-iteration vectors from training")
    try:
        chain = Chain.from_module(model, example[:16].detach())
    except NotAChain as e:
        raise HarnessError(f"{type(model).__name__} is not a feed-forward chain LipLT can bound: {e}") from e
    # The initial random vectors are replaced at once; a private generator leaves the global stream alone.
    power = PowerIteration(chain, torch.Generator().manual_seed(0))
    try:
        power.load_state_dict({"vectors": model.power_vectors})
    except ValueError as e:
        raise HarnessError(f"the saved power-iteration vectors do not fit {type(model).__name__}: {e}") from e
    with torch.no_grad():
        norms = power.norms(iterations or model.power_iterations)
        return pairwise(chain, "2", norms, model.pairwise).to(example.device, torch.float64)
