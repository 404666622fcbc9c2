"""The update-side methods since the paper: L2 Init, weight clipping and UPGD.

Each update against a hand computation on a tiny network (gradients from torch autograd, the
method's arithmetic written out here in float64), the learner core (lockstep) against single
learners and against the autograd engine (``ReferenceOptimizer``), construction on the MLP, the
convnet and ResNet-18 through ``make_agent``, and checkpoint round trips carrying θ₀ and the
utilities."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plasticity_gym_agents import make_agent
from plasticity_gym_agents.config import LearnerConfig
from plasticity_gym_agents.learners import SupervisedLearner
from plasticity_gym_agents.lockstep import LockstepLearner
from plasticity_gym_agents.networks import build_network, task_spec
from plasticity_gym_agents.networks import ResNet18
from plasticity_gym_agents.optim import ReferenceOptimizer, clip_bound, module_clip_bounds, upgd_update
from plasticity_gym_agents.units import InitSpec
from plasticity_gym_agents.units import reinit_units
from agent_helpers import cls_spaces, reg_spaces, train_info

LR = 0.1


def _tiny(extra: dict, optimizer: dict | None = None) -> LockstepLearner:
    """A 3-2-1 ReLU regression MLP, one replica, batch 2."""
    cfg = LearnerConfig.from_dict({"network": {"hidden": [2]}, "optimizer": optimizer or {"lr": LR}, **extra})
    return LockstepLearner("x", cfg, *reg_spaces(2, 3), seeds=[0], device="cpu", compile=False)


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((1, 2, 3), dtype=np.float32), rng.normal(size=(1, 2)).astype(np.float32)


def _grads(core: LockstepLearner, x: np.ndarray, y: np.ndarray) -> list[torch.Tensor]:
    """d mse_loss / d θ at the core's current weights, by autograd on a copy (w0, b0, w1, b1)."""
    net = copy.deepcopy(core.probe_model(0)).requires_grad_(True)
    loss = F.mse_loss(net(torch.from_numpy(x[0]))[:, 0], torch.from_numpy(y[0]))
    return [g.double() for g in torch.autograd.grad(loss, list(net.parameters()))]


def _step(learner, x, y) -> None:
    info = {"phase": "train", "next_phase": "train", "target": y, "epoch": 0, "train_epochs": 1}
    learner.observe(x, learner.act(x, info), None, info)


def _now(core: LockstepLearner) -> list[torch.Tensor]:
    return [p[0].double().clone() for p in core.params]


def test_configs_are_validated():
    with pytest.raises(ValueError, match="unknown key 'lambda'"):
        LearnerConfig.from_dict({"l2_init": {"lambda": 1.0}})
    with pytest.raises(ValueError, match="kappa"):
        LearnerConfig.from_dict({"weight_clip": {"kappa": 0.0}})
    with pytest.raises(ValueError, match="beta_utility"):
        LearnerConfig.from_dict({"upgd": {"beta_utility": 1.0}})
    with pytest.raises(ValueError, match="upgd replaces the SGD step"):
        LearnerConfig.from_dict({"upgd": {}, "optimizer": {"name": "adam"}})
    with pytest.raises(ValueError, match="upgd replaces the SGD step"):
        LearnerConfig.from_dict({"upgd": {}, "optimizer": {"momentum": 0.9}})


def test_l2_init_pulls_toward_the_initial_weights_by_hand():
    core = _tiny({"l2_init": {"strength": 0.5}})
    theta0 = _now(core)
    with torch.no_grad():  # move away from θ₀ (which stays as built), so the pull shows at step 1
        for w, b in zip(core.weights, core.biases):
            w.add_(0.3)
            b.sub_(0.2)
    for step in range(2):
        x, y = _batch(step)
        before, g = _now(core), _grads(core, x, y)
        _step(core, x, y)
        for p, w, gi, w0 in zip(_now(core), before, g, theta0):
            torch.testing.assert_close(p, w - LR * (gi + 0.5 * (w - w0)), rtol=0, atol=1e-6)


def test_weight_clip_clamps_to_kappa_times_the_init_bound_by_hand():
    kappa = 1.5
    core = _tiny({"weight_clip": {"kappa": kappa}})
    # The 3-2-1 MLP's Kaiming-uniform bounds: ReLU gain √2 · √(3/3) for the hidden layer, √(3/2) for the head.
    bounds = [math.sqrt(2.0), math.sqrt(2.0), math.sqrt(1.5), math.sqrt(1.5)]  # w0, b0, w1, b1
    with torch.no_grad():
        for w, b in zip(core.weights, core.biases):
            w.mul_(4.0)
            b.fill_(5.0)
    x, y = _batch(0)
    before, g = _now(core), _grads(core, x, y)
    _step(core, x, y)
    clipped = 0
    for p, w, gi, bound in zip(_now(core), before, g, bounds):
        expected = (w - LR * gi).clamp(-kappa * bound, kappa * bound)
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)
        clipped += int((expected.abs() == kappa * bound).sum())
    assert clipped >= 4  # the biases at least


@pytest.mark.parametrize("noise_std", [0.0, 0.05])
def test_upgd_update_by_hand(noise_std):
    beta, wd = 0.9, 0.1
    core = _tiny({"upgd": {"beta_utility": beta, "noise_std": noise_std, "weight_decay": wd}})
    u = [torch.zeros_like(p) for p in _now(core)]
    c = 0.0
    for step in range(2):
        x, y = _batch(step)
        w, g = _now(core), _grads(core, x, y)
        eps = torch.randn(sum(t.numel() for t in w),
                          generator=torch.Generator().set_state(core.generators[0].get_state())).double()
        _step(core, x, y)
        u = [beta * ui + (1 - beta) * (-gi * wi) for ui, gi, wi in zip(u, g, w)]
        c = beta * c + (1 - beta)  # 1 − β^t
        eta = max(float(ui.max()) for ui in u)  # the largest raw utility over the whole network
        assert eta > 0
        start = 0
        for p, wi, gi, ui in zip(_now(core), w, g, u):
            xi = noise_std * eps[start:start + wi.numel()].view(wi.shape)
            start += wi.numel()
            gate = 1.0 - torch.sigmoid(ui / c / eta)
            torch.testing.assert_close(p, (1 - LR * wd) * wi - LR * (gi + xi) * gate, rtol=0, atol=1e-6)
    torch.testing.assert_close(core.opt_state["utility"][0][0].double(), u[0], rtol=1e-5, atol=1e-8)


def test_upgd_gates_nothing_without_a_positive_utility():
    """η ≤ 0 (no weight has helped yet): the floor keeps the gate open instead of dividing by zero."""
    core = _tiny({"upgd": {"noise_std": 0.0, "weight_decay": 0.0}})
    with torch.no_grad():
        for w, b in zip(core.weights, core.biases):
            w.zero_()
            b.zero_()
    x, y = _batch(0)
    g = _grads(core, x, y)
    _step(core, x, y)
    for p, gi in zip(_now(core), g):  # all utilities are 0: sigmoid(0/η) = 1/2
        torch.testing.assert_close(p, -LR * gi * 0.5, rtol=0, atol=1e-7)
        assert torch.isfinite(p).all()


def test_upgd_scales_by_the_largest_raw_utility_per_replica():
    """β 0 (u = −g·w, bias correction 1): η is each replica's largest utility over all its
    parameters — not the largest |u|, not per tensor — and the gate is 1 − sigmoid(u/η)."""
    w = [torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([[0.5], [-4.0]])]  # (R=2, ...)
    g = [torch.tensor([[3.0, -1.0], [-0.5, 0.0]]), torch.tensor([[-1.0], [1.0]])]
    u = [-gi * wi for gi, wi in zip(g, w)]  # replica 0: [-6, 1], [0.5]; replica 1: [0.5, 0], [4]
    eta = torch.tensor([1.0, 4.0])
    expected = [wi - gi * (1 - torch.sigmoid(ui / eta.view(2, *[1] * (wi.dim() - 1)))) for wi, gi, ui in zip(w, g, u)]
    params = [t.clone() for t in w]
    upgd_update(params, g, [torch.zeros_like(t) for t in w], [torch.zeros_like(t) for t in w], lr=1.0, beta=0.0,
                noise_std=0.0, weight_decay=0.0, generators=[None, None], noise=torch.zeros(2, 3))
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e)


def test_clip_bounds_of_every_layer_kind():
    """A uniform init's bound; a normal init's σ·√3; torch's 1/√fan_in for an untagged layer;
    normalisation layers unclipped."""
    assert clip_bound(InitSpec("uniform", 0.3)) == 0.3
    assert clip_bound(InitSpec("normal", 0.1)) == pytest.approx(0.1 * math.sqrt(3.0))
    net = ResNet18(10, width=4, generator=torch.Generator().manual_seed(0))
    bounds = module_clip_bounds(net)
    assert bounds[net.stem.weight] == pytest.approx(math.sqrt(2.0 / (3 * 9)) * math.sqrt(3.0))  # fan_in 3·3·3
    assert all(p not in bounds for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    user = torch.nn.Sequential(torch.nn.Linear(16, 3), torch.nn.LayerNorm(3))
    bounds = module_clip_bounds(user)
    assert bounds[user[0].weight] == bounds[user[0].bias] == pytest.approx(0.25) and len(bounds) == 2


GRIDS = {
    "l2-init": [{"l2_init": {"strength": 0.05}, "optimizer": {"lr": 0.05}},
                {"l2_init": {"strength": 0.01}, "optimizer": {"lr": 0.02}}],
    "l2-init-adam": [{"l2_init": {"strength": 0.05}, "optimizer": {"name": "adam", "lr": 0.01}},
                     {"l2_init": {"strength": 0.2}, "optimizer": {"name": "adam", "lr": 0.003}}],
    "weight-clip": [{"weight_clip": {"kappa": 0.6}, "optimizer": {"lr": 0.05}},
                    {"weight_clip": {"kappa": 1.0}, "optimizer": {"lr": 0.05, "momentum": 0.5}}],
    "upgd": [{"upgd": {"noise_std": 0.01, "beta_utility": 0.9}, "optimizer": {"lr": 0.05}},
             {"upgd": {"noise_std": 0.0, "weight_decay": 0.01}, "optimizer": {"lr": 0.02}}],
    "all-three": [{"upgd": {"noise_std": 0.01}, "l2_init": {"strength": 0.05}, "weight_clip": {"kappa": 0.8},
                   "optimizer": {"lr": 0.05}}] * 2,
}


def _grid(method: str) -> list[LearnerConfig]:
    return [LearnerConfig.from_dict({"network": {"hidden": [7, 5]}, **extra}) for extra in GRIDS[method]]


def _stream(steps: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield rng.random((n, 4, 6), dtype=np.float32), rng.integers(0, 3, (n, 4))


@pytest.mark.parametrize("method", sorted(GRIDS))
def test_lockstep_equals_single_learners_and_autograd(method):
    """Per-replica hyperparameters in one lockstep learner = one single learner per seed (the core
    with one replica) = torch autograd with ``ReferenceOptimizer`` (the autograd engine)."""
    configs = _grid(method)
    spaces = cls_spaces(4, (6,))
    core = LockstepLearner(method, configs, *spaces, seeds=[0, 1], device="cpu")
    singles = [SupervisedLearner(method, c, *spaces, seed=r, device="cpu") for r, c in enumerate(configs)]
    refs = []
    for r, c in enumerate(configs):
        net = copy.deepcopy(core.probe_model(r)).train().requires_grad_(True)
        opt = ReferenceOptimizer(net.parameters(), c.optimizer, l2_init=c.l2_init, weight_clip=c.weight_clip,
                                 clip_bounds=module_clip_bounds(net), upgd=c.upgd,
                                 generator=torch.Generator().manual_seed(r + 1))  # the core's seed + 1
        refs.append((net, opt))
    initial = [p.clone() for p in core.params]
    for x, y in _stream(80, 2):
        _step(core, x, y)
        for r in range(2):
            info = train_info(y[r])
            singles[r].observe(x[r], singles[r].act(x[r], info), 0.0, info)
            net, opt = refs[r]
            loss = F.cross_entropy(net(torch.from_numpy(x[r])), torch.from_numpy(y[r]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    for r in range(2):
        for j, (p, q) in enumerate(zip(singles[r].params, refs[r][0].parameters())):
            torch.testing.assert_close(core.params[j][r], p.detach(), rtol=1e-4, atol=2e-5)
            torch.testing.assert_close(core.params[j][r], q.detach(), rtol=1e-4, atol=2e-5)
            assert not torch.allclose(core.params[j][r], initial[j][r], atol=1e-3)  # it learned
    if "weight_clip" in GRIDS[method][0]:
        bounds = [math.sqrt(2 * 3 / 6), math.sqrt(2 * 3 / 7), math.sqrt(3 / 5)]
        for r, c in enumerate(configs):
            for i, b in enumerate(bounds):
                assert float(core.weights[i][r].abs().max()) <= c.weight_clip.kappa * b + 1e-6


def test_unit_surgery_resets_utilities_but_not_theta0():
    """Unit surgery (CBP's, ReDo's) zeroes the replaced slices of every optimizer state, UPGD's
    utilities and their bias corrections included; L2 Init's θ₀ is not optimizer state and stays."""
    cfg = LearnerConfig.from_dict({"network": {"hidden": [7, 5]}, "upgd": {}, "l2_init": {}})
    net = build_network(cfg, task_spec(*cls_spaces(4, (6,))), torch.Generator().manual_seed(0))
    opt = ReferenceOptimizer(net.parameters(), cfg.optimizer, l2_init=cfg.l2_init, upgd=cfg.upgd,
                             generator=torch.Generator().manual_seed(1))
    theta0 = [t.clone() for t in opt.state_dict()["initial_params"]]
    for x, y in _stream(3, 1):
        loss = F.cross_entropy(net(torch.from_numpy(x[0])), torch.from_numpy(y[0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    group = net.cbp_groups()[0]
    reinit_units(group, torch.tensor([2]), optimizer=opt, generator=torch.Generator().manual_seed(5))
    for key in ("utility", "utility_correction"):
        rows, cols = opt.state[group.producer.weight][key], opt.state[group.consumers[0].module.weight][key]
        assert bool((rows[2] == 0).all()) and bool((cols[:, 2] == 0).all())
        assert bool((rows[1] != 0).any())
    for t, t0 in zip(opt.state_dict()["initial_params"], theta0):
        torch.testing.assert_close(t, t0, rtol=0, atol=0)


ENVS = [("PermutedMNIST-v0", (784,), 10, "MLP"), ("ContinualImageNet-v0", (3, 32, 32), 2, "ConvNet"),
        ("ClassIncCIFAR100-v0", (3, 32, 32), 100, "ResNet18")]


@pytest.mark.parametrize("env_id,x_shape,classes,network", ENVS)
@pytest.mark.parametrize("name", ["l2-init", "weight-clip", "upgd"])
def test_make_agent_builds_every_network_and_checkpoints(name, env_id, x_shape, classes, network):
    spaces = cls_spaces(2, x_shape, classes)
    agent = make_agent(name, *spaces, env_id=env_id, scale="smoke", seed=3, device="cpu")
    assert type(agent.network).__name__ == network
    section = {"l2-init": "l2_init", "weight-clip": "weight_clip", "upgd": "upgd"}[name]
    assert getattr(agent.config, section) is not None
    rng = np.random.default_rng(0)
    batches = [(rng.random((2, *x_shape), dtype=np.float32), rng.integers(0, classes, 2)) for _ in range(4)]
    for x, y in batches[:2]:
        _step(agent, x, train_info(y)["target"])
    state = agent.state_dict()
    if agent.core is None:  # the autograd engine: the optimizer carries θ₀ and the utilities
        opt_state = state["optimizer"]
        assert ("initial_params" in opt_state) == (name == "l2-init")
        if name == "upgd":
            assert any("utility" in s for s in opt_state["state"].values())
    else:
        assert (state["core"]["l2_init_initial"] is not None) == (name == "l2-init")
        assert ("utility" in state["core"]["optimizer"]) == (name == "upgd")
    twin = pickle.loads(pickle.dumps(agent)) if network == "MLP" else \
        make_agent(name, *spaces, env_id=env_id, scale="smoke", seed=99, device="cpu")
    twin.load_state_dict(state)
    for x, y in batches[2:]:
        _step(agent, x, y)
        _step(twin, x, y)
    for p, q in zip(agent.params, twin.params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    if name == "weight-clip":
        kappa = agent.config.weight_clip.kappa
        for p, b in module_clip_bounds(agent.network).items():
            assert float(p.detach().abs().max()) <= kappa * b + 1e-6
