"""The bookkeeping of continual backpropagation, vectorised over replicas (SPEC §3).

One :class:`UnitStatistics` holds, for one group of hidden units in ``R`` independent replicas
of a network (``R = 1`` for an ordinary network, ``R = seeds`` for a lockstep learner), every
quantity Algorithm 1 keeps: the utility ``u`` (equation 1), the running mean activation ``ĥ``
(adaptable contribution), the ages, the replacement accumulator ``c`` and the replacement
count. It decides *which* units to replace; the network-specific surgery (redrawing incoming
weights, zeroing outgoing weights and optimizer slices) is done by the caller:
:func:`agents.units.reinit_units` for ``nn.Module`` networks, the lockstep learner's own
indexing for stacked weights. Both the module-based :class:`agents.cbp.ContinualBackprop` and
:class:`agents.lockstep.LockstepLearner` use this class, so the decision rule exists once.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.config import CBPConfig

__all__ = ["UnitStatistics"]


class UnitStatistics:
    """CBP statistics of ``n_units`` hidden units in each of ``n_replicas`` replicas.

    Attributes: ``utility`` and ``mean_act`` (``(R, n)`` tensors on the network's device),
    ``age`` (``(R, n)`` int64 tensor: updates since the unit was created or replaced),
    ``to_replace`` (``(R,)`` float64 numpy: the accumulator c) and ``replacements`` (``(R,)``
    int64 numpy).
    """

    def __init__(self, config: CBPConfig, n_replicas: int, n_units: int, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.config = config
        self.n_replicas = int(n_replicas)
        self.n_units = int(n_units)
        self.utility = torch.zeros(n_replicas, n_units, device=device, dtype=dtype)
        self.mean_act = torch.zeros(n_replicas, n_units, device=device, dtype=dtype)
        self.age = torch.zeros(n_replicas, n_units, device=device, dtype=torch.int64)
        self.to_replace = np.zeros(n_replicas, dtype=np.float64)
        self.replacements = np.zeros(n_replicas, dtype=np.int64)
        # Cache of eligible_counts() (a device sync + reduction per step otherwise): the counts
        # cannot change before an immature unit reaches maturity, i.e. for ``_eligible_ttl``
        # more updates; reset_units / load_state_dict drop it. (``age`` is written only here.)
        self._eligible: np.ndarray | None = None
        self._eligible_ttl = 0

    # -- reads ---------------------------------------------------------------------------------
    def _decay_power(self) -> torch.Tensor:
        """η^age for every unit (for the bias correction)."""
        return torch.pow(self.config.decay, self.age.to(self.utility.dtype))

    def corrected_utility(self) -> torch.Tensor:
        """The utility as CBP reads it: divided by (1 − η^age) when bias correction is on."""
        u = self.utility
        if not (self.config.running_average and self.config.bias_correction):
            return u
        denom = 1.0 - self._decay_power()
        return torch.where(denom > 0, u / denom.clamp_min(1e-12), u)

    def eligible_counts(self) -> np.ndarray:
        """Number of mature units (age > maturity) in each replica."""
        if self._eligible is None:
            maturity = self.config.maturity
            immature = self.age <= maturity
            counts = self.n_units - immature.sum(1)
            oldest = int(torch.where(immature, self.age, -1).max()) if immature.any() else -1
            self._eligible = counts.cpu().numpy()
            self._eligible_ttl = maturity - oldest if oldest >= 0 else 1 << 62
        return self._eligible.copy()

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, h: torch.Tensor, out_magnitude: torch.Tensor,
               in_magnitude: torch.Tensor | None = None) -> None:
        """Age every unit by one update and fold in this step's contribution.

        ``h``: the units' values, ``(R, M, n)`` over the ``M`` examples (× spatial positions) of
        the mini-batch; ``out_magnitude``: Σ_k |w_out,k| per unit, ``(R, n)``;
        ``in_magnitude``: Σ_j |w_in,j| per unit, needed by the adaptable contribution.
        """
        cfg = self.config
        eta = cfg.decay
        self.age.add_(1)
        if self._eligible is not None:
            self._eligible_ttl -= 1
            if self._eligible_ttl < 0:
                self._eligible = None
        if cfg.utility == "contribution":
            if h.shape[1] == 1:  # the mean over one example is the example
                inst = torch.mul(h.select(1, 0).abs(), out_magnitude)
            else:
                inst = h.abs().mean(1).mul_(out_magnitude)
        else:
            if in_magnitude is None:
                raise ValueError("the adaptable contribution needs in_magnitude")
            m = self.mean_act
            m.lerp_(h.mean(1), 1.0 - eta)
            m_hat = m / (1.0 - self._decay_power()) if cfg.bias_correction else m
            inst = (h - m_hat.unsqueeze(1)).abs_().mean(1).mul_(out_magnitude)
            inst.div_(in_magnitude.clamp_min(1e-12))
        if cfg.running_average:
            self.utility.lerp_(inst, 1.0 - eta)  # η·u + (1−η)·inst
        else:
            self.utility.copy_(inst)

    @torch.no_grad()
    def due(self) -> dict[int, torch.Tensor]:
        """Accumulate c += |eligible|·ρ and pick the units to replace now.

        Returns ``{replica: unit indices}`` for the replicas with a replacement due (usually
        none); the caller re-initialises those units and then calls :meth:`reset_units`.
        """
        n_eligible = self.eligible_counts()
        self.to_replace += n_eligible * self.config.replacement_rate
        if self.to_replace.max() < 1.0:  # the common case: nothing due
            return {}
        ready = np.flatnonzero((self.to_replace >= 1.0) & (n_eligible > 0))
        if ready.size == 0:
            return {}
        corrected = self.corrected_utility()
        mature = self.age > self.config.maturity
        out: dict[int, torch.Tensor] = {}
        for r in ready.tolist():
            k = int(self.to_replace[r])
            self.to_replace[r] -= k
            u = torch.where(mature[r], corrected[r], torch.full_like(corrected[r], float("inf")))
            out[r] = torch.topk(u, min(k, int(n_eligible[r])), largest=False).indices
        return out

    @torch.no_grad()
    def reset_units(self, replica: int, idx: torch.Tensor) -> None:
        """Utility, ĥ and age of re-initialised units back to zero."""
        self.utility[replica, idx] = 0
        self.mean_act[replica, idx] = 0
        self.age[replica, idx] = 0
        self.replacements[replica] += int(idx.numel())
        self._eligible = None

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "utility": self.utility.detach().cpu().clone(),
            "mean_act": self.mean_act.detach().cpu().clone(),
            "age": self.age.detach().cpu().clone(),
            "to_replace": self.to_replace.copy(),
            "replacements": self.replacements.copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("utility", "mean_act", "age"):
            value = torch.as_tensor(state[name])
            if tuple(value.shape) != (self.n_replicas, self.n_units):
                raise ValueError(f"CBP state {name!r} has shape {tuple(value.shape)}, expected "
                                 f"{(self.n_replicas, self.n_units)}")
            getattr(self, name).copy_(value)
        self._eligible = None
        self.to_replace[:] = np.asarray(state["to_replace"], dtype=np.float64)
        self.replacements[:] = np.asarray(state["replacements"], dtype=np.int64)
