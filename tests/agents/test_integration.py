"""The reference agents on the real streams (skipped until the envs import)."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

from plasticity_gym_agents import make_agent


def _env_or_skip(module: str, env_id: str, **kwargs):
    pytest.importorskip(module)
    import gymnasium as gym

    import plasticity_gym  # noqa: F401  (registers the ids)

    return gym.make(env_id, **kwargs)


def _run(env, agent, steps, seed=0):
    obs, info = env.reset(seed=seed)
    rewards = []
    for _ in range(steps):
        action = agent.act(obs, info)
        obs_next, reward, terminated, truncated, info = env.step(action)
        agent.observe(obs, action, reward, info)
        rewards.append(reward)
        obs = obs_next
        if terminated or truncated:
            break
    return np.array(rewards)


@pytest.mark.parametrize("name", ["backprop", "cbp"])
def test_slow_regression_smoke(name):
    env = _env_or_skip("plasticity_gym.envs.slow_regression", "SlowRegression-v0", scale="smoke")
    agent = make_agent(name, env.observation_space, env.action_space, env_id="SlowRegression-v0",
                       scale="smoke", device="cpu")
    assert agent.config.network.hidden == (5,)
    r = _run(env, agent, 4000)
    assert np.all(np.isfinite(r))
    assert -r[-1000:].mean() < -r[:200].mean()  # it learns something


def test_permuted_mnist_smoke_with_metrics():
    env = _env_or_skip("plasticity_gym.envs.permuted_mnist", "PermutedMNIST-v0", scale="smoke")
    agent = make_agent("cbp", env.observation_space, env.action_space, env_id="PermutedMNIST-v0",
                       scale="smoke", device="cpu")
    r = _run(env, agent, 600)
    assert r[-300:].mean() > 0.3  # well above chance (0.1) after a few hundred digits
    from plasticity_gym.metrics import measure

    x, _ = env.unwrapped.probe_batch(200)
    m = measure(agent.probe_model(), x)
    assert m["n_units"] == 300 and 0 <= m["dead_pct"] <= 100


def test_agents_never_import_envs_or_harness():
    root = pathlib.Path(__file__).resolve().parents[2] / "agents"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for n in names:
                assert not n.startswith(("plasticity_gym.envs", "plasticity_gym.harness",
                                         "plasticity_gym.arena")), (path.name, n)
