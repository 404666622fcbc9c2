"""SlowRegression-v0 (SPEC §2): inputs, the one-bit flips, and the target network's formula."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import plasticity_gym  # noqa: F401
from plasticity_gym.envs.slow_regression import SlowRegressionEnv

M = 20  # input bits without the bias bit
F = 15  # slow bits


def stream(env: SlowRegressionEnv, seed: int, n_steps: int):
    obs, _ = env.reset(seed=seed)
    xs, ys, tasks, slow = [], [], [], []
    for _ in range(n_steps):
        x = obs
        obs, _, _, _, info = env.step(np.zeros(env.batch_size, dtype=np.float32))
        xs.append(x)
        ys.append(info["target"])
        tasks.append(np.full(env.batch_size, info["task_id"]))
        slow.append(np.tile(info["slow_bits"], (env.batch_size, 1)))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(tasks), np.concatenate(slow)


def spec_target(x: np.ndarray, w: np.ndarray, v: np.ndarray, c: int, rule: str) -> np.ndarray:
    """SPEC §2 written out loop by loop: w is (100, 21) with the bias weight in the last column."""
    targets = []
    for bits in x:
        total = c
        for i in range(w.shape[0]):
            b_i = w[i, M]
            if rule == "code":
                s_i = (M - sum(w[i, j] for j in range(M)) + b_i) / 2
            else:
                s_i = sum(1 for j in range(M + 1) if w[i, j] < 0)
            theta = (M + 1) * 0.7 - s_i
            input_sum = sum(w[i, j] * bits[j] for j in range(M + 1))
            total += v[i] * (1 if input_sum > theta else 0)
        targets.append(total)
    return np.array(targets, dtype=np.float32)


@pytest.mark.parametrize("rule", ["code", "text"])
def test_target_matches_spec_formula(rule):
    env = SlowRegressionEnv(scale="smoke", threshold_rule=rule, flip_interval=20, n_examples=200)
    x, y, _, _ = stream(env, 6, 200)
    w, v, c = env.input_weights, env.output_weights, env.output_bias
    assert w.shape == (100, 21) and set(np.unique(w)) == {-1, 1}
    assert set(np.unique(v)) == {-1, 1} and c in (-1, 1)
    picks = np.r_[0:12, 190:200]
    np.testing.assert_array_equal(y[picks], spec_target(x[picks], w, v, c, rule))
    assert np.all(np.abs(y) <= 101)
    assert len(np.unique(y)) > 3  # the target varies


def test_readings_differ_only_through_negative_bias_units():
    env_code = SlowRegressionEnv(scale="smoke", threshold_rule="code")
    env_text = SlowRegressionEnv(scale="smoke", threshold_rule="text")
    env_code.reset(seed=0)
    env_text.reset(seed=0)
    np.testing.assert_array_equal(env_code.input_weights, env_text.input_weights)
    bias = env_code.input_weights[:, M]
    gap = env_code.thresholds - env_text.thresholds
    np.testing.assert_allclose(gap[bias == 1], -0.5)  # same firing rule for integer sums
    np.testing.assert_allclose(gap[bias == -1], 1.5)  # 17 of 20 bits needed instead of 15
    assert env_code.config["threshold_rule"] == "code"


def test_exactly_one_slow_bit_flips_every_T_examples():
    T = 25
    env = SlowRegressionEnv(scale="smoke", flip_interval=T, n_examples=T * 40, batch_size=5)
    x, _, tasks, slow = stream(env, 2, T * 40 // 5)
    np.testing.assert_array_equal(x[:, :F], slow)
    changes = np.flatnonzero(np.any(x[1:, :F] != x[:-1, :F], axis=1)) + 1
    np.testing.assert_array_equal(changes, np.arange(T, T * 40, T))
    flipped = np.abs(x[changes, :F] - x[changes - 1, :F]).sum(axis=1)
    np.testing.assert_array_equal(flipped, 1)
    np.testing.assert_array_equal(tasks, np.arange(T * 40) // T)
    assert len(set(np.argmax(x[changes, :F] != x[changes - 1, :F], axis=1))) > 5  # uniform choice


def test_random_bits_change_and_bias_is_constant():
    env = SlowRegressionEnv(scale="smoke")
    x, _, _, _ = stream(env, 3, 4000)
    random_bits = x[:, F:M]
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_allclose(random_bits.mean(axis=0), 0.5, atol=0.05)
    assert np.mean(np.any(random_bits[1:] != random_bits[:-1], axis=1)) > 0.9  # 1 - 1/32 expected
    np.testing.assert_array_equal(x[:, M], 1.0)


def test_target_of_agrees_with_stream():
    env = SlowRegressionEnv(scale="smoke", batch_size=10)
    x, y, _, _ = stream(env, 8, 300)
    np.testing.assert_array_equal(env.target_of(x), y)
    px, py = env.probe_batch(500)
    np.testing.assert_array_equal(env.target_of(px), py)
    np.testing.assert_array_equal(px[:, :F], np.tile(env.slow_bits_by_task[env.current_task], (500, 1)))


def test_scales_and_data_id():
    smoke = gym.make("SlowRegression-v0", scale="smoke").unwrapped
    assert (smoke.n_examples_total, smoke.examples_per_task, smoke.n_tasks) == (20_000, 2_000, 10)
    for scale in ("cpu", "paper"):
        env = gym.make("SlowRegression-v0", scale=scale).unwrapped
        assert (env.n_examples_total, env.examples_per_task, env.n_tasks) == (3_000_000, 10_000, 300)
        assert env.config["threshold_rule"] == "code" and env.config["beta"] == 0.7
    assert isinstance(env.action_space, gym.spaces.Box)
    assert env.action_space.low[0] == -101 and env.action_space.high[0] == 101
    assert env.observation_space.shape == (1, 21)
    data_id = env.data_id
    assert data_id["name"] == "slow-regression" and data_id["n_examples"] == 3_000_000
    assert data_id["generator"]["threshold_rule"] == "code" and len(data_id["sha256"]) == 64
    text = gym.make("SlowRegression-v0", threshold_rule="text").unwrapped
    assert text.data_id["sha256"] != data_id["sha256"]


def test_bad_kwargs():
    with pytest.raises(ValueError, match="threshold_rule='paper'.*code.*text"):
        SlowRegressionEnv(threshold_rule="paper")
    with pytest.raises(ValueError, match="multiple of flip_interval"):
        SlowRegressionEnv(n_examples=1000, flip_interval=300)
    with pytest.raises(ValueError, match="beta"):
        SlowRegressionEnv(beta=2.0)
