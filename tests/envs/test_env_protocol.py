"""The supervised-stream protocol (SPEC §1, design.md §1) on every built supervised id.

Episodic RL ids (AntFriction-v0) have their own tests: tests/envs/test_env_ant_friction.py.
"""

from __future__ import annotations

import json
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import plasticity_gym  # noqa: F401  (registers the ids)
from plasticity_gym.envs.stream import StreamEndedError
from plasticity_gym.registration import BUILT_ENV_IDS, EPISODIC_ENV_IDS, SUPERVISED_ENV_IDS

# Small streams: a few tasks of a few hundred examples. The vision streams at batch size 1 here
# (their phases' sizes are multiples of 8, so the batch sizes these tests try fill every batch).
SMALL = {
    "PermutedMNIST-v0": {"n_tasks": 3, "examples_per_task": 200},
    "SlowRegression-v0": {"n_examples": 600, "flip_interval": 200},
    "ContinualImageNet-v0": {"batch_size": 1, "n_tasks": 3, "epochs": 2, "train_per_class": 40,
                             "test_per_class": 12},
    "ClassIncCIFAR100-v0": {"batch_size": 1, "n_increments": 2, "epochs": 2, "train_per_class": 16,
                            "val_per_class": 8, "test_per_class": 8},
}


def make(env_id: str, **kwargs):
    return gym.make(env_id, scale="smoke", **{**SMALL[env_id], **kwargs})


def predict(env: gym.Env, obs: np.ndarray) -> np.ndarray:
    """A deterministic prediction that depends on the observation."""
    unwrapped = env.unwrapped
    flat = obs.reshape(obs.shape[0], -1)
    if unwrapped.task_kind == "classification":
        return (np.abs(flat.sum(axis=1)) * 7).astype(np.int64) % unwrapped.n_classes
    return flat.sum(axis=1).astype(np.float32)


def rollout(env: gym.Env, seed: int | None, n_steps: int):
    obs, info = env.reset(seed=seed)
    observations, targets, rewards = [obs.copy()], [], []
    for _ in range(n_steps):
        obs, reward, terminated, truncated, info = env.step(predict(env, obs))
        observations.append(obs.copy())
        targets.append(np.array(info["target"]))
        rewards.append(reward)
    return np.stack(observations), np.stack(targets), np.array(rewards)


def test_built_ids_are_the_supervised_ones_and_the_episodic_ones():
    assert set(SUPERVISED_ENV_IDS) == set(SMALL)
    assert set(EPISODIC_ENV_IDS) == {"AntFriction-v0"}
    assert set(BUILT_ENV_IDS) == set(SUPERVISED_ENV_IDS) | set(EPISODIC_ENV_IDS)


@pytest.mark.filterwarnings("ignore:.*(different from the unwrapped|symmetric and normalized).*")
@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_check_env_unwrapped_and_made(env_id):
    env = make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    check_env(env, skip_render_check=True)


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_same_seed_same_stream_different_seed_differs(env_id):
    a, b, c = make(env_id), make(env_id), make(env_id)
    obs_a, y_a, r_a = rollout(a, 3, 450)
    obs_b, y_b, r_b = rollout(b, 3, 450)
    obs_c, y_c, _ = rollout(c, 4, 450)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(y_a, y_b)
    np.testing.assert_array_equal(r_a, r_b)
    assert not np.array_equal(obs_a, obs_c)
    assert not np.array_equal(y_a, y_c)


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_reset_without_seed_continues(env_id):
    straight = make(env_id)
    obs_all, y_all, _ = rollout(straight, 11, 300)
    env = make(env_id)
    obs_1, y_1, _ = rollout(env, 11, 130)
    obs_2, y_2, _ = rollout(env, None, 170)  # reset() returns the batch not yet scored
    np.testing.assert_array_equal(obs_2[0], obs_1[-1])
    np.testing.assert_array_equal(np.concatenate([obs_1, obs_2[1:]]), obs_all)
    np.testing.assert_array_equal(np.concatenate([y_1, y_2]), y_all)


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_batch_size_does_not_change_the_stream(env_id):
    _, y_single, _ = rollout(make(env_id), 5, 400)
    batched = make(env_id, batch_size=8)
    obs, info = batched.reset(seed=5)
    assert obs.shape == (8, *batched.unwrapped.x_shape)
    targets = []
    for _ in range(50):
        obs, _, _, _, info = batched.step(predict(batched, obs))
        targets.append(info["target"])
    np.testing.assert_array_equal(np.concatenate(targets), y_single.reshape(-1))


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_pickle_round_trip_continues_identically(env_id):
    env = make(env_id).unwrapped
    rollout(env, 2, 77)
    clone = pickle.loads(pickle.dumps(env))
    obs_a, y_a, r_a = rollout(env, None, 250)
    obs_b, y_b, r_b = rollout(clone, None, 250)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(y_a, y_b)
    np.testing.assert_array_equal(r_a, r_b)


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_info_keys_and_task_schedule(env_id):
    env = make(env_id)
    unwrapped = env.unwrapped
    per_task = unwrapped.examples_per_task  # None: tasks of different lengths
    obs, info = env.reset(seed=0)
    assert info["task_id"] == 0 and info["task_boundary"] and info["phase"] == "train"
    assert info["next_task_id"] == 0 and info["next_task_boundary"] and info["next_phase"] == "train"
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
    task, step_in_task, steps = 0, -1, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(predict(env, obs))
        boundary = info["task_id"] != task or steps == 0
        task = info["task_id"]
        step_in_task = 0 if boundary else step_in_task + 1
        assert info["task_boundary"] == boundary
        assert info["step_in_task"] == step_in_task
        assert info["phase"] in ("train", "val", "test")
        if per_task is not None:
            assert info["task_id"] == steps // per_task
            assert info["task_boundary"] == (steps % per_task == 0)
            assert info["next_task_boundary"] == ((steps + 1) % per_task == 0 and not truncated)
        assert not terminated
        assert info["target"].shape == (1,)
        steps += 1
        if truncated:
            break
        assert info["next_task_boundary"] == (info["next_task_id"] != task)
    assert steps == unwrapped.n_examples_total
    assert truncated and info["next_task_id"] == unwrapped.n_tasks == task + 1
    with pytest.raises(StreamEndedError, match="reset"):
        env.step(predict(env, obs))
    # reset() after the end starts a new stream
    _, info = env.reset()
    assert info["task_id"] == 0 and unwrapped.position == 0


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_step_before_reset_is_a_clear_error(env_id):
    with pytest.raises(StreamEndedError, match="reset"):
        make(env_id).unwrapped.step(np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_sync_vectorization(env_id):
    vec = gym.make_vec(env_id, num_envs=3, vectorization_mode="sync", scale="smoke", **SMALL[env_id])
    obs, info = vec.reset(seed=7)
    assert obs.shape == (3, 1, *vec.single_observation_space.shape[1:])
    for _ in range(20):
        obs, rewards, terminated, truncated, info = vec.step(vec.action_space.sample())
    assert rewards.shape == (3,) and info["target"].shape == (3, 1)
    obs_single, _ = make(env_id).reset(seed=8)
    np.testing.assert_array_equal(vec.reset(seed=7)[0][1], obs_single)
    vec.close()


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_probe_batch_is_deterministic_and_leaves_the_stream(env_id):
    env = make(env_id).unwrapped
    env.reset(seed=1)
    for _ in range(10):
        env.step(env.action_space.sample())
    x1, y1 = env.probe_batch(64)
    x2, y2 = env.probe_batch(64)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (64, *env.x_shape) and x1.dtype == np.float32 and y1.shape == (64,)
    reference = make(env_id).unwrapped
    obs_a, y_a, _ = rollout(env, None, 100)
    reference.reset(seed=1)
    for _ in range(10):
        reference.step(reference.action_space.sample())
    obs_b, y_b, _ = rollout(reference, None, 100)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(y_a, y_b)


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_scales_resolve_and_override(env_id):
    env_class = type(make(env_id).unwrapped)
    for scale in ("smoke", "cpu", "paper"):
        config = env_class.resolve_config(scale)
        assert set(config) == set(env_class.default_config)
        assert all(config[key] == value for key, value in env_class.scales[scale].items())
    env = gym.make(env_id, scale="smoke", **{**SMALL[env_id], "batch_size": 2})
    assert env.unwrapped.scale == "smoke"
    assert env.unwrapped.config["batch_size"] == 2 and env.unwrapped.batch_size == 2
    json.dumps(env.unwrapped.config)
    json.dumps(env.unwrapped.data_id)
    default = gym.make(env_id)
    assert default.unwrapped.scale == "cpu"
    cpu = env_class.resolve_config("cpu")
    assert {k: default.unwrapped.config[k] for k in cpu if cpu[k] is not None} == {
        k: v for k, v in cpu.items() if v is not None
    }


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_unknown_kwarg_or_scale_is_rejected(env_id):
    with pytest.raises(ValueError, match="unknown keyword.*valid ones.*batch_size"):
        gym.make(env_id, scale="smoke", bogus=1)
    with pytest.raises(ValueError, match="unknown scale 'huge'.*cpu.*paper.*smoke"):
        gym.make(env_id, scale="huge")
    with pytest.raises(ValueError, match="batch_size"):
        make(env_id, batch_size=7)


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_bad_actions_are_rejected_clearly(env_id):
    env = make(env_id, batch_size=2)
    env.reset(seed=0)
    classification = env.unwrapped.task_kind == "classification"
    good = np.zeros(2, dtype=np.int64 if classification else np.float32)
    bad_actions = [
        (np.zeros(3, dtype=good.dtype), "shape"),
        (np.zeros((2, 1), dtype=good.dtype), "shape"),
        (np.array(["a", "b"]), "dtype"),
        (np.array([0.0, np.nan]), "non-finite|dtype"),
        (np.array([np.inf, 0.0]), "non-finite|dtype"),
    ]
    if classification:
        n_classes = env.unwrapped.n_classes
        bad_actions += [(np.array([0, n_classes]), "out of range"), (np.array([-1, 0]), "out of range"),
                        (np.array([0.0, 1.0]), "dtype")]
    for action, problem in bad_actions:
        with pytest.raises(ValueError, match=f"bad action.*({problem}).*expected"):
            env.step(action)
    env.step(good)  # the stream survived the refused actions


def test_out_of_bounds_regression_prediction_is_scored_clipped_to_the_action_space():
    env = make("SlowRegression-v0", batch_size=2).unwrapped
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.array([500.0, -500.0]))
    expected = -np.mean((np.array([101.0, -101.0]) - info["target"]) ** 2)
    assert reward == pytest.approx(expected)


@pytest.mark.parametrize("env_id", SUPERVISED_ENV_IDS)
def test_rewards_score_the_batch_just_shown(env_id):
    env = make(env_id, batch_size=4)
    obs, _ = env.reset(seed=9)
    for _ in range(30):
        action = predict(env, obs)
        obs, reward, _, _, info = env.step(action)
        if env.unwrapped.task_kind == "classification":
            assert reward == pytest.approx(np.mean(action == info["target"]))
            assert info["target"].dtype == np.int64
        else:
            assert reward == pytest.approx(-np.mean((action - info["target"].astype(np.float64)) ** 2))
            assert info["target"].dtype == np.float32
