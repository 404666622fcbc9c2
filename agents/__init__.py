"""Reference agents for plasticity-gym: the agent protocol, networks, the one CBP core, baselines.

``make_agent(name, observation_space, action_space, *, env_id=None, scale=None, overrides=None,
seed=0, device="auto")`` builds a reference agent from its named defaults for (env id, scale)
with ``overrides`` (a nested dict, validated) on top. Agents never see an env object, only
spaces, observations, actions, rewards and ``info``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from plasticity_gym_agents.config import (CBPConfig, LearnerConfig, NetworkConfig, OptimizerConfig, ReDoConfig,
                           ShrinkPerturbConfig, config_hash, deep_merge)
from plasticity_gym_agents.config import L2InitConfig, UPGDConfig, WeightClipConfig
from plasticity_gym_agents.config import LRScheduleConfig, SNRConfig
from plasticity_gym_agents.defaults import (AGENT_NAMES, ENV_IDS, RL_AGENT_NAMES, SCALES, default_config, defaults_table,
                             rl_default_overrides)
from plasticity_gym_agents.learners import SupervisedLearner, task_spec
from plasticity_gym_agents.lockstep import PER_REPLICA, LockstepLearner, lockstep_support
from plasticity_gym_agents.ppo import PPOAgent, PPOConfig, make_ppo_agent
from plasticity_gym_agents.protocol import Agent

__all__ = ["AGENT_NAMES", "ENV_IDS", "PER_REPLICA", "SCALES", "Agent", "LockstepLearner", "lockstep_support",
           "PPOAgent", "PPOConfig", "RL_AGENT_NAMES", "CBPConfig",
           "LearnerConfig", "NetworkConfig", "OptimizerConfig", "ReDoConfig", "ShrinkPerturbConfig",
           "SupervisedLearner", "config_hash", "default_config", "defaults_table", "make_agent", "make_ppo_agent",
           "resolve_config", "L2InitConfig", "LRScheduleConfig", "UPGDConfig", "WeightClipConfig", "SNRConfig"]


def resolve_config(name: str, observation_space: gym.Space, action_space: gym.Space, *,
                   env_id: str | None = None, scale: str | None = None,
                   overrides: dict[str, Any] | None = None) -> LearnerConfig:
    """The validated config ``make_agent`` would use (defaults, then ``overrides``)."""
    spec = task_spec(observation_space, action_space)
    base = default_config(name, env_id, scale, spec)
    return LearnerConfig.from_dict(deep_merge(base, overrides))


def make_agent(name: str, observation_space: gym.Space, action_space: gym.Space, *,
               env_id: str | None = None, scale: str | None = None,
               overrides: dict[str, Any] | None = None, seed: int = 0,
               device: str = "auto") -> SupervisedLearner | PPOAgent:
    """Build reference agent ``name``: a supervised learner (one of ``AGENT_NAMES``) or a PPO
    variant for a continuous-control env (one of ``RL_AGENT_NAMES``, given the single env's
    spaces; it drives a vector env of ``config.num_envs`` copies, see ``agents/ppo.py``).

    ``env_id`` picks the named defaults of one of ``ENV_IDS`` (another id is an error); with
    ``env_id=None`` the defaults are inferred from the spaces (a regression stream gets
    SlowRegression-v0's, flat 784-pixel 10-class inputs PermutedMNIST-v0's, anything else
    generic ones). ``scale`` defaults to ``"cpu"``. ``overrides`` is a nested dict merged onto the defaults, e.g.
    ``{"optimizer": {"lr": 0.003}, "cbp": {"replacement_rate": 1e-5}}``; unknown keys and bad
    values raise ``ValueError``. ``device="auto"`` picks CUDA when available.
    """
    if name in RL_AGENT_NAMES:
        return make_ppo_agent(name, observation_space, action_space,
                              overrides=deep_merge(rl_default_overrides(name, scale), overrides),
                              seed=seed, device=device)
    config = resolve_config(name, observation_space, action_space, env_id=env_id, scale=scale,
                            overrides=overrides)
    return SupervisedLearner(name, config, observation_space, action_space, seed=seed,
                             device=device)
