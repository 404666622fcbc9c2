"""Continual backpropagation: the one implementation (Dohare et al. 2024, Methods: Algorithm 1
and equation 1).

It works on the :class:`~agents.units.UnitGroup` declarations of any network (MLP, convnet,
ResNet-18, PPO nets), so it never needs to know the architecture. Use::

    cbp = ContinualBackprop(net.cbp_groups(), CBPConfig(...), optimizer=opt, generator=g)
    ...
    loss.backward(); opt.step(); cbp.step()      # after every update

Unit values h are captured by forward hooks on each group's ``activation`` module during
forward passes run with gradients enabled (the training forward); code that runs its own
forward (a lockstep learner, a PPO update that wants a specific mini-batch) passes them
explicitly: ``cbp.step({group.name: h, ...})``.

Per step and group (vectorised; no Python loop over units unless a replacement is due):
age += 1; u ← η·u + (1−η)·y with y the batch-mean contribution |h|·Σ_k|w_out,k| (conv: mean
over batch and positions) or, for ``adaptable_contribution``, |h − ĥ|·Σ|w_out| / Σ|w_in| with ĥ a
running mean of h; eligible = age > maturity; c += |eligible|·ρ; while c ≥ 1 the eligible unit
with the smallest (bias-corrected) utility is re-initialised by :func:`agents.units.reinit_units`:
fresh incoming weights, zero bias, zero outgoing weights, zeroed optimizer state of every slice
touched. The new unit contributes nothing to the outputs; the old unit's contribution is
removed, so the outputs change by it, unless ``next_layer_bias_correction`` is on, which first
folds the old unit's bias-corrected mean activation times its outgoing weights into the
consumers' biases (the expected output is kept; a consumer without a bias, such as a conv
followed by BatchNorm, is left as it is).
"""

from __future__ import annotations

import numpy as np
import torch

from agents.cbp_state import UnitStatistics
from agents.config import CBPConfig
from agents.units import UnitGroup, reinit_units

__all__ = ["ActivationCapture", "ContinualBackprop", "unit_mean"]


def unit_mean(h: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the unit dimension 1: (B, n, *spatial) → (n,)."""
    if h.dim() == 2:
        return h.mean(0)
    return h.transpose(0, 1).reshape(h.shape[1], -1).mean(1)


class ActivationCapture:
    """Forward hooks that keep the latest training-forward output of each group's activation."""

    def __init__(self, groups: list[UnitGroup], hooks: bool = True) -> None:
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        self.captured: dict[str, torch.Tensor] = {}
        self._handles = []
        if hooks:
            for g in groups:
                self._handles.append(g.activation.register_forward_hook(self._make_hook(g.name)))

    def _make_hook(self, name: str):
        def hook(_module, _inputs, output):
            # Only the training forward counts (probes and evaluation run without gradients).
            if torch.is_grad_enabled():
                self.captured[name] = output.detach()

        return hook

    def get(self, activations: dict[str, torch.Tensor] | None, name: str) -> torch.Tensor:
        acts = self.captured if activations is None else activations
        h = acts.get(name)
        if h is None:
            raise RuntimeError(
                f"no activation captured for group {name!r}; run the training forward with "
                "gradients enabled or pass activations explicitly"
            )
        return h

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class ContinualBackprop:
    """Utility tracking and selective re-initialisation over declared unit groups.

    The statistics of each group are one :class:`agents.cbp_state.UnitStatistics` with a single
    replica (``stats[name]``), the same class the lockstep learner runs with one replica per
    seed. Read-only views per group name: ``utility`` (raw running average), ``mean_act`` (ĥ),
    ``to_replace`` (the accumulator c), ``replacements``, and ``ages(name)``; ``steps`` counts
    calls.
    """

    def __init__(self, groups: list[UnitGroup], config: CBPConfig, *,
                 optimizer: torch.optim.Optimizer | None = None,
                 generator: torch.Generator | None = None, hooks: bool = True) -> None:
        self.groups = list(groups)
        self.optimizer = optimizer
        self.generator = generator
        self.capture = ActivationCapture(self.groups, hooks)
        self._config = config
        self.reset_state()

    @property
    def config(self) -> CBPConfig:
        return self._config

    @config.setter
    def config(self, config: CBPConfig) -> None:
        self._config = config
        for stats in self.stats.values():
            stats.config = config

    # -- state ---------------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Utilities, running means, ages, accumulators and counters back to zero."""
        self.steps = 0
        self.stats: dict[str, UnitStatistics] = {}
        for g in self.groups:
            w = g.producer.weight
            self.stats[g.name] = UnitStatistics(self._config, 1, g.n_units, device=w.device, dtype=w.dtype)
        self.capture.captured.clear()

    @property
    def utility(self) -> dict[str, torch.Tensor]:
        return {name: s.utility[0] for name, s in self.stats.items()}

    @property
    def mean_act(self) -> dict[str, torch.Tensor]:
        return {name: s.mean_act[0] for name, s in self.stats.items()}

    @property
    def to_replace(self) -> dict[str, float]:
        return {name: float(s.to_replace[0]) for name, s in self.stats.items()}

    @property
    def replacements(self) -> dict[str, int]:
        return {name: int(s.replacements[0]) for name, s in self.stats.items()}

    def ages(self, name: str) -> np.ndarray:
        """Every unit's age (updates since it was created or last replaced)."""
        return self.stats[name].ages()[0]

    def corrected_utility(self, name: str) -> torch.Tensor:
        """The utility as CBP reads it: divided by (1 − η^age) when bias correction is on."""
        return self.stats[name].corrected_utility()[0]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "groups": {name: s.state_dict() for name, s in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        groups = state["groups"]
        for name, s in self.stats.items():
            s.load_state_dict(groups[name])

    def remove_hooks(self) -> None:
        self.capture.remove()

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, activations: dict[str, torch.Tensor] | None = None) -> dict[str, list[int]]:
        """One CBP step after an optimizer update. Returns {group: replaced unit indices}."""
        self.steps += 1
        adaptable = self._config.utility != "contribution"
        replaced: dict[str, list[int]] = {}
        for g in self.groups:
            h = self.capture.get(activations, g.name)
            stats = self.stats[g.name]
            out_mag = g.outgoing_magnitude()
            stats.update(h[None], out_mag[None], g.incoming_magnitude()[None] if adaptable else None)
            due = stats.due()
            if due:
                idx = due[0]
                reinit_units(g, idx, optimizer=self.optimizer, generator=self.generator,
                             unit_means=stats.expected_values(0, idx))
                stats.reset_units(0, idx)
                replaced[g.name] = idx.tolist()
        if activations is None:
            self.capture.captured.clear()
        return replaced
