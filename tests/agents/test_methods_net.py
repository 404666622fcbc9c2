"""The network-side and reset methods: crelu, layernorm, snr.

Per method: a hand computation on a tiny network (forward and updates) against the learner core
(lockstep, both array paths) and torch autograd; for SNR the firing counts, the reset decision
and the reset slices with their optimizer state; every method on the MLP, the convnet and
ResNet-18 through make_agent; checkpoint round trips; config validation.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import plasticity_gym_agents.lockstep as lockstep
from plasticity_gym_agents import make_agent, resolve_config
from plasticity_gym_agents.config import LearnerConfig, SNRConfig
from plasticity_gym_agents.lockstep import LockstepLearner
from plasticity_gym_agents.networks import MLP, CReLU
from plasticity_gym_agents.optim import ReferenceOptimizer
from plasticity_gym_agents.snr import FiringStatistics, SelfNormalizedResets
from agent_helpers import cls_spaces, reg_spaces, train_info

LR = 0.1


def _set_params(core: LockstepLearner, values: list[np.ndarray]) -> None:
    with torch.no_grad():
        for p, v in zip(core._params, values):
            p.copy_(torch.as_tensor(np.asarray(v, dtype=np.float32)).expand_as(p))


def _step(core: LockstepLearner, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    info = {"phase": "train", "next_phase": "train", "target": y}
    out = core.act(x, info)
    core.observe(x, out, None, info)
    return out


@pytest.mark.parametrize("numpy_path", [True, False])
def test_crelu_forward_and_two_updates_by_hand(numpy_path, monkeypatch):
    """One CReLU unit (2 inputs → [relu(p), relu(−p)] → 1 output), squared error, SGD: the
    learner core and the autograd MLP match the update written out by hand, once with p > 0 and
    once with p < 0 (each side's gradient flows through its own half only)."""
    if not numpy_path:
        monkeypatch.setattr(lockstep, "_NUMPY_MAX_ELEMENTS", 0)
    cfg = LearnerConfig.from_dict({"network": {"hidden": [2], "activation": "crelu"},
                                   "optimizer": {"lr": LR}})
    core = LockstepLearner("crelu", cfg, *reg_spaces(1, 2), seeds=[0], device="cpu", compile=False)
    assert core._numpy == numpy_path
    assert [tuple(w.shape) for w in core.weights] == [(1, 1, 2), (1, 1, 2)]  # 1 unit, 2 outputs
    w0, b0, w1, b1 = np.array([[0.5, -1.0]]), np.array([0.2]), np.array([[0.7, -0.3]]), np.array([0.1])
    _set_params(core, [w0, b0, w1, b1])
    net = copy.deepcopy(core.probe_model(0)).train().requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for x, y in (([1.0, 0.2], 1.0), ([-1.0, 0.5], -2.0)):
        x = np.array(x)
        p = float((w0 @ x)[0] + b0[0])
        h = np.array([max(p, 0.0), max(-p, 0.0)])
        out = float((w1 @ h)[0] + b1[0])
        pred = _step(core, x[None, None].astype(np.float32), np.array([[y]], dtype=np.float32))
        assert pred[0, 0] == pytest.approx(out, abs=1e-6)
        g = 2.0 * (out - y)
        g_p = g * (w1[0, 0] * (p > 0) - w1[0, 1] * (p < 0))  # d out / d p through each half
        w0, b0, w1, b1 = w0 - LR * g_p * x[None], b0 - LR * g_p, w1 - LR * g * h[None], b1 - LR * g
        loss = F.mse_loss(net(torch.tensor(x[None], dtype=torch.float32))[:, 0], torch.tensor([y]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for got, ref, want in zip(core.params, net.parameters(), (w0, b0, w1, b1)):
            np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ref.detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_crelu_halves_units_and_keeps_representation_width():
    net = MLP(6, [100, 5], 3, activation="crelu")
    assert [lin.out_features for lin in net.layers] == [50, 3]
    assert [net.layers[1].in_features, net.head.in_features] == [100, 6]
    h = net.acts[0](torch.tensor([[1.5, -2.0]]))
    assert h.tolist() == [[1.5, 0.0, 0.0, 2.0]]  # unit i: outputs 2i (relu x), 2i+1 (relu −x)
    assert isinstance(net.acts[0], CReLU)
    relu = MLP(6, [100, 5], 3)
    n = sum(p.numel() for p in net.parameters())
    assert 0.4 < n / sum(p.numel() for p in relu.parameters()) < 0.6


def _layer_norm_loss(params: list[np.ndarray], x: np.ndarray, y: int) -> float:
    """Cross-entropy of a 2-unit LayerNorm MLP, float64, written out."""
    w0, b0, w1, b1, gamma, beta = params
    z = w0 @ x + b0
    xhat = (z - z.mean()) / math.sqrt(((z - z.mean()) ** 2).mean() + 1e-5)
    h = np.maximum(gamma * xhat + beta, 0.0)
    out = w1 @ h + b1
    return float(np.log(np.exp(out).sum()) - out[y])


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy", "torch"])
def test_layer_norm_update_by_hand_and_autograd(numpy_path, monkeypatch):
    """A 3-unit LayerNorm layer (learned scale and shift) trained by SGD with weight decay: two
    steps of the learner core equal the update from finite-difference gradients of the loss
    written out in float64, and torch autograd's; on both array paths (a tiny CPU network takes
    numpy's, larger ones and accelerators torch's)."""
    if not numpy_path:
        monkeypatch.setattr(lockstep, "_NUMPY_MAX_ELEMENTS", 0)
    lam = 0.01
    cfg = LearnerConfig.from_dict({"network": {"hidden": [3], "layer_norm": True},
                                   "optimizer": {"lr": LR, "weight_decay": lam}})
    core = LockstepLearner("layernorm", cfg, *cls_spaces(1, (2,), 2), seeds=[0], device="cpu", compile=False)
    assert core._numpy == numpy_path
    rng = np.random.default_rng(3)
    params = [rng.normal(size=(3, 2)), rng.normal(size=3) * 0.1, rng.normal(size=(2, 3)), np.zeros(2),
              1.0 + 0.2 * rng.normal(size=3), 0.1 * rng.normal(size=3)]
    _set_params(core, params)
    net = copy.deepcopy(core.probe_model(0)).train().requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=lam)
    for x, y in (([0.3, -0.8], 1), ([1.2, 0.4], 0)):
        x = np.array(x)
        grads = []
        for k, p in enumerate(params):  # central differences of the loss above
            g = np.zeros_like(p)
            for i in np.ndindex(p.shape):
                up, down = [q.copy() for q in params], [q.copy() for q in params]
                up[k][i] += 1e-6
                down[k][i] -= 1e-6
                g[i] = (_layer_norm_loss(up, x, y) - _layer_norm_loss(down, x, y)) / 2e-6
            grads.append(g)
        params = [p - LR * (g + lam * p) for p, g in zip(params, grads)]
        _step(core, x[None, None].astype(np.float32), np.array([[y]]))
        loss = F.cross_entropy(net(torch.tensor(x[None], dtype=torch.float32)), torch.tensor([y]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for got, ref, want in zip(core.params, net.parameters(), params):
            np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-4, atol=2e-5)
            np.testing.assert_allclose(ref.detach().numpy(), want, rtol=1e-4, atol=2e-5)


def test_firing_statistics_counts_rates_and_reset_step():
    """η = 0.75 (reset when the silent run has probability < 1/4). Unit 0 never fires: μ = 1/2,
    reset after 3 silent updates. Unit 1 fires on updates 1–4: μ = 5/6, reset after 1 silent
    update (update 5). Unit 2 fires every other update: μ stays ≥ 1/2 and a run of 1 is never
    improbable enough."""
    stats = FiringStatistics([3], 1, SNRConfig(percentile=0.75))
    resets = {}
    for t in range(1, 9):
        h = np.array([[[-1.0, 1.0 if t <= 4 else 0.0, 1.0 if t % 2 else -1.0]]], dtype=np.float32)
        for layer, replica, idx in stats.update([h]):
            assert (layer, replica) == (0, 0)
            for i in idx.tolist():
                resets.setdefault(i, []).append(t)
        if t == 4:
            assert stats.fires[0].tolist() == [[0, 4, 2]]
            np.testing.assert_allclose(stats.rates(0), [[1 / 2, 5 / 6, 3 / 5]])
            assert stats.silent(0).tolist() == [[1, 0, 1]]  # unit 0 was reset at update 3
    # unit 0: reset at 3 (its run 3 > log(1/4)/log(1/2) = 2), again at 6 (born at 3); unit 1 at 5
    assert resets == {0: [3, 6], 1: [5, 8]}
    assert stats.replacements.tolist() == [[4]]
    assert stats.fires[0][0, 1] == 0 and stats.born[0][0, 1] == 8


def _snr_config(optimizer):
    return LearnerConfig.from_dict({"network": {"hidden": [2]}, "optimizer": optimizer,
                                    "snr": {"percentile": 0.75}})


def _snr_inputs(t):
    # unit 0 (weights [5, 0], bias 0) fires while x0 > 0 (updates 1 and 2), then never; unit 1
    # (bias 1) fires every update
    return np.array([[[1.0 if t <= 2 else -1.0, 0.5]]], dtype=np.float32)


@pytest.mark.parametrize("optimizer", [{"name": "adam", "lr": 1e-3}, {"lr": 1e-3, "momentum": 0.9}])
def test_snr_resets_the_right_slices_and_their_optimizer_state(optimizer):
    """Unit 0 fires on updates 1–2 (μ = 3/4): under η = 0.75 its second silent update (4) resets
    it: fresh incoming row, zero bias and outgoing column, those slices' optimizer state zeroed;
    unit 1's weights and state are untouched. The autograd learner (the same config with the
    inert head reset, which forces autograd) resets the same unit at the same update."""
    cfg = _snr_config(optimizer)
    spaces = cls_spaces(1, (2,), 2)
    core = LockstepLearner("snr", cfg, *spaces, seeds=[0], device="cpu", compile=False)
    auto = make_agent("snr", *spaces, overrides={**cfg.to_dict(), "head_reset": "zero"}, seed=0, device="cpu")
    assert auto.core is None
    start = [np.array([[5.0, 0.0], [0.0, 0.0]]), np.array([0.0, 1.0]), np.array([[0.4, -0.6], [-0.2, 0.3]]),
             np.zeros(2)]
    _set_params(core, start)
    with torch.no_grad():
        for p, v in zip(auto.params, start):
            p.copy_(torch.as_tensor(v, dtype=torch.float32))
    for t in range(1, 5):
        x, y = _snr_inputs(t), np.array([[t % 2]])
        before = [p.clone() for p in core._params]
        states = {k: [s.clone() for s in v] for k, v in core.opt_state.items()}
        _step(core, x, y)
        auto.observe(x[0], auto.act(x[0], train_info(y[0])), 0.0, train_info(y[0]))
        assert core.snr.replacements.tolist() == [[int(t >= 4)]]
        assert auto.snr.replacements == {"layers.0": int(t >= 4)}
    w0, b0, w1, _ = (p[0] for p in core._params)
    assert not torch.allclose(w0[0], before[0][0, 0])  # redrawn
    assert abs(float(w0[0].abs().max())) <= math.sqrt(2) * math.sqrt(3 / 2) + 1e-6  # from the init bound
    assert float(b0[0]) == 0.0 and w1[:, 0].abs().max() == 0.0
    assert abs(float(b0[1]) - 1.0) < 0.05 and w1[:, 1].abs().min() > 0.1  # unit 1 kept (one more update)
    for key, tensors in core.opt_state.items():
        sw0, sb0, sw1 = tensors[0][0], tensors[1][0], tensors[2][0]
        assert sw0[0].abs().max() == 0 and sb0[0] == 0 and sw1[:, 0].abs().max() == 0, key
        assert states[key][1][0, 1] != 0 and sb0[1] != 0, key  # unit 1's state lives on
    for ref, got in zip(auto.params, core.params):
        torch.testing.assert_close(ref.detach(), got[0], rtol=1e-4, atol=1e-5)
    auto_state = auto.optimizer.state[auto.params[0]]
    for key in core.opt_state:
        torch.testing.assert_close(auto_state[key], core.opt_state[key][0][0], rtol=1e-4, atol=1e-6)


def test_snr_on_network_groups_captures_and_resets():
    """SelfNormalizedResets on a plain MLP module: hooks capture the training forward, the dead
    unit is reset (its incoming row redrawn)."""
    torch.manual_seed(0)
    net = MLP(2, [2], 2)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        net.layers[0].bias.copy_(torch.tensor([-1.0, 1.0]))
    opt = ReferenceOptimizer(list(net.parameters()), resolve_config(
        "backprop", *cls_spaces(1, (2,), 2)).optimizer)
    snr = SelfNormalizedResets(net.cbp_groups(), SNRConfig(percentile=0.75), optimizer=opt,
                               generator=torch.Generator().manual_seed(1))
    got = []
    for _ in range(3):
        loss = F.cross_entropy(net(torch.tensor([[0.5, 0.5]])), torch.tensor([1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        got.append(snr.step())
    assert got == [{}, {}, {"layers.0": [0]}]
    assert net.layers[0].bias[0] == 0 and net.layers[0].weight[0].abs().sum() > 0
    assert net.head.weight[:, 0].abs().max() == 0


IMAGE = cls_spaces(2, (3, 32, 32), 3)
CASES = [("PermutedMNIST-v0", cls_spaces(1, (784,), 10)), ("SlowRegression-v0", reg_spaces(1, 20)),
         ("ContinualImageNet-v0", IMAGE), ("ClassIncCIFAR100-v0", cls_spaces(2, (3, 16, 16), 5))]


@pytest.mark.parametrize("name", ["crelu", "layernorm", "snr"])
@pytest.mark.parametrize("env_id,spaces", CASES, ids=[c[0] for c in CASES])
def test_every_method_on_every_network_through_make_agent(name, env_id, spaces):
    """MLP (learner core), convnet and ResNet-18 (autograd): the method is built in, trains,
    and a checkpoint (state dict, pickle) continues exactly as the original."""
    overrides = {"network": {"width": 4}} if env_id == "ClassIncCIFAR100-v0" else None
    agent = make_agent(name, *spaces, env_id=env_id, scale="smoke", overrides=overrides, seed=3, device="cpu")
    cfg = agent.config
    assert (cfg.network.activation == "crelu") == (name == "crelu")
    assert cfg.network.layer_norm == (name == "layernorm")
    assert (cfg.snr is not None) == (name == "snr")
    if name == "layernorm":
        assert cfg.optimizer.weight_decay > 0
    net = agent.network
    kinds = {type(m).__name__ for m in net.modules()}
    if name == "crelu":
        assert "CReLU" in kinds
    if name == "layernorm":
        assert kinds & {"LayerNorm", "GroupNorm"} and "BatchNorm2d" not in kinds
    assert (agent.core is not None) == (env_id in ("PermutedMNIST-v0", "SlowRegression-v0"))
    rng = np.random.default_rng(0)
    obs_space, act_space = spaces
    batch = obs_space.shape[0]

    def data(i):
        x = rng.random(obs_space.shape, dtype=np.float32)
        y = (rng.normal(size=batch).astype(np.float32) if env_id == "SlowRegression-v0"
             else rng.integers(0, int(act_space.nvec[0]), batch))
        return x, y

    def run(a, steps):
        outs = []
        for _ in range(steps):
            x, y = data(0)
            outs.append(a.act(x, train_info(y)))
            a.observe(x, outs[-1], 0.0, train_info(y))
        return outs

    run(agent, 4)
    clone = make_agent(name, *spaces, env_id=env_id, scale="smoke", overrides=overrides, seed=3, device="cpu")
    clone.load_state_dict(agent.state_dict())
    pickled = pickle.loads(pickle.dumps(agent))
    state = rng.bit_generator.state
    ref = run(agent, 3)
    for other in (clone, pickled):
        rng.bit_generator.state = state
        np.testing.assert_allclose(np.asarray(run(other, 3), dtype=np.float64), np.asarray(ref, dtype=np.float64),
                                   rtol=1e-5, atol=1e-5)
        for p, q in zip(other.params, agent.params):
            torch.testing.assert_close(p, q)


def test_snr_checkpoint_keeps_its_counts():
    spaces = cls_spaces(1, (2,), 2)
    core = LockstepLearner("snr", _snr_config({"lr": 1e-3}), *spaces, seeds=[0, 1], device="cpu", compile=False)
    for t in range(1, 4):
        _step(core, np.repeat(_snr_inputs(t), 2, axis=0), np.array([[0], [1]]))
    other = pickle.loads(pickle.dumps(core))
    for name in ("fires", "born", "last", "limit"):
        for a, b in zip(getattr(core.snr, name), getattr(other.snr, name)):
            np.testing.assert_array_equal(a, b)
    assert other.snr.steps == core.snr.steps == 3


def test_configs_are_validated():
    with pytest.raises(ValueError, match="unknown key 'pct'"):
        LearnerConfig.from_dict({"snr": {"pct": 0.9}})
    with pytest.raises(ValueError, match="must be < 1"):
        LearnerConfig.from_dict({"snr": {"percentile": 1.0}})
    for other in ("cbp", "redo"):
        with pytest.raises(ValueError, match="re-initialise hidden units"):
            LearnerConfig.from_dict({"snr": {}, other: {}})
    with pytest.raises(ValueError, match="the linear model has no hidden layer"):
        LearnerConfig.from_dict({"network": {"kind": "linear", "layer_norm": True}})
    with pytest.raises(ValueError, match="takes 'relu' or 'crelu'"):
        LearnerConfig.from_dict({"network": {"kind": "convnet", "activation": "tanh"}})
    assert lockstep.lockstep_support(LearnerConfig.from_dict(
        {"network": {"activation": "crelu", "layer_norm": True}, "snr": {}})) is None
