"""Continual backprop invariants on the MLP, the convnet and ResNet-18 (SPEC §3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plasticity_gym_agents.cbp import ContinualBackprop
from plasticity_gym_agents.config import CBPConfig
from plasticity_gym_agents.networks import MLP, ConvNet, ResNet18
from plasticity_gym_agents.units import Consumer, UnitGroup, get_init, reinit_units


def _mlp():
    return MLP(8, [16, 12, 10], 3, generator=torch.Generator().manual_seed(0))


def _convnet():
    return ConvNet(2, generator=torch.Generator().manual_seed(0))


def _resnet():
    return ResNet18(5, width=4, generator=torch.Generator().manual_seed(0))


def _input(net, batch=6):
    g = torch.Generator().manual_seed(1)
    if isinstance(net, MLP):
        return torch.rand(batch, 8, generator=g)
    side = 32 if isinstance(net, ConvNet) else 16
    return torch.rand(batch, 3, side, side, generator=g)


def _train_step(net, opt, cbp, x, y):
    net.train()
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


NETS = {"mlp": _mlp, "convnet": _convnet, "resnet18": _resnet}
OPTS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
}


def _prepare(net_name, opt_name, maturity=3):
    torch.manual_seed(0)
    net = NETS[net_name]()
    opt = OPTS[opt_name](net.parameters())
    cbp = ContinualBackprop(net.cbp_groups(), CBPConfig(replacement_rate=1e-9, maturity=maturity),
                            optimizer=opt, generator=torch.Generator().manual_seed(5))
    x = _input(net)
    y = torch.arange(x.shape[0]) % 2
    for _ in range(maturity):
        _train_step(net, opt, cbp, x, y)
        assert cbp.step() == {}
    _train_step(net, opt, cbp, x, y)
    for g in cbp.groups:  # force exactly one replacement per group on the next step
        cbp.stats[g.name].to_replace[:] = 1.0 - 1e-12
    return net, opt, cbp, x


@pytest.mark.parametrize("opt_name", list(OPTS))
@pytest.mark.parametrize("net_name", list(NETS))
def test_replacement_preserves_function_and_resets_unit(net_name, opt_name):
    net, opt, cbp, x = _prepare(net_name, opt_name)
    net.eval()
    reference = copy.deepcopy(net)
    # The expected redraw: same generator state, the layer's initial distribution, one row per
    # group in group order.
    expected_gen = torch.Generator().manual_seed(5)
    expected_in = {}
    for g in cbp.groups:
        w = g.producer.weight
        expected_in[g.name] = get_init(g.producer).sample((1, *w.shape[1:]), device=w.device,
                                                          dtype=w.dtype, generator=expected_gen)
    bn_var = {g.name: g.batchnorm.running_var.clone() for g in cbp.groups if g.batchnorm}
    replaced = cbp.step()
    assert {k: len(v) for k, v in replaced.items()} == {g.name: 1 for g in cbp.groups}

    # Function: the network equals the old one with the replaced units' outgoing weights zeroed;
    # the new incoming weights and BN channel have no effect.
    ref_mods = dict(reference.named_modules())
    names = {id(m): n for n, m in net.named_modules()}
    with torch.no_grad():
        for g in cbp.groups:
            for c in g.consumers:
                ref_c = Consumer(ref_mods[names[id(c.module)]], c.positions)
                ref_c.weight_view()[:, replaced[g.name]] = 0
        torch.testing.assert_close(net(x), reference(x), rtol=1e-5, atol=1e-6)

    producer_rows = {id(g.producer): replaced[g.name] for g in cbp.groups}
    for g in cbp.groups:
        idx = torch.tensor(replaced[g.name])
        w = g.producer.weight
        assert torch.equal(w[idx], expected_in[g.name])
        spec = get_init(g.producer)
        if spec.kind == "uniform":
            assert w[idx].abs().max() <= spec.bound
        if g.producer.bias is not None:
            assert torch.all(g.producer.bias[idx] == 0)
        for c in g.consumers:
            # Rows of a consumer that was itself replaced this step were redrawn whole.
            rows = [r for r in range(c.module.weight.shape[0])
                    if r not in producer_rows.get(id(c.module), [])]
            assert torch.all(c.weight_view()[rows][:, idx] == 0)
            for v in opt.state[c.module.weight].values():
                if torch.is_tensor(v) and v.shape == c.module.weight.shape:
                    assert torch.all(v.view_as(c.weight_view())[:, idx] == 0)
        for v in opt.state[w].values():
            if torch.is_tensor(v) and v.shape == w.shape:
                assert torch.all(v[idx] == 0)
                assert torch.any(v != 0)  # the optimizer state really existed
        if g.batchnorm is not None:
            bn = g.batchnorm
            assert torch.all(bn.weight[idx] == 1) and torch.all(bn.bias[idx] == 0)
            assert torch.all(bn.running_mean[idx] == 0) and torch.all(bn.running_var[idx] == 1)
            assert not torch.equal(bn_var[g.name][idx], bn.running_var[idx])  # it had been trained
            for p in (bn.weight, bn.bias):
                for v in opt.state[p].values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        assert torch.all(v[idx] == 0)
        assert torch.all(cbp.stats[g.name].utility[0][idx] == 0)
        assert np.all(cbp.ages(g.name)[idx.numpy()] == 0)


def _kill_unit(g: UnitGroup, unit: int) -> None:
    """Make a unit output 0 on every input (ReLU of a very negative pre-activation)."""
    with torch.no_grad():
        if g.batchnorm is not None:
            g.batchnorm.bias[unit] = -1e4
        else:
            g.producer.bias[unit] = -1e4


@pytest.mark.parametrize("net_name", list(NETS))
def test_replacing_the_lowest_utility_unit_leaves_outputs_unchanged(net_name):
    """The realistic case: the least useful unit (here: dead, utility 0) is the one replaced, and
    the network's outputs do not move at all."""
    torch.manual_seed(0)
    net = NETS[net_name]()
    groups = net.cbp_groups()
    for k, g in enumerate(groups):
        _kill_unit(g, unit=(3 * k + 1) % g.n_units)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop(groups, CBPConfig(replacement_rate=1e-9, maturity=2), optimizer=opt,
                            generator=torch.Generator().manual_seed(0))
    x = _input(net)
    for _ in range(3):
        net.train()
        net(x)  # the training forward (gradients enabled) is what CBP measures
        cbp.step()
    for g in groups:
        cbp.stats[g.name].to_replace[:] = 1.0 - 1e-12
    # Constant inputs and weights: the (bias-corrected) utilities are constant too.
    utilities = {g.name: cbp.stats[g.name].corrected_utility()[0].clone() for g in groups}
    net.train()
    net(x)  # captured by CBP (and updates BN running stats, so measure "before" after it)
    net.eval()
    with torch.no_grad():
        before = net(x).clone()
    replaced = cbp.step()
    for k, g in enumerate(groups):
        u = utilities[g.name]
        assert u[(3 * k + 1) % g.n_units] == 0  # the killed unit is useless...
        assert replaced[g.name] == [int(torch.argmin(u))] or u[replaced[g.name][0]] == 0
        assert u[replaced[g.name][0]] == u.min()  # ...and a lowest-utility unit is replaced
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)


def test_replacement_zeroes_only_the_replaced_slices():
    torch.manual_seed(0)
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = _input(net), torch.zeros(6, dtype=torch.long)
    _train_step(net, opt, None, x, y)
    g = net.cbp_groups()[1]
    w_in, w_out = g.producer.weight.clone(), g.consumers[0].module.weight.clone()
    reinit_units(g, torch.tensor([4]), optimizer=opt, generator=torch.Generator().manual_seed(0))
    keep = [i for i in range(g.n_units) if i != 4]
    assert torch.equal(g.producer.weight[keep], w_in[keep])
    assert torch.equal(g.consumers[0].module.weight[:, keep], w_out[:, keep])
    buf = opt.state[g.consumers[0].module.weight]["momentum_buffer"]
    assert torch.all(buf[:, 4] == 0) and torch.any(buf[:, keep] != 0)


def test_conv_to_linear_flatten_unit_owns_all_its_positions():
    net = _convnet()
    g = [g for g in net.cbp_groups() if g.name == "conv3"][0]
    assert g.consumers[0].positions == 4 and net.fc1.in_features == 128 * 4
    reinit_units(g, torch.tensor([7]), optimizer=None, generator=None)
    cols = net.fc1.weight[:, 7 * 4:8 * 4]
    assert torch.all(cols == 0)
    assert torch.all(net.fc1.weight[:, 6 * 4:7 * 4] != 0)
    assert torch.all(net.fc1.weight[:, 8 * 4:9 * 4] != 0)


def test_lowest_utility_unit_is_chosen():
    net = _mlp()
    g0 = net.cbp_groups()[0]
    cbp = ContinualBackprop([g0], CBPConfig(replacement_rate=0.0, maturity=0,
                                            running_average=False), hooks=False)
    out_mag = g0.outgoing_magnitude()
    # Activations designed so unit 11 has the smallest contribution |h|·Σ|w_out|.
    h = (1.0 / out_mag).unsqueeze(0) * torch.linspace(1.0, 2.0, 16).unsqueeze(0)
    h[0, 11] = 0.5 / out_mag[11]
    h[0, 0] = 3.0 / out_mag[0]
    cbp.step({g0.name: h})
    torch.testing.assert_close(cbp.stats[g0.name].utility[0], (h[0] * out_mag))
    cbp.config = CBPConfig(replacement_rate=1.0 / 16, maturity=0, running_average=False)
    replaced = cbp.step({g0.name: h})
    assert replaced == {g0.name: [11]}


def test_bias_corrected_utility_of_a_constant_contribution_is_that_contribution():
    net = _mlp()
    groups = net.cbp_groups()
    cbp = ContinualBackprop(groups, CBPConfig(replacement_rate=0.0, maturity=5), hooks=False)
    acts = {g.name: torch.rand(4, g.n_units) for g in groups}
    for _ in range(7):
        cbp.step(acts)
    for g in groups:
        inst = acts[g.name].abs().mean(0) * g.outgoing_magnitude()
        torch.testing.assert_close(cbp.stats[g.name].corrected_utility()[0], inst)
        torch.testing.assert_close(cbp.stats[g.name].utility[0], inst * (1 - 0.99**7))
    raw = ContinualBackprop(groups, CBPConfig(replacement_rate=0.0, bias_correction=False), hooks=False)
    raw.step(acts)
    torch.testing.assert_close(raw.stats[groups[0].name].corrected_utility()[0],
                               0.01 * acts[groups[0].name].abs().mean(0) * groups[0].outgoing_magnitude())


def test_adaptable_contribution_formula():
    net = _mlp()
    g = net.cbp_groups()[1]
    cbp = ContinualBackprop([g], CBPConfig(utility="adaptable_contribution", running_average=False,
                                           replacement_rate=0.0), hooks=False)
    h = torch.rand(5, g.n_units)
    cbp.step({g.name: h})
    m_hat = h.mean(0)  # bias-corrected running mean after one step is the batch mean
    expected = (h - m_hat).abs().mean(0) * g.outgoing_magnitude() / g.incoming_magnitude()
    torch.testing.assert_close(cbp.stats[g.name].utility[0], expected)


@pytest.mark.parametrize("net_name", list(NETS))
def test_replacement_count_matches_rate_and_immature_units_are_never_replaced(net_name):
    net = NETS[net_name]()
    groups = net.cbp_groups()
    rho, maturity, steps = 0.02, 10, 400
    cbp = ContinualBackprop(groups, CBPConfig(replacement_rate=rho, maturity=maturity), hooks=False,
                            generator=torch.Generator().manual_seed(0))
    acts = {}
    for g in groups:
        shape = (2, g.n_units) if g.producer.weight.dim() == 2 else (2, g.n_units, 3, 3)
        acts[g.name] = torch.rand(shape)
    eligible_sum = {g.name: 0 for g in groups}
    for t in range(steps):
        ages_before = {g.name: cbp.ages(g.name).copy() for g in groups}
        replaced = cbp.step(acts)
        for g in groups:
            ages_now = ages_before[g.name] + 1
            eligible_sum[g.name] += int(np.count_nonzero(ages_now > maturity))
            for u in replaced.get(g.name, []):
                assert ages_now[u] > maturity, "an immature unit was replaced"
        if t < maturity:
            assert replaced == {}
    for g in groups:
        expected = rho * eligible_sum[g.name]
        assert abs(cbp.replacements[g.name] - expected) <= 1.0 + 1e-9, (g.name, expected)
        assert cbp.replacements[g.name] > 0


def test_resnet_inner_groups_never_feed_a_skip_path():
    net = _resnet()
    inner = [g for g in net.cbp_groups() if g.name.endswith(".conv1")]
    assert len(inner) == 8
    allowed = {id(b.conv1) for b in net.blocks}
    for g in inner:
        assert id(g.producer) in allowed
        assert len(g.consumers) == 1
    forbidden = {id(net.stem)} | {id(b.conv2) for b in net.blocks}
    for b in net.blocks:
        if not isinstance(b.shortcut, torch.nn.Identity):
            forbidden.add(id(b.shortcut[0]))
    assert not forbidden & {id(g.producer) for g in inner}


def test_replacing_a_unit_that_feeds_a_skip_path_would_change_the_function():
    """The control for the rule above: a block's output conv feeds the skip sum, so zeroing the
    next conv's input weights does not remove it from the network."""
    net = _resnet().eval()
    b0, b1 = net.blocks[0], net.blocks[1]
    x = _input(net)
    with torch.no_grad():
        before = net(x).clone()
    bad = UnitGroup("bad", b0.conv2, b0.relu2, (Consumer(b1.conv1),), batchnorm=b0.bn2)
    with torch.no_grad():
        b0.bn2.running_mean.normal_()
    reinit_units(bad, torch.tensor([0, 1]), optimizer=None, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(net(x), before, atol=1e-5)


def test_resnet_train_mode_replacement_equals_removing_the_old_units():
    """With batch statistics (train-mode BN) too, the new units have no effect on the output."""
    net = _resnet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    cbp = ContinualBackprop(net.cbp_groups(), CBPConfig(replacement_rate=0.25, maturity=0),
                            optimizer=opt, generator=torch.Generator().manual_seed(0))
    x, y = _input(net, 8), torch.arange(8) % 5
    _train_step(net, opt, cbp, x, y)
    reference = copy.deepcopy(net)
    replaced = cbp.step()
    assert len(replaced) == len(cbp.groups)
    ref_mods, names = dict(reference.named_modules()), {id(m): n for n, m in net.named_modules()}
    with torch.no_grad():
        for g in cbp.groups:
            for c in g.consumers:
                Consumer(ref_mods[names[id(c.module)]], c.positions).weight_view()[:, replaced[g.name]] = 0
        net.train()
        reference.train()
        torch.testing.assert_close(net(x), reference(x), rtol=1e-5, atol=1e-5)


def test_no_capture_without_gradients_and_clear_error():
    net = _mlp()
    cbp = ContinualBackprop(net.cbp_groups(), CBPConfig())
    with torch.no_grad():
        net(torch.rand(2, 8))  # a probe/evaluation forward
    with pytest.raises(RuntimeError, match="no activation captured"):
        cbp.step()


def test_state_dict_roundtrip():
    net = _mlp()
    groups = net.cbp_groups()
    cbp = ContinualBackprop(groups, CBPConfig(replacement_rate=0.05, maturity=3), hooks=False,
                            generator=torch.Generator().manual_seed(0))
    acts = {g.name: torch.rand(2, g.n_units) for g in groups}
    for _ in range(20):
        cbp.step(acts)
    other = ContinualBackprop(groups, CBPConfig(replacement_rate=0.05, maturity=3), hooks=False)
    other.load_state_dict(cbp.state_dict())
    for g in groups:
        assert np.array_equal(other.ages(g.name), cbp.ages(g.name))
        assert torch.equal(other.stats[g.name].utility[0], cbp.stats[g.name].utility[0])
        assert np.array_equal(other.stats[g.name].eligible_counts(), cbp.stats[g.name].eligible_counts())
        assert np.array_equal(other.stats[g.name].to_replace, cbp.stats[g.name].to_replace)


def test_unit_statistics_mature_counts_follow_ages_through_resets_and_reloads():
    """The mature-unit counts are kept incrementally (a queue of maturation steps); they must
    always equal a direct count of age > maturity, with a maturity per replica, also across
    state round trips and config changes, and units replaced again before maturing must not
    count twice."""
    from plasticity_gym_agents.cbp_state import UnitStatistics

    rng = np.random.default_rng(0)
    configs = [CBPConfig(replacement_rate=0.05, maturity=m) for m in (7, 2, 12)]
    stats = UnitStatistics(configs, 3, 10)
    for t in range(300):
        stats.update(torch.rand(3, 2, 10), torch.rand(3, 10))
        stats.due()
        for r in range(3):
            if rng.random() < 0.3:  # mature and immature units alike, sometimes twice in a row
                stats.reset_units(r, torch.from_numpy(rng.choice(10, size=rng.integers(1, 4), replace=False)))
        maturity = np.array([[c.maturity] for c in configs])
        assert np.array_equal(stats.eligible_counts(), np.count_nonzero(stats.ages() > maturity, axis=1)), t
        if t % 50 == 49:
            other = UnitStatistics(configs, 3, 10)
            other.load_state_dict(stats.state_dict())
            assert np.array_equal(other.ages(), stats.ages())
            stats = other
        if t == 150:
            configs = [CBPConfig(replacement_rate=0.05, maturity=m) for m in (3, 9, 0)]
            stats.config = configs
    assert stats.replacements.sum() > 0


def _sigmoid_net_after_replacement(bias_correction: bool) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A sigmoid MLP whose statistics were gathered over 300 forwards of one input
    distribution, then exactly one unit of its first layer replaced. Returns the outputs on a
    fresh batch of that distribution before and after, and the replaced units."""
    net = MLP(8, [16, 12], 3, activation="sigmoid", generator=torch.Generator().manual_seed(0))
    n_units = 16
    config = CBPConfig(replacement_rate=0.0, maturity=10, next_layer_bias_correction=bias_correction)
    cbp = ContinualBackprop(net.cbp_groups(), config, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        net(torch.rand(32, 8, generator=g))  # hooks capture the training forward's activations
        cbp.step()
    # One replacement is due at the next step in the first layer (ρ·|eligible| = 16/16) and
    # none in the second (12/16 < 1).
    cbp.config = CBPConfig(replacement_rate=1.0 / n_units, maturity=10,
                           next_layer_bias_correction=bias_correction)
    x = torch.rand(32, 8, generator=g)
    net(x)
    with torch.no_grad():
        before = net(torch.rand(4096, 8, generator=torch.Generator().manual_seed(2)))
    replaced = cbp.step()
    with torch.no_grad():
        after = net(torch.rand(4096, 8, generator=torch.Generator().manual_seed(2)))
    return before, after, replaced.get("layers.0", [])


def test_next_layer_bias_correction_keeps_the_expected_output():
    """On a sigmoid MLP (activations far from zero on average), replacing a live unit shifts the
    outputs by its contribution; with the next-layer bias correction its mean is kept, so the
    outputs move much less, and their mean hardly at all."""
    before_off, after_off, replaced_off = _sigmoid_net_after_replacement(False)
    before_on, after_on, replaced_on = _sigmoid_net_after_replacement(True)
    assert replaced_off == replaced_on and len(replaced_on) == 1
    torch.testing.assert_close(before_off, before_on)
    move_off = (after_off - before_off).abs().mean()
    move_on = (after_on - before_on).abs().mean()
    assert move_off > 1e-3  # the replaced unit was live
    assert move_on < 0.5 * move_off
    mean_shift_off = (after_off - before_off).mean(0).abs().max()
    mean_shift_on = (after_on - before_on).mean(0).abs().max()
    assert mean_shift_on < 0.1 * mean_shift_off


def test_next_layer_bias_correction_adds_the_corrected_mean_times_the_outgoing_weights():
    """By hand: consumer bias += w_out[:, i] · ĥ_i / (1 − η^age_i) before w_out[:, i] is zeroed."""
    net = MLP(4, [5], 2, activation="sigmoid", generator=torch.Generator().manual_seed(0))
    config = CBPConfig(replacement_rate=0.0, maturity=2, decay=0.9, next_layer_bias_correction=True)
    cbp = ContinualBackprop(net.cbp_groups(), config, generator=torch.Generator().manual_seed(5))
    xs = [torch.rand(3, 4, generator=torch.Generator().manual_seed(k)) for k in range(6)]
    mean = torch.zeros(5)
    for x in xs:
        net(x)
        cbp.step()
        with torch.no_grad():
            mean = 0.9 * mean + 0.1 * torch.sigmoid(net.layers[0](x)).mean(0)
    stats = cbp.stats["layers.0"]
    idx = torch.tensor([1, 3])
    expected = stats.expected_values(0, idx)
    torch.testing.assert_close(expected, mean[idx] / (1 - 0.9 ** 6))
    w_out = net.head.weight.detach().clone()
    bias = net.head.bias.detach().clone()
    reinit_units(net.cbp_groups()[0], idx, optimizer=None, generator=torch.Generator().manual_seed(0),
                 unit_means=expected)
    torch.testing.assert_close(net.head.bias.detach(), bias + w_out[:, idx] @ expected)
    assert torch.all(net.head.weight[:, idx] == 0)


def test_expected_values_are_none_without_the_correction():
    stats = ContinualBackprop(_mlp().cbp_groups(), CBPConfig()).stats["layers.0"]
    assert stats.expected_values(0, torch.tensor([0])) is None
