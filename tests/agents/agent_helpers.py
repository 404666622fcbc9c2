"""Small synthetic spaces and infos for agent tests (no env package needed)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces


def cls_spaces(batch: int = 1, x_shape: tuple[int, ...] = (6,), n_classes: int = 3):
    obs = spaces.Box(0.0, 1.0, (batch, *x_shape), np.float32)
    act = spaces.MultiDiscrete([n_classes] * batch)
    return obs, act


def reg_spaces(batch: int = 1, n_in: int = 6):
    obs = spaces.Box(0.0, 1.0, (batch, n_in), np.float32)
    act = spaces.Box(-101.0, 101.0, (batch,), np.float32)
    return obs, act


def train_info(target, *, boundary: bool = False, phase: str = "train", next_phase: str = "train"):
    return {"target": np.asarray(target), "phase": phase, "next_phase": next_phase,
            "task_boundary": False, "next_task_boundary": boundary, "task_id": 0,
            "step_in_task": 0, "epoch": 0, "train_epochs": 1}
