"""Self-normalized resets (Farias and Jozefiak 2024, "Self-Normalized Resets for Plasticity in
Continual Learning", ICLR 2025, arXiv:2410.20098), over the same unit-group declarations as CBP.

A unit *fires* on an update when its value is > 0 for at least one example (and position) of
the mini-batch. SNR tests, after every update, the hypothesis that a silent unit is still alive:
if it fires independently with probability μ per update, a run of ``a`` silent updates has
probability ``(1 − μ)^a`` (a geometric waiting time), and the unit is reset when that is below
``1 − percentile`` — its inactivity exceeds the ``percentile`` quantile its own rate predicts, so
rarely-firing units get proportionally longer. The rate is estimated from the unit's life up to
its last firing (the current silent run is what is tested, so it is left out):
``μ = (F + 1) / (S + 2)`` with ``F`` firings in the ``S`` updates from the unit's birth (or last
reset) to its last firing — Laplace's rule, so a unit that has not fired yet is tested against
μ = 1/2. (The authors' released code estimates each unit's waiting-time quantile from a
histogram of its past waiting times instead, updated every few tasks; the test is the same.)

A reset is CBP's (:func:`plasticity_gym_agents.units.reinit_slices`): fresh incoming weights,
zero bias and outgoing weights, the optimizer state of those slices zeroed, a normalisation
layer's scale and shift back to 1 and 0. :class:`FiringStatistics` is the bookkeeping over a
replica axis (the learner core runs it for all seeds at once); :class:`SelfNormalizedResets`
applies it to any network's groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from plasticity_gym_agents.cbp import UnitResets
from plasticity_gym_agents.config import SNRConfig

__all__ = ["FiringStatistics", "SelfNormalizedResets", "fired"]


def fired(h: torch.Tensor | np.ndarray) -> np.ndarray:
    """Which units fired: ``h`` ``(R, batch, n, *rest)`` → ``(R, n)`` bool numpy, True where the
    unit's value is > 0 for some example and some position (``rest``: conv positions, or a CReLU
    unit's two outputs)."""
    if torch.is_tensor(h):
        h = h.detach()
        if h.is_cpu:
            h = h.numpy()  # numpy's reductions on small arrays cost a fraction of torch's
        else:
            top = h.flatten(3).amax(3) if h.dim() > 3 else h
            return (top.amax(1) > 0).cpu().numpy()
    if h.ndim > 3:
        h = h.reshape(*h.shape[:3], -1).max(3)
    return (h[:, 0] if h.shape[1] == 1 else h.max(1)) > 0


class FiringStatistics:
    """SNR's bookkeeping for groups of ``widths[l]`` units in each of ``n_replicas`` replicas
    (host-side int64 arrays ``(R, n)`` per group): ``fires`` (firings since birth), ``born`` and
    ``last`` (the update of birth or last reset, and of the last firing; ``born`` before the
    first), ``limit`` (the longest silent run the unit's rate makes plausible) and
    ``replacements`` ``(groups, R)``. ``config``: one, or one per replica (percentiles may differ)."""

    def __init__(self, widths: Sequence[int], n_replicas: int, config: SNRConfig | Sequence[SNRConfig],
                 device: torch.device | str = "cpu") -> None:
        configs = [config] * n_replicas if isinstance(config, SNRConfig) else list(config)
        if len(configs) != n_replicas:
            raise ValueError(f"got {len(configs)} SNR configs for {n_replicas} replicas")
        # log(1 − percentile) per replica, (R, 1): a unit is reset when a·log(1 − μ) < this
        self.log_tail = np.log1p(-np.array([c.percentile for c in configs], dtype=np.float64))[:, None]
        self.device = torch.device(device)
        self.steps = 0
        shape = [(n_replicas, int(w)) for w in widths]
        self.fires = [np.zeros(s, dtype=np.int64) for s in shape]
        self.born = [np.zeros(s, dtype=np.int64) for s in shape]
        self.last = [np.zeros(s, dtype=np.int64) for s in shape]
        self.limit = [np.zeros(s, dtype=np.float64) for s in shape]
        self.replacements = np.zeros((len(shape), n_replicas), dtype=np.int64)
        for layer in range(len(shape)):
            self._set_limits(layer)

    def rates(self, layer: int) -> np.ndarray:
        """Each unit's estimated firing probability per update, ``(F + 1) / (S + 2)``."""
        return (self.fires[layer] + 1.0) / (self.last[layer] - self.born[layer] + 2.0)

    def silent(self, layer: int) -> np.ndarray:
        """Each unit's current run of updates without firing (since its birth if it never fired)."""
        return self.steps - self.last[layer]

    def _set_limits(self, layer: int) -> None:
        # (1 − μ)^a < 1 − percentile  ⇔  a > log(1 − percentile) / log(1 − μ)   (μ < 1 always)
        self.limit[layer] = self.log_tail / np.log1p(-self.rates(layer))

    def update(self, hs: Sequence[torch.Tensor | np.ndarray]) -> list[tuple[int, int, torch.Tensor]]:
        """Fold in one update's unit values (``hs[l]``: ``(R, batch, n, *rest)``) and return the
        units to reset now as ``(group, replica, units)``; their statistics restart (born now)."""
        self.steps += 1
        t = self.steps
        due_all = []
        for layer, h in enumerate(hs):
            on = fired(h)
            if on.any():
                self.fires[layer] += on
                np.copyto(self.last[layer], t, where=on)
                self._set_limits(layer)
            due = self.silent(layer) > self.limit[layer]
            if not due.any():
                continue
            for replica in np.flatnonzero(due.any(1)).tolist():
                idx = np.flatnonzero(due[replica])
                due_all.append((layer, replica, torch.from_numpy(idx).to(self.device)))
                self.replacements[layer, replica] += idx.size
                for a in (self.born, self.last):
                    a[layer][replica, idx] = t
                self.fires[layer][replica, idx] = 0
            self._set_limits(layer)
        return due_all

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "fires": [a.copy() for a in self.fires], "born": [a.copy() for a in self.born],
                "last": [a.copy() for a in self.last], "replacements": self.replacements.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("fires", "born", "last"):
            for dst, src in zip(getattr(self, name), state[name]):
                if tuple(np.shape(src)) != dst.shape:
                    raise ValueError(f"SNR state {name!r} has shape {tuple(np.shape(src))}, expected {dst.shape}")
                dst[...] = np.asarray(src)
        self.steps = int(state["steps"])
        self.replacements[...] = np.asarray(state["replacements"])
        for layer in range(len(self.fires)):
            self._set_limits(layer)


class SelfNormalizedResets(UnitResets):
    """SNR on a network's unit groups: call :meth:`step` after every optimizer update (unit values
    are captured as :class:`plasticity_gym_agents.cbp.ContinualBackprop` captures them, or passed)."""

    config: SNRConfig

    def reset_state(self) -> None:
        self.stats = FiringStatistics([g.n_units for g in self.groups], 1, self.config, self._device())
        self.capture.captured.clear()

    @property
    def replacements(self) -> dict[str, int]:
        """Units reset so far, per group."""
        return {g.name: int(n[0]) for g, n in zip(self.groups, self.stats.replacements)}

    def state_dict(self) -> dict[str, Any]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)

    @torch.no_grad()
    def step(self, activations: dict[str, torch.Tensor] | None = None) -> dict[str, list[int]]:
        """One SNR step after an update. Returns {group: reset unit indices}."""
        return self._reinit(self.stats.update(self.capture.values(activations)))
