"""The CRM code's own certification protocol: an estimate of the pairwise constants, not a bound.

CRM's ``test.py`` reloads the power-iteration vectors saved with the trained
network, runs as many further iterations as training ran per step (MNIST 10,
CIFAR-10 5) and certifies with the resulting LipLT constants. Power iteration
estimates each spectral norm from below, so these constants are at most the
sound ones (:mod:`.sound`) and the radii at least as large: a paper-protocol
number, never a certificate.

The vectors must outlive training: :class:`PowerVectorsSequential` is an
``nn.Sequential`` that keeps them as buffers (saved with the weights; tensors,
so auto_LiRPA's tracing and the harness's checks see nothing new), made when a
trainer stores them or a state dict that has them is loaded. Weights saved
without them load as before, with none.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from harness import HarnessError
from harness_plugins.lib.liplt.chain import Chain, NotAChain
from harness_plugins.lib.liplt.power import PowerIteration, pairwise

#: How the pairwise constants are combined (see :func:`.power.pairwise`): LipLT, or above the code's
#: class limit LipLT up to the last hidden layer and the last layer naively. Stored as the index.
METHODS = ("liplt", "liplt-last-naive")
#: Buffer names: one vector batch per start layer, the iterations per training step, the method's index.
VECTOR = "power_vector_"
ITERATIONS = "power_iteration_count"
METHOD = "power_pairwise"


class PowerVectorsSequential(nn.Sequential):
    """An ``nn.Sequential`` that keeps its training's power-iteration vectors (l2) as buffers.

    Its forward pass is ``nn.Sequential``'s. :attr:`power_vectors` is empty
    until a trainer stores them (:meth:`keep_power_vectors`, with its
    iterations per step and the pairwise method).
    """

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self._register_load_state_dict_pre_hook(self._make_room)

    @property
    def power_vectors(self) -> list[Tensor]:
        return [self._buffers[name] for name in sorted(self._vector_names(), key=lambda n: int(n[len(VECTOR):]))]

    @property
    def power_iterations(self) -> int:
        return int(self._buffers[ITERATIONS]) if ITERATIONS in self._buffers else 0

    @property
    def pairwise(self) -> str:
        return METHODS[int(self._buffers[METHOD])] if METHOD in self._buffers else METHODS[0]

    def _vector_names(self) -> list[str]:
        return [name for name in self._buffers if name.startswith(VECTOR)]

    def _forget(self) -> None:
        for name in [*self._vector_names(), ITERATIONS, METHOD]:
            self._buffers.pop(name, None)

    def keep_power_vectors(self, vectors: list[Tensor], iterations: int, method: str) -> None:
        """Store the vectors (one batch per start layer), the iterations per training step and the pairwise method."""
        if method not in METHODS:
            raise ValueError(f"pairwise method {method!r} is not one of {', '.join(METHODS)}")
        self._forget()
        for i, v in enumerate(vectors):
            self.register_buffer(f"{VECTOR}{i}", v.detach().clone())
        device = vectors[0].device if vectors else None
        self.register_buffer(ITERATIONS, torch.tensor(iterations, device=device))
        self.register_buffer(METHOD, torch.tensor(METHODS.index(method), device=device))

    def _make_room(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Before loading: buffers for the vectors the state dict has, none if it has none (weights saved before they were kept)."""
        self._forget()
        device = next((p.device for p in self.parameters()), None)
        for key, value in state_dict.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and (name.startswith(VECTOR) or name in (ITERATIONS, METHOD)) and isinstance(value, Tensor):
                self.register_buffer(name, torch.empty_like(value, device=device))


def has_power_vectors(model: nn.Module) -> bool:
    return isinstance(model, PowerVectorsSequential) and bool(model.power_vectors)


def estimated_constants(model: nn.Module, example: Tensor, iterations: int = 0) -> Tensor:
    """The code's constants (K×K float64, on ``example``'s device): the saved vectors plus ``iterations`` more
    (0: as many as training ran per step). The model's saved vectors are left as they are.

    :raises HarnessError: if the model keeps no vectors, or they do not fit its chain.
    """
    if not has_power_vectors(model):
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
