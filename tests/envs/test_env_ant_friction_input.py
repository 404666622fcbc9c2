"""AntFriction-v0 refuses bad input as the streams do: non-finite or absurd actions, bad seeds,
reset options. Finite actions beyond the action space stay accepted (MuJoCo clamps them)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import plasticity_gym  # noqa: F401  (registers the ids)
MAX_ACTION_MAGNITUDE = 1e3  # the documented cap (plasticity_gym.envs.ant_friction)


@pytest.fixture
def env():
    made = gym.make("AntFriction-v0", scale="smoke", disable_env_checker=True)
    made.reset(seed=0)
    yield made
    made.close()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e6])
def test_non_finite_or_absurd_actions_are_refused_finite_ones_beyond_the_bounds_accepted(env, value):
    action = np.zeros(8)
    action[3] = value
    with pytest.raises(ValueError, match="bad action"):
        env.step(action)
    _, reward, *_ = env.step(np.full(8, 1.5, dtype=np.float32))  # a raw Gaussian sample, clamped by MuJoCo
    assert np.isfinite(reward)
    env.step(np.full(8, MAX_ACTION_MAGNITUDE))


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seeds_get_gymnasiums_own_error(seed):
    with pytest.raises(gym.error.Error, match="Seed must be"):
        gym.make("AntFriction-v0", scale="smoke", disable_env_checker=True).reset(seed=seed)


def test_reset_options_are_refused(env):
    with pytest.raises(ValueError, match="takes no options"):
        env.reset(seed=0, options={"friction": 0.1})
