"""Checkpoints of a run: one pickle, written atomically, that names the run it belongs to.

A checkpoint holds the run's fingerprint (its arguments: a checkpoint is never resumed by another
run), what is finished, the state of the part in progress and every global RNG, so that a
resumed run produces the result of an uninterrupted one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from plasticity_gym.harness._io import atomic_pickle, load_pickle, to_jsonable

CHECKPOINT_FORMAT = 2


def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, numpy, torch, CUDA when in use)."""
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def agent_blob(agent: Any) -> tuple[str, Any]:
    """A picklable snapshot of an agent: its own ``state_dict`` if it has one, else itself."""
    if callable(getattr(agent, "state_dict", None)) and callable(getattr(agent, "load_state_dict", None)):
        return ("state_dict", agent.state_dict())
    return ("object", agent)


def restore_agent(blob: tuple[str, Any], build: Any) -> Any:
    """The agent of :func:`agent_blob`; ``build()`` makes a fresh one to load a state into."""
    kind, payload = blob
    if kind == "object":
        return payload
    agent = build()
    agent.load_state_dict(payload)
    return agent


class Checkpoint:
    """The checkpoint file of one run, identified by ``fingerprint`` (JSON-able arguments)."""

    def __init__(self, path: str | os.PathLike, fingerprint: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = to_jsonable(dict(fingerprint))

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` with the fingerprint and the global RNG states, atomically."""
        atomic_pickle(self.path, {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                                  "rng": rng_state(), **state})

    def load(self) -> dict[str, Any]:
        """The saved state; errors when it belongs to another run or another format."""
        payload = load_pickle(self.path)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path}: checkpoint format {payload.get('format')!r} is not this version's "
                             f"({CHECKPOINT_FORMAT}); delete it to start afresh")
        theirs, ours = payload["fingerprint"], self.fingerprint
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ValueError(
                f"{self.path} belongs to a different run (differs in: {', '.join(diff)}); "
                "use the same arguments, or delete the checkpoint to start afresh"
            )
        return payload

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()
