"""The lockstep learner equals N single learners, seed by seed (issue 5)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

import plasticity_gym  # noqa: F401  (registers the envs)
from plasticity_gym_agents import make_agent, resolve_config
from plasticity_gym_agents.lockstep import LockstepLearner, LockstepUnsupported, lockstep_support

SEEDS = (3, 7)


def _pair(env_id, name, overrides, seeds=SEEDS, scale="smoke"):
    venv = gym.make_vec(env_id, num_envs=len(seeds), vectorization_mode="vector_entry_point",
                        scale=scale)
    osp, asp = venv.single_observation_space, venv.single_action_space
    cfg = resolve_config(name, osp, asp, env_id=env_id, scale=scale, overrides=overrides)
    lock = LockstepLearner(name, cfg, osp, asp, seeds=seeds, device="cpu")
    singles = [make_agent(name, osp, asp, env_id=env_id, scale=scale, overrides=overrides,
                          seed=s, device="cpu") for s in seeds]
    envs = [gym.make(env_id, scale=scale) for _ in seeds]
    return venv, lock, envs, singles


def _run(venv, lock, envs, singles, steps, seeds=SEEDS):
    obs, info = venv.reset(seed=list(seeds))
    outs = [env.reset(seed=s) for env, s in zip(envs, seeds)]
    for _ in range(steps):
        actions = lock.act(obs, info)
        single_actions = [ag.act(o, i) for ag, (o, i) in zip(singles, outs)]
        np.testing.assert_array_equal(actions, np.stack(single_actions)) if actions.dtype.kind == "i" \
            else np.testing.assert_allclose(actions, np.stack(single_actions), rtol=1e-4, atol=1e-4)
        nxt = venv.step(actions)
        res = [env.step(a) for env, a in zip(envs, single_actions)]
        lock.observe(obs, actions, nxt[1], nxt[4])
        for ag, (o, i), a, r in zip(singles, outs, single_actions, res):
            ag.observe(o, a, r[1], r[4])
        obs, info = nxt[0], nxt[4]
        outs = [(r[0], r[4]) for r in res]


def _steps(learner, venv, obs, info, n):
    """``n`` act/step/observe rounds of a lockstep learner; returns the last (obs, info)."""
    for _ in range(n):
        a = learner.act(obs, info)
        obs2, r, _, _, info2 = venv.step(a)
        learner.observe(obs, a, r, info2)
        obs, info = obs2, info2
    return obs, info


def _assert_same_weights(lock, singles, tol=1e-4):
    for k, ag in enumerate(singles):
        for j, p in enumerate(ag.params):
            torch.testing.assert_close(lock.params[j][k], p.detach(), rtol=tol, atol=tol)


CASES = [
    ("backprop", None),
    ("adam", None),
    ("l2", {"optimizer": {"momentum": 0.9}}),
    ("shrink-perturb", {"shrink_perturb": {"weight_decay": 1e-2, "noise_std": 1e-3}}),
    ("cbp", {"cbp": {"replacement_rate": 0.01, "maturity": 20}}),
    ("cbp", {"cbp": {"replacement_rate": 0.01, "maturity": 20, "utility": "adaptable_contribution"}}),
    ("cbp", {"optimizer": {"name": "adam", "lr": 1e-3}, "cbp": {"replacement_rate": 0.01, "maturity": 20}}),
    ("redo", {"redo": {"period": 50, "threshold": 0.5}}),
    ("layernorm", None),
]


@pytest.mark.parametrize("name,overrides", CASES)
def test_lockstep_equals_single_learners_on_slow_regression(name, overrides):
    venv, lock, envs, singles = _pair("SlowRegression-v0", name, overrides)
    assert lock._numpy  # tiny networks: numpy passes; with an optimizer or S&P, the parameters in one tensor
    assert (lock._flat is not None) == (name in ("adam", "l2", "shrink-perturb", "layernorm")
                                        or "optimizer" in (overrides or {}))
    if lock._flat is not None:
        starts = np.cumsum([0] + [p[0].numel() for p in lock._params])
        assert all(p.data_ptr() == lock._flat[:, start:].data_ptr() for p, start in zip(lock._params, starts))
    _run(venv, lock, envs, singles, 1500)
    _assert_same_weights(lock, singles)
    if lock.cbp:
        counts = [s.replacements.tolist() for s in lock.cbp]
        assert counts == [[ag.cbp.replacements[g] for ag in singles] for g in singles[0].cbp.replacements]
        assert all(c > 0 for row in counts for c in row)  # replacements really happened
    if lock.redo is not None:
        assert lock.redo.replacements.sum(0).tolist() == [sum(ag.redo.replacements.values()) for ag in singles]
        assert lock.redo.replacements.sum() > 0


@pytest.mark.parametrize("name,overrides", [CASES[0], CASES[1], CASES[2], CASES[3], CASES[4], CASES[7], CASES[8]])
def test_torch_path_of_small_networks_equals_single_learners(name, overrides, monkeypatch):
    """Tiny networks take the numpy path and the flat parameter layout on the CPU; the torch path
    (GPU, larger nets), with a tensor per parameter, must give the same trajectories."""
    import plasticity_gym_agents.lockstep as lockstep

    monkeypatch.setattr(lockstep, "_NUMPY_MAX_ELEMENTS", 0)
    venv, lock, envs, singles = _pair("SlowRegression-v0", name, overrides)
    assert not lock._numpy and lock._flat is None
    _run(venv, lock, envs, singles, 800)
    _assert_same_weights(lock, singles)


def test_lockstep_equals_single_learners_on_permuted_mnist_with_cbp():
    overrides = {"network": {"hidden": [24, 16]}, "cbp": {"replacement_rate": 0.02, "maturity": 10}}
    venv, lock, envs, singles = _pair("PermutedMNIST-v0", "cbp", overrides)
    _run(venv, lock, envs, singles, 600)
    _assert_same_weights(lock, singles)
    assert all(s.replacements.min() > 0 for s in lock.cbp)


@pytest.mark.parametrize("name,overrides", [
    ("backprop", {"network": {"hidden": [400, 8]}}),
    ("cbp", {"network": {"hidden": [400, 8]}, "cbp": {"replacement_rate": 0.002, "maturity": 10}}),
])
def test_deferred_updates_of_large_layers_equal_single_learners(name, overrides):
    """A layer of >= 2^18 weights defers its plain-SGD updates as low-rank factors and runs its
    batch-1 forward as W·x; the networks must still equal the single learners, flushes and CBP
    replacements (which fold the pending updates first) included."""
    venv, lock, envs, singles = _pair("PermutedMNIST-v0", name, overrides)
    assert list(lock._deferred) == [0]
    _run(venv, lock, envs, singles, 150)  # several flushes of the rank-32 buffer
    assert lock._deferred[0].count > 0  # pending updates are part of what is compared
    _assert_same_weights(lock, singles)
    if lock.cbp:
        assert lock.cbp[0].replacements.min() > 0


@pytest.mark.parametrize("env_id,name,overrides,before,after", [
    ("SlowRegression-v0", "cbp", {"cbp": {"replacement_rate": 0.01, "maturity": 20}}, 300, 300),
    # the flat parameter layout: Adam's per-element state under unit surgery, S&P's generators
    ("SlowRegression-v0", "cbp", {"optimizer": {"name": "adam", "lr": 1e-3},
                                  "cbp": {"replacement_rate": 0.01, "maturity": 20}}, 300, 300),
    ("SlowRegression-v0", "shrink-perturb", {"shrink_perturb": {"weight_decay": 1e-2, "noise_std": 1e-3}}, 300, 300),
    ("SlowRegression-v0", "layernorm", None, 300, 300),  # LayerNorm's γ and β in the flat tensor too
    # pickled with 13 rank-1 updates of the input layer still deferred
    ("PermutedMNIST-v0", "backprop", {"network": {"hidden": [400, 8]}}, 45, 40),
])
def test_lockstep_state_round_trip_and_pickle_continue_identically(env_id, name, overrides, before, after):
    venv, lock, _, _ = _pair(env_id, name, overrides)
    obs, info = _steps(lock, venv, *venv.reset(seed=list(SEEDS)), before)
    if lock._deferred:
        assert 0 < lock._deferred[0].count < 32
    clone = pickle.loads(pickle.dumps(lock))
    venv2 = pickle.loads(pickle.dumps(venv))
    obs_copy = obs.copy()
    _steps(lock, venv, obs, info, after)
    _steps(clone, venv2, obs_copy, info, after)
    for p, q in zip(lock.params, clone.params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_lockstep_does_not_learn_outside_train_phase():
    venv, lock, _, _ = _pair("SlowRegression-v0", "backprop", None)
    obs, info = venv.reset(seed=0)
    before = [p.clone() for p in lock.params]
    a = lock.act(obs, info)
    _, r, _, _, info2 = venv.step(a)
    info2 = dict(info2, phase=np.full(len(SEEDS), "test", dtype=object))
    lock.observe(obs, a, r, info2)
    for p, q in zip(before, lock.params):
        assert torch.equal(p, q)


def test_unsupported_configs_are_refused_with_a_reason():
    venv = gym.make_vec("PermutedMNIST-v0", num_envs=2, scale="smoke")
    osp, asp = venv.single_observation_space, venv.single_action_space
    for name in ("dropout", "head-reset", "retrain"):
        cfg = resolve_config(name, osp, asp, env_id="PermutedMNIST-v0", scale="smoke")
        assert lockstep_support(cfg) is not None
        with pytest.raises(LockstepUnsupported, match="cannot run in lockstep"):
            LockstepLearner(name, cfg, osp, asp, seeds=(0, 1))
    with pytest.raises(ValueError, match="observations of shape"):
        cfg = resolve_config("backprop", osp, asp, env_id="PermutedMNIST-v0", scale="smoke")
        LockstepLearner("backprop", cfg, osp, asp, seeds=(0, 1)).act(np.zeros((3, 1, 784), np.float32), {})


def test_probe_model_is_the_seeds_network():
    venv, lock, envs, singles = _pair("SlowRegression-v0", "backprop", None)
    _run(venv, lock, envs, singles, 200)
    x = torch.rand(5, 21)
    for k, ag in enumerate(singles):
        torch.testing.assert_close(lock.probe_model(k)(x), ag.network(x), rtol=1e-4, atol=1e-4)


def test_blocked_abs_sums_equal_plain_ones():
    from plasticity_gym_agents.units import ABS_SUM_BLOCK as _ABS_SUM_BLOCK, batched_abs_sum as _abs_sum

    w = torch.randn(2, 700, 3 * _ABS_SUM_BLOCK // 1400 + 5, generator=torch.Generator().manual_seed(0))
    assert w.numel() > 2 * _ABS_SUM_BLOCK  # the blocked path
    for dim in (1, 2):
        torch.testing.assert_close(_abs_sum(w, dim), w.abs().sum(dim), rtol=1e-5, atol=1e-4)


# Large enough (over both seeds) for the torch path; the numpy path of tiny nets is never compiled.
MNIST_CBP = {"network": {"hidden": [64, 32]}, "cbp": {"replacement_rate": 0.02, "maturity": 10}}


def _pair_with(compile_mode, env_id="PermutedMNIST-v0", name="cbp", overrides=MNIST_CBP):
    venv, _, envs, singles = _pair(env_id, name, overrides)
    osp, asp = venv.single_observation_space, venv.single_action_space
    cfg = resolve_config(name, osp, asp, env_id=env_id, scale="smoke", overrides=overrides)
    lock = LockstepLearner(name, cfg, osp, asp, seeds=SEEDS, device="cpu", compile=compile_mode)
    return venv, lock, envs, singles


@pytest.mark.skipif(not __import__("plasticity_gym_agents.lockstep").lockstep._cxx_compiler_available(),
                    reason="torch.compile on the CPU needs a C++ compiler")
@pytest.mark.parametrize("name,overrides", [("cbp", MNIST_CBP), ("backprop", {"network": {"hidden": [64, 32]}}),
                                            ("adam", {"network": {"hidden": [64, 32]}}),
                                            ("shrink-perturb", {"network": {"hidden": [64, 32]}}),
                                            ("l2", {"network": {"hidden": [64, 32]}}),
                                            ("weight-clip", {"network": {"hidden": [64, 32]}}),
                                            ("cbp", {**MNIST_CBP, "shrink_perturb": {"noise_std": 1e-3}})])
def test_compiled_step_equals_single_learners(name, overrides):
    """The compiled update step (forced here; "auto" uses it for large CPU networks and for Adam),
    weight clipping and Shrink and Perturb included, gives each seed the single learner's trajectory, CBP replacements included (300
    steps, weights to 1e-4). The equality with autograd is tested in test_core_vs_autograd.py."""
    venv, lock, envs, singles = _pair_with(True, name=name, overrides=overrides)
    assert lock.compiled
    _run(venv, lock, envs, singles, 300)
    assert lock.compiled  # it did not fall back
    _assert_same_weights(lock, singles)
    if lock.cbp:
        assert all(s.replacements.min() > 0 for s in lock.cbp)


@pytest.mark.skipif(not __import__("plasticity_gym_agents.lockstep").lockstep._cxx_compiler_available(),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_auto_compiles_the_steps_measured_faster_compiled():
    """``compile="auto"`` on the CPU: Adam, SGD with weight decay and Shrink and Perturb on a
    3-seed 3×100 MNIST net; not plain backprop (slower compiled), not CBP below its size, not the
    methods not yet measured compiled, and not SlowRegression's tiny nets (numpy, or no gain)."""
    def compiled(env_id, name, seeds):
        venv = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", scale="cpu")
        osp, asp = venv.single_observation_space, venv.single_action_space
        cfg = resolve_config(name, osp, asp, env_id=env_id, scale="cpu")
        return LockstepLearner(name, cfg, osp, asp, seeds=range(seeds), device="cpu").compiled

    on = {name for name in ("adam", "l2", "shrink-perturb", "backprop", "cbp", "l2-init", "upgd", "layernorm",
                            "weight-clip", "crelu") if compiled("PermutedMNIST-v0", name, 3)}
    assert on == {"adam", "l2", "shrink-perturb"}
    assert not any(compiled("SlowRegression-v0", name, 5) for name in ("l2", "shrink-perturb", "backprop"))


@pytest.mark.skipif(not __import__("plasticity_gym_agents.lockstep").lockstep._cxx_compiler_available(),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_cbp_step_above_a_deferred_input_layer_equals_single_learners(monkeypatch):
    """Many stacked replicas defer their input layer's updates (here: two seeds, with the
    threshold lowered to them; a single learner does not defer); the compiled step then stops
    above that layer and the rest of the backward pass runs eagerly, CBP's replacements dropping
    the deferred updates of the rows they overwrite. Each seed still follows its single learner."""
    import plasticity_gym_agents.lockstep as lockstep

    monkeypatch.setattr(lockstep, "_DEFERRED_MIN_STACKED", len(SEEDS) * 784 * 64)
    venv, lock, envs, singles = _pair_with(True)
    assert list(lock._deferred) == [0] and lock._split == 1 and lock.compiled
    assert not singles[0].core._deferred
    _run(venv, lock, envs, singles, 300)
    assert lock.compiled and lock._deferred[0].count > 0
    _assert_same_weights(lock, singles)
    assert all(s.replacements.min() > 0 for s in lock.cbp)


@pytest.mark.skipif(not __import__("plasticity_gym_agents.lockstep").lockstep._cxx_compiler_available(),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_many_compiled_learners_in_one_process_stay_compiled():
    """Dynamo caches a code object's compiled variants up to ``recompile_limit``; each learner
    compiles its own copy of the step, so a process that builds many (a sweep, the benchmark)
    does not hit the limit and fall back to eager (here the limit is lowered to 2). (Dynamo's own
    ``config.patch`` restores the limit: pytest's monkeypatch would delete, and so hide, it.)"""
    venv = gym.make_vec("PermutedMNIST-v0", num_envs=2, vectorization_mode="vector_entry_point", scale="smoke")
    osp, asp = venv.single_observation_space, venv.single_action_space
    learners = []
    with torch._dynamo.config.patch(recompile_limit=2):
        for width in (64, 65, 66):
            cfg = resolve_config("cbp", osp, asp, env_id="PermutedMNIST-v0", scale="smoke",
                                 overrides={"network": {"hidden": [width, 32]}})
            learners.append(LockstepLearner("cbp", cfg, osp, asp, seeds=[0, 1], device="cpu", compile=True))
            _steps(learners[-1], venv, *venv.reset(seed=0), 3)
    assert all(lock.compiled for lock in learners)


def test_failed_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    import plasticity_gym_agents.lockstep as lockstep

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise torch._dynamo.exc.InternalTorchDynamoError("no C++ compiler found")
        return compiled

    monkeypatch.setattr(lockstep.torch, "compile", broken_compile)
    venv, lock, envs, singles = _pair_with(True)
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        _run(venv, lock, envs, singles, 200)
    assert not lock.compiled
    _assert_same_weights(lock, singles)


def test_a_compiled_step_that_disagrees_with_eager_is_dropped(monkeypatch):
    """A miscompiled step (here: one that doubles every weight change) is caught by the check of
    the first compiled step; the learner goes on eagerly and still equals the single learners."""
    import plasticity_gym_agents.lockstep as lockstep

    def wrong_compile(fn, **kwargs):
        def compiled(*args):
            learner = fn.__self__
            before = [w.clone() for w in learner.weights]
            out = fn(*args)
            for w, b in zip(learner.weights, before):
                w.add_(w - b)
            return out
        return compiled

    monkeypatch.setattr(lockstep.torch, "compile", wrong_compile)
    venv, lock, envs, singles = _pair_with(True)
    with pytest.warns(RuntimeWarning, match="disagrees with the eager one"):
        _run(venv, lock, envs, singles, 200)
    assert not lock.compiled
    _assert_same_weights(lock, singles)


def test_a_correct_compiled_step_passes_its_check(monkeypatch):
    import plasticity_gym_agents.lockstep as lockstep

    monkeypatch.setattr(lockstep.torch, "compile", lambda fn, **kwargs: fn)  # "compiled" = eager
    venv, lock, envs, singles = _pair_with(True)
    _run(venv, lock, envs, singles, 50)
    assert lock.compiled
    _assert_same_weights(lock, singles)


def test_auto_compile_only_under_a_tested_torch(monkeypatch):
    import plasticity_gym_agents.lockstep as lockstep

    monkeypatch.setattr(lockstep, "_torch_version", lambda: (2, 11))
    venv = gym.make_vec("PermutedMNIST-v0", num_envs=8, vectorization_mode="vector_entry_point", scale="smoke")
    osp, asp = venv.single_observation_space, venv.single_action_space
    cfg = resolve_config("cbp", osp, asp, env_id="PermutedMNIST-v0", scale="smoke",
                         overrides={"network": {"hidden": [100, 100, 100]}})
    assert not LockstepLearner("cbp", cfg, osp, asp, seeds=range(8), device="cpu").compiled
    assert LockstepLearner("cbp", cfg, osp, asp, seeds=range(8), device="cpu", compile=True).compiled


def test_compile_choice():
    import plasticity_gym_agents.lockstep as lockstep

    venv, lock, _, _ = _pair_with("auto")
    assert not lock._numpy and not lock.compiled  # small: compiling would not pay for itself
    osp, asp = venv.single_observation_space, venv.single_action_space
    cfg = resolve_config("cbp", osp, asp, env_id="PermutedMNIST-v0", scale="smoke", overrides=MNIST_CBP)
    with pytest.raises(ValueError, match="compile must be"):
        LockstepLearner("cbp", cfg, osp, asp, seeds=SEEDS, device="cpu", compile="sometimes")
    for name, expected in (("l2", lockstep._cxx_compiler_available()), ("adam", lockstep._cxx_compiler_available())):
        cfg = resolve_config(name, osp, asp, env_id="PermutedMNIST-v0", scale="smoke", overrides=None)
        assert LockstepLearner(name, cfg, osp, asp, seeds=SEEDS, device="cpu").compiled == expected
    # "auto" compiles CBP's step for a large CPU network (8 seeds of 3×100), not plain backprop's
    big = {"network": {"hidden": [100, 100, 100]}}
    for name, expected in (("cbp", lockstep._cxx_compiler_available()), ("backprop", False)):
        cfg = resolve_config(name, osp, asp, env_id="PermutedMNIST-v0", scale="smoke", overrides=big)
        assert LockstepLearner(name, cfg, osp, asp, seeds=range(8), device="cpu").compiled == expected


GRIDS = [  # one config per seed: a hyperparameter grid of one architecture
    ("cbp", [{"optimizer": {"lr": 0.01}, "cbp": {"replacement_rate": 0.01, "maturity": 20, "decay": 0.99}},
             {"optimizer": {"lr": 0.02}, "cbp": {"replacement_rate": 0.02, "maturity": 10, "decay": 0.9}},
             {"optimizer": {"lr": 0.01}, "cbp": {"replacement_rate": 0.01, "maturity": 20, "decay": 0.99}}]),
    ("l2", [{"optimizer": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}},
            {"optimizer": {"lr": 0.02, "momentum": 0.0, "weight_decay": 0.0}}]),
    ("adam", [{"optimizer": {"lr": 1e-3, "betas": [0.9, 0.999]}},
              {"optimizer": {"lr": 3e-3, "betas": [0.8, 0.99], "eps": 1e-6}}]),
    ("shrink-perturb", [{"shrink_perturb": {"weight_decay": 1e-2, "noise_std": 1e-3}},
                        {"shrink_perturb": {"weight_decay": 0.0, "noise_std": 0.0}}]),
    ("redo", [{"redo": {"period": 50, "threshold": 0.5}}, {"redo": {"period": 50, "threshold": 0.1}}]),
]


@pytest.mark.parametrize("name,grid", GRIDS)
def test_hyperparameter_grid_equals_single_learners(name, grid):
    """Seeds with different scalar hyperparameters in one lockstep learner each equal the single
    learner with that config (SlowRegression, 1,500 steps, weights to 1e-4; CBP/ReDo counts exactly)."""
    seeds = tuple(range(len(grid)))
    venv = gym.make_vec("SlowRegression-v0", num_envs=len(seeds), vectorization_mode="vector_entry_point",
                        scale="smoke")
    osp, asp = venv.single_observation_space, venv.single_action_space
    cfgs = [resolve_config(name, osp, asp, env_id="SlowRegression-v0", scale="smoke", overrides=o) for o in grid]
    lock = LockstepLearner(name, cfgs, osp, asp, seeds=seeds, device="cpu")
    singles = [make_agent(name, osp, asp, env_id="SlowRegression-v0", scale="smoke", overrides=o, seed=s,
                          device="cpu") for s, o in zip(seeds, grid)]
    envs = [gym.make("SlowRegression-v0", scale="smoke") for _ in seeds]
    _run(venv, lock, envs, singles, 1500, seeds=seeds)
    _assert_same_weights(lock, singles)
    if lock.cbp:
        assert [s.replacements.tolist() for s in lock.cbp] == [
            [ag.cbp.replacements[g] for ag in singles] for g in singles[0].cbp.replacements]
    if lock.redo is not None:
        assert lock.redo.replacements.sum(0).tolist() == [sum(ag.redo.replacements.values()) for ag in singles]
    pickle.loads(pickle.dumps(lock))  # a grid pickles too


def test_grid_configs_must_share_the_architecture():
    venv = gym.make_vec("SlowRegression-v0", num_envs=2, scale="smoke")
    osp, asp = venv.single_observation_space, venv.single_action_space
    a = resolve_config("backprop", osp, asp, env_id="SlowRegression-v0", scale="smoke")
    b = a.replace(network={"hidden": [6]})
    with pytest.raises(ValueError, match="differs from config 0 in: network"):
        LockstepLearner("backprop", [a, b], osp, asp, seeds=(0, 1))
    with pytest.raises(ValueError, match="3 configs for 2 seeds"):
        LockstepLearner("backprop", [a, a, a], osp, asp, seeds=(0, 1))


def test_seeds_in_different_phases_are_an_error():
    venv, lock, _, _ = _pair("SlowRegression-v0", "backprop", None)
    obs, info = venv.reset(seed=0)
    info = dict(info, next_phase=np.array(["train", "test"], dtype=object))
    with pytest.raises(ValueError, match="same phase"):
        lock.act(obs, info)
