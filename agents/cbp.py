"""Continual backpropagation (Dohare et al. 2024, Methods: Algorithm 1 and equation 1) on the
:class:`~plasticity_gym_agents.units.UnitGroup` declarations of any network (MLP, convnet, ResNet-18, PPO
nets), so it never needs to know the architecture. Use::

    cbp = ContinualBackprop(net.cbp_groups(), CBPConfig(...), optimizer=opt, generator=g)
    ...
    loss.backward(); opt.step(); cbp.step()      # after every update

Unit values h are captured by forward hooks on each group's ``activation`` module during
forwards run with gradients enabled (the training forward); code that runs its own forward
passes them explicitly: ``cbp.step({group.name: h, ...})``. The statistics and the choice of
units are :class:`plasticity_gym_agents.cbp_state.UnitStatistics`' (one replica per group), the surgery
:func:`plasticity_gym_agents.units.reinit_units`' — the learner core runs both over a replica axis.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from plasticity_gym_agents.cbp_state import UnitStatistics
from plasticity_gym_agents.config import CBPConfig
from plasticity_gym_agents.units import UnitGroup, reinit_units

__all__ = ["ActivationCapture", "ContinualBackprop", "UnitResets"]


class ActivationCapture:
    """Forward hooks that keep the latest training-forward output of each group's activation
    (probes and evaluation run without gradients: they are not captured)."""

    def __init__(self, groups: list[UnitGroup], hooks: bool = True) -> None:
        self.names = [g.name for g in groups]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"group names must be unique, got {self.names}")
        self.captured: dict[str, torch.Tensor] = {}
        for g in groups if hooks else ():
            g.activation.register_forward_hook(functools.partial(self._hook, g.name))

    def _hook(self, name: str, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self.captured[name] = output.detach()

    def values(self, activations: dict[str, torch.Tensor] | None) -> list[torch.Tensor]:
        """Each group's unit values with a replica axis of one, ``(1, batch, units, ...)``: from
        ``activations`` when given, else the captured ones (which are then cleared)."""
        acts = self.captured if activations is None else activations
        for name in self.names:
            if acts.get(name) is None:
                raise RuntimeError(f"no activation captured for group {name!r}; run the training forward "
                                   "with gradients enabled or pass activations explicitly")
        hs = [torch.as_tensor(acts[name])[None] for name in self.names]
        if activations is None:
            self.captured.clear()
        return hs


class UnitResets:
    """What CBP, ReDo and SNR share on a network's unit groups: the constructor, the captured unit
    values, and the re-initialisation (:func:`plasticity_gym_agents.units.reinit_units`, optimizer
    state included) of the units that a subclass's :meth:`step` decides on. A subclass builds its
    statistics in :meth:`reset_state`, which the constructor calls last."""

    def __init__(self, groups: list[UnitGroup], config: Any, *,
                 optimizer: torch.optim.Optimizer | None = None,
                 generator: torch.Generator | None = None, hooks: bool = True) -> None:
        self.groups = list(groups)
        self.config = config
        self.optimizer = optimizer
        self.generator = generator
        self.capture = ActivationCapture(self.groups, hooks)
        self.reset_state()

    def reset_state(self) -> None:
        raise NotImplementedError

    def _device(self) -> torch.device | str:
        return self.groups[0].producer.weight.device if self.groups else "cpu"

    def _reinit(self, decisions: Any) -> dict[str, list[int]]:
        """Re-initialise each ``(layer, _, unit indices)`` of ``decisions``; {group: indices}."""
        replaced: dict[str, list[int]] = {}
        for layer, _, idx in decisions:
            g = self.groups[layer]
            reinit_units(g, idx, optimizer=self.optimizer, generator=self.generator)
            replaced[g.name] = idx.tolist()
        return replaced


class ContinualBackprop(UnitResets):
    """Utility tracking and selective re-initialisation over declared unit groups.

    ``stats[name]``: each group's :class:`~plasticity_gym_agents.cbp_state.UnitStatistics` (one replica);
    ``replacements``: units replaced so far per group; ``steps``: calls of :meth:`step`.
    """

    @property
    def config(self) -> CBPConfig:
        return self._config

    @config.setter
    def config(self, config: CBPConfig) -> None:
        """A new config takes effect from the next step on."""
        self._config = config
        for stats in getattr(self, "stats", {}).values():  # none yet while __init__ runs
            stats.config = config

    def reset_state(self) -> None:
        """Utilities, running means, ages, accumulators and counters back to zero."""
        self.steps = 0
        self.stats = {g.name: UnitStatistics(self._config, 1, g.n_units, device=g.producer.weight.device,
                                             dtype=g.producer.weight.dtype) for g in self.groups}
        self.capture.captured.clear()

    @property
    def replacements(self) -> dict[str, int]:
        return {name: int(s.replacements[0]) for name, s in self.stats.items()}

    def ages(self, name: str) -> np.ndarray:
        """Every unit's age in group ``name`` (updates since it was created or last replaced)."""
        return self.stats[name].ages()[0]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "groups": {name: s.state_dict() for name, s in self.stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        groups = state["groups"]
        for name, s in self.stats.items():
            s.load_state_dict(groups[name])

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, activations: dict[str, torch.Tensor] | None = None) -> dict[str, list[int]]:
        """One CBP step after an optimizer update. Returns {group: replaced unit indices}."""
        self.steps += 1
        adaptable = self._config.utility != "contribution"
        replaced: dict[str, list[int]] = {}
        for g, h in zip(self.groups, self.capture.values(activations)):
            stats = self.stats[g.name]
            stats.update(h, g.outgoing_magnitude()[None], g.incoming_magnitude()[None] if adaptable else None)
            for _, idx in stats.due().items():
                reinit_units(g, idx, optimizer=self.optimizer, generator=self.generator,
                             unit_means=stats.expected_values(0, idx))
                stats.reset_units(0, idx)
                replaced[g.name] = idx.tolist()
        return replaced
