"""plasticity-gym: the loss-of-plasticity benchmark problems as Gymnasium environments.

Importing the package registers the five environment ids with Gymnasium, so
``gym.make("plasticity_gym:PermutedMNIST-v0")`` works without a prior import.
"""

from __future__ import annotations

__version__ = "0.1.0"

from plasticity_gym.registration import ENV_IDS, register_envs

register_envs()

__all__ = ["ENV_IDS", "__version__", "register_envs"]
