"""Native vector envs: each sub-stream equals the single env with the same seed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import plasticity_gym  # noqa: F401
from plasticity_gym.envs.vector import SupervisedStreamVectorEnv

SMALL = {
    "PermutedMNIST-v0": {"n_tasks": 3, "examples_per_task": 120},
    "SlowRegression-v0": {"n_examples": 360, "flip_interval": 120},
}
IDS = tuple(SMALL)


def predictions(space: gym.Space, obs: np.ndarray) -> np.ndarray:
    if isinstance(space, gym.spaces.MultiDiscrete):
        return (obs.sum(axis=-1) * 7).astype(np.int64) % 10
    return obs.sum(axis=-1).astype(np.float32)


def single_rollout(env_id: str, seed: int, n_steps: int, **kwargs):
    env = gym.make(env_id, scale="smoke", **SMALL[env_id], **kwargs)
    obs, _ = env.reset(seed=seed)
    observations, targets, rewards = [obs], [], []
    for _ in range(n_steps):
        obs, reward, _, truncated, info = env.step(predictions(env.action_space, obs))
        observations.append(obs)
        targets.append(info["target"])
        rewards.append(reward)
    return np.stack(observations), np.stack(targets), np.array(rewards), truncated


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("batch_size", [1, 4])
def test_sub_streams_equal_single_envs(env_id, batch_size):
    vec = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", scale="smoke",
                       batch_size=batch_size, **SMALL[env_id])
    assert isinstance(vec.unwrapped, SupervisedStreamVectorEnv)
    n_steps = 360 // batch_size
    obs, info = vec.reset(seed=[5, 9, 2])
    assert obs.shape == (3, batch_size, *vec.single_observation_space.shape[1:])
    observations, targets, rewards = [obs], [], []
    for _ in range(n_steps):
        obs, reward, terminated, truncated, info = vec.step(predictions(vec.single_action_space, obs))
        observations.append(obs)
        targets.append(info["target"])
        rewards.append(reward)
        assert not terminated.any()
    assert truncated.all() and info["_target"].all()
    observations, targets, rewards = np.stack(observations), np.stack(targets), np.stack(rewards)
    for i, seed in enumerate([5, 9, 2]):
        obs_s, y_s, r_s, truncated_s = single_rollout(env_id, seed, n_steps, batch_size=batch_size)
        np.testing.assert_array_equal(observations[:, i], obs_s)
        np.testing.assert_array_equal(targets[:, i], y_s)
        np.testing.assert_allclose(rewards[:, i], r_s, rtol=1e-12)
        assert truncated_s


@pytest.mark.parametrize("env_id", IDS)
def test_int_seed_means_consecutive_seeds_and_info_layout(env_id):
    vec = gym.make_vec(env_id, num_envs=2, scale="smoke", **SMALL[env_id])  # default: native
    assert isinstance(vec.unwrapped, SupervisedStreamVectorEnv)
    obs, info = vec.reset(seed=10)
    for i in range(2):
        single_obs, single_info = gym.make(env_id, scale="smoke", **SMALL[env_id]).reset(seed=10 + i)
        np.testing.assert_array_equal(obs[i], single_obs)
    assert info["task_id"].tolist() == [0, 0] and info["next_task_boundary"].all()
    assert info["_task_id"].all()
    obs, rewards, _, _, info = vec.step(vec.action_space.sample())
    assert rewards.shape == (2,) and info["target"].shape == (2, 1)
    assert info["phase"].tolist() == ["train", "train"] and info["step_in_task"].tolist() == [0, 0]
    assert vec.unwrapped.config["batch_size"] == 1 and vec.unwrapped.data_id["n_examples"] > 0
    px, py = vec.unwrapped.probe_batch(16)
    assert px.shape[:2] == (2, 16) and py.shape == (2, 16)
    buffer = np.full_like(px, -1.0)
    bx, by = vec.unwrapped.probe_batch(16, out=buffer)
    assert bx is buffer  # written in place: a caller that probes often reuses one array
    np.testing.assert_array_equal(bx, px)
    np.testing.assert_array_equal(by, py)
    with pytest.raises(ValueError, match="out must be"):
        vec.unwrapped.probe_batch(16, out=np.empty((2, 15, *px.shape[2:]), px.dtype))


@pytest.mark.parametrize("env_id", IDS)
def test_reset_continues_and_autoreset_after_end(env_id):
    vec = gym.make_vec(env_id, num_envs=2, scale="smoke", **SMALL[env_id])
    obs, _ = vec.reset(seed=0)
    for _ in range(100):
        obs, *_ = vec.step(predictions(vec.single_action_space, obs))
    continued, _ = vec.reset()
    np.testing.assert_array_equal(continued, obs)
    truncated = np.zeros(2, dtype=bool)
    steps = 100
    while not truncated.all():
        obs, _, _, truncated, _ = vec.step(predictions(vec.single_action_space, obs))
        steps += 1
    assert steps == 360
    obs, rewards, _, truncated, info = vec.step(predictions(vec.single_action_space, obs))
    assert (rewards == 0).all() and not truncated.any() and info["task_id"].tolist() == [0, 0]


@pytest.mark.parametrize("env_id", IDS)
def test_bad_vector_actions(env_id):
    vec = gym.make_vec(env_id, num_envs=2, scale="smoke", **SMALL[env_id])
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(3, 1\).*\(2, 1\)"):
        vec.step(np.zeros((3, 1), dtype=np.int64))
    if isinstance(vec.single_action_space, gym.spaces.MultiDiscrete):
        with pytest.raises(ValueError, match="labels must lie"):
            vec.step(np.full((2, 1), 10))
    else:
        with pytest.raises(ValueError, match="NaN"):
            vec.step(np.full((2, 1), np.nan))


@pytest.mark.parametrize("env_id", ["PermutedMNIST-v0", "SlowRegression-v0"])
def test_stream_chunk_holds_the_returned_batches(env_id):
    venv = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", scale="smoke")
    with pytest.raises(Exception, match="reset"):
        venv.unwrapped.stream_chunk()
    obs, _ = venv.reset(seed=2)
    b = venv.unwrapped.batch_size
    for _ in range(50):
        start, pos, x, y = venv.unwrapped.stream_chunk()
        np.testing.assert_array_equal(x[:, pos - start:pos - start + b], obs)
        action = venv.action_space.sample()
        obs, _, _, _, info = venv.step(action)
        np.testing.assert_array_equal(y[:, pos - start:pos - start + b], info["target"])
