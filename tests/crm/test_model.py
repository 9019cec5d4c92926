"""The CRM architectures have the code's exact shapes, and read as LipLT chains."""

import pytest
import torch
from torch import nn

from harness import DatasetInfo, UsageError
from harness_plugins.crm.model import CRMNetModel, CRMNetOptions, crm_net
from harness_plugins.lib.liplt.chain import Chain

# (in, out, kernel, stride, padding) of every convolution, then the FC widths: shared/notes §5.5.
EXPECTED = {
    "4c3f": ([(1, 32, 3, 1, 1), (32, 32, 4, 2, 1), (32, 64, 3, 1, 1), (64, 64, 4, 2, 1)], [(3136, 512), (512, 512), (512, 10)], 28, 1),
    "6c2f": (
        [(3, 32, 3, 1, 1), (32, 32, 4, 2, 1), (32, 64, 3, 1, 1), (64, 64, 4, 2, 1), (64, 64, 3, 1, 1), (64, 64, 4, 2, 1)],
        [(1024, 512), (512, 10)],
        32,
        3,
    ),
    "8c2f": (
        [(3, 64, 3, 1, 1), (64, 64, 3, 1, 0), (64, 64, 4, 2, 0), (64, 128, 3, 1, 1), (128, 128, 3, 1, 1),
         (128, 128, 4, 2, 0), (128, 256, 3, 1, 1), (256, 256, 4, 2, 0)],
        [(9216, 256), (256, 200)],
        64,
        3,
    ),
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_architectures_match_the_code(arch):
    convs, fcs, size, channels = EXPECTED[arch]
    classes = fcs[-1][1]
    net = crm_net(arch, channels, size, classes)
    got_convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in net if isinstance(m, nn.Conv2d)]
    got_fcs = [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)]
    assert got_convs == convs and got_fcs == fcs
    # ReLU after every layer but the last, a bias everywhere.
    layers = [m for m in net if not isinstance(m, nn.Flatten)]
    assert [type(m) for m in layers[1::2]] == [nn.ReLU] * (len(convs) + len(fcs) - 1)
    assert all(m.bias is not None for m in layers[::2])
    assert net(torch.rand(2, channels, size, size)).shape == (2, classes)


def test_symmetric_input_range_is_the_codes_normalisation_and_frozen():
    torch.manual_seed(0)
    plain = crm_net("6c2f", 3, 32, 10, channel_scale=0.25)
    sym = crm_net("6c2f", 3, 32, 10, input_range="symmetric", channel_scale=0.25)
    for mine, theirs in zip(list(sym)[1:], plain):
        mine.load_state_dict(theirs.state_dict())
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(sym(x), plain((x - 0.5) / 0.5), atol=1e-5)
    assert not any(p.requires_grad for p in sym[0].parameters())


def test_the_model_component_picks_the_papers_architecture_per_dataset():
    mnist = DatasetInfo(name="mnist", num_classes=10, shape=(1, 28, 28), mean=(0.13,), std=0.31)
    net = CRMNetModel(CRMNetOptions(channel_scale=0.25)).build(mnist)
    assert sum(isinstance(m, nn.Conv2d) for m in net) == 4 and net.input_scale == 1.0
    cifar = DatasetInfo(name="cifar10", num_classes=10, shape=(3, 32, 32), mean=(0.5,) * 3, std=0.25)
    net = CRMNetModel(CRMNetOptions(input_range="symmetric", channel_scale=0.25)).build(cifar)
    assert sum(isinstance(m, nn.Conv2d) for m in net) == 7 and net.input_scale == 2.0
    small = DatasetInfo(name="tiny", num_classes=10, shape=(3, 16, 16), mean=(0.5,) * 3, std=0.25)
    with pytest.raises(UsageError, match="8c2f"):
        CRMNetModel(CRMNetOptions(arch="8c2f")).build(small)


@pytest.mark.parametrize("arch,channels,size", [("4c3f", 1, 28), ("6c2f", 3, 32)])
def test_every_network_reads_as_a_chain(arch, channels, size):
    net = crm_net(arch, channels, size, 10, input_range="symmetric", channel_scale=0.25).eval()
    x = torch.rand(3, channels, size, size)
    chain = Chain.from_module(net, x)
    assert chain.hidden == len([m for m in net if isinstance(m, nn.ReLU)])
    assert torch.allclose(chain.logits(x), net(x), atol=1e-5)
    # The frozen normalising convolution is part of the first stage.
    assert len(chain.stages[0].ops) == 2
