"""The agent protocols (docs/design.md §2): the only thing the harness and the arena rely on.

:class:`Agent` learns from a supervised stream; :class:`EpisodicAgent` from episodes of a
vector env (reinforcement learning).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Agent", "EpisodicAgent", "learning_phase", "next_phase"]


@runtime_checkable
class Agent(Protocol):
    """A continual learner on a supervised stream (or any Gymnasium env).

    ``act`` gets the observation and the ``info`` that came with it (from ``reset`` or the last
    ``step``) and returns the action for the whole batch. ``observe`` gets the outcome of that
    action; it learns from ``info["target"]`` only when ``info["phase"] == "train"``.
    ``uses_task_boundaries`` is True if the agent reads ``task_boundary``/``next_task_boundary``
    (privileged information that a leaderboard entry must declare).

    Optional: ``config``, a dict of the agent's hyperparameters (JSON values), recorded as the
    result's ``agent.config`` and hashed into ``agent.config_hash``; ``probe_model()``, the torch
    network with activation modules (``nn.ReLU()``, ...) for the plasticity probes; ``name``. The
    harness seeds ``random``, numpy and torch from the run's seed before it calls a factory
    (docs/design.md, "Your own agent").

    Optional: an agent that chooses the network it is tested with on validation data (early
    stopping) sets ``selects_on_validation = True`` (the result's agent block declares it) and
    may give ``model_selection()``, a dict of equal-length lists (``task``, ``epoch``,
    ``val_accuracy``: per finished task, the epoch it returned to), stored in each run.
    """

    uses_task_boundaries: bool

    def act(self, observation: np.ndarray, info: dict[str, Any]) -> np.ndarray: ...

    def observe(self, observation: np.ndarray, action: np.ndarray, reward: float,
                info: dict[str, Any]) -> None: ...


@runtime_checkable
class EpisodicAgent(Protocol):
    """A reinforcement-learning agent over a Gymnasium vector env of ``num_envs`` copies in
    ``SAME_STEP`` autoreset mode (a finished copy returns its next episode's first observation at
    once, the final one in ``info["final_obs"]``)::

        obs, info = venv.reset(seed=seed)
        while steps < total:
            action = agent.act(obs, info)
            obs, reward, terminated, truncated, info = venv.step(action)
            agent.observe(obs, reward, terminated, truncated, info)   # learns when a rollout is full

    ``observe`` gets the vector env's step outputs unchanged and returns the update's statistics
    when it learned, else ``None``. ``probe_model()`` is the policy network (observation →
    action) for plasticity probes; ``diagnostics(probe_observations)`` the RL metrics of the
    policy on those observations (``dormant_pct``, ``stable_rank``, ``avg_weight_magnitude``,
    ``max_weight_change``: the largest total weight change in one update since the previous
    call). ``state_dict``/``load_state_dict`` resume a run exactly (a partly filled rollout
    included). The harness (``plasticity-gym run`` on an episodic env) needs ``act``,
    ``observe`` and ``num_envs``; the rest is used when present.
    """

    num_envs: int
    uses_task_boundaries: bool

    def act(self, observation: np.ndarray, info: dict[str, Any] | None = None) -> np.ndarray: ...

    def observe(self, observation: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                truncated: np.ndarray, info: dict[str, Any]) -> dict[str, Any] | None: ...

    def probe_model(self) -> Any: ...

    def diagnostics(self, probe_observations: np.ndarray | None = None) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def next_phase(info: dict[str, Any]) -> str:
    """Phase of the observation that came with ``info`` (``next_phase``, else ``phase``)."""
    return str(info.get("next_phase", info.get("phase", "train")))


def learning_phase(info: dict[str, Any]) -> bool:
    """True only when ``info["phase"] == "train"``: the scored batch may be learned from."""
    return info.get("phase") == "train"
