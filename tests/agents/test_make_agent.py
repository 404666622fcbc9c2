"""make_agent on small synthetic spaces: every name, both task kinds, checkpoints, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from plasticity_gym_agents import AGENT_NAMES, Agent, make_agent
from plasticity_gym_agents.networks import ConvNet, ResNet18
from agent_helpers import cls_spaces, reg_spaces, train_info

SMALL = {"network": {"hidden": [8, 8]}}


def _run(agent, obs_space, steps, rng, *, n_classes=3, regression=False, boundary_every=0):
    batch = obs_space.shape[0]
    for t in range(steps):
        x = rng.random(obs_space.shape, dtype=np.float32)
        y = (rng.normal(size=batch).astype(np.float32) if regression
             else rng.integers(0, n_classes, batch))
        info = train_info(y, boundary=bool(boundary_every) and t % boundary_every == 0)
        a = agent.act(x, info)
        assert a.shape == (batch,)
        assert a.dtype == (np.float32 if regression else np.int64)
        if not regression:
            assert np.all((a >= 0) & (a < n_classes))
        agent.observe(x, a, 0.0, info)


@pytest.mark.parametrize("name", AGENT_NAMES)
@pytest.mark.parametrize("regression", [False, True])
def test_every_agent_runs_on_synthetic_spaces(name, regression):
    obs, act = reg_spaces(2, 5) if regression else cls_spaces(2, (5,), 3)
    agent = make_agent(name, obs, act, overrides=SMALL if name != "linear" else None, seed=1)
    assert isinstance(agent, Agent)
    assert agent.name == name and agent.config.network.kind in ("mlp", "linear")
    assert agent.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(agent.probe_model(), torch.nn.Module)
    _run(agent, obs, 30, np.random.default_rng(0), regression=regression, boundary_every=10)
    for p in agent.network.parameters():
        assert torch.all(torch.isfinite(p))


def test_same_seed_same_agent_and_different_seed_differs():
    obs, act = cls_spaces(1, (5,), 3)
    a = make_agent("cbp", obs, act, overrides=SMALL, seed=3, device="cpu")
    b = make_agent("cbp", obs, act, overrides=SMALL, seed=3, device="cpu")
    c = make_agent("cbp", obs, act, overrides=SMALL, seed=4, device="cpu")
    for pa, pb, pc in zip(a.network.parameters(), b.network.parameters(), c.network.parameters()):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.network.parameters(), c.network.parameters()))


def _predictions(agent, obs_space, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(40):
        x = rng.random(obs_space.shape, dtype=np.float32)
        info = train_info(rng.integers(0, 3, obs_space.shape[0]))
        a = agent.act(x, info)
        agent.observe(x, a, 0.0, info)
        out.append(a.copy())
    return np.concatenate(out)


@pytest.mark.parametrize("name", ["cbp", "shrink-perturb", "redo", "dropout", "adam"])
def test_checkpoint_and_pickle_resume_identically(name):
    obs, act = cls_spaces(1, (5,), 3)
    over = {"network": {"hidden": [8, 8], "dropout": 0.1 if name == "dropout" else 0.0},
            "cbp": {"replacement_rate": 0.05, "maturity": 3} if name == "cbp" else None}
    if name != "cbp":
        over.pop("cbp")
    agent = make_agent(name, obs, act, overrides=over, device="cpu")
    _predictions(agent, obs, 0)
    state = agent.state_dict()
    clone = pickle.loads(pickle.dumps(agent))
    fresh = make_agent(name, obs, act, overrides=over, device="cpu")
    fresh.load_state_dict(state)
    expected = _predictions(agent, obs, 1)
    assert np.array_equal(_predictions(clone, obs, 1), expected)
    assert np.array_equal(_predictions(fresh, obs, 1), expected)
    if name == "cbp":
        assert sum(agent.cbp.replacements.values()) > 0


def test_load_state_dict_rejects_other_config():
    obs, act = cls_spaces()
    a = make_agent("backprop", obs, act, overrides=SMALL)
    b = make_agent("backprop", obs, act, overrides={"network": {"hidden": [8, 8]}, "optimizer": {"lr": 0.1}})
    with pytest.raises(ValueError, match="different config"):
        b.load_state_dict(a.state_dict())


def test_image_spaces_get_the_convnet_and_learn():
    obs, act = cls_spaces(4, (32, 32, 3), 2)  # channels-last, as the ImageNet stream may send
    agent = make_agent("cbp", obs, act, env_id="ContinualImageNet-v0", scale="smoke", device="cpu",
                       overrides={"cbp": {"maturity": 1, "replacement_rate": 0.01}})
    assert isinstance(agent.network, ConvNet) and agent.network.channels_last
    assert agent.uses_task_boundaries and agent.config.head_reset == "zero"
    _run(agent, obs, 4, np.random.default_rng(0), n_classes=2)
    assert agent.cbp.steps == 4


def test_resnet_agent_grows_with_n_classes():
    obs, act = cls_spaces(2, (3, 16, 16), 10)
    agent = make_agent("cbp", obs, act, env_id="ClassIncCIFAR100-v0", scale="smoke", device="cpu")
    assert isinstance(agent.network, ResNet18) and agent.config.network.width == 8
    rng = np.random.default_rng(0)
    x = rng.random(obs.shape, dtype=np.float32)
    info = dict(train_info(rng.integers(0, 5, 2)), n_classes=5, next_n_classes=5)
    a = agent.act(x, info)
    assert agent.network.active_outputs == 5 and np.all(a < 5)
    agent.observe(x, a, 0.0, info)
    info = dict(train_info(rng.integers(0, 10, 2)), n_classes=10, next_n_classes=10)
    agent.act(x, info)
    assert agent.network.active_outputs == 10
    with pytest.raises(ValueError, match="not defined"):
        make_agent("dropout", obs, act, env_id="ClassIncCIFAR100-v0", scale="smoke")


def test_train_forward_is_reused_only_for_the_same_batch():
    obs, act = cls_spaces(1, (5,), 3)
    agent = make_agent("backprop", obs, act, overrides=SMALL, device="cpu")
    x1 = np.full((1, 5), 0.2, np.float32)
    x2 = np.full((1, 5), 0.9, np.float32)
    info = train_info([1])
    agent.act(x1, info)
    ref = make_agent("backprop", obs, act, overrides=SMALL, device="cpu")
    ref.observe(x2, None, 0.0, info)  # no pending forward: computes its own
    agent.observe(x2, None, 0.0, info)  # pending forward is for x1: must not be used
    for p, q in zip(agent.network.parameters(), ref.network.parameters()):
        assert torch.equal(p, q)


def test_unknown_env_id_is_an_error_naming_the_known_ids():
    from plasticity_gym_agents import ENV_IDS

    obs, act = reg_spaces()
    with pytest.raises(ValueError, match="PermutedMNIST-v0.*env_id=None"):
        make_agent("cbp", obs, act, env_id="PermutedMnist-v0")
    assert "SlowRegression-v0" in ENV_IDS


@pytest.mark.parametrize("env_id", ["SlowRegression-v0", "PermutedMNIST-v0"])
@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_without_an_env_id_each_built_env_gets_its_own_defaults_from_its_spaces(env_id, scale):
    import gymnasium as gym

    import plasticity_gym  # noqa: F401  (registers the ids)
    from plasticity_gym_agents import resolve_config

    # (the embedded digits stand in for full MNIST at the paper scale: only the spaces matter)
    env = gym.make(env_id, scale=scale, **({"data": "embedded"} if env_id == "PermutedMNIST-v0" else {}))
    obs, act = env.observation_space, env.action_space
    for name in ("backprop", "cbp", "adam"):
        inferred = resolve_config(name, obs, act, scale=scale)
        named = resolve_config(name, obs, act, env_id=env_id, scale=scale)
        assert inferred == named, (name, inferred.network, named.network)
    env.close()
