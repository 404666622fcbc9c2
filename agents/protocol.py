"""The agent protocol (docs/design.md §2): the only thing the harness and the arena rely on."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Agent", "learning_phase", "next_phase"]


@runtime_checkable
class Agent(Protocol):
    """A continual learner on a supervised stream (or any Gymnasium env).

    ``act`` gets the observation and the ``info`` that came with it (from ``reset`` or the last
    ``step``) and returns the action for the whole batch. ``observe`` gets the outcome of that
    action; it learns from ``info["target"]`` only when ``info["phase"] == "train"``.
    ``uses_task_boundaries`` is True if the agent reads ``task_boundary``/``next_task_boundary``
    (privileged information that a leaderboard entry must declare).
    """

    uses_task_boundaries: bool

    def act(self, observation: np.ndarray, info: dict[str, Any]) -> np.ndarray: ...

    def observe(self, observation: np.ndarray, action: np.ndarray, reward: float,
                info: dict[str, Any]) -> None: ...


def next_phase(info: dict[str, Any]) -> str:
    """Phase of the observation that came with ``info`` (``next_phase``, else ``phase``)."""
    return str(info.get("next_phase", info.get("phase", "train")))


def learning_phase(info: dict[str, Any]) -> bool:
    """True only when ``info["phase"] == "train"``: the scored batch may be learned from."""
    return info.get("phase") == "train"
