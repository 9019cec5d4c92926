"""Sound norms of chains: every bound against the explicit matrices of small nets.

The explicit matrix of a product ``W_k ⋯ W_j`` is built by pushing the
identity basis through the stages; its exact spectral norm (SVD), largest
absolute row sum and row differences are the references. Exact paths must
match them to 1e-5 (the relative rounding slack is 1e-6); bounds must never be
below them.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness_plugins.crm.model import crm_net
from harness_plugins.lib.liplt import sound
from harness_plugins.lib.liplt.chain import Chain, NotAChain
from harness_plugins.lib.liplt.sound import (
    SoundNorms,
    circular_conv_norm,
    conv_norm_bound,
    gram_norm_bound,
    pairwise_constants,
)

EXACT = 1e-5

# padding="same" with an even kernel pads unevenly (on purpose: the chain reads it through a VJP).
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")


def _with_random_statistics(net: nn.Sequential) -> nn.Sequential:
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.normal_()
    return net.eval()


def build(name: str) -> tuple[nn.Sequential, torch.Tensor]:
    """A small net and a batch of inputs for it."""
    torch.manual_seed(sum(map(ord, name)))
    if name == "mlp":
        net, shape = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 14), nn.ReLU(), nn.Linear(14, 5)), (12,)
    elif name == "leaky-shared":  # slopes [0.5, 1] twice in a row (one shared module), slope > 1; a Tanh after a batch norm
        leaky = nn.LeakyReLU(0.5)
        net = nn.Sequential(
            nn.Linear(6, 8), leaky, leaky,
            nn.Linear(8, 7), nn.BatchNorm1d(7), nn.Tanh(),
            nn.Linear(7, 6), nn.LeakyReLU(3.0), nn.Linear(6, 4),
        )
        shape = (6,)
    elif name == "conv":
        net = nn.Sequential(
            nn.Conv2d(2, 3, 3, 1, 1), nn.ReLU(), nn.Conv2d(3, 4, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(4, 3, 3, 1, 0), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(27, 5),
        )
        shape = (2, 11, 11)
    elif name == "dilated-grouped-pooled":
        net = nn.Sequential(
            nn.Conv2d(2, 3, 3, 2, 0), nn.ReLU(), nn.Conv2d(3, 4, 2, 1, 2, dilation=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(4, 4, 3, 1, 1, groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 5),
        )
        shape = (2, 11, 11)
    elif name == "same-bn-sigmoid":
        net = nn.Sequential(
            nn.Conv2d(2, 3, 4, 1, "same"), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 3, 3, 3, 1), nn.Sigmoid(),
            nn.AvgPool2d(3, 1, 1), nn.Flatten(), nn.Linear(48, 5),
        )
        shape = (2, 11, 11)
    elif name == "4c3f":
        net, shape = crm_net("4c3f", 1, 12, 5, channel_scale=0.125), (1, 12, 12)
    elif name == "6c2f-symmetric":
        net, shape = crm_net("6c2f", 3, 16, 5, input_range="symmetric", channel_scale=0.125), (3, 16, 16)
    else:
        raise KeyError(name)
    return _with_random_statistics(net), torch.rand(8, *shape)


NETS = ["mlp", "leaky-shared", "conv", "dilated-grouped-pooled", "same-bn-sigmoid", "4c3f", "6c2f-symmetric"]
CONV_NETS = ["conv", "dilated-grouped-pooled", "same-bn-sigmoid", "4c3f", "6c2f-symmetric"]


@pytest.fixture(scope="module", params=NETS)
def net(request):
    module, x = build(request.param)
    return request.param, module, x, Chain.from_module(module, x)


def explicit(chain: Chain, j: int, k: int) -> torch.Tensor:
    """The matrix of ``W_k ⋯ W_j`` (rows: stage ``k``'s outputs), float64."""
    n = chain.stages[j].in_features
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *chain.stages[j].in_shape)
    with torch.no_grad():
        return chain.product(basis, j, k).flatten(1).T


def products(chain: Chain) -> list[tuple[int, int]]:
    return [(j, k) for k in range(len(chain.stages)) for j in range(k + 1)]


def spectral(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def row_pairs(rows: torch.Tensor, norm: str) -> torch.Tensor:
    diff = rows[:, None, :] - rows[None, :, :]
    return diff.norm(dim=-1) if norm == "2" else diff.abs().sum(-1)


# -- l2 ---------------------------------------------------------------------------------------


def test_dense_l2_norms_are_exact(net):
    _, _, _, chain = net
    norms = SoundNorms(chain, "2", dense_limit=10**6)
    for j, k in products(chain):
        exact = spectral(explicit(chain, j, k))
        assert exact <= norms.norm(j, k) <= exact * (1 + EXACT), (j, k)


@pytest.mark.parametrize("dense_limit", [0, 100])
def test_l2_bounds_are_sound(net, dense_limit):
    """dense_limit 0: every product from per-layer bounds (FFT for convolutions) and splits; 100: a mix."""
    _, _, _, chain = net
    norms = SoundNorms(chain, "2", dense_limit=dense_limit)
    for j, k in products(chain):
        assert norms.norm(j, k) >= spectral(explicit(chain, j, k)), (j, k)


def circular_matrix(conv: nn.Conv2d, grid: tuple[int, int]) -> torch.Tensor:
    """The explicit matrix of ``out[o] = Σ_u w[u]·x[(s·o + u) mod N]`` (dilation and groups as ``conv``)."""
    channels = conv.in_channels
    n = channels * grid[0] * grid[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, channels, *grid)
    extent = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)]
    wrap = [e - s for e, s in zip(extent, conv.stride)]
    padded = F.pad(basis, (0, wrap[1], 0, wrap[0]), mode="circular")
    out = F.conv2d(padded, conv.weight.detach().double(), None, conv.stride, 0, conv.dilation, conv.groups)
    assert tuple(out.shape[-2:]) == (grid[0] // conv.stride[0], grid[1] // conv.stride[1])
    return out.flatten(1).T


def zero_padded_matrix(conv: nn.Conv2d, shape: tuple[int, int, int]) -> torch.Tensor:
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    out = F.conv2d(basis, conv.weight.detach().double(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.flatten(1).T


#: (in, out, kernel, stride, padding, dilation, groups)
CONVS = [
    (2, 3, 3, 1, 1, 1, 1),
    (3, 2, 4, 2, 1, 1, 1),
    (2, 4, 2, 2, 0, 1, 1),
    (2, 3, 5, 3, 2, 1, 1),
    (2, 3, 6, 2, 2, 1, 1),
    (4, 4, 3, 2, 1, 1, 2),
    (2, 3, 3, 1, 2, 2, 1),
    (3, 3, 1, 1, 0, 1, 3),
]


@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "c{}-{}k{}s{}p{}d{}g{}".format(*s))
def test_circular_conv_norm_is_exact(spec):
    """Space-to-depth + DFT against the explicit circular convolution (grids a multiple of the stride)."""
    cin, cout, k, s, _, d, g = spec
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, k, s, 0, d, g, bias=False)
    grid = (3 * s * 2, 2 * s * 2)  # not square
    exact = spectral(circular_matrix(conv, grid))
    got = circular_conv_norm(sound._dense_kernel(conv), grid, conv.stride)
    assert got == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("size", [(7, 7), (9, 6), (4, 5)])
@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "c{}-{}k{}s{}p{}d{}g{}".format(*s))
def test_conv_norm_bound_is_sound(spec, size):
    cin, cout, k, s, p, d, g = spec
    torch.manual_seed(2)
    conv = nn.Conv2d(cin, cout, k, s, p, d, g, bias=False)
    shape = (cin, *size)
    if F.conv2d(torch.zeros(1, *shape), conv.weight, None, s, p, d, g).numel() == 0:
        pytest.skip("no output at this size")
    assert conv_norm_bound(conv, shape) >= spectral(zero_padded_matrix(conv, shape))


def test_conv_norm_bound_handles_string_padding():
    torch.manual_seed(3)
    for padding in ("same", "valid"):
        conv = nn.Conv2d(2, 3, 4, 1, padding, bias=False)
        shape = (2, 6, 5)
        n = math.prod(shape)
        with torch.no_grad():
            matrix = conv(torch.eye(n).reshape(n, *shape)).flatten(1).T.double()
        assert conv_norm_bound(conv, shape) >= spectral(matrix)


def test_gram_norm_bound_certifies_the_largest_eigenvalue():
    torch.manual_seed(4)
    for n, rank in [(50, 50), (300, 20), (700, 700), (700, 3)]:  # 700: the Lanczos estimate
        a = torch.randn(n, rank, dtype=torch.float64)
        gram = a @ a.T
        top = float(torch.linalg.eigvalsh(gram)[-1])
        assert top <= gram_norm_bound(gram) <= top * (1 + 1e-7)
    assert gram_norm_bound(torch.zeros(5, 5, dtype=torch.float64)) == 0


# -- l_inf ------------------------------------------------------------------------------------


def test_linf_norms_are_exact(net):
    _, _, _, chain = net
    norms = SoundNorms(chain, "inf")
    for j, k in products(chain):
        exact = float(explicit(chain, j, k).abs().sum(1).max())
        assert exact <= norms.norm(j, k) <= exact * (1 + EXACT), (j, k)


@pytest.mark.parametrize("name", CONV_NETS)
def test_linf_sweeps_probe_many_rows_at_once_on_conv_paths(name):
    """The probed path is the one exercised: fewer probes than rows back through convolutions."""
    module, x = build(name)
    chain = Chain.from_module(module, x)
    conv_stages = [k for k, s in enumerate(chain.stages) if len(s.out_shape) == 3]
    count, period, _ = sound._row_probes(chain.stages, 0, conv_stages[0])
    assert period is not None and count <= chain.stages[conv_stages[0]].out_features


def test_linf_fallbacks_are_sound(net, monkeypatch):
    """Without a budget for exact sweeps: ``max(|W_k|⋯|W_j|·1)`` and splits."""
    monkeypatch.setattr(sound, "LINF_BUDGET", 0)
    _, _, _, chain = net
    norms = SoundNorms(chain, "inf")
    for j, k in products(chain):
        assert norms.norm(j, k) >= float(explicit(chain, j, k).abs().sum(1).max()), (j, k)


# -- pairs and constants ----------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_pairs_are_exact(net, norm):
    _, _, _, chain = net
    norms = SoundNorms(chain, norm)
    last = len(chain.stages) - 1
    for k in range(-1, chain.hidden):
        exact = row_pairs(explicit(chain, k + 1, last), norm)
        got = norms.pairs(k)
        assert got.dtype == torch.float64 and torch.all(got.diagonal() == 0)
        assert torch.all(got >= exact) and torch.allclose(got, exact, rtol=EXACT, atol=0), k


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_liplt_is_never_looser_than_naive(net, norm):
    _, _, _, chain = net
    lt = pairwise_constants(chain, norm, "liplt")
    nv = pairwise_constants(chain, norm, "naive")
    classes = chain.num_classes
    assert lt.shape == nv.shape == (classes, classes) and lt.dtype == torch.float64
    assert torch.all(lt.diagonal() == 0) and torch.allclose(lt, lt.T, rtol=1e-12)
    assert torch.all(lt <= nv * (1 + 1e-9))


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_constants_bound_local_slopes(net, norm):
    """‖∇(z_p − z_q)(x)‖ in the dual norm never exceeds L_pq, at random inputs (and far outside [0, 1])."""
    _, module, x, chain = net
    model = copy.deepcopy(module).double()
    torch.manual_seed(5)
    points = torch.cat([torch.rand(24, *x.shape[1:]), 4 * torch.randn(8, *x.shape[1:])]).double().requires_grad_(True)
    logits = model(points)
    classes = logits.shape[1]
    grads = torch.stack(
        [torch.autograd.grad(logits[:, c].sum(), points, retain_graph=True)[0].flatten(1) for c in range(classes)], 1
    )
    diff = grads[:, :, None, :] - grads[:, None, :, :]
    slopes = diff.norm(dim=-1) if norm == "2" else diff.abs().sum(-1)  # dual norms
    for method in ("liplt", "naive"):
        constants = pairwise_constants(chain, norm, method)
        assert torch.all(slopes <= constants * (1 + 1e-9)), method
        assert slopes.max() > 0


def paper_liplt(weights: list[torch.Tensor], slopes: list[tuple[float, float]], norm: str) -> torch.Tensor:
    """Theorem 3.3 (eq. 19) written directly with explicit matrices, H_k = 0 and G_k = I:
    ``Ĥ_k = c_k W_k``, ``m_{k+1} = ‖W_{k+1} Ĥ_k ⋯ Ĥ_0‖ + d_k Σ_j ‖W_{k+1} Ĥ_k ⋯ Ĥ_{j+1}‖ m_j``,
    the last layer replaced by the row ``c_pqᵀ W_L``."""
    ord_ = 2 if norm == "2" else math.inf
    hidden = len(slopes)
    c = [(a + b) / 2 for a, b in slopes]
    d = [(b - a) / 2 for a, b in slopes]
    hats = [c[i] * weights[i] for i in range(hidden)]

    def chain_of(top: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``top · Ĥ_{stop−1} ⋯ Ĥ_start``."""
        out = top
        for i in range(stop - 1, start - 1, -1):
            out = out @ hats[i]
        return out

    def size(matrix: torch.Tensor) -> float:
        return float(torch.linalg.matrix_norm(matrix, ord=ord_))

    m = [size(weights[0])]
    for k in range(1, hidden):
        value = size(chain_of(weights[k], 0, k))
        value += sum(d[j] * size(chain_of(weights[k], j + 1, k)) * m[j] for j in range(k))
        m.append(value)
    classes = weights[-1].shape[0]
    out = torch.zeros(classes, classes, dtype=torch.float64)
    for p in range(classes):
        for q in range(classes):
            if p == q:
                continue
            row = (weights[-1][p] - weights[-1][q])[None, :]
            value = size(chain_of(row, 0, hidden))
            value += sum(d[j] * size(chain_of(row, j + 1, hidden)) * m[j] for j in range(hidden))
            out[p, q] = value
    return out


@pytest.mark.parametrize("activation", [nn.ReLU, lambda: nn.LeakyReLU(0.2)], ids=["relu", "leaky"])
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_recursion_matches_the_paper(activation, norm):
    """On a 4-layer MLP, the sound LipLT constants equal eq. (19) computed with exact (SVD) norms,
    and the naive ones ``∏_k β_k‖W_k‖ · ‖w_p − w_q‖`` (notes on the code, §5.2 [checked])."""
    torch.manual_seed(6)
    sizes = [10, 14, 12, 9, 6]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    net = nn.Sequential(*layers).eval()
    chain = Chain.from_module(net, torch.rand(4, sizes[0]))
    weights = [m.weight.detach().double() for m in net if isinstance(m, nn.Linear)]
    expected = paper_liplt(weights, chain.slopes, norm)
    assert torch.allclose(pairwise_constants(chain, norm, "liplt"), expected, rtol=EXACT, atol=0)
    ord_ = 2 if norm == "2" else math.inf
    scale = math.prod(b * float(torch.linalg.matrix_norm(w, ord=ord_)) for (_, b), w in zip(chain.slopes, weights))
    rows = weights[-1]
    dual = row_pairs(rows, norm)
    assert torch.allclose(pairwise_constants(chain, norm, "naive"), scale * dual, rtol=EXACT, atol=0)


def test_non_monotone_activations_are_refused():
    """LipLT's loop transformation needs slopes in [α, β] with α ≥ 0: a leaky ReLU of slope −2 is not read."""
    net = nn.Sequential(nn.Linear(1, 1), nn.LeakyReLU(-2.0), nn.Linear(1, 2)).eval()
    with pytest.raises(NotAChain, match="negative slope"):
        Chain.from_module(net, torch.rand(4, 1))


def test_a_module_used_twice_is_read_twice():
    """One ReLU object in two places is two activations (reading it once merged two linear maps)."""
    act = nn.ReLU()
    net = nn.Sequential(nn.Linear(2, 3), act, nn.Linear(3, 3), act, nn.Linear(3, 2)).eval()
    chain = Chain.from_module(net, torch.rand(8, 2))
    assert chain.hidden == 2 and len(chain.stages) == 3
