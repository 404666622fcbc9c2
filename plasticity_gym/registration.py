"""Registration of every plasticity-gym environment id with Gymnasium."""

from __future__ import annotations

import gymnasium as gym

# id -> (entry point, native vector entry point or None)
_ENTRY_POINTS: dict[str, tuple[str, str | None]] = {
    "PermutedMNIST-v0": (
        "plasticity_gym.envs.permuted_mnist:PermutedMNISTEnv",
        "plasticity_gym.envs.vector:PermutedMNISTVectorEnv",
    ),
    "SlowRegression-v0": (
        "plasticity_gym.envs.slow_regression:SlowRegressionEnv",
        "plasticity_gym.envs.vector:SlowRegressionVectorEnv",
    ),
    "ContinualImageNet-v0": ("plasticity_gym.envs.unbuilt:make_continual_imagenet", None),
    "ClassIncCIFAR100-v0": ("plasticity_gym.envs.unbuilt:make_class_inc_cifar100", None),
    "AntFriction-v0": ("plasticity_gym.envs.unbuilt:make_ant_friction", None),
}

ENV_IDS: tuple[str, ...] = tuple(_ENTRY_POINTS)
# Ids whose environment exists; the others fail with EnvNotBuiltError until their issue lands.
BUILT_ENV_IDS: tuple[str, ...] = tuple(
    env_id for env_id, (entry_point, _) in _ENTRY_POINTS.items() if ".unbuilt:" not in entry_point
)


def register_envs() -> None:
    """Register every id (idempotent: an id already registered is left alone)."""
    for env_id, (entry_point, vector_entry_point) in _ENTRY_POINTS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=vector_entry_point,
            # The streams know their own length (SPEC §1): no TimeLimit wrapper.
            max_episode_steps=None,
        )
