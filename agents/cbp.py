"""Continual backpropagation: the one implementation (SPEC §3, Algorithm 1, equation 1).

It works on the :class:`~agents.units.UnitGroup` declarations of any network (MLP, convnet,
ResNet-18, PPO nets), so it never needs to know the architecture. Use::

    cbp = ContinualBackprop(net.cbp_groups(), CBPConfig(...), optimizer=opt, generator=g)
    ...
    loss.backward(); opt.step(); cbp.step()      # after every update

Unit values h are captured by forward hooks on each group's ``activation`` module during
forward passes run with gradients enabled (the training forward); code that runs its own
forward (the MLP's hand-written fast path, a lockstep learner, a PPO update that wants a
specific mini-batch) passes them explicitly: ``cbp.step({group.name: h, ...})``.

Per step and group (vectorised; no Python loop over units unless a replacement is due):
age += 1; u ← η·u + (1−η)·y with y the batch-mean contribution |h|·Σ_k|w_out,k| (conv: mean
over batch and positions) or, for ``adaptable_contribution``, |h − ĥ|·Σ|w_out| / Σ|w_in| with ĥ a
running mean of h; eligible = age > maturity; c += |eligible|·ρ; while c ≥ 1 the eligible unit
with the smallest (bias-corrected) utility is re-initialised by :func:`agents.units.reinit_units`.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from agents.config import CBPConfig
from agents.units import UnitGroup, reinit_units

__all__ = ["ActivationCapture", "ContinualBackprop", "unit_mean"]


def unit_mean(h: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the unit dimension 1: (B, n, *spatial) → (n,)."""
    if h.dim() == 2:
        return h.mean(0)
    return h.transpose(0, 1).reshape(h.shape[1], -1).mean(1)


def _all_plain_linear(g: UnitGroup) -> bool:
    return g.producer.weight.device.type == "cpu" and g.producer.weight.dtype == torch.float32 and all(
        isinstance(c.module, torch.nn.Linear) and c.positions == 1 for c in g.consumers)


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

    Attributes (per group name): ``utility`` (raw running average, device tensor), ``mean_act``
    (ĥ, for the adaptable utility), ``births`` (numpy int64; ``ages(name)`` = steps − births),
    ``to_replace`` (the accumulator c), ``replacements`` (count so far). ``steps`` counts calls.
    """

    def __init__(self, groups: list[UnitGroup], config: CBPConfig, *,
                 optimizer: torch.optim.Optimizer | None = None,
                 generator: torch.Generator | None = None, hooks: bool = True) -> None:
        self.groups = list(groups)
        self.config = config
        self.optimizer = optimizer
        self.generator = generator
        self.capture = ActivationCapture(self.groups, hooks)
        self.reset_state()

    # -- state ---------------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Utilities, running means, ages, accumulators and counters back to zero."""
        self.utility: dict[str, torch.Tensor] = {}
        self.mean_act: dict[str, torch.Tensor] = {}
        # Ages are kept as birth steps (age = steps - birth), with the births of still-immature
        # units in a queue, so the common step costs no per-unit work for ages.
        self.steps = 0
        self.births: dict[str, np.ndarray] = {}
        self._young: dict[str, deque[int]] = {}
        self.to_replace: dict[str, float] = {}
        self.replacements: dict[str, int] = {}
        for g in self.groups:
            w = g.producer.weight
            self.utility[g.name] = torch.zeros(g.n_units, device=w.device, dtype=w.dtype)
            self.mean_act[g.name] = torch.zeros(g.n_units, device=w.device, dtype=w.dtype)
            self.births[g.name] = np.zeros(g.n_units, dtype=np.int64)
            self._young[g.name] = deque([0] * g.n_units)
            self.to_replace[g.name] = 0.0
            self.replacements[g.name] = 0
        self.capture.captured.clear()

    def ages(self, name: str) -> np.ndarray:
        """Every unit's age (updates since it was created or last replaced)."""
        return self.steps - self.births[name]

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "utility": {k: v.detach().cpu().clone() for k, v in self.utility.items()},
            "mean_act": {k: v.detach().cpu().clone() for k, v in self.mean_act.items()},
            "births": {k: torch.from_numpy(v.copy()) for k, v in self.births.items()},
            "to_replace": dict(self.to_replace),
            "replacements": dict(self.replacements),
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for g in self.groups:
            dev = g.producer.weight.device
            self.utility[g.name] = state["utility"][g.name].to(dev)
            self.mean_act[g.name] = state["mean_act"][g.name].to(dev)
            births = state["births"][g.name].numpy().astype(np.int64).copy()
            self.births[g.name] = births
            young = np.sort(births[self.steps - births <= self.config.maturity])
            self._young[g.name] = deque(young.tolist())
            self.to_replace[g.name] = float(state["to_replace"][g.name])
            self.replacements[g.name] = int(state["replacements"][g.name])

    def remove_hooks(self) -> None:
        self.capture.remove()

    # -- reads ---------------------------------------------------------------------------------
    def _age_tensor(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.ages(name)).to(device=like.device, dtype=like.dtype)

    def corrected_utility(self, name: str) -> torch.Tensor:
        """The utility as CBP reads it: divided by (1 − η^age) when bias correction is on."""
        u = self.utility[name]
        if not (self.config.running_average and self.config.bias_correction):
            return u
        denom = 1.0 - self.config.decay ** self._age_tensor(name, u)
        return torch.where(denom > 0, u / denom.clamp_min(1e-12), u)

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, activations: dict[str, torch.Tensor] | None = None) -> dict[str, list[int]]:
        """One CBP step after an optimizer update. Returns {group: replaced unit indices}."""
        cfg = self.config
        self.steps += 1
        oldest_young = self.steps - cfg.maturity  # born at or after this: still immature
        replaced: dict[str, list[int]] = {}
        for g in self.groups:
            h = self.capture.get(activations, g.name)
            self._update_utility(g, h)
            young = self._young[g.name]
            while young and young[0] < oldest_young:
                young.popleft()
            n_eligible = g.n_units - len(young)
            self.to_replace[g.name] += n_eligible * cfg.replacement_rate
            if self.to_replace[g.name] >= 1.0 and n_eligible > 0:
                k = int(self.to_replace[g.name])
                self.to_replace[g.name] -= k
                idx = self._lowest_utility(g.name, min(k, n_eligible))
                self._replace(g, idx)
                replaced[g.name] = idx.tolist()
        if activations is None:
            self.capture.captured.clear()
        return replaced

    def _update_utility(self, g: UnitGroup, h: torch.Tensor | np.ndarray) -> None:
        cfg = self.config
        eta = cfg.decay
        if cfg.utility == "contribution" and h.ndim == 2 and _all_plain_linear(g):
            # CPU MLP layers: numpy's per-call overhead is far below torch's for tiny tensors.
            self._update_utility_numpy(g, h if isinstance(h, np.ndarray) else h.detach().numpy())
            return
        if isinstance(h, np.ndarray):
            h = torch.from_numpy(h)
        out_mag = g.outgoing_magnitude()
        n = h.numel() // h.shape[1]  # examples × positions averaged over
        if cfg.utility == "contribution":
            dims = 0 if h.dim() == 2 else [0, *range(2, h.dim())]
            inst = torch.linalg.vector_norm(h, 1, dim=dims).mul_(out_mag)
            if n > 1:
                inst.div_(n)
        else:
            m = self.mean_act[g.name]
            m.lerp_(unit_mean(h), 1.0 - eta)
            m_hat = m / (1.0 - eta ** self._age_tensor(g.name, m)) if cfg.bias_correction else m
            shape = (1, -1) + (1,) * (h.dim() - 2)
            inst = unit_mean((h - m_hat.view(shape)).abs()).mul_(out_mag)
            inst.div_(g.incoming_magnitude().clamp_min(1e-12))
        if cfg.running_average:
            self.utility[g.name].lerp_(inst, 1.0 - eta)  # η·u + (1−η)·inst
        else:
            self.utility[g.name].copy_(inst)

    def _update_utility_numpy(self, g: UnitGroup, h: np.ndarray) -> None:
        """The contribution utility in numpy, for CPU MLPs fed by the numpy fast path (the
        utility array is a view of the same memory as the torch tensor)."""
        eta = self.config.decay
        out_mag = np.abs(g.consumers[0].module.weight.detach().numpy()).sum(0)
        for c in g.consumers[1:]:
            out_mag += np.abs(c.module.weight.detach().numpy()).sum(0)
        inst = np.abs(h).sum(0) * out_mag
        if h.shape[0] > 1:
            inst /= h.shape[0]
        u = self.utility[g.name].numpy()
        if self.config.running_average:
            u *= eta
            u += (1.0 - eta) * inst
        else:
            u[:] = inst

    def _lowest_utility(self, name: str, k: int) -> torch.Tensor:
        u = self.corrected_utility(name)
        mask = torch.from_numpy(self.ages(name) > self.config.maturity).to(u.device)
        u = torch.where(mask, u, torch.full_like(u, float("inf")))
        return torch.topk(u, k, largest=False).indices

    def _replace(self, g: UnitGroup, idx: torch.Tensor) -> None:
        reinit_units(g, idx, optimizer=self.optimizer, generator=self.generator)
        self.utility[g.name][idx] = 0
        self.mean_act[g.name][idx] = 0
        self.births[g.name][idx.cpu().numpy()] = self.steps
        self._young[g.name].extend([self.steps] * int(idx.numel()))
        self.replacements[g.name] += int(idx.numel())
