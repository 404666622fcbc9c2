"""The arena: several named learners face the identical stream, as a PettingZoo ``ParallelEnv``.

Every learner gets its own copy of the environment, and all copies are reset with the same
seed. The supervised streams derive everything from the seed, so the copies produce
byte-identical observations while each copy scores only its own learner's prediction. Copies
(rather than one stream scored several times) keep the arena independent of how an env scores
an action, and are the same mechanism an RL env needs: for AntFriction-v0, one Ant per learner
under the same friction schedule. Adding such an env means adding its id to
:data:`ARENA_ENVS` with the right ``identical_observations`` flag (Ant's observations differ per
learner once their actions differ); the rest of the class is env-agnostic.

Example::

    arena = SupervisedArena("SlowRegression-v0", ["backprop", "cbp"], scale="smoke")
    obs, infos = arena.reset(seed=0)
    while arena.agents:
        actions = {name: learners[name].act(obs[name], infos[name]) for name in arena.agents}
        obs, rewards, terms, truncs, infos = arena.step(actions)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

# Env ids the arena knows, and whether their copies must show identical observations.
ARENA_ENVS: dict[str, bool] = {
    "PermutedMNIST-v0": True,
    "SlowRegression-v0": True,
    "ContinualImageNet-v0": True,
    "ClassIncCIFAR100-v0": True,
}


class SupervisedArena(ParallelEnv):
    """Named learners on one supervised stream; each is rewarded for its own prediction.

    Args:
        env_id: a registered supervised-stream id (or ``module:Id``).
        learners: distinct names, one per learner (the PettingZoo agent ids).
        scale: the env's named scale.
        env_kwargs: env kwargs on top of the scale (the same for every copy).

    ``reset(seed=s)`` starts every copy's stream from ``s``. ``reset()`` without a seed starts
    a new episode (a whole new stream) from a seed drawn from the arena's own generator, which
    the last explicit seed fixes, so the copies stay identical.
    """

    metadata = {"name": "plasticity_gym_arena_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        env_id: str,
        learners: Sequence[str],
        scale: str = "cpu",
        env_kwargs: Mapping[str, Any] | None = None,
    ):
        names = [str(n) for n in learners]
        if not names:
            raise ValueError("the arena needs at least one learner")
        if len(set(names)) != len(names):
            raise ValueError(f"learner names must be distinct, got {names}")
        if env_kwargs and "scale" in env_kwargs:
            raise ValueError("give the scale through scale=, not env_kwargs['scale']")
        self.env_id = env_id
        self.scale = scale
        self.identical_observations = ARENA_ENVS.get(env_id.split(":")[-1], True)
        self.possible_agents = names
        self.agents: list[str] = []
        self._envs = {
            n: gym.make(env_id, scale=scale, disable_env_checker=True, **dict(env_kwargs or {})).unwrapped
            for n in names
        }
        self._rng = np.random.default_rng()
        self._obs_spaces = {n: e.observation_space for n, e in self._envs.items()}
        self._act_spaces = {n: e.action_space for n, e in self._envs.items()}

    # PettingZoo requires the same space object on every call.
    def observation_space(self, agent: str) -> gym.Space:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> gym.Space:
        return self._act_spaces[agent]

    def env_of(self, agent: str) -> Any:
        """The learner's (unwrapped) env copy: for its config, data identity and budget."""
        return self._envs[agent]

    def probe_batch(self, n: int = 2000):
        """The current task's probe batch (the same for every learner; read from the first copy)."""
        return self._envs[self.possible_agents[0]].probe_batch(n)

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        else:
            seed = int(self._rng.integers(2**31 - 1))
        self.agents = list(self.possible_agents)
        obs, infos = {}, {}
        for name in self.agents:
            # The streams take no reset options; PettingZoo's API still passes the argument.
            obs[name], infos[name] = self._envs[name].reset(seed=seed)
        self._check_identical(obs)
        return obs, infos

    def step(self, actions: Mapping[str, Any]):
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"no action for learner(s) {missing}")
        obs, rewards, terms, truncs, infos = {}, {}, {}, {}, {}
        for name in self.agents:
            o, r, te, tr, i = self._envs[name].step(actions[name])
            obs[name], rewards[name], terms[name], truncs[name], infos[name] = o, float(r), bool(te), bool(tr), i
        # The copies run in lockstep: they end together.
        if any(terms.values()) or any(truncs.values()):
            self.agents = []
        else:
            self._check_identical(obs)
        return obs, rewards, terms, truncs, infos

    def _check_identical(self, obs: Mapping[str, np.ndarray]) -> None:
        # Cheap insurance that the seed really determines the stream (a hidden global-RNG use
        # in an env would break the comparison silently otherwise).
        if not self.identical_observations or len(obs) < 2:
            return
        it = iter(obs.values())
        first = next(it)
        for o in it:
            if not np.array_equal(o, first):
                raise RuntimeError(f"{self.env_id}: the arena's stream copies diverged; the env is not seed-deterministic")

    def close(self) -> None:
        for e in self._envs.values():
            e.close()
