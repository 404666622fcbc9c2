"""Registration: the five ids, the plasticity_gym: prefix, and clear errors for unbuilt ids."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import pytest

import plasticity_gym
from plasticity_gym.envs.unbuilt import EnvNotBuiltError, not_built
from plasticity_gym.registration import BUILT_ENV_IDS, ENV_IDS, EPISODIC_ENV_IDS, SUPERVISED_ENV_IDS


def test_all_five_ids_registered():
    assert set(ENV_IDS) == {"PermutedMNIST-v0", "SlowRegression-v0", "ContinualImageNet-v0",
                            "ClassIncCIFAR100-v0", "AntFriction-v0"}
    assert all(env_id in gym.registry for env_id in ENV_IDS)
    assert plasticity_gym.ENV_IDS == ENV_IDS


def test_every_id_is_built_and_the_unbuilt_error_is_clear():
    assert set(BUILT_ENV_IDS) == set(ENV_IDS)
    with pytest.raises(EnvNotBuiltError, match="Future-v0 is registered but not built.*Available now: "
                                               + ", ".join(BUILT_ENV_IDS)):
        not_built("Future-v0", "a future stream")


def test_built_ids_are_supervised_or_episodic():
    assert set(SUPERVISED_ENV_IDS).isdisjoint(EPISODIC_ENV_IDS)
    assert set(SUPERVISED_ENV_IDS) | set(EPISODIC_ENV_IDS) == set(BUILT_ENV_IDS)
    assert "AntFriction-v0" in EPISODIC_ENV_IDS


def test_episode_lengths():
    # The supervised streams know their own length (no TimeLimit); the Ant runs 1,000-step episodes.
    for env_id in SUPERVISED_ENV_IDS:
        assert gym.spec(env_id).max_episode_steps is None
    assert gym.spec("AntFriction-v0").max_episode_steps == 1000
    assert gym.make("AntFriction-v0").spec.max_episode_steps == gym.spec("Ant-v5").max_episode_steps


def test_make_with_module_prefix_in_fresh_interpreter():
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('plasticity_gym:PermutedMNIST-v0', scale='smoke')\n"
        "obs, info = env.reset(seed=0)\n"
        "print(obs.shape, env.unwrapped.data_id['name'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(1, 784) mnist-embedded-5k" in result.stdout
