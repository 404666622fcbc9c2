"""ResNet-18's CBP groups as the paper counts them: every block's inner conv and the last block's
output channels (8·width; 512 at the paper's width), whose only consumer is the linear head."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from plasticity_gym_agents.cbp import ContinualBackprop
from plasticity_gym_agents.config import CBPConfig
from plasticity_gym_agents.networks import ResNet18
from plasticity_gym_agents.units import Consumer, UnitGroup, reinit_units

WIDTH = 4


def _net() -> ResNet18:
    return ResNet18(5, width=WIDTH, generator=torch.Generator().manual_seed(0))


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 5


def _train_step(net: ResNet18, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    net.train()
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()


def test_groups_and_unit_counts():
    net = _net()
    groups = net.cbp_groups()
    inner = [WIDTH * m for m in (1, 1, 2, 2, 4, 4, 8, 8)]
    assert [g.name for g in groups] == [f"blocks.{i}.conv1" for i in range(8)] + ["blocks.7.out"]
    assert [g.n_units for g in groups] == inner + [8 * WIDTH]
    last, block = groups[-1], net.blocks[-1]
    assert last.producer is block.conv2 and last.batchnorm is block.bn2 and last.activation is block.relu2
    assert [c.module for c in last.consumers] == [net.head] and last.consumers[0].positions == 1
    assert isinstance(block.shortcut, torch.nn.Identity)


def test_paper_width_counts_512_output_units():
    net = ResNet18(100, width=64)
    assert net.cbp_groups()[-1].n_units == 512
    assert sum(g.n_units for g in net.cbp_groups()) == 2 * (64 + 128 + 256 + 512) + 512


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_last_block_replacement_leaves_outputs_unchanged(mode):
    """Once the old units' head columns are zero, replacing them (new conv2 rows, reset bn2
    channels, zeroed head columns and optimizer slices) changes no output, with batch or running
    BatchNorm statistics; and whatever the new producers hold, the outputs stay the same."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = _batch()
    for _ in range(3):
        _train_step(net, opt, x, y)
    group = net.cbp_groups()[-1]
    idx = torch.tensor([0, 3, 17, 31])
    with torch.no_grad():
        net.head.weight[:, idx] = 0
        getattr(net, mode)()
        before = net(x)
    bn = group.batchnorm
    trained_var = bn.running_var[idx].clone()
    reinit_units(group, idx, optimizer=opt, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(bn.running_var[idx], trained_var)  # the channel really was reset
    assert torch.all(opt.state[net.head.weight]["momentum_buffer"][:, idx] == 0)
    assert torch.all(opt.state[group.producer.weight]["momentum_buffer"][idx] == 0)
    with torch.no_grad():
        getattr(net, mode)()
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)
        group.producer.weight[idx] = torch.randn_like(group.producer.weight[idx]) * 10
        bn.bias[idx] = 5.0
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)


def test_cbp_step_on_last_block_equals_removing_the_old_units():
    """A CBP replacement in the output group changes the outputs by exactly the old units'
    contribution through the head (train-mode BatchNorm)."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    group = net.cbp_groups()[-1]
    cbp = ContinualBackprop([group], CBPConfig(replacement_rate=0.25, maturity=0), optimizer=opt,
                            generator=torch.Generator().manual_seed(0))
    x, y = _batch()
    _train_step(net, opt, x, y)
    reference = copy.deepcopy(net)
    replaced = cbp.step()["blocks.7.out"]
    assert len(replaced) == 8  # ρ · 32 eligible units
    with torch.no_grad():
        reference.head.weight[:, replaced] = 0
        torch.testing.assert_close(net.train()(x), reference.train()(x), rtol=1e-6, atol=1e-6)


def test_last_block_replacement_count_matches_rate():
    net = _net()
    group = net.cbp_groups()[-1]
    rho, maturity, steps = 0.01, 20, 300
    cbp = ContinualBackprop([group], CBPConfig(replacement_rate=rho, maturity=maturity), hooks=False,
                            generator=torch.Generator().manual_seed(0))
    h = torch.rand(2, group.n_units, 2, 2)
    eligible, per_step = 0, []
    for _ in range(steps):
        ages = cbp.ages(group.name) + 1
        per_step.append(int((ages > maturity).sum()))
        eligible += per_step[-1]
        cbp.step({group.name: h})
    # No unit is eligible before maturity, then all 32 are, until replaced units are young again.
    assert per_step[:maturity] == [0] * maturity and per_step[maturity] == group.n_units
    assert abs(cbp.replacements[group.name] - rho * eligible) <= 1.0


def test_the_skip_input_of_the_last_block_is_not_replaceable():
    """The control: block 6's output also reaches the head through block 7's identity shortcut,
    so zeroing its conv consumers does not remove it (why it is not a group)."""
    net = _net().eval()
    x, _ = _batch()
    b6, b7 = net.blocks[6], net.blocks[7]
    with torch.no_grad():
        before = net(x)
        b6.bn2.running_mean.normal_()
    bad = UnitGroup("bad", b6.conv2, b6.relu2, (Consumer(b7.conv1),), batchnorm=b6.bn2)
    reinit_units(bad, torch.arange(8), optimizer=None, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(net(x), before, atol=1e-5)
