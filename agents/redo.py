"""ReDo (Sokar et al., 2023): recycle dormant units, over the same unit-group declarations as CBP.

A unit's score is its mean |h| since the last check divided by the layer's average of that
mean; every ``period`` updates the units with score ≤ ``threshold`` are re-initialised exactly as
CBP replaces units (incoming redrawn, outgoing zero, optimizer state zeroed). The original method
scores one batch; with the online (batch-1) streams the scores are averaged over the period's
training batches instead, which is the same quantity for large batches and is not noise for tiny
ones.
"""

from __future__ import annotations

import torch

from agents.cbp import ActivationCapture, unit_mean
from agents.config import ReDoConfig
from agents.units import UnitGroup, reinit_units

__all__ = ["ReDo", "dormant"]


def dormant(sums: torch.Tensor, count: int, threshold: float | torch.Tensor) -> torch.Tensor:
    """ReDo's test over a replica axis: ``sums`` ``(R, n)`` of per-update mean |h| over ``count``
    updates → ``(R, n)`` bool, score ≤ threshold (``(R, 1)`` per replica, or a float), with
    score = mean |h| / the layer's average of it."""
    mean = sums / max(count, 1)
    return mean / mean.mean(1, keepdim=True).clamp_min(1e-12) <= threshold


class ReDo:
    def __init__(self, groups: list[UnitGroup], config: ReDoConfig, *,
                 optimizer: torch.optim.Optimizer | None = None,
                 generator: torch.Generator | None = None, hooks: bool = True) -> None:
        self.groups = list(groups)
        self.config = config
        self.optimizer = optimizer
        self.generator = generator
        self.capture = ActivationCapture(self.groups, hooks)
        self.reset_state()

    def reset_state(self) -> None:
        self.sums = {g.name: torch.zeros(g.n_units, device=g.producer.weight.device)
                     for g in self.groups}
        self.count = 0
        self.replacements = {g.name: 0 for g in self.groups}
        self.capture.captured.clear()

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu().clone() for k, v in self.sums.items()}, "count": self.count,
                "replacements": dict(self.replacements)}

    def load_state_dict(self, state: dict) -> None:
        for g in self.groups:
            self.sums[g.name] = state["sums"][g.name].to(g.producer.weight.device)
        self.count = int(state["count"])
        self.replacements = {k: int(v) for k, v in state["replacements"].items()}

    def scores(self) -> dict[str, torch.Tensor]:
        """Normalised activity s_i = mean|h_i| / mean_j mean|h_j| over the current period."""
        out = {}
        for g in self.groups:
            mean = self.sums[g.name] / max(self.count, 1)
            out[g.name] = mean / mean.mean().clamp_min(1e-12)
        return out

    @torch.no_grad()
    def step(self, activations: dict[str, torch.Tensor] | None = None) -> dict[str, list[int]]:
        for g in self.groups:
            h = self.capture.get(activations, g.name)
            if not torch.is_tensor(h):
                h = torch.from_numpy(h)
            self.sums[g.name] += unit_mean(h.abs())
        self.count += 1
        if activations is None:
            self.capture.captured.clear()
        replaced: dict[str, list[int]] = {}
        if self.count < self.config.period:
            return replaced
        for g in self.groups:
            name = g.name
            idx = torch.nonzero(dormant(self.sums[name][None], self.count, self.config.threshold)[0]).flatten()
            if idx.numel():
                reinit_units(g, idx, optimizer=self.optimizer, generator=self.generator)
                self.replacements[name] += int(idx.numel())
                replaced[name] = idx.tolist()
            self.sums[name].zero_()
        self.count = 0
        return replaced
