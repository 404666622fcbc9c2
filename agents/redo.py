"""ReDo (Sokar et al., 2023): recycle dormant units, over the same unit-group declarations as CBP.

A unit's score is its mean |h| since the last check over the layer's average of it; every
``period`` updates the units scoring ≤ ``threshold`` are replaced as CBP replaces units
(:func:`plasticity_gym_agents.units.reinit_slices`). The original method scores one batch; here the scores are
averaged over the period's batches: the same for large batches, not noise for online (batch-1) ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from plasticity_gym_agents.arrays import TORCH
from plasticity_gym_agents.cbp import UnitResets
from plasticity_gym_agents.config import ReDoConfig
from plasticity_gym_agents.optim import along, replica_scalar

__all__ = ["DormantUnits", "ReDo"]


class DormantUnits:
    """ReDo's bookkeeping for groups of ``widths[l]`` units in each of ``n_replicas`` replicas:
    ``sums[l]`` ``(R, n)``, each unit's per-update mean |h| summed since the last check;
    ``replacements`` ``(groups, R)``. ``config``: one, or one per replica (thresholds may differ)."""

    def __init__(self, widths: Sequence[int], n_replicas: int, config: ReDoConfig | Sequence[ReDoConfig],
                 device: torch.device | str = "cpu") -> None:
        configs = [config] * n_replicas if isinstance(config, ReDoConfig) else list(config)
        self.period = configs[0].period
        self.sums = [torch.zeros(n_replicas, w, device=device) for w in widths]
        self.threshold = along(replica_scalar([c.threshold for c in configs], device), self.sums[0])
        self.count = 0
        self.replacements = np.zeros((len(widths), n_replicas), dtype=np.int64)

    def update(self, hs: Sequence[torch.Tensor]) -> list[tuple[int, int, torch.Tensor]]:
        """Fold in one update's unit values (``hs[l]``: ``(R, batch, n, *spatial)``). At the end
        of a period, returns the dormant units to re-initialise as ``(group, replica, units)``."""
        for sums, h in zip(self.sums, hs):
            sums.add_(TORCH.unit_mean(h.abs()))
        self.count += 1
        if self.count < self.period:
            return []
        due = []
        for layer, sums in enumerate(self.sums):
            mean = sums / self.count
            dormant = mean / mean.mean(1, keepdim=True).clamp_min(1e-12) <= self.threshold
            for replica in torch.nonzero(dormant.any(1)).flatten().tolist():
                idx = torch.nonzero(dormant[replica]).flatten()
                due.append((layer, replica, idx))
                self.replacements[layer, replica] += int(idx.numel())
            sums.zero_()
        self.count = 0
        return due

    def state_dict(self) -> dict:
        return {"sums": [s.cpu().clone() for s in self.sums], "count": self.count,
                "replacements": self.replacements.copy()}

    def load_state_dict(self, state: dict) -> None:
        for dst, src in zip(self.sums, state["sums"]):
            dst.copy_(src)
        self.count = int(state["count"])
        self.replacements[:] = state["replacements"]


class ReDo(UnitResets):
    """ReDo on a network's unit groups: call :meth:`step` after every optimizer update (unit
    values are captured as :class:`plasticity_gym_agents.cbp.ContinualBackprop` captures them)."""

    config: ReDoConfig

    def reset_state(self) -> None:
        self.dormant = DormantUnits([g.n_units for g in self.groups], 1, self.config, self._device())
        self.capture.captured.clear()

    @property
    def count(self) -> int:
        """Updates since the last check."""
        return self.dormant.count

    @property
    def replacements(self) -> dict[str, int]:
        """Units re-initialised so far, per group."""
        return {g.name: int(n[0]) for g, n in zip(self.groups, self.dormant.replacements)}

    def state_dict(self) -> dict:
        return self.dormant.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dormant.load_state_dict(state)

    @torch.no_grad()
    def step(self, activations: dict[str, torch.Tensor] | None = None) -> dict[str, list[int]]:
        """One ReDo step after an update. Returns {group: re-initialised unit indices}."""
        return self._reinit(self.dormant.update(self.capture.values(activations)))
