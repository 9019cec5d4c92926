"""Training-time LipLT: differentiable estimates of the norms, recomputed every step.

As the CRM code (``SequentialLipltLipschitz``, ``NetworkModels.py``):

* l2: the spectral norms of all ``O(L²)`` partial products ``W_k ⋯ W_j`` come
  from one batched power iteration (:class:`PowerIteration`). Per start stage
  ``j`` a persistent batch holds one vector per end stage ``k ≥ j``; an
  iteration is one forward pass through the stages (each stage sees at most
  ``L`` vectors: those carried from earlier starts and its own) and one
  transposed pass back, then the vectors are normalised and ``σ = ‖A v‖``.
  The vectors are warm-started from the previous step and gradients flow
  through the iterations of the current step (they are detached only between
  steps). The pairwise row norms ``‖(e_p − e_q)ᵀ W_L ⋯ W_{k+1}‖`` are exact:
  the ``K`` one-hot rows go back through the transposed stages once.
* l_inf (not in the code, which is l2 only): the induced norm of a product is
  its largest absolute row sum. Computing every row every step is too costly
  for convolutions, so :class:`RowSumEstimate` keeps, per product, the rows
  that were largest at the last exact sweep (refreshed every ``refresh``
  steps) and differentiates through those rows only.

Both are *estimates from below* (as power iteration is): training uses them;
certification uses :mod:`harness_plugins.lib.liplt.sound`, which bounds from above.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from harness_plugins.lib.liplt.chain import Chain, liplt, naive, pair_distances


def back_rows(chain: Chain) -> list[Tensor]:
    """``rows[k + 1]`` = the ``K`` rows of ``W_L ⋯ W_{k+1}`` (``K×in_shape``), for ``k = −1 … L−1``."""
    stages = chain.stages
    last = stages[-1]
    weight = next((p for op in last.ops for p in op.layer.parameters()), None)
    eye = torch.eye(last.out_features, device=weight.device if weight is not None else None)
    if weight is not None:
        eye = eye.to(weight.dtype)
    rows = [eye.reshape(last.out_features, *last.out_shape)]
    for k in range(len(stages) - 1, -1, -1):
        rows.append(stages[k].transpose(rows[-1]))
    rows.reverse()  # rows[i] = rows of W_L ⋯ W_i, i = 0 … L + 1 (the last: the identity)
    return rows[:-1]


class PowerIteration:
    """Warm-started batched power iteration for ``‖W_k ⋯ W_j‖₂``, all ``0 ≤ j ≤ k < L`` at once."""

    def __init__(self, chain: Chain, generator: torch.Generator | None = None) -> None:
        self.chain = chain
        self.hidden = chain.hidden
        weight = next((p for s in chain.stages for op in s.ops for p in op.layer.parameters()), None)
        device, dtype = (weight.device, weight.dtype) if weight is not None else (torch.device("cpu"), torch.float32)
        self.vectors: list[Tensor] = []
        for j in range(self.hidden):
            shape = chain.stages[j].in_shape
            v = torch.randn((self.hidden - j, *shape), generator=generator, device=generator.device if generator else "cpu")
            self.vectors.append(_normalise(v.to(device, dtype)))

    def _forward(self, vectors: list[Tensor]) -> dict[tuple[int, int], Tensor]:
        """``A_jk v_jk`` for every pair, with one pass through the stages."""
        ends: dict[tuple[int, int], Tensor] = {}
        carried: Tensor | None = None
        meta: list[tuple[int, int]] = []
        for i in range(self.hidden):
            mine = [(i, k) for k in range(i, self.hidden)]
            x = vectors[i] if carried is None else torch.cat([carried, vectors[i]])
            meta = meta + mine
            y = self.chain.stages[i].forward(x)
            keep = [r for r, (_, k) in enumerate(meta) if k > i]
            for r, (j, k) in enumerate(meta):
                if k == i:
                    ends[(j, k)] = y[r]
            carried = y[keep] if keep else None
            meta = [meta[r] for r in keep]
        return ends

    def _backward(self, ends: dict[tuple[int, int], Tensor]) -> list[Tensor]:
        """``A_jkᵀ u_jk`` for every pair, with one transposed pass."""
        starts: list[list[Tensor]] = [[] for _ in range(self.hidden)]
        carried: Tensor | None = None
        meta: list[tuple[int, int]] = []
        for i in range(self.hidden - 1, -1, -1):
            mine = [(j, i) for j in range(i + 1)]
            new = torch.stack([ends[p] for p in mine])
            z = new if carried is None else torch.cat([carried, new])
            meta = meta + mine
            u = self.chain.stages[i].transpose(z)
            keep = [r for r, (j, _) in enumerate(meta) if j < i]
            done = {k: u[r] for r, (j, k) in enumerate(meta) if j == i}
            starts[i] = [done[k] for k in range(i, self.hidden)]
            carried = u[keep] if keep else None
            meta = [meta[r] for r in keep]
        return [torch.stack(s) for s in starts]

    def state_dict(self) -> dict[str, list[Tensor]]:
        """The warm-start vectors (what a checkpoint keeps; the generator is used only to make the first ones)."""
        return {"vectors": [v.detach() for v in self.vectors]}

    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        """Continue from :meth:`state_dict`'s vectors (moved to this chain's device and dtype)."""
        vectors = state["vectors"]
        if [tuple(v.shape) for v in vectors] != [tuple(v.shape) for v in self.vectors]:
            raise ValueError(
                f"power-iteration vectors of shapes {[tuple(v.shape) for v in vectors]} do not fit this chain's "
                f"{[tuple(v.shape) for v in self.vectors]}"
            )
        self.vectors = [v.to(mine.device, mine.dtype) for v, mine in zip(vectors, self.vectors)]

    def norms(self, iterations: int) -> dict[tuple[int, int], Tensor]:
        """Run ``iterations`` more iterations (differentiable) and return ``σ_jk = ‖A_jk v_jk‖``.

        They start from the last call's vectors without their graph (the warm start),
        so gradients flow through this call's iterations only.
        """
        vectors = [v.detach() for v in self.vectors]
        for _ in range(iterations):
            vectors = [_normalise(v) for v in self._backward(self._forward(vectors))]
        self.vectors = vectors
        return {p: a.flatten().norm() for p, a in self._forward(vectors).items()}


class RowSumEstimate:
    """``‖W_k ⋯ W_j‖_∞`` (largest absolute row sum) from the rows that were largest at the last exact sweep."""

    def __init__(self, chain: Chain, rows: int = 8, refresh: int = 200, chunk: int = 256) -> None:
        self.chain = chain
        self.hidden = chain.hidden
        self.rows = rows
        self.refresh = refresh
        self.chunk = chunk
        self.calls = 0
        self.candidates: list[Tensor] = []

    def _sweep(self, k: int, index: Tensor) -> list[Tensor]:
        """Absolute row sums (len(index) each) of ``W_k ⋯ W_j`` for ``j = k … 0``, rows ``index``."""
        stage = self.chain.stages[k]
        weight = next((p for op in stage.ops for p in op.layer.parameters()), None)
        u = torch.zeros(len(index), stage.out_features, device=index.device, dtype=weight.dtype if weight is not None else None)
        u[torch.arange(len(index), device=index.device), index] = 1
        u = u.reshape(len(index), *stage.out_shape)
        sums = []
        for j in range(k, -1, -1):
            u = self.chain.stages[j].transpose(u)
            sums.append(u.flatten(1).abs().sum(1))
        return sums  # sums[k - j]

    def _refresh(self) -> None:
        device = next((p.device for s in self.chain.stages for op in s.ops for p in op.layer.parameters()), torch.device("cpu"))
        self.candidates = []
        with torch.no_grad():
            for k in range(self.hidden):
                n = self.chain.stages[k].out_features
                all_sums = [torch.empty(0, device=device) for _ in range(k + 1)]
                for start in range(0, n, self.chunk):
                    index = torch.arange(start, min(start + self.chunk, n), device=device)
                    for t, s in enumerate(self._sweep(k, index)):
                        all_sums[t] = torch.cat([all_sums[t], s])
                top = torch.cat([s.topk(min(self.rows, n)).indices for s in all_sums]).unique()
                self.candidates.append(top)

    def state_dict(self) -> dict[str, int | list[Tensor]]:
        """The steps counted since the start (they time the exact sweeps) and each product's kept rows."""
        return {"calls": self.calls, "candidates": list(self.candidates)}

    def load_state_dict(self, state: dict[str, int | list[Tensor]]) -> None:
        """Continue from :meth:`state_dict` (the rows moved to this chain's device)."""
        calls, candidates = state["calls"], state["candidates"]
        if not isinstance(calls, int) or not isinstance(candidates, list) or len(candidates) not in (0, self.hidden):
            raise ValueError(f"row-sum estimator state {state!r} does not fit a chain of {self.hidden} products")
        device = next((p.device for s in self.chain.stages for op in s.ops for p in op.layer.parameters()), torch.device("cpu"))
        self.calls = calls
        self.candidates = [c.to(device) for c in candidates]

    def norms(self) -> dict[tuple[int, int], Tensor]:
        if self.calls % self.refresh == 0:
            self._refresh()
        self.calls += 1
        out = {}
        for k in range(self.hidden):
            for t, s in enumerate(self._sweep(k, self.candidates[k])):
                out[(k - t, k)] = s.max()
        return out


def pairwise(
    chain: Chain,
    norm: str,
    norms: dict[tuple[int, int], Tensor],
    method: str = "liplt",
) -> Tensor:
    """K×K pairwise constants from estimated products' norms (differentiable).

    ``method``: "liplt"; "naive"; or "liplt-last-naive", the code's fallback above
    101 classes: LipLT up to the last hidden layer, ``m_{L−1}·β·‖w_p − w_q‖``.
    """
    rows = back_rows(chain)
    cache: dict[int, Tensor] = {}

    def pairs(k: int) -> Tensor:
        if k not in cache:
            cache[k] = pair_distances(rows[k + 1], norm)
        return cache[k]

    def product_norm(j: int, k: int) -> Tensor:
        return norms[(j, k)]

    if method == "liplt-last-naive":
        last = chain.hidden - 1
        # m_{L−1}: the same recursion with W_{L−1} as the last stage and whole-map norms.
        m = liplt(product_norm, lambda k: norms[(k + 1, last)], chain.slopes[:last])
        return chain.slopes[last][1] * m * pairs(last)
    combine: Callable = liplt if method == "liplt" else naive
    return combine(product_norm, pairs, chain.slopes)


def _normalise(v: Tensor) -> Tensor:
    return v / v.flatten(1).norm(dim=1).clamp(min=1e-12).reshape(-1, *([1] * (v.dim() - 1)))
