"""Networks: shapes, recorded initial distributions, gains."""

from __future__ import annotations

import math

import pytest
import torch

from plasticity_gym_agents.networks import ACTIVATIONS, MLP, ConvNet, LinearNet, ResNet18, activation_gain
from plasticity_gym_agents.units import get_init


def test_paper_gains():
    assert activation_gain("sigmoid") == 1.0
    assert activation_gain("tanh") == pytest.approx(5 / 3)
    assert activation_gain("relu") == activation_gain("elu") == activation_gain("swish") == pytest.approx(math.sqrt(2))
    assert activation_gain("leaky_relu", 0.1) == pytest.approx(math.sqrt(2 / 1.01))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_mlp_kaiming_uniform_bounds(act):
    net = MLP(50, [40, 30], 3, activation=act, generator=torch.Generator().manual_seed(0))
    for lin, fan_in in zip(net.layers, (50, 40)):
        bound = activation_gain(act) * math.sqrt(3 / fan_in)
        assert get_init(lin).bound == pytest.approx(bound)
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
        assert torch.all(lin.bias == 0)


def test_convnet_shapes_and_layouts():
    net = ConvNet(2)
    assert net.fc1.in_features == 512 and net.positions == 4
    x = torch.rand(5, 3, 32, 32)
    assert net(x).shape == (5, 2)
    last = ConvNet(2, channels_last=True)
    last.load_state_dict(net.state_dict())
    torch.testing.assert_close(last(x.permute(0, 2, 3, 1)), net(x))


def test_resnet_grows_outputs():
    net = ResNet18(10, active_outputs=5, width=4)
    x = torch.rand(2, 3, 16, 16)
    assert net(x).shape == (2, 5)
    old = net.head.weight[:5].clone()
    net.set_active_outputs(10, generator=torch.Generator().manual_seed(0))
    assert net(x).shape == (2, 10)
    assert torch.equal(net.head.weight[:5], old)
    assert torch.all(net.head.bias[5:] == 0)
    with pytest.raises(ValueError):
        net.set_active_outputs(11)


def test_reset_parameters_redraws_everything():
    net = MLP(4, [5], 2)
    before = [p.clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.reset_parameters(torch.Generator().manual_seed(3))
    for p, b in zip(net.parameters(), before):
        assert not torch.equal(p, b + 1.0)
    assert torch.all(net.layers[0].bias == 0)
    assert LinearNet(4, 2).cbp_groups() == []
