"""The arena: PettingZoo's parallel API test; learners see byte-identical observations."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from plasticity_gym.arena import SupervisedArena

ENVS = {
    "SlowRegression-v0": {"n_examples": 600, "flip_interval": 200},
    "PermutedMNIST-v0": {"examples_per_task": 100},
}


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_parallel_api(env_id):
    arena = SupervisedArena(env_id, ["a", "b", "c"], scale="smoke", env_kwargs=ENVS[env_id])
    parallel_api_test(arena, num_cycles=400)


@pytest.mark.parametrize("env_id", sorted(ENVS))
def test_identical_observations_own_rewards(env_id):
    arena = SupervisedArena(env_id, ["zero", "random"], scale="smoke", env_kwargs=ENVS[env_id])
    obs, infos = arena.reset(seed=7)
    space = arena.action_space("random")
    space.seed(0)
    steps, differing_rewards = 0, 0
    while arena.agents:
        assert obs["zero"].tobytes() == obs["random"].tobytes()
        assert obs["zero"] is not obs["random"]  # copies, not one shared array
        actions = {"zero": np.zeros_like(space.sample()), "random": space.sample()}
        obs, rewards, terms, truncs, infos = arena.step(actions)
        np.testing.assert_array_equal(infos["zero"]["target"], infos["random"]["target"])
        differing_rewards += rewards["zero"] != rewards["random"]
        steps += 1
    assert truncs == {"zero": True, "random": True} and arena.agents == []
    assert steps * arena.env_of("zero").batch_size == arena.env_of("zero").n_examples_total
    assert differing_rewards > 0  # each learner is scored on its own prediction


def test_reset_with_seed_reproduces_and_seeds_differ():
    arena = SupervisedArena("SlowRegression-v0", ["a", "b"], scale="smoke")
    first = arena.reset(seed=1)[0]["a"].copy()
    again = arena.reset(seed=1)[0]["a"]
    assert first.tobytes() == again.tobytes()
    # Different seeds, different streams (compared over many targets: one batch may coincide).
    a = SupervisedArena("SlowRegression-v0", ["x"], scale="smoke")
    b = SupervisedArena("SlowRegression-v0", ["x"], scale="smoke")
    a.reset(seed=1), b.reset(seed=2)
    act = {"x": np.zeros(1, np.float32)}
    ta = [a.step(act)[4]["x"]["target"][0] for _ in range(50)]
    tb = [b.step(act)[4]["x"]["target"][0] for _ in range(50)]
    assert ta != tb


def test_bad_learner_lists_and_missing_actions():
    with pytest.raises(ValueError, match="distinct"):
        SupervisedArena("SlowRegression-v0", ["a", "a"], scale="smoke")
    with pytest.raises(ValueError, match="at least one"):
        SupervisedArena("SlowRegression-v0", [], scale="smoke")
    arena = SupervisedArena("SlowRegression-v0", ["a", "b"], scale="smoke")
    arena.reset(seed=0)
    with pytest.raises(ValueError, match="no action for learner"):
        arena.step({"a": np.zeros(1, np.float32)})
