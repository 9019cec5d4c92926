"""Upper bounds on the norms that LipLT needs, for certification.

A certificate is only as sound as its Lipschitz constants, so every value
here bounds from above (power iteration, which estimates from below, is for
training: :mod:`.power`). All arithmetic is in float64 (float32 weights are
exact in float64).

l2 (spectral norms), for a product ``A = W_k ⋯ W_j``:

1. ``min(rows, cols) ≤ dense_limit``: exact. The Gram matrix of the smaller
   side is built from the network's own passes (the identity basis pushed
   through :meth:`Chain.product` and :meth:`Chain.product_t` in chunks, or, when
   cheaper, ``A`` materialised and multiplied; products sharing an end share
   the passes, and ``W_k (AAᵀ) W_kᵀ`` grows one output-side Gram matrix from the
   previous), and its largest eigenvalue is certified by a Cholesky
   factorisation of ``t·I − G`` (:func:`gram_norm_bound`).
2. Otherwise, a single stage: the product of its layers' bounds. A convolution
   is bounded by the exact norm of the circular convolution it is a restriction
   of (:func:`conv_norm_bound`), a dense layer by its exact norm.
3. Otherwise: ``min_i bound(j, i)·bound(i+1, k)`` (norms are submultiplicative).

l_inf: the induced norm is the largest absolute row sum, computed exactly by
pushing the rows of stage ``k``'s output back through the transposed stages
(one sweep gives ``‖W_k ⋯ W_j‖_∞`` for every ``j ≤ k``). Through convolutions,
rows far enough apart never overlap, so one probe carries many of them and
each row's sum is read off its own footprint. A sweep that would still cost
more than ``LINF_BUDGET`` multiply-adds is replaced by the smaller of
``max(|W_k| ⋯ |W_j|·1)`` and the split bound of 3., both sound.

Pairwise row norms ``‖(e_p − e_q)ᵀ W_L ⋯ W_{k+1}‖`` (l2: Euclidean, l_inf: the
dual l1 norm) are exact: the ``K`` one-hot rows go back through the stages once.

Rounding: each value is multiplied by ``1 + ROUNDING``. The float64 error of
these passes is of order ``√m·u·‖|W_k|⋯|W_j|‖`` (``u = 2⁻⁵³``, ``m`` the terms
summed along the chain, below 10⁵ for the CRM nets); ``ROUNDING = 1e-6``
covers it unless ``|W_k|⋯|W_j|`` exceeds ``W_k⋯W_j`` in norm by about 10⁷. (The
worst-case, Higham-style bound ``m·u·‖|W_k|⋯|W_j|‖`` is not used: it is orders
of magnitude above the actual error and would swamp the certificate.) The
eigenvalue step adds its own rigorous Cholesky margin.

Cost, measured on random full-width nets with ``DENSE_LIMIT = 4096`` (an idle
2-core CPU / one H100): ``4c3f`` on MNIST l2 12 s / 1 s, l_inf 3 s / 0.2 s;
``6c2f`` on CIFAR-10 l2 42 s / 2.4 s, l_inf 7 s / 0.2 s. A limit of 3072
takes the 6c2f l2 time to about a third, at constants 1.2–1.5× looser (at
random initialisation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness_plugins.lib.liplt.chain import Chain, LinearOp, Stage, liplt, naive, pair_distances

#: Relative slack on every norm for float64 rounding in the passes (see the module docstring).
ROUNDING = 1e-6
#: Largest ``min(rows, cols)`` of a product whose l2 norm is computed exactly (a Gram matrix that size).
#: 4096 makes exact every product that starts at an MNIST or CIFAR-10 input (784, 3072 pixels) and,
#: in 4c3f and 6c2f, every one that ends at or after their second stride-2 convolution (3136, 4096 outputs).
DENSE_LIMIT = 4096
#: Multiply-adds an exact l_inf sweep may take before the cheaper sound bounds replace it.
LINF_BUDGET = 4e11
#: Entries of one chunk of basis vectors in flight (float64: 64 MiB).
CHUNK_ENTRIES = 1 << 23
#: Largest ``A`` (entries) materialised to form its Gram matrix by a matrix product.
MATERIALISE_ENTRIES = 1 << 25
#: Entries of the Gram matrices (and materialised products) computed together in one sweep (float64: 1 GiB).
BATCH_ENTRIES = 1 << 27
#: How many times faster float64 matrix products run than float64 convolutions (per multiply-add), roughly.
GEMM_SPEEDUP = 3.0

_U = 2.0**-53

Norm = Literal["2", "inf"]


# -- eigenvalues ----------------------------------------------------------------------------


def gram_norm_bound(gram: Tensor) -> float:
    """An upper bound on ``λ_max`` of a symmetric positive semi-definite float64 matrix.

    An estimate ``λ̂`` (eigvalsh, or Lanczos for large matrices on CPU) is
    certified by factorising ``t·I − G`` for ``t`` slightly above it: if the
    Cholesky factorisation succeeds in floating point, ``t·I − G + E`` is
    positive semi-definite with ``‖E‖ ≤ γ_{n+1}·n·t`` (Demmel), so
    ``λ_max ≤ t·(1 + 2(n+1)²u)``. If no ``t`` up to ``2λ̂`` passes, the
    Frobenius norm (always an upper bound) is returned.
    """
    gram = (gram + gram.T).mul_(0.5)
    n = gram.shape[0]
    frobenius = float(torch.linalg.matrix_norm(gram)) * (1 + (n + 2) * _U)
    if frobenius == 0:
        return 0.0
    estimate = _largest_eigenvalue(gram)
    margin = 1 + 2 * (n + 1) ** 2 * _U
    for rel in (1e-9, 1e-7, 1e-5, 1e-3, 1e-1, 1.0):
        t = estimate * (1 + rel)
        if t <= 0 or t * margin >= frobenius:
            break
        shifted = gram.neg()
        shifted.diagonal().add_(t)
        _, info = torch.linalg.cholesky_ex(shifted)
        del shifted
        if int(info) == 0:
            return t * margin
    return frobenius


def _largest_eigenvalue(gram: Tensor) -> float:
    n = gram.shape[0]
    if gram.device.type == "cpu" and n > 512:
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        try:
            return float(eigsh(gram.numpy(), k=1, which="LA", ncv=min(n, 32), tol=1e-12, return_eigenvectors=False)[0])
        except ArpackNoConvergence:
            pass
    return float(torch.linalg.eigvalsh(gram)[-1])


# -- single layers --------------------------------------------------------------------------


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _dense_kernel(conv: nn.Conv2d) -> Tensor:
    """The weight with groups expanded (block-diagonal) and dilation written out (zeros between taps)."""
    w = conv.weight.detach().double()
    out_c, in_g, kh, kw = w.shape
    groups = conv.groups
    full = w.new_zeros(out_c, in_g * groups, kh, kw)
    per = out_c // groups
    for g in range(groups):
        full[g * per : (g + 1) * per, g * in_g : (g + 1) * in_g] = w[g * per : (g + 1) * per]
    dh, dw = _pair(conv.dilation)
    if (dh, dw) != (1, 1):
        dilated = full.new_zeros(out_c, in_g * groups, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        dilated[:, :, ::dh, ::dw] = full
        full = dilated
    return full


def circular_conv_norm(kernel: Tensor, grid: tuple[int, int], stride: tuple[int, int] = (1, 1)) -> float:
    """The exact l2 norm of the multi-channel circular convolution ``out[o] = Σ_u K[u]·x[(s·o + u) mod N]``.

    ``kernel`` is ``C_out×C_in×kh×kw`` (dense: no groups or dilation), ``grid``
    the input's ``N_h×N_w``, each a multiple of the stride. Space-to-depth turns
    the stride-``s`` convolution on ``N×N`` into a stride-1 one on ``(N/s)×(N/s)``
    with ``C_in·s²`` input channels (tap ``u = s·q + r`` reads phase ``r`` at
    offset ``q``); the DFT diagonalises that, so its norm is the largest
    singular value of the transfer matrices ``K̂(ω) = Σ_q K[q]·e^{2πi⟨ω,q⟩/M}``
    over the ``M_h×M_w`` frequencies.
    """
    kernel = kernel.double()
    out_c, in_c, kh, kw = kernel.shape
    (sh, sw), (nh, nw) = stride, grid
    if nh % sh or nw % sw:
        raise ValueError(f"grid {grid} is not a multiple of the stride {stride}")
    mh, mw = nh // sh, nw // sw
    qh, qw = -(-kh // sh), -(-kw // sw)
    padded = kernel.new_zeros(out_c, in_c, qh * sh, qw * sw)
    padded[:, :, :kh, :kw] = kernel
    # [o, c, q_h, r_h, q_w, r_w] → [o, (c, r_h, r_w), q_h, q_w]
    phases = padded.reshape(out_c, in_c, qh, sh, qw, sw).permute(0, 1, 3, 5, 2, 4).reshape(out_c, in_c * sh * sw, qh, qw)
    fh = torch.exp(2j * math.pi * torch.outer(torch.arange(mh), torch.arange(qh)).double() / mh).to(kernel.device)
    fw = torch.exp(2j * math.pi * torch.outer(torch.arange(mw), torch.arange(qw)).double() / mw).to(kernel.device)
    transfer = torch.einsum("oiab,xa,yb->xyoi", phases.to(torch.complex128), fh, fw)
    return float(torch.linalg.matrix_norm(transfer, ord=2).max())


def conv_norm_bound(conv: nn.Conv2d, input_shape: tuple[int, ...]) -> float:
    """An upper bound on the l2 norm of a zero-padded ``conv`` (no bias) on inputs ``C×H×W``.

    With padding ``p``, the convolution is a restriction (zero-padding embedding
    in, some outputs out) of the circular convolution on a grid ``N ≥ H + 2p``
    (rounded up to a multiple of the stride): no tap of a kept output wraps
    around. Restrictions do not increase the norm, so the circular
    convolution's exact norm (:func:`circular_conv_norm`) bounds it. Groups and
    dilation are written out into a dense kernel.
    """
    if conv.padding_mode != "zeros":
        raise ValueError(f"Conv2d with padding_mode={conv.padding_mode!r}: only zero padding is bounded")
    kernel = _dense_kernel(conv)
    _, h, w = input_shape[-3:]
    sh, sw = _pair(conv.stride)
    kh, kw = kernel.shape[-2:]
    if isinstance(conv.padding, str):  # "valid" or "same" (stride 1): total padding per axis
        total = (0, 0) if conv.padding == "valid" else (kh - 1, kw - 1)
    else:
        ph, pw = _pair(conv.padding)
        total = (2 * ph, 2 * pw)
    nh = -(-max(h + total[0], kh) // sh) * sh
    nw = -(-max(w + total[1], kw) // sw) * sw
    return circular_conv_norm(kernel, (nh, nw), (sh, sw)) * (1 + ROUNDING)


def _bn_scale(layer: nn.Module) -> Tensor:
    scale = layer.running_var.double().add(layer.eps).rsqrt()
    return scale * layer.weight.detach().double() if layer.weight is not None else scale


def _nonnegative(layer: nn.Module) -> bool:
    return isinstance(layer, nn.AvgPool2d)


def op_norm_bound(op: LinearOp, norm: Norm, *, dense_limit: int = DENSE_LIMIT) -> float:
    """An upper bound on one layer's induced norm (exact for l_inf, and for l2 except convolutions)."""
    layer = op.layer
    if isinstance(layer, nn.Flatten):
        return 1.0
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return float(_bn_scale(layer).abs().max()) * (1 + ROUNDING)
    if isinstance(layer, nn.Linear):
        w = layer.weight.detach().double()
        if norm == "inf":
            return float(w.abs().sum(1).max()) * (1 + ROUNDING)
        if min(w.shape) <= dense_limit:
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            return math.sqrt(gram_norm_bound(gram)) * (1 + ROUNDING)
        return math.sqrt(float(w.abs().sum(0).max()) * float(w.abs().sum(1).max())) * (1 + ROUNDING)
    if isinstance(layer, nn.Conv2d):
        if norm == "2":
            return conv_norm_bound(layer, op.in_shape)
        # Each entry of a convolution's matrix is one weight: the row sums of |A| are |w| convolved with ones.
        ones = torch.ones((1, *op.in_shape), dtype=torch.float64, device=layer.weight.device)
        return float(_abs_forward(op, ones).max()) * (1 + ROUNDING)
    if _nonnegative(layer):
        # Non-negative entries: the row and column sums are A·1 and Aᵀ·1, and ‖A‖₂ ≤ √(‖A‖₁‖A‖_∞).
        device = next((b.device for b in layer.buffers()), None)
        rows = float(op.forward(torch.ones((1, *op.in_shape), dtype=torch.float64, device=device)).max())
        if norm == "inf":
            return rows * (1 + ROUNDING)
        cols = float(op.transpose(torch.ones((1, *op.out_shape), dtype=torch.float64, device=device)).max())
        return math.sqrt(rows * cols) * (1 + ROUNDING)
    raise ValueError(f"no norm bound for {type(layer).__name__}")


def _abs_forward(op: LinearOp, v: Tensor) -> Tensor:
    """``|A|·v`` for the layer's matrix ``A`` (entry-wise absolute value)."""
    layer = op.layer
    if isinstance(layer, nn.Linear):
        return v @ layer.weight.detach().to(v.dtype).abs().t()
    if isinstance(layer, nn.Conv2d):
        weight = layer.weight.detach().to(v.dtype).abs()
        return F.conv2d(v, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return v * _bn_scale(layer).to(v).abs().reshape(-1, *([1] * (v.dim() - 2)))
    if isinstance(layer, nn.Flatten) or _nonnegative(layer):
        return op.forward(v)
    raise ValueError(f"no absolute value of {type(layer).__name__}")


def _monomial(op: LinearOp) -> bool:
    """Whether the layer's matrix has at most one non-zero per row and per column.

    Then ``|A·B| = |A|·|B|`` whichever side it is on, so a stage with at most one
    other layer has ``‖W‖_∞ = max(|W|·1)`` exactly. Flatten, batch norm, and 1×1
    convolutions (any stride or padding) whose channel matrix is monomial, such
    as ``crm_net``'s normalising ``x ↦ 2x − 1``, are.
    """
    layer = op.layer
    if isinstance(layer, (nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d)):
        return True
    if isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros":
        kernel = _dense_kernel(layer)
        if kernel.shape[-2:] != (1, 1):
            return False
        nonzero = kernel[:, :, 0, 0] != 0
        return bool((nonzero.sum(0) <= 1).all() and (nonzero.sum(1) <= 1).all())
    return False


def _macs(op: LinearOp) -> float:
    """Multiply-adds of one pass of one vector through the layer (for choosing how to compute)."""
    layer = op.layer
    out = math.prod(op.out_shape)
    if isinstance(layer, nn.Linear):
        return float(layer.in_features * layer.out_features)
    if isinstance(layer, nn.Conv2d):
        return float(out * layer.weight[0].numel())
    if isinstance(layer, nn.AvgPool2d):
        return float(out * math.prod(_pair(layer.kernel_size)))
    return float(out)


# -- products -------------------------------------------------------------------------------


def _ends(anchor: int, t: int, forward: bool) -> tuple[int, int]:
    """``(j, k)`` of the product from ``anchor`` to ``t``: ``anchor`` is ``j`` going forward, ``k`` going back."""
    return (anchor, t) if forward else (t, anchor)


class SoundNorms:
    """Upper bounds on ``‖W_k ⋯ W_j‖`` and the pairwise row norms of a :class:`Chain`, computed once each.

    :param norm: ``"2"`` (spectral norms) or ``"inf"`` (induced l_inf norms).
    :param dense_limit: the largest ``min(rows, cols)`` of a product whose l2
        norm is computed exactly; above it, the bounds of the module docstring.
    :param device: where the computation runs; the chain's weights must be
        there (default: their device).
    :param wanted: the products ``(j, k)`` that will be asked for, so that the
        sweeps compute them together (default: all ``0 ≤ j ≤ k < L``, as LipLT
        needs; the naive bound needs ``(k, k)``). Others can still be asked for.
    """

    def __init__(
        self,
        chain: Chain,
        norm: Norm,
        *,
        dense_limit: int = DENSE_LIMIT,
        device: torch.device | str | None = None,
        wanted: Iterable[tuple[int, int]] | None = None,
    ) -> None:
        if norm not in ("2", "inf"):
            raise ValueError(f"norm must be '2' or 'inf', got {norm!r}")
        self.chain = chain
        self.kind = norm
        self.dense_limit = dense_limit
        if device is None:
            weights = (p for s in chain.stages for op in s.ops for p in op.layer.parameters())
            device = next(weights, torch.zeros(0)).device
        self.device = torch.device(device)
        hidden = chain.hidden
        self.wanted = set(wanted) if wanted is not None else {(j, k) for k in range(hidden) for j in range(k + 1)}
        self._norms: dict[tuple[int, int], float] = {}
        self._pairs: dict[int, Tensor] = {}
        self._grams: dict[tuple[int, int], Tensor] = {}  # output-side Gram matrices kept for the next stage

    # -- the two callbacks of chain.liplt / chain.naive --

    def norm(self, j: int, k: int) -> float:
        """An upper bound on ``‖W_k ⋯ W_j‖`` (``0 ≤ j ≤ k ≤ L``)."""
        if not 0 <= j <= k < len(self.chain.stages):
            raise IndexError(f"no product W_{k}⋯W_{j} in a chain of {len(self.chain.stages)} stages")
        if (j, k) not in self._norms:
            with torch.no_grad():
                if self.kind == "2":
                    self._norms[(j, k)] = self._l2(j, k)
                else:
                    self._linf(j, k)
        return self._norms[(j, k)]

    def pairs(self, k: int) -> Tensor:
        """K×K float64: ``‖(e_p − e_q)ᵀ W_L ⋯ W_{k+1}‖`` (dual norm), ``k = −1 … L−1``."""
        if not self._pairs:
            with torch.no_grad():
                self._pair_sweep()
        return self._pairs[k]

    # -- l2 --

    def _l2(self, j: int, k: int) -> float:
        stages = self.chain.stages
        if self._dense(j, k):
            return self._l2_dense(j, k)
        if j == k:
            return math.prod(op_norm_bound(op, "2", dense_limit=self.dense_limit) for op in stages[j].ops)
        return min(self.norm(j, i) * self.norm(i + 1, k) for i in range(j, k))

    def _dense(self, j: int, k: int) -> bool:
        stages = self.chain.stages
        return min(stages[j].in_features, stages[k].out_features) <= self.dense_limit

    def _l2_dense(self, j: int, k: int) -> float:
        """The exact spectral norm of ``W_k ⋯ W_j`` through the Gram matrix of its smaller side.

        Products that share that side's end (the anchor: ``j`` for ``AᵀA``, ``k``
        for ``AAᵀ``) are computed together, so that the basis goes through the
        shared stages once. An output-side Gram matrix ``AAᵀ`` of ``W_{k−1} ⋯ W_j``
        is kept when ``W_k ⋯ W_j`` will need one too: ``W_k (AAᵀ) W_kᵀ`` costs two
        passes through stage ``k`` only.
        """
        forward = self._input_side(j, k)
        if not forward and (j, k - 1) in self._grams:
            self._gram_done(j, k, self._propagate(self._grams.pop((j, k - 1)), k))
            return self._norms[(j, k)]
        anchor, mine = (j, k) if forward else (k, j)

        def joins(t: int) -> bool:
            a, b = _ends(anchor, t, forward)
            grows = not forward and (a, b - 1) in self._grams  # it will be propagated instead
            return self._dense(a, b) and self._input_side(a, b) == forward and (a, b) not in self._norms and not grows

        others = {b if forward else a for a, b in self.wanted if (a if forward else b) == anchor} - {mine}
        for batch in self._batches(anchor, [mine] + [t for t in sorted(others) if joins(t)], forward):
            self._gram_sweep(anchor, batch, forward)
        return self._norms[(j, k)]

    def _input_side(self, j: int, k: int) -> bool:
        """Whether the Gram matrix of ``W_k ⋯ W_j`` is taken on its input side (``AᵀA``)."""
        return self.chain.stages[j].in_features <= self.chain.stages[k].out_features

    def _gram_done(self, j: int, k: int, gram: Tensor) -> None:
        """Record the norm from a Gram matrix; keep an output-side one that ``(j, k + 1)`` will grow from."""
        self._norms[(j, k)] = math.sqrt(gram_norm_bound(gram)) * (1 + ROUNDING)
        after = (j, k + 1)
        if (
            not self._input_side(j, k)
            and after in self.wanted
            and after not in self._norms
            and self._dense(*after)
            and not self._input_side(*after)
        ):
            self._grams[(j, k)] = gram

    def _propagate(self, gram: Tensor, k: int) -> Tensor:
        """``W_k G W_kᵀ`` for a symmetric ``G`` on stage ``k``'s input."""
        stage = self.chain.stages[k]
        chunk = max(1, CHUNK_ENTRIES // max(stage.in_features, stage.out_features))
        result = gram
        # Rows of G through W give (W G)ᵀ; the rows of W G through W give (W G Wᵀ)ᵀ = W G Wᵀ.
        for _ in range(2):
            out = torch.empty(result.shape[0], stage.out_features, dtype=torch.float64, device=self.device)
            for start in range(0, result.shape[0], chunk):
                block = result[start : start + chunk].reshape(-1, *stage.in_shape)
                out[start : start + chunk] = stage.forward(block).flatten(1)
            result = out.T.contiguous()
        return result

    def _batches(self, anchor: int, targets: list[int], forward: bool) -> list[list[int]]:
        """``targets`` in groups whose Gram matrices (and materialised products) fit ``BATCH_ENTRIES``."""
        batches: list[list[int]] = []
        used = math.inf
        for t in targets:
            size = self._plan(*_ends(anchor, t, forward))[1]
            if used + size > BATCH_ENTRIES:
                batches.append([])
                used = 0
            batches[-1].append(t)
            used += size
        return batches

    def _plan(self, j: int, k: int) -> tuple[bool, int]:
        """Whether to materialise ``W_k ⋯ W_j`` (else: the Gram by a second pass), and the entries it holds."""
        stages = self.chain.stages
        n_in, n_out = stages[j].in_features, stages[k].out_features
        n, other = min(n_in, n_out), max(n_in, n_out)
        pass_macs = sum(_macs(op) for s in stages[j : k + 1] for op in s.ops)
        # Materialising costs one pass and a matrix product n²·other; the Gram by passes costs two passes.
        materialise = n * other <= MATERIALISE_ENTRIES and n * other <= GEMM_SPEEDUP * pass_macs
        return materialise, n * n + (n * other if materialise else 0)

    def _gram_sweep(self, anchor: int, targets: list[int], forward: bool) -> None:
        """Exact norms of the products from ``anchor`` to each target, one pass of the basis through them all.

        ``forward``: Gram matrices ``AᵀA`` of ``W_t ⋯ W_anchor`` (basis of stage
        ``anchor``'s input); else ``AAᵀ`` of ``W_anchor ⋯ W_t`` (basis of its output).
        """
        chain, stages = self.chain, self.chain.stages
        far = max(targets) if forward else min(targets)
        path = range(anchor, far + 1) if forward else range(anchor, far - 1, -1)
        shape = stages[anchor].in_shape if forward else stages[anchor].out_shape
        n = math.prod(shape)
        plans = {t: self._plan(*_ends(anchor, t, forward))[0] for t in targets}
        held = {}  # per target: the materialised product (rows: basis vectors), or the Gram matrix
        for t in targets:
            width = (stages[t].out_features if forward else stages[t].in_features) if plans[t] else n
            held[t] = torch.empty(n, width, dtype=torch.float64, device=self.device)
        widest = max(max(stages[i].in_features, stages[i].out_features) for i in path)
        chunk = max(1, min(n, CHUNK_ENTRIES // widest))
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            u = self._basis(shape, rows.start, rows.stop)
            for i in path:
                u = stages[i].forward(u) if forward else stages[i].transpose(u)
                if i not in held:
                    continue
                if plans[i]:
                    held[i][rows] = u.flatten(1)
                else:  # rows of the Gram matrix: back through the same stages
                    back = chain.product_t(u, anchor, i) if forward else chain.product(u, i, anchor)
                    held[i][rows] = back.flatten(1)
        for t in targets:
            gram = held.pop(t)
            if plans[t]:
                gram = gram @ gram.T
            self._gram_done(*_ends(anchor, t, forward), gram)
            del gram

    def _basis(self, shape: tuple[int, ...], start: int, stop: int) -> Tensor:
        """Rows ``start … stop−1`` of the identity, shaped ``(stop − start)×shape``."""
        n = math.prod(shape)
        e = torch.zeros(stop - start, n, dtype=torch.float64, device=self.device)
        e[torch.arange(stop - start, device=self.device), torch.arange(start, stop, device=self.device)] = 1
        return e.reshape(stop - start, *shape)

    # -- l_inf --

    def _linf(self, j: int, k: int) -> None:
        """Fill ``_norms[(j, k)]``: one exact sweep back from ``k`` (for every wanted ``j' ≤ k``), or bounds."""
        stages = self.chain.stages
        if j == k and sum(not _monomial(op) for op in stages[k].ops) <= 1:
            # One non-monomial layer: |W_k| is the product of its layers' |·|, so the abs bound is exact.
            self._norms[(k, k)] = self._abs_bound(k, k)
            return
        lowest = min([j] + [i for i, kk in self.wanted if kk == k and (i, k) not in self._norms])

        def cost(low: int) -> float:
            return _row_probes(stages, low, k)[0] * sum(_macs(op) for s in stages[low : k + 1] for op in s.ops)

        while lowest < j and cost(lowest) > LINF_BUDGET:
            lowest += 1
        if cost(lowest) <= LINF_BUDGET:
            self._linf_sweep(k, lowest)
            return
        bound = self._abs_bound(j, k)
        if j < k:
            bound = min(bound, min(self.norm(j, i) * self.norm(i + 1, k) for i in range(j, k)))
        self._norms[(j, k)] = bound

    def _linf_sweep(self, k: int, lowest: int) -> None:
        """Exact ``‖W_k ⋯ W_i‖_∞`` for ``lowest ≤ i ≤ k``: the rows of stage ``k``'s output, pushed back.

        Where every layer on the way is local (convolutions, average pooling,
        batch norm), rows far enough apart have disjoint supports at every
        stage, so one probe carries many rows at once (one channel, the pixels
        of one residue class modulo the period ``P``) and each row's absolute
        sum is read off its own footprint (:func:`_row_probes`).
        """
        stages = self.chain.stages
        count, period, footprints = _row_probes(stages, lowest, k)
        shape = stages[k].out_shape
        widest = max(max(s.in_features, s.out_features) for s in stages[lowest : k + 1])
        chunk = max(1, min(count, CHUNK_ENTRIES // widest))
        best = torch.zeros(k + 1, dtype=torch.float64, device=self.device)
        for start in range(0, count, chunk):
            stop = min(count, start + chunk)
            if period is None:
                u = self._basis(shape, start, stop)
            else:
                u, phase = self._probes(shape, period, start, stop)
            for i in range(k, lowest - 1, -1):
                u = stages[i].transpose(u)
                if period is None:
                    sums = u.flatten(1).abs().sum(1)
                else:
                    sums = _footprint_sums(u.abs().sum(1), phase, period, footprints[i], shape[1:])
                best[i] = torch.maximum(best[i], sums.max())
        for i, value in enumerate(best.tolist()[lowest:], start=lowest):
            self._norms[(i, k)] = value * (1 + ROUNDING)

    def _probes(self, shape: tuple[int, ...], period: tuple[int, int], start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Probes ``start … stop−1``; probe ``(c, r_h, r_w)`` is 1 on the pixels of channel ``c`` that are
        ``≡ (r_h, r_w)`` modulo the period.

        :returns: the probes (``N×C×H×W``) and their phases ``(r_h, r_w)`` (``N×2``).
        """
        channels, height, width = shape
        index = torch.arange(start, stop, device=self.device)
        channel, rest = index // (period[0] * period[1]), index % (period[0] * period[1])
        phase = torch.stack([rest // period[1], rest % period[1]], 1)
        on_h = (torch.arange(height, device=self.device) % period[0])[None, :] == phase[:, :1]
        on_w = (torch.arange(width, device=self.device) % period[1])[None, :] == phase[:, 1:]
        on_c = torch.arange(channels, device=self.device)[None, :] == channel[:, None]
        probes = on_c[:, :, None, None] & on_h[:, None, :, None] & on_w[:, None, None, :]
        return probes.to(torch.float64), phase

    def _abs_bound(self, j: int, k: int) -> float:
        """``‖|W_k| ⋯ |W_j|‖_∞ = max(|W_k| ⋯ |W_j|·1)``, which bounds ``‖W_k ⋯ W_j‖_∞``."""
        stages = self.chain.stages
        v = torch.ones((1, *stages[j].in_shape), dtype=torch.float64, device=self.device)
        for s in stages[j : k + 1]:
            for op in s.ops:
                v = _abs_forward(op, v)
        return float(v.max()) * (1 + ROUNDING)

    # -- pairs --

    def _pair_sweep(self) -> None:
        stages = self.chain.stages
        last = stages[-1]
        classes = last.out_features
        u = torch.eye(classes, dtype=torch.float64, device=self.device).reshape(classes, *last.out_shape)
        for i in range(len(stages) - 1, -1, -1):
            u = stages[i].transpose(u)
            self._pairs[i - 1] = pair_distances(u, self.kind, chunk_entries=CHUNK_ENTRIES) * (1 + ROUNDING)


Footprint = tuple[tuple[int, int, int], tuple[int, int, int]]


def _local(op: LinearOp) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Per spatial axis ``(stride, left padding, extent)``: output pixel ``o`` reads input pixels
    ``stride·o − padding … stride·o − padding + extent − 1``. ``None`` for a non-local layer."""
    layer = op.layer
    if len(op.in_shape) != 3 or len(op.out_shape) != 3:
        return None
    if isinstance(layer, nn.BatchNorm2d):
        return (1, 0, 1), (1, 0, 1)
    if isinstance(layer, nn.Conv2d):
        (kh, kw), (dh, dw), (sh, sw) = _pair(layer.kernel_size), _pair(layer.dilation), _pair(layer.stride)
        eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        if isinstance(layer.padding, str):  # "same" pads total // 2 on the left (stride 1 only)
            ph, pw = (0, 0) if layer.padding == "valid" else ((eh - 1) // 2, (ew - 1) // 2)
        else:
            ph, pw = _pair(layer.padding)
        return (sh, ph, eh), (sw, pw, ew)
    if isinstance(layer, nn.AvgPool2d):
        (kh, kw), (ph, pw) = _pair(layer.kernel_size), _pair(layer.padding)
        sh, sw = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
        return (sh, ph, kh), (sw, pw, kw)
    return None


def _row_probes(stages: list[Stage], lowest: int, k: int) -> tuple[int, tuple[int, int] | None, dict[int, Footprint]]:
    """How the rows of ``W_k``'s output are probed on the way back to stage ``lowest``'s input.

    Row (pixel) ``o`` of stage ``k``'s output reaches, at stage ``i``'s input,
    only the pixels ``a·o + b … a·o + c`` per axis (the footprint ``(a, b, c)``).
    Rows of one channel whose pixels differ by a multiple of the period
    ``P > max_i (c − b)/a`` therefore have disjoint footprints at every stage.

    :returns: the number of probes, the period (``None``: one probe per row,
        for paths through non-local layers) and the footprints by stage.
    """
    shape = stages[k].out_shape
    rows = math.prod(shape)
    if len(shape) != 3:
        return rows, None, {}
    footprints: dict[int, Footprint] = {}
    axes = [(1, 0, 0), (1, 0, 0)]
    period = [1, 1]
    for i in range(k, lowest - 1, -1):
        for op in reversed(stages[i].ops):
            local = _local(op)
            if local is None:
                return rows, None, {}
            axes = [(s * a, s * b - p, s * c - p + e - 1) for (a, b, c), (s, p, e) in zip(axes, local)]
        footprints[i] = (axes[0], axes[1])
        period = [max(q, (c - b) // a + 1) for q, (a, b, c) in zip(period, axes)]
    period = [min(q, size) for q, size in zip(period, shape[1:])]
    return shape[0] * period[0] * period[1], (period[0], period[1]), footprints


def _footprint_sums(
    mass: Tensor, phase: Tensor, period: tuple[int, int], footprint: Footprint, grid: tuple[int, ...]
) -> Tensor:
    """Each probed row's sum of ``mass`` (``N×H_i×W_i``, absolute values summed over channels) over its footprint.

    Mass outside every footprint is zero in exact arithmetic; whatever a
    convolution algorithm leaves there (FFT-based ones leave rounding noise) is
    added to every row's sum, which keeps the sums upper bounds.

    :returns: ``N×R`` (``R`` rows per probe; absent rows sum to 0).
    :raises RuntimeError: if more than rounding noise lies outside the
        footprints (they would be wrong: a bug, not a property of the network).
    """
    index = []
    counts = []
    for axis, ((a, b, c), q, size) in enumerate(zip(footprint, period, grid)):
        pixel = torch.arange(mass.shape[1 + axis], device=mass.device)
        offset = pixel[None, :] - a * phase[:, axis : axis + 1] - b  # N×H_i, from the first row's footprint
        if q >= size:  # one row per phase on this axis (the period was capped at the grid)
            row = torch.zeros_like(offset)
        else:  # footprints a·q apart, each c − b + 1 < a·q wide
            row = torch.div(offset, a * q, rounding_mode="floor")
        rows = -(-(size - phase[:, axis : axis + 1]) // q)  # rows of this phase that exist
        inside = (offset >= row * a * q) & (offset - row * a * q <= c - b) & (row < rows)
        index.append(torch.where(inside, row, -1))
        counts.append(-(-size // q))
    flat = index[0][:, :, None] * counts[1] + index[1][:, None, :]
    outside = (index[0][:, :, None] < 0) | (index[1][:, None, :] < 0)
    dump = counts[0] * counts[1]
    flat = torch.where(outside, dump, flat).flatten(1)
    sums = mass.new_zeros(mass.shape[0], dump + 1).scatter_add_(1, flat, mass.flatten(1))
    stray = sums[:, dump : dump + 1]
    if bool((stray > 1e-9 * sums.sum(1, keepdim=True)).any()):
        raise RuntimeError("l_inf row probes: mass outside the rows' footprints (the receptive-field arithmetic is wrong)")
    return sums[:, :dump] + stray


def pairwise_constants(
    chain: Chain,
    norm: Norm,
    method: Literal["liplt", "naive"] = "liplt",
    *,
    dense_limit: int = DENSE_LIMIT,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sound K×K constants ``L_pq ≥ Lip(z_p − z_q)`` in ``norm`` (float64, 0 on the diagonal).

    ``method``: ``"liplt"`` (Theorem 3.3 of the paper, :func:`chain.liplt`) or
    ``"naive"`` (the product of the layers' norms, :func:`chain.naive`).
    """
    hidden = chain.hidden
    if method == "liplt":
        wanted, combine = {(j, k) for k in range(hidden) for j in range(k + 1)}, liplt
    elif method == "naive":
        wanted, combine = {(k, k) for k in range(hidden)}, naive
    else:
        raise ValueError(f"method must be 'liplt' or 'naive', got {method!r}")
    norms = SoundNorms(chain, norm, dense_limit=dense_limit, device=device, wanted=wanted)
    constants = combine(norms.norm, norms.pairs, chain.slopes)
    return torch.as_tensor(constants, dtype=torch.float64).clone().fill_diagonal_(0)
