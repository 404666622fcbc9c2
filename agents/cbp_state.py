"""The bookkeeping of continual backpropagation, vectorised over replicas.

One :class:`UnitStatistics` holds what Algorithm 1 keeps for a group of hidden units in ``R``
replicas (1 for an ordinary network, one per seed in the learner core): utility (equation 1),
running mean activation ĥ, ages, replacement accumulator and count. It decides *which* units to
replace; :func:`plasticity_gym_agents.units.reinit_slices` replaces them.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from plasticity_gym_agents.arrays import NUMPY, TORCH
from plasticity_gym_agents.config import CBPConfig
from plasticity_gym_agents.optim import along, replica_scalar

__all__ = ["UnitStatistics"]


class UnitStatistics:
    """CBP statistics of ``n_units`` hidden units in each of ``n_replicas`` replicas.

    ``config``: one :class:`~plasticity_gym_agents.config.CBPConfig`, or one per replica, alike but for the
    replacement rate, maturity and decay. Attributes: ``utility`` and ``mean_act`` (ĥ; ``(R, n)``
    tensors on the network's device), ``to_replace`` (``(R,)`` float64 numpy: the accumulator c),
    ``replacements`` (``(R,)`` int64 numpy) and ``steps`` (updates so far); :meth:`ages`.
    """

    def __init__(self, config: CBPConfig | Sequence[CBPConfig], n_replicas: int, n_units: int, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.n_replicas = int(n_replicas)
        self.n_units = int(n_units)
        self.utility = torch.zeros(n_replicas, n_units, device=device, dtype=dtype)
        self.mean_act = torch.zeros(n_replicas, n_units, device=device, dtype=dtype)
        self.to_replace = np.zeros(n_replicas, dtype=np.float64)
        self.replacements = np.zeros(n_replicas, dtype=np.int64)
        # The utility tensor is only ever changed in place, so a numpy view of it stays valid.
        cpu = self.utility.device.type == "cpu"
        self._utility_np = self.utility.numpy() if cpu else None
        self._mean_act_np = self.mean_act.numpy() if cpu else None
        self.steps, self._births = 0, np.zeros((n_replicas, n_units), dtype=np.int64)
        self.config = config

    @property
    def config(self) -> CBPConfig:
        """Replica 0's config (the others differ at most in replacement rate, maturity and decay)."""
        return self.configs[0]

    @config.setter
    def config(self, config: CBPConfig | Sequence[CBPConfig]) -> None:
        """A new config, or one per replica, takes effect from now on."""
        configs = [config] * self.n_replicas if isinstance(config, CBPConfig) else list(config)
        if len(configs) != self.n_replicas:
            raise ValueError(f"got {len(configs)} CBP configs for {self.n_replicas} replicas")
        self.configs = configs
        self._rate = np.array([c.replacement_rate for c in configs], dtype=np.float64)
        self._maturity = np.array([c.maturity for c in configs], dtype=np.int64)
        decay = replica_scalar([c.decay for c in configs], self.utility.device)
        self._decay = along(decay, self.utility)  # a float, or (R, 1)
        self._decay_np = decay if isinstance(decay, float) else self._decay.cpu().numpy()
        self._set_ages(self.ages())

    # -- ages and the mature-unit counts ---------------------------------------------------------
    def _set_ages(self, ages: np.ndarray) -> None:
        """Start from the given ages: births, mature counts and the maturation queue."""
        maturity = self._maturity[:, None]
        self.steps = 0
        self._births = (-ages).astype(np.int64)  # host-side: decisions are made on the host
        self._eligible = np.count_nonzero(ages > maturity, axis=1).astype(np.int64)
        self._increment = self._eligible * self._rate
        # A heap of (step at which they mature, tiebreak, replica, units, their birth step).
        self._maturing: list[tuple[int, int, int, np.ndarray, int]] = []
        self._order = itertools.count()
        for r, birth in {(r, self._births[r, i]) for r, i in np.argwhere(ages <= maturity)}:
            self._schedule(int(r), np.flatnonzero(self._births[r] == birth), int(birth))

    def _schedule(self, replica: int, idx: np.ndarray, birth: int) -> None:
        step = birth + int(self._maturity[replica]) + 1
        heapq.heappush(self._maturing, (step, next(self._order), replica, idx, birth))

    def _advance(self) -> None:
        """One update later: every unit one step older; units reaching maturity now count."""
        self.steps += 1
        queue = self._maturing
        while queue and queue[0][0] <= self.steps:
            _, _, replica, idx, birth = heapq.heappop(queue)
            # Units replaced again before maturing have a later birth step and do not count.
            matured = int(np.count_nonzero(self._births[replica, idx] == birth))
            if matured:
                self._eligible[replica] += matured
                self._increment[replica] = self._eligible[replica] * self._rate[replica]

    def ages(self) -> np.ndarray:
        """Every unit's age (updates since it was created or replaced), ``(R, n)`` int64 numpy."""
        return self.steps - self._births

    def eligible_counts(self) -> np.ndarray:
        """Number of mature units (age > maturity) in each replica."""
        return self._eligible.copy()

    # -- reads ---------------------------------------------------------------------------------
    def _bias_corrected(self, values: np.ndarray, ages: np.ndarray, decay: float | np.ndarray) -> np.ndarray:
        """``values / (1 − η^age)`` where the age is above zero, else ``values`` (a new array)."""
        denom = 1.0 - np.power(np.asarray(decay, dtype=np.float32), ages.astype(np.float32))
        return np.divide(values, np.maximum(denom, np.float32(1e-12)), out=values.copy(), where=denom > 0)

    def corrected_utility(self) -> torch.Tensor:
        """The utility as CBP reads it: divided by (1 − η^age) when bias correction is on."""
        if not (self.config.running_average and self.config.bias_correction):
            return self.utility
        u = self._bias_corrected(self.utility.cpu().numpy(), self.ages(), self._decay_np)
        return torch.from_numpy(u).to(self.utility.device)

    # -- the step ------------------------------------------------------------------------------
    def update(self, h: torch.Tensor | np.ndarray, out_magnitude: torch.Tensor | np.ndarray,
               in_magnitude: torch.Tensor | np.ndarray | None = None) -> None:
        """Age every unit by one update and fold in this step's contribution.

        ``h``: the units' values, ``(R, M, n)`` over the ``M`` examples of the mini-batch, or
        ``(R, B, n, *spatial)`` (averaged over examples and positions); ``out_magnitude``:
        Σ_k |w_out,k| per unit, ``(R, n)``; ``in_magnitude``: Σ_j |w_in,j| per unit, needed by
        the adaptable contribution. On the CPU it runs in numpy on the tensors' memory.
        """
        cfg = self.config
        self._advance()
        numpy = self._utility_np is not None
        xp, u, m, eta = ((NUMPY, self._utility_np, self._mean_act_np, self._decay_np) if numpy else
                         (TORCH, self.utility, self.mean_act, self._decay))

        def array(a: Any) -> Any:
            if numpy:
                return a if isinstance(a, np.ndarray) else a.detach().numpy()
            return torch.as_tensor(a, device=self.utility.device)

        h, out_magnitude = array(h), array(out_magnitude)
        adaptable = cfg.utility != "contribution"
        if adaptable or cfg.next_layer_bias_correction:
            _running_average(m, xp.unit_mean(h), eta)  # ĥ
        if adaptable:
            if in_magnitude is None:
                raise ValueError("the adaptable contribution needs in_magnitude")
            m_hat = m
            if cfg.bias_correction:
                m_hat = array(self._bias_corrected(m if numpy else m.cpu().numpy(), self.ages(), self._decay_np))
            inst = xp.unit_mean(abs(h - m_hat.reshape(*m.shape[:1], 1, m.shape[1], *(1,) * (h.ndim - 3))))
            inst *= out_magnitude
            inst /= xp.clamp_min(array(in_magnitude), 1e-12)
        else:
            inst = xp.unit_mean(abs(h))
            inst *= out_magnitude
        if cfg.running_average:
            _running_average(u, inst, eta)
        else:
            u[...] = inst

    def due(self) -> dict[int, torch.Tensor]:
        """Accumulate c += |eligible|·ρ and pick the units to replace now: ``{replica: unit
        indices}`` (usually empty); the caller replaces them, then calls :meth:`reset_units`."""
        self.to_replace += self._increment
        if self.to_replace.max() < 1.0:  # the common case: nothing due
            return {}
        n_eligible = self._eligible
        ready = np.flatnonzero((self.to_replace >= 1.0) & (n_eligible > 0))
        out: dict[int, torch.Tensor] = {}
        for r in ready.tolist():
            k = int(self.to_replace[r])
            self.to_replace[r] -= k
            out[r] = self._lowest_mature(r, min(k, int(n_eligible[r])))
        return out

    def _lowest_mature(self, replica: int, k: int) -> torch.Tensor:
        """The ``k`` mature units of ``replica`` with the smallest corrected utility (ties: the
        lower index first), decided on the host."""
        ages = self.steps - self._births[replica]
        cfg = self.configs[replica]
        u = self.utility[replica].cpu().numpy()
        u = self._bias_corrected(u, ages, cfg.decay) if cfg.running_average and cfg.bias_correction else u.copy()
        u[ages <= cfg.maturity] = np.inf
        return torch.from_numpy(np.argsort(u, kind="stable")[:k]).to(self.utility.device)

    def expected_values(self, replica: int, idx: torch.Tensor | np.ndarray) -> torch.Tensor | None:
        """The bias-corrected mean activations ĥ/(1 − η^age) of units ``idx`` of ``replica``
        (read before :meth:`reset_units`), for the next-layer bias correction; ``None`` when
        ``config.next_layer_bias_correction`` is off."""
        if not self.config.next_layer_bias_correction:
            return None
        rows = idx.cpu().numpy() if torch.is_tensor(idx) else np.asarray(idx)
        means = self.mean_act[replica].cpu().numpy()[rows]  # zero at age 0 (fresh or reset)
        means = self._bias_corrected(means, self.ages()[replica, rows], self.configs[replica].decay)
        return torch.from_numpy(means).to(self.mean_act.device)

    def reset_units(self, replica: int, idx: torch.Tensor | np.ndarray) -> None:
        """Utility, ĥ and age of re-initialised units back to zero."""
        idx_np = np.unique(idx.cpu().numpy() if torch.is_tensor(idx) else np.asarray(idx, dtype=np.int64))
        was_mature = int(np.count_nonzero(self.steps - self._births[replica, idx_np] > self._maturity[replica]))
        self._eligible[replica] -= was_mature
        self._increment[replica] = self._eligible[replica] * self._rate[replica]
        self._births[replica, idx_np] = self.steps
        self._schedule(replica, idx_np, self.steps)
        if self._utility_np is not None:
            self._utility_np[replica, idx_np] = 0
            self._mean_act_np[replica, idx_np] = 0
        else:
            idx_t = torch.from_numpy(idx_np).to(self.utility.device)
            self.utility[replica, idx_t] = 0
            self.mean_act[replica, idx_t] = 0
        self.replacements[replica] += int(idx_np.size)

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "utility": self.utility.detach().cpu().clone(),
            "mean_act": self.mean_act.detach().cpu().clone(),
            "age": torch.from_numpy(self.ages().copy()),
            "to_replace": self.to_replace.copy(),
            "replacements": self.replacements.copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("utility", "mean_act", "age"):
            value = torch.as_tensor(state[name])
            if tuple(value.shape) != (self.n_replicas, self.n_units):
                raise ValueError(f"CBP state {name!r} has shape {tuple(value.shape)}, expected "
                                 f"{(self.n_replicas, self.n_units)}")
        self.utility.copy_(torch.as_tensor(state["utility"]))
        self.mean_act.copy_(torch.as_tensor(state["mean_act"]))
        self._set_ages(torch.as_tensor(state["age"]).numpy().astype(np.int64))
        self.to_replace[:] = np.asarray(state["to_replace"], dtype=np.float64)
        self.replacements[:] = np.asarray(state["replacements"], dtype=np.int64)


def _running_average(average: Any, x: Any, decay: Any) -> None:
    """``average ← η·average + (1 − η)·x`` in place (η a float or ``(R, 1)``)."""
    average *= decay
    average += (1.0 - decay) * x
