"""Each baseline's update against a hand computation on a tiny network."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plasticity_gym_agents import make_agent
from plasticity_gym_agents.networks import LinearNet
from agent_helpers import cls_spaces, reg_spaces, train_info

X = np.array([[0.1, 0.9, 0.3, 0.5, 0.0, 0.7]], dtype=np.float32)
Y = np.array([2])
TINY = {"network": {"hidden": [4]}}


def _agent(name, overrides=None, spaces=None, **kw):
    obs, act = spaces or cls_spaces()
    ov = copy.deepcopy(TINY)
    for k, v in (overrides or {}).items():
        ov[k] = {**ov.get(k, {}), **v} if isinstance(v, dict) else v
    return make_agent(name, obs, act, overrides=ov, device="cpu", **kw)


def _params(agent):
    return [p.detach().clone() for p in agent.network.parameters()]


def _grads(agent, x=X, y=Y, regression=False):
    """Autograd gradients of the learner's loss at the current parameters (on a copy)."""
    net = copy.deepcopy(agent.network).train()
    out = net(torch.as_tensor(x))
    loss = F.mse_loss(out[:, 0], torch.as_tensor(y, dtype=torch.float32)) if regression \
        else F.cross_entropy(out, torch.as_tensor(y))
    return [g.detach() for g in torch.autograd.grad(loss, list(net.parameters()))]


def _step(agent, x=X, y=Y, **info_kw):
    info = train_info(y, **info_kw)
    a = agent.act(x, info)
    agent.observe(x, a, 0.0, info)


def _assert_params(agent, expected):
    for p, e in zip(agent.network.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-7)


def test_backprop_sgd_step():
    agent = _agent("backprop", {"optimizer": {"lr": 0.1}})
    p0, g = _params(agent), _grads(agent)
    _step(agent)
    _assert_params(agent, [p - 0.1 * gi for p, gi in zip(p0, g)])


def test_backprop_regression_step_squared_error():
    agent = _agent("backprop", {"optimizer": {"lr": 0.05}}, spaces=reg_spaces())
    y = np.array([1.7], dtype=np.float32)
    p0, g = _params(agent), _grads(agent, y=y, regression=True)
    info = train_info(y)
    a = agent.act(X, info)
    assert a.dtype == np.float32 and a.shape == (1,)
    agent.observe(X, a, 0.0, info)
    _assert_params(agent, [p - 0.05 * gi for p, gi in zip(p0, g)])


def test_sgd_momentum_two_steps():
    agent = _agent("backprop", {"optimizer": {"lr": 0.1, "momentum": 0.9}})
    p0, g1 = _params(agent), _grads(agent)
    _step(agent)
    p1 = [p - 0.1 * g for p, g in zip(p0, g1)]
    _assert_params(agent, p1)
    g2 = _grads(agent)
    _step(agent)
    _assert_params(agent, [p - 0.1 * (0.9 * a + b) for p, a, b in zip(p1, g1, g2)])


def test_adam_step_with_configured_betas():
    agent = _agent("adam", {"optimizer": {"lr": 0.01, "betas": [0.99, 0.99], "eps": 1e-8}})
    assert agent.config.optimizer.betas == (0.99, 0.99)
    p0, g1 = _params(agent), _grads(agent)
    _step(agent)
    # First Adam step: m̂ = g, v̂ = g², so Δ = -lr · g / (|g| + eps).
    p1 = [p - 0.01 * g / (g.abs() + 1e-8) for p, g in zip(p0, g1)]
    _assert_params(agent, p1)
    g2 = _grads(agent)
    _step(agent)
    b1 = b2 = 0.99
    expected = []
    for p, a, b in zip(p1, g1, g2):
        m = (b1 * (1 - b1) * a + (1 - b1) * b) / (1 - b1**2)
        v = (b2 * (1 - b2) * a * a + (1 - b2) * b * b) / (1 - b2**2)
        expected.append(p - 0.01 * m / (v.sqrt() + 1e-8))
    _assert_params(agent, expected)


def test_l2_adds_lambda_w_to_the_gradient():
    agent = _agent("l2", {"optimizer": {"lr": 0.1, "weight_decay": 0.5}})
    p0, g = _params(agent), _grads(agent)
    _step(agent)
    _assert_params(agent, [p - 0.1 * (gi + 0.5 * p) for p, gi in zip(p0, g)])


def test_shrink_and_perturb_is_shrink_then_seeded_noise():
    agent = _agent("shrink-perturb", {"optimizer": {"lr": 0.1},
                                      "shrink_perturb": {"weight_decay": 0.2, "noise_std": 0.01}})
    p0, g = _params(agent), _grads(agent)
    noise_gen = torch.Generator().manual_seed(0)
    noise_gen.set_state(agent.core.generators[0].get_state())
    _step(agent)
    # one noise block for all parameters, split in parameter order
    eps = torch.randn(sum(p.numel() for p in p0), generator=noise_gen).split([p.numel() for p in p0])
    expected = [(1 - 0.1 * 0.2) * (p - 0.1 * gi) + 0.01 * e.view_as(p) for p, gi, e in zip(p0, g, eps)]
    _assert_params(agent, expected)


def test_dropout_masks_are_seeded_and_off_in_evaluation():
    agent = _agent("dropout", {"network": {"hidden": [50], "dropout": 0.5}})
    net = agent.network
    x = torch.as_tensor(X)
    gen = torch.Generator().manual_seed(0)
    gen.set_state(agent.generator.get_state())
    net.train()
    out = net(x)
    h = torch.relu(net.layers[0](x))
    keep = torch.rand(h.shape, generator=gen) >= 0.5
    torch.testing.assert_close(out, net.head(h * keep / 0.5))
    assert 0 < int(keep.sum()) < 50
    net.eval()
    torch.testing.assert_close(net(x), net.head(h))


def test_no_learning_in_val_or_test_phase():
    for name in ("backprop", "cbp", "shrink-perturb", "redo"):
        agent = _agent(name, {"optimizer": {"lr": 0.5}})
        p0 = _params(agent)
        for phase in ("val", "test"):
            info = train_info(Y, phase=phase, next_phase=phase)
            a = agent.act(X, info)
            agent.observe(X, a, 1.0, info)
        _assert_params(agent, p0)
        assert agent.updates == 0
        _step(agent)
        assert agent.updates == 1


def test_prediction_in_val_phase_uses_evaluation_mode():
    agent = _agent("dropout", {"network": {"hidden": [50], "dropout": 0.5}})
    info = train_info(Y, phase="val", next_phase="val")
    outs = {tuple(agent.act(np.tile(X, (1, 1)), info)) for _ in range(5)}
    assert len(outs) == 1 and not agent.network.training


def test_head_reset_zeroes_head_and_its_momentum_at_the_next_task_boundary():
    agent = _agent("head-reset", {"optimizer": {"lr": 0.1, "momentum": 0.9}})
    assert agent.uses_task_boundaries
    _step(agent, boundary=True)  # first task: the initial network is kept
    assert torch.any(agent.network.head.weight != 0)
    _step(agent)
    hidden_before = agent.network.layers[0].weight.clone()
    info = train_info(Y, boundary=True)
    agent.act(X, info)  # the reset happens before predicting the new task's first batch
    head = agent.network.head
    assert torch.all(head.weight == 0) and torch.all(head.bias == 0)
    assert torch.all(agent.optimizer.state[head.weight]["momentum_buffer"] == 0)
    assert torch.equal(agent.network.layers[0].weight, hidden_before)
    assert torch.any(agent.optimizer.state[agent.network.layers[0].weight]["momentum_buffer"] != 0)


def test_head_reset_reinit_mode_redraws_the_head():
    agent = _agent("head-reset", {"head_reset": "reinit"})
    _step(agent, boundary=True)
    _step(agent)
    before = agent.network.head.weight.clone()
    agent.act(X, train_info(Y, boundary=True))
    w = agent.network.head.weight
    assert not torch.equal(w, before) and torch.all(w != 0)


def test_retrain_reinitializes_network_and_optimizer_at_task_boundaries():
    agent = _agent("retrain", {"optimizer": {"lr": 0.1, "momentum": 0.9}})
    assert agent.uses_task_boundaries
    init = _params(agent)
    _step(agent, boundary=True)
    _step(agent)
    trained = _params(agent)
    assert agent.optimizer.state
    agent.act(X, train_info(Y, boundary=True))
    now = _params(agent)
    assert not agent.optimizer.state
    for p, a, b in zip(now, init, trained):
        assert not torch.equal(p, b)
        if p.dim() == 2:
            assert not torch.equal(p, a)  # a fresh draw, not the old initial weights
    from plasticity_gym_agents.units import get_init
    for lin in [*agent.network.layers, agent.network.head]:
        assert lin.weight.abs().max() <= get_init(lin).bound
        assert torch.all(lin.bias == 0)


def test_agents_without_boundaries_ignore_them():
    agent = _agent("backprop")
    assert not agent.uses_task_boundaries
    _step(agent, boundary=True)
    _step(agent)
    head = agent.network.head.weight.clone()
    agent.act(X, train_info(Y, boundary=True))
    assert torch.equal(agent.network.head.weight, head)


def test_linear_baseline_step():
    agent = _agent("linear", {"optimizer": {"lr": 0.1}})
    assert isinstance(agent.network, LinearNet) and agent.cbp is None
    p0, g = _params(agent), _grads(agent)
    _step(agent)
    _assert_params(agent, [p - 0.1 * gi for p, gi in zip(p0, g)])


def test_redo_recycles_dormant_units_only_and_keeps_the_function():
    agent = _agent("redo", {"network": {"hidden": [6]}, "optimizer": {"lr": 1e-9},
                            "redo": {"threshold": 0.1, "period": 5}})
    net = agent.network
    with torch.no_grad():
        net.layers[0].bias[2] = -100.0  # dead: mean |h| = 0 ≤ 0.1 · layer mean
        net.layers[0].bias[[0, 1, 3, 4, 5]] = 1.0  # clearly active
    w_before = net.layers[0].weight.clone()
    for _ in range(4):
        _step(agent)
    assert agent.redo.replacements == {"layers.0": 0}
    x = torch.as_tensor(X)
    net.eval()
    with torch.no_grad():
        head_before = net.head.weight.clone()
        out_before = net(x).clone()
    _step(agent)
    assert agent.redo.replacements == {"layers.0": 1}
    assert net.layers[0].bias[2] == 0 and torch.all(net.head.weight[:, 2] == 0)
    assert not torch.allclose(net.layers[0].weight[2], w_before[2])
    torch.testing.assert_close(net.layers[0].weight[[0, 1, 3, 4, 5]], w_before[[0, 1, 3, 4, 5]])
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), out_before, atol=1e-6, rtol=0)
    torch.testing.assert_close(net.head.weight[:, [0, 1, 3, 4, 5]], head_before[:, [0, 1, 3, 4, 5]])


@pytest.mark.parametrize("fast", [True, False])
def test_cbp_agent_replaces_units_at_the_configured_rate(fast):
    over = {"cbp": {"replacement_rate": 0.01, "maturity": 5}, "network": {"hidden": [20, 20]}}
    if not fast:
        over["network"]["dropout"] = 0.01  # forces the autograd path (hooks capture h)
    agent = _agent("cbp", over)
    assert (agent.core is not None) is fast  # the learner core, or autograd
    rng = np.random.default_rng(0)
    for _ in range(300):
        _step(agent, x=rng.random((1, 6), dtype=np.float32), y=rng.integers(0, 3, 1))
    for name in ("layers.0", "layers.1"):
        # ≈ ρ·Σ eligible = 0.01 · 20 · (300 − 5) ≈ 59, less the units young after replacement.
        assert 50 <= agent.cbp.replacements[name] <= 59
