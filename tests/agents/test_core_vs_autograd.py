"""The learner core (one implementation of the MLP math) against an independent reference:
torch.nn + loss.backward() + torch.optim, at batch sizes above 1, over many steps, with
hyperparameters that differ per replica. And Adam's per-element step counts by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import plasticity_gym_agents.lockstep as lockstep
from plasticity_gym_agents.arrays import ACTIVATIONS
from plasticity_gym_agents.config import LearnerConfig
from plasticity_gym_agents.lockstep import LockstepLearner
from plasticity_gym_agents.networks import MLP
from plasticity_gym_agents.optim import ReferenceOptimizer
from plasticity_gym_agents.units import reinit_units
from agent_helpers import cls_spaces, reg_spaces

BATCH, STEPS = 4, 60


def _configs(activation, optimizers, **extra):
    return [LearnerConfig.from_dict({"network": {"hidden": [7, 5], "activation": activation},
                                     "optimizer": o, **extra}) for o in optimizers]


def _reference_optimizer(net, oc):
    if oc.name == "adam":
        return torch.optim.Adam(net.parameters(), lr=oc.lr, betas=oc.betas, eps=oc.eps,
                                weight_decay=oc.weight_decay)
    return torch.optim.SGD(net.parameters(), lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)


def _check_against_autograd(configs, regression, steps=STEPS, in_features=6):
    spaces = reg_spaces(BATCH, in_features) if regression else cls_spaces(BATCH, (in_features,))
    core = LockstepLearner("x", configs, *spaces, seeds=range(len(configs)), device="cpu")
    refs = []
    for r, cfg in enumerate(configs):
        net = copy.deepcopy(core.probe_model(r)).train().requires_grad_(True)
        refs.append((net, _reference_optimizer(net, cfg.optimizer)))
    initial = [p.clone() for p in core.params]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = rng.random((len(configs), BATCH, in_features), dtype=np.float32)
        y = (rng.normal(size=(len(configs), BATCH)).astype(np.float32) if regression
             else rng.integers(0, 3, (len(configs), BATCH)))
        info = {"phase": "train", "next_phase": "train", "target": y}
        core.observe(x, core.act(x, info), None, info)
        for r, (net, opt) in enumerate(refs):
            out = net(torch.from_numpy(x[r]))
            target = torch.from_numpy(y[r])
            loss = F.mse_loss(out[:, 0], target) if regression else F.cross_entropy(out, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for r, (net, _) in enumerate(refs):
        for j, p in enumerate(net.parameters()):
            torch.testing.assert_close(core.params[j][r], p.detach(), rtol=1e-4, atol=2e-5)
            assert not torch.allclose(core.params[j][r], initial[j][r], atol=1e-3)  # it learned
    return core


SGD_GRID = [{"lr": 0.05}, {"lr": 0.02}]
OPTIMIZER_GRIDS = {
    "sgd": SGD_GRID,
    "momentum-l2": [{"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, {"lr": 0.02, "momentum": 0.5}],
    "adam": [{"name": "adam", "lr": 0.01}, {"name": "adam", "lr": 0.003, "betas": [0.8, 0.99], "eps": 1e-6,
                                            "weight_decay": 0.01}],
    "adam-shared": [{"name": "adam", "lr": 0.01}] * 2,
}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("regression", [False, True])
def test_plain_sgd_equals_autograd_on_both_array_paths(activation, regression, monkeypatch):
    """The numpy path (tiny CPU nets) and the torch path, per-replica step sizes included;
    60 steps of batch 4, to 1e-4 (a gradient not divided by the batch size fails)."""
    core = _check_against_autograd(_configs(activation, SGD_GRID), regression)
    assert core._numpy
    monkeypatch.setattr(lockstep, "_NUMPY_MAX_ELEMENTS", 0)
    assert not _check_against_autograd(_configs(activation, SGD_GRID), regression)._numpy


@pytest.mark.parametrize("grid", [g for g in OPTIMIZER_GRIDS if g != "sgd"])
@pytest.mark.parametrize("regression", [False, True])
def test_optimizers_equal_torch_optim(grid, regression, monkeypatch):
    """SGD with momentum and L2, and Adam (per-element step counts, no surgery), equal torch.optim
    over 60 steps of batch 4, with hyperparameters that differ per replica (or not), on both
    array paths: numpy's passes with the parameters in one flat tensor (tiny CPU nets), and torch's."""
    core = _check_against_autograd(_configs("tanh", OPTIMIZER_GRIDS[grid]), regression)
    assert core._numpy and core._flat is not None
    monkeypatch.setattr(lockstep, "_NUMPY_MAX_ELEMENTS", 0)
    core = _check_against_autograd(_configs("tanh", OPTIMIZER_GRIDS[grid]), regression)
    assert not core._numpy and core._flat is None


def test_reference_optimizer_equals_torch_optim():
    """The torch.optim.Optimizer form (autograd networks) runs the same update functions."""
    for oc in ({"name": "adam", "lr": 0.01, "weight_decay": 0.1}, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}):
        cfg = LearnerConfig.from_dict({"optimizer": oc}).optimizer
        a = MLP(6, [8], 3, generator=torch.Generator().manual_seed(0))
        b = copy.deepcopy(a)
        mine, ref = ReferenceOptimizer(a.parameters(), cfg), _reference_optimizer(b, cfg)
        x, y = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 1, 0])
        for _ in range(30):
            for net, opt in ((a, mine), (b, ref)):
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _grad_of_column(net, x, y, column):
    net = copy.deepcopy(net).train().requires_grad_(True)
    F.cross_entropy(net(x), y).backward()
    return net.head.weight.grad[:, column]


def test_adam_restarts_the_bias_correction_of_a_replaced_unit():
    """Hand computation: after CBP replaces a unit, the step counts of its slices are 0, so the
    next update of its outgoing weights is −lr·g/(|g| + eps) (Adam's first step, magnitude ≈ lr),
    while untouched elements keep their counts. (With one counter per tensor, as torch.optim.Adam
    keeps, it would be √(1 − β2^t)/(1 − β1^t)·lr: several times lr for t in the hundreds.)"""
    cfg = LearnerConfig.from_dict({"network": {"hidden": [8], "activation": "tanh"},
                                   "optimizer": {"name": "adam", "lr": 0.01},
                                   "cbp": {"replacement_rate": 0.02, "maturity": 5}})
    core = LockstepLearner("cbp", cfg, *cls_spaces(2), seeds=[0], device="cpu")
    rng = np.random.default_rng(0)

    def batch():
        x = rng.random((1, 2, 6), dtype=np.float32)
        return x, {"phase": "train", "next_phase": "train", "target": rng.integers(0, 3, (1, 2))}

    steps = 0
    while core.cbp[0].replacements[0] == 0:
        x, info = batch()
        core.observe(x, core.act(x, info), None, info)
        steps += 1
    # the per-element step counts, kept as 1 − β1^count: layer 0's weight, replica 0 (units, inputs)
    counts = core.opt_state["bias_correction1"][0][0]
    fresh = torch.nonzero(counts[:, 0] == 0).flatten()
    assert fresh.numel() == 1 and torch.all(counts[fresh] == 0)
    torch.testing.assert_close(counts[counts[:, 0] != 0], torch.full_like(counts[counts[:, 0] != 0], 1 - 0.9**steps))
    row = int(fresh[0])
    assert torch.all(core.opt_state["bias_correction2"][2][0][:, row] == 0)  # the head's column
    x, info = batch()
    before = core.weights[1][0, :, row].clone()
    g = _grad_of_column(core.probe_model(0), torch.from_numpy(x[0]), torch.from_numpy(info["target"][0]), row)
    core.observe(x, core.act(x, info), None, info)
    delta = core.weights[1][0, :, row] - before
    torch.testing.assert_close(delta, -0.01 * g / (g.abs() + 1e-8), rtol=1e-4, atol=1e-9)
    moved = g.abs() > 1e-5
    assert moved.any()
    torch.testing.assert_close(delta[moved].abs(), torch.full_like(delta[moved], 0.01), rtol=1e-2, atol=0)
    for key, beta in (("bias_correction1", 0.9), ("bias_correction2", 0.999)):  # count 1 now
        torch.testing.assert_close(core.opt_state[key][2][0][:, row], torch.full((3,), 1 - beta))


def test_zero_optimizer_slices_restarts_adam_counts_of_autograd_networks():
    """The same for networks trained by autograd: reinit_units zeroes the moments and the step
    counts of the touched slices (rows of the producer, columns of the consumer)."""
    net = MLP(6, [8], 3, generator=torch.Generator().manual_seed(0))
    opt = ReferenceOptimizer(net.parameters(), LearnerConfig.from_dict({"optimizer": {"name": "adam"}}).optimizer)
    x, y = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 1, 0])
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    idx = torch.tensor([2])
    reinit_units(net.cbp_groups()[0], idx, optimizer=opt, generator=torch.Generator().manual_seed(2))
    w = net.layers[0].weight
    counts = opt.state[w]["bias_correction2"]  # 1 − β2^count per element
    assert torch.all(counts[2] == 0) and torch.allclose(counts[3], torch.full((6,), 1 - 0.999**20))
    assert torch.all(opt.state[net.head.weight]["bias_correction1"][:, 2] == 0)
    before = w[2].detach().clone()
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    g = w.grad[2].clone()
    opt.step()
    torch.testing.assert_close(w[2].detach() - before, -1e-3 * g / (g.abs() + 1e-8), rtol=1e-4, atol=1e-10)


def test_core_next_layer_bias_correction_keeps_the_expected_output():
    """With ``cbp.next_layer_bias_correction`` the core's surgery adds the replaced units'
    expected contribution to the consumer's bias: on inputs from the training distribution the
    mean output moves less at a replacement than without it (sigmoid units, mean ≈ 0.5)."""
    changes = {}
    probe = torch.rand(1, 256, 6, generator=torch.Generator().manual_seed(5))
    for on in (False, True):
        cfg = LearnerConfig.from_dict({
            "network": {"hidden": [16], "activation": "sigmoid"}, "optimizer": {"lr": 0.05},
            "cbp": {"replacement_rate": 0.05, "maturity": 5, "utility": "adaptable_contribution",
                    "next_layer_bias_correction": on}})
        core = LockstepLearner("cbp", cfg, *cls_spaces(1), seeds=[0], device="cpu")
        surgery, moved = core._reinit_units, []

        def spy(*args, **kwargs):
            before = core.probe_model(0)(probe[0]).mean(0)
            surgery(*args, **kwargs)
            moved.append(float((core.probe_model(0)(probe[0]).mean(0) - before).abs().sum()))

        core._reinit_units = spy
        rng = np.random.default_rng(0)
        for _ in range(200):
            x = rng.random((1, 1, 6), dtype=np.float32)
            info = {"phase": "train", "next_phase": "train", "target": rng.integers(0, 3, (1, 1))}
            core.observe(x, core.act(x, info), None, info)
        assert len(moved) > 5
        changes[on] = np.mean(moved)
    assert changes[True] < 0.5 * changes[False]


def test_deferred_updates_of_a_large_layer_equal_autograd():
    """A layer of >= 2^18 weights per replica keeps its plain-SGD updates as low-rank factors,
    folded in every 32 examples; 60 steps of batch 4 (several folds) still equal autograd."""
    configs = [LearnerConfig.from_dict({"network": {"hidden": [400, 5]}, "optimizer": {"lr": lr}})
               for lr in (0.05, 0.02)]
    core = _check_against_autograd(configs, regression=False, in_features=700)
    assert list(core._deferred) == [0]


SURGERY = {  # one config per replica: CBP's and ReDo's scalar hyperparameters differ too
    "cbp-sgd": [{"optimizer": {"lr": 0.05}, "cbp": {"replacement_rate": 0.02, "maturity": 10, "decay": 0.9}},
                {"optimizer": {"lr": 0.02}, "cbp": {"replacement_rate": 0.05, "maturity": 5}}],
    "cbp-adaptable-adam": [{"optimizer": {"name": "adam", "lr": 0.01},
                            "cbp": {"replacement_rate": 0.03, "maturity": 5, "utility": "adaptable_contribution",
                                    "next_layer_bias_correction": True}}] * 2,
    "redo-momentum": [{"network": {"activation": "relu"}, "optimizer": {"lr": 0.05, "momentum": 0.9},
                       "redo": {"period": 20, "threshold": 0.8}},
                      {"network": {"activation": "relu"}, "optimizer": {"lr": 0.05, "momentum": 0.9},
                       "redo": {"period": 20, "threshold": 0.6}}],
}


@pytest.mark.parametrize("case", SURGERY)
def test_unit_surgery_in_the_core_equals_the_autograd_path(case):
    """CBP and ReDo in the learner core (stacked replicas, per-replica hyperparameters) against
    the autograd path: each replica's network as an nn.Module trained by loss.backward() and an
    optimizer, with plasticity_gym_agents.cbp.ContinualBackprop / plasticity_gym_agents.redo.ReDo on its unit groups and the
    replica's generator. 200 steps of batch 4: the same units are replaced, weights to 1e-4."""
    _check_surgery_against_autograd(SURGERY[case])


DEFERRED_SURGERY = {  # plain SGD, so that layers defer their updates
    "cbp": SURGERY["cbp-sgd"],  # the input layer deferred (CBP reads the others every step)
    "cbp-bias-correction": [dict(c, cbp=dict(c["cbp"], next_layer_bias_correction=True))
                            for c in SURGERY["cbp-sgd"]],
    "redo": [{"network": {"activation": "relu"}, "optimizer": {"lr": 0.05}, "redo": {"period": 20, "threshold": t}}
             for t in (0.8, 0.6)],  # every layer deferred: producers' rows and consumers' columns
}


@pytest.mark.parametrize("case", DEFERRED_SURGERY)
def test_unit_surgery_on_deferred_layers_equals_the_autograd_path(case, monkeypatch):
    """With the layers' plain-SGD updates deferred (as for large layers or many stacked
    replicas), the surgery drops the pending updates of the slices it overwrites instead of
    folding them in; the networks must still equal the autograd path."""
    monkeypatch.setattr(lockstep, "_DEFERRED_MIN_ELEMENTS", 1)
    core = _check_surgery_against_autograd(DEFERRED_SURGERY[case])
    assert 0 in core._deferred
    assert (case != "redo") or len(core._deferred) == len(core.weights)


def _check_surgery_against_autograd(replicas: list[dict]) -> LockstepLearner:
    from plasticity_gym_agents.cbp import ContinualBackprop
    from plasticity_gym_agents.redo import ReDo

    configs = _configs("tanh", [c["optimizer"] for c in replicas])
    configs = [c.replace(**{k: v for k, v in extra.items() if k != "optimizer"})
               for c, extra in zip(configs, replicas)]
    core = LockstepLearner("x", configs, *cls_spaces(BATCH), seeds=range(len(configs)), device="cpu")
    refs = []
    for r, cfg in enumerate(configs):
        net = copy.deepcopy(core.probe_model(r)).train().requires_grad_(True)
        opt = (ReferenceOptimizer(net.parameters(), cfg.optimizer) if cfg.optimizer.name == "adam"
               else _reference_optimizer(net, cfg.optimizer))
        kind, section = (ContinualBackprop, cfg.cbp) if cfg.cbp else (ReDo, cfg.redo)
        refs.append((net, opt, kind(net.cbp_groups(), section, optimizer=opt,
                                    generator=torch.Generator().manual_seed(r + 1))))
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.random((len(configs), BATCH, 6), dtype=np.float32)
        y = rng.integers(0, 3, (len(configs), BATCH))
        info = {"phase": "train", "next_phase": "train", "target": y}
        core.observe(x, core.act(x, info), None, info)
        for r, (net, opt, method) in enumerate(refs):
            opt.zero_grad()
            F.cross_entropy(net(torch.from_numpy(x[r])), torch.from_numpy(y[r])).backward()
            opt.step()
            method.step()
    for r, (net, _, method) in enumerate(refs):
        counts = ([int(s.replacements[r]) for s in core.cbp] if core.cbp else core.redo.replacements[:, r].tolist())
        assert counts == list(method.replacements.values()) and sum(counts) > 0
        for j, p in enumerate(net.parameters()):
            torch.testing.assert_close(core.params[j][r], p.detach(), rtol=1e-4, atol=2e-5)
    return core
