"""A compiled lockstep learner restored mid-run continues as the uninterrupted one, bit for bit.

The first compiled step of a learner is checked against the eager step; a run's very first update
keeps the eager result, but a learner restored from a checkpoint mid-run must keep the compiled
one, which the uninterrupted learner took at that update (CBP's replacement choices amplify a last
bit into a different run)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import pytest
import torch

import plasticity_gym  # noqa: F401  (registers the ids)
from plasticity_gym_agents import resolve_config
from plasticity_gym_agents.lockstep import LockstepLearner, _cxx_compiler_available

SEEDS = (3, 7)
MNIST_CBP = {"network": {"hidden": [64, 32]}, "cbp": {"replacement_rate": 0.02, "maturity": 10}}


def _steps(lock, venv, obs, info, n):
    for _ in range(n):
        actions = lock.act(obs, info)
        nxt = venv.step(actions)
        lock.observe(obs, actions, nxt[1], nxt[4])
        obs, info = nxt[0], nxt[4]
    return obs, info


@pytest.mark.skipif(not _cxx_compiler_available(), reason="torch.compile on the CPU needs a C++ compiler")
def test_a_restored_compiled_learner_continues_bit_for_bit():
    venv = gym.make_vec("PermutedMNIST-v0", num_envs=len(SEEDS), vectorization_mode="vector_entry_point",
                        scale="smoke")
    osp, asp = venv.single_observation_space, venv.single_action_space
    cfg = resolve_config("cbp", osp, asp, env_id="PermutedMNIST-v0", scale="smoke", overrides=MNIST_CBP)

    def learner():
        return LockstepLearner("cbp", cfg, osp, asp, seeds=SEEDS, device="cpu", compile=True)

    lock = learner()
    obs, info = _steps(lock, venv, *venv.reset(seed=list(SEEDS)), 40)
    restored = learner()
    restored.load_state_dict(lock.state_dict())
    venv2 = pickle.loads(pickle.dumps(venv))
    obs_copy = obs.copy()
    _steps(lock, venv, obs, info, 60)
    _steps(restored, venv2, obs_copy, info, 60)
    assert lock.compiled and restored.compiled  # neither fell back to eager
    for p, q in zip(lock.params, restored.params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert lock.cbp[0].replacements.min() > 0  # the comparison covers CBP's replacements
