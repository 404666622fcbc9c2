"""The bookkeeping of continual backpropagation, vectorised over replicas.

One :class:`UnitStatistics` holds, for one group of hidden units in ``R`` independent replicas
of a network (``R = 1`` for an ordinary network, ``R = seeds`` for a lockstep learner), every
quantity Algorithm 1 keeps: the utility ``u`` (equation 1), the running mean activation ``ĥ``
(adaptable contribution), the ages, the replacement accumulator ``c`` and the replacement
count. It decides *which* units to replace; the network-specific surgery (redrawing incoming
weights, zeroing outgoing weights and optimizer slices) is done by the caller:
:func:`agents.units.reinit_units` for ``nn.Module`` networks, the lockstep learner's own
indexing for stacked weights. Both :class:`agents.cbp.ContinualBackprop` (one replica per
group) and :class:`agents.lockstep.LockstepLearner` (one replica per seed) use this class, so
the decision rule exists once.

The common step (no replacement due) costs a handful of small array operations: ages are kept
as birth steps (age = steps − birth), the number of mature units per replica is kept up to
date from a queue of the steps at which young units mature, and on the CPU the utility
arithmetic runs in numpy on views of the tensors' memory (numpy's per-call overhead is a
fraction of torch's for arrays this small).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from agents.config import CBPConfig

__all__ = ["UnitStatistics"]


class UnitStatistics:
    """CBP statistics of ``n_units`` hidden units in each of ``n_replicas`` replicas.

    Attributes: ``utility`` and ``mean_act`` (``(R, n)`` tensors on the network's device; ``mean_act``
    is ĥ, kept for the adaptable contribution and for the next-layer bias correction),
    ``age`` (``(R, n)`` int64 tensor, read-only: updates since the unit was created or
    replaced), ``to_replace`` (``(R,)`` float64 numpy: the accumulator c), ``replacements``
    (``(R,)`` int64 numpy) and ``steps`` (updates so far).
    """

    def __init__(self, config: CBPConfig, n_replicas: int, n_units: int, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self._config = config
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
        self._set_ages(np.zeros((n_replicas, n_units), dtype=np.int64))

    @property
    def config(self) -> CBPConfig:
        return self._config

    @config.setter
    def config(self, config: CBPConfig) -> None:
        """A new config (e.g. another replacement rate or maturity) takes effect from now on."""
        self._config = config
        self._set_ages(self.ages())

    # -- ages and the mature-unit counts ---------------------------------------------------------
    def _set_ages(self, ages: np.ndarray) -> None:
        """Start from the given ages: births, mature counts and the maturation queue."""
        maturity = self.config.maturity
        self.steps = 0
        self._births = (-ages).astype(np.int64)  # host-side: decisions are made on the host
        self._eligible = np.count_nonzero(ages > maturity, axis=1).astype(np.int64)
        self._increment = self._eligible * self.config.replacement_rate
        # (step at which they mature, replica, units, their birth step), in step order.
        self._maturing: deque[tuple[int, int, np.ndarray, int]] = deque()
        young = np.argwhere(ages <= maturity)
        if young.size:
            births = self._births[young[:, 0], young[:, 1]]
            order = np.lexsort((young[:, 0], births))
            young, births = young[order], births[order]
            keys = np.stack([births, young[:, 0]], 1)
            starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(1)])
            for s, e in zip(starts, np.r_[starts[1:], len(young)]):
                birth, replica = int(births[s]), int(young[s, 0])
                self._maturing.append((birth + maturity + 1, replica, young[s:e, 1].copy(), birth))

    def _advance(self) -> None:
        """One update later: every unit one step older; units reaching maturity now count."""
        self.steps += 1
        queue = self._maturing
        while queue and queue[0][0] <= self.steps:
            _, replica, idx, birth = queue.popleft()
            # Units replaced again before maturing have a later birth step and do not count.
            matured = int(np.count_nonzero(self._births[replica, idx] == birth))
            if matured:
                self._eligible[replica] += matured
                self._increment[replica] = self._eligible[replica] * self.config.replacement_rate

    @property
    def age(self) -> torch.Tensor:
        """Every unit's age, ``(R, n)`` int64 on the statistics' device."""
        return torch.from_numpy(self.ages()).to(self.utility.device)

    def ages(self) -> np.ndarray:
        """Every unit's age, ``(R, n)`` int64 numpy."""
        return self.steps - self._births

    def eligible_counts(self) -> np.ndarray:
        """Number of mature units (age > maturity) in each replica."""
        return self._eligible.copy()

    # -- reads ---------------------------------------------------------------------------------
    def _decay_power(self) -> torch.Tensor:
        """η^age for every unit (for the bias correction)."""
        ages = torch.from_numpy(self.ages()).to(device=self.utility.device, dtype=self.utility.dtype)
        return torch.pow(self.config.decay, ages)

    def corrected_utility(self) -> torch.Tensor:
        """The utility as CBP reads it: divided by (1 − η^age) when bias correction is on."""
        u = self.utility
        if not (self.config.running_average and self.config.bias_correction):
            return u
        denom = 1.0 - self._decay_power()
        return torch.where(denom > 0, u / denom.clamp_min(1e-12), u)

    # -- the step ------------------------------------------------------------------------------
    def update(self, h: torch.Tensor | np.ndarray, out_magnitude: torch.Tensor | np.ndarray,
               in_magnitude: torch.Tensor | None = None) -> None:
        """Age every unit by one update and fold in this step's contribution.

        ``h``: the units' values, ``(R, M, n)`` over the ``M`` examples of the mini-batch, or
        ``(R, B, n, *spatial)`` (averaged over examples and positions); ``out_magnitude``:
        Σ_k |w_out,k| per unit, ``(R, n)``; ``in_magnitude``: Σ_j |w_in,j| per unit, needed by
        the adaptable contribution. numpy arrays are accepted on the CPU.
        """
        cfg = self.config
        self._advance()
        if cfg.utility == "contribution" and self._utility_np is not None and h.ndim == 3:
            h_np = _as_numpy(h)
            self._update_contribution_numpy(h_np, _as_numpy(out_magnitude))
            if cfg.next_layer_bias_correction:
                m = self._mean_act_np  # ĥ ← η·ĥ + (1−η)·mean h, for the next-layer correction
                m *= cfg.decay
                m += (1.0 - cfg.decay) * (h_np[:, 0] if h_np.shape[1] == 1 else h_np.mean(1))
            return
        with torch.no_grad():
            self._update_torch(torch.as_tensor(h, device=self.utility.device),
                               torch.as_tensor(out_magnitude, device=self.utility.device), in_magnitude)

    def _update_torch(self, h: torch.Tensor, out_magnitude: torch.Tensor,
                      in_magnitude: torch.Tensor | None) -> None:
        cfg = self.config
        eta = cfg.decay
        dims = [1, *range(3, h.dim())]
        if cfg.utility == "contribution":
            if cfg.next_layer_bias_correction:
                self.mean_act.lerp_(h.mean(dims), 1.0 - eta)
            if h.dim() == 3 and h.shape[1] == 1:  # the mean over one example is the example
                inst = torch.mul(h.select(1, 0).abs(), out_magnitude)
            else:
                inst = h.abs().mean(dims).mul_(out_magnitude)
        else:
            if in_magnitude is None:
                raise ValueError("the adaptable contribution needs in_magnitude")
            m = self.mean_act
            m.lerp_(h.mean(dims), 1.0 - eta)
            m_hat = m / (1.0 - self._decay_power()) if cfg.bias_correction else m
            shape = (*m_hat.shape[:1], 1, m_hat.shape[1]) + (1,) * (h.dim() - 3)
            inst = (h - m_hat.view(shape)).abs_().mean(dims).mul_(out_magnitude)
            inst.div_(torch.as_tensor(in_magnitude, device=inst.device).clamp_min(1e-12))
        if cfg.running_average:
            self.utility.lerp_(inst, 1.0 - eta)  # η·u + (1−η)·inst
        else:
            self.utility.copy_(inst)

    def _update_contribution_numpy(self, h: np.ndarray, out_magnitude: np.ndarray) -> None:
        """The contribution utility, in numpy on the utility's memory (CPU)."""
        inst = np.abs(h[:, 0]) if h.shape[1] == 1 else np.abs(h).mean(1, dtype=h.dtype)
        inst *= out_magnitude
        u = self._utility_np
        if self.config.running_average:
            eta = self.config.decay
            u *= eta  # η·u + (1−η)·inst
            inst *= 1.0 - eta
            u += inst
        else:
            u[...] = inst

    def due(self) -> dict[int, torch.Tensor]:
        """Accumulate c += |eligible|·ρ and pick the units to replace now.

        Returns ``{replica: unit indices}`` for the replicas with a replacement due (usually
        none); the caller re-initialises those units and then calls :meth:`reset_units`.
        """
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
        lower index first)."""
        ages = self.steps - self._births[replica]
        cfg = self.config
        if self._utility_np is not None:  # CPU: a few numpy calls on one row
            u = self._utility_np[replica].copy()
            if cfg.running_average and cfg.bias_correction:
                denom = 1.0 - np.power(np.float32(cfg.decay), ages.astype(np.float32))
                np.divide(u, np.maximum(denom, np.float32(1e-12)), out=u, where=denom > 0)
            u[ages <= cfg.maturity] = np.inf
            return torch.from_numpy(np.argsort(u, kind="stable")[:k])
        with torch.no_grad():
            u = self.utility[replica]
            ages_t = torch.from_numpy(ages).to(device=u.device, dtype=u.dtype)
            if cfg.running_average and cfg.bias_correction:
                denom = 1.0 - torch.pow(cfg.decay, ages_t)
                u = torch.where(denom > 0, u / denom.clamp_min(1e-12), u)
            u = torch.where(ages_t > cfg.maturity, u, torch.full_like(u, float("inf")))
            return torch.sort(u, stable=True).indices[:k]

    @torch.no_grad()
    def expected_values(self, replica: int, idx: torch.Tensor | np.ndarray) -> torch.Tensor | None:
        """The bias-corrected mean activations ĥ/(1 − η^age) of units ``idx`` of ``replica``
        (read before :meth:`reset_units`), for the next-layer bias correction; ``None`` when
        ``config.next_layer_bias_correction`` is off."""
        if not self.config.next_layer_bias_correction:
            return None
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.mean_act.device)
        ages = torch.as_tensor(self.ages()[replica], device=self.mean_act.device)[idx_t]
        denom = 1.0 - torch.pow(self.config.decay, ages.to(self.mean_act.dtype))
        means = self.mean_act[replica, idx_t]
        return torch.where(denom > 0, means / denom.clamp_min(1e-12), torch.zeros_like(means))

    @torch.no_grad()
    def reset_units(self, replica: int, idx: torch.Tensor | np.ndarray) -> None:
        """Utility, ĥ and age of re-initialised units back to zero."""
        idx_np = np.unique(idx.cpu().numpy() if torch.is_tensor(idx) else np.asarray(idx, dtype=np.int64))
        was_mature = int(np.count_nonzero(self.steps - self._births[replica, idx_np] > self.config.maturity))
        self._eligible[replica] -= was_mature
        self._increment[replica] = self._eligible[replica] * self.config.replacement_rate
        self._births[replica, idx_np] = self.steps
        self._maturing.append((self.steps + self.config.maturity + 1, replica, idx_np, self.steps))
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


def _as_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.detach().numpy()
