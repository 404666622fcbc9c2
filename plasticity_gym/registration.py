"""Registration of every plasticity-gym environment id with Gymnasium."""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym


class _Entry(NamedTuple):
    entry_point: str
    vector_entry_point: str | None = None
    # None: the env knows its own length (the supervised streams), no TimeLimit.
    max_episode_steps: int | None = None
    episodic: bool = False  # an RL env with episodes (not the supervised-stream protocol)


_ENTRIES: dict[str, _Entry] = {
    "PermutedMNIST-v0": _Entry(
        "plasticity_gym.envs.permuted_mnist:PermutedMNISTEnv",
        "plasticity_gym.envs.vector:PermutedMNISTVectorEnv",
    ),
    "SlowRegression-v0": _Entry(
        "plasticity_gym.envs.slow_regression:SlowRegressionEnv",
        "plasticity_gym.envs.vector:SlowRegressionVectorEnv",
    ),
    "ContinualImageNet-v0": _Entry("plasticity_gym.envs.continual_imagenet:ContinualImageNetEnv"),
    "ClassIncCIFAR100-v0": _Entry("plasticity_gym.envs.class_inc_cifar100:ClassIncCIFAR100Env"),
    # 1,000-step episodes, as Ant-v5 (the TimeLimit wrapper of gym.make).
    "AntFriction-v0": _Entry(
        "plasticity_gym.envs.ant_friction:AntFrictionEnv",
        "plasticity_gym.envs.ant_friction:AntFrictionVectorEnv",
        max_episode_steps=1000,
        episodic=True,
    ),
}

ENV_IDS: tuple[str, ...] = tuple(_ENTRIES)
# Ids whose environment exists; the others fail with EnvNotBuiltError until their issue lands.
BUILT_ENV_IDS: tuple[str, ...] = tuple(
    env_id for env_id, entry in _ENTRIES.items() if ".unbuilt:" not in entry.entry_point
)
# Built ids that follow the supervised-stream protocol (one endless episode, info["target"]).
SUPERVISED_ENV_IDS: tuple[str, ...] = tuple(
    env_id for env_id in BUILT_ENV_IDS if not _ENTRIES[env_id].episodic
)
# Built reinforcement-learning ids: ordinary episodes, reward from the task, no targets.
EPISODIC_ENV_IDS: tuple[str, ...] = tuple(env_id for env_id in BUILT_ENV_IDS if _ENTRIES[env_id].episodic)


def register_envs() -> None:
    """Register every id (idempotent: an id already registered is left alone)."""
    for env_id, entry in _ENTRIES.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=entry.entry_point,
            vector_entry_point=entry.vector_entry_point,
            max_episode_steps=entry.max_episode_steps,
        )
