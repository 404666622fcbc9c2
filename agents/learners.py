"""The supervised reference learner: every baseline of the paper as one configurable class.

Which method runs is decided by the :class:`~plasticity_gym_agents.config.LearnerConfig` sections:

=================  ==========================================================================
backprop           SGD (``optimizer.momentum`` optional)
adam               ``optimizer.name = "adam"`` (betas configurable; a step count per element)
l2                 ``optimizer.weight_decay = λ``: λ·w added to the gradient
shrink-perturb     ``shrink_perturb``: shrink by λ (with SGD momentum: λ in SGD's coupled weight
                   decay, inside the momentum), then w ← w + σ·ε after each update (seeded ε)
dropout            ``network.dropout = p`` (seeded masks)
redo               ``redo``: recycle dormant units every ``period`` updates
head-reset         ``head_reset = "zero"`` before every task, the first included, or ``"reinit"``
                   at every later ``next_task_boundary``
retrain            ``retrain = True``: the whole network and optimizer afresh at each boundary
linear             ``network.kind = "linear"``
cbp                ``cbp``: continual backpropagation after each update
l2-init            ``l2_init``: λ·(θ − θ₀) added to the gradient, θ₀ the initial parameters
weight-clip        ``weight_clip``: after each update, every weight in ±κ·(its layer's init bound)
upgd               ``upgd``: utility-gated, perturbed SGD step (replaces SGD's; own weight decay)
crelu              ``network.activation = "crelu"``: [relu(x), relu(−x)] per unit, half the units
layernorm          ``network.layer_norm = True`` (with ``optimizer.weight_decay``)
snr                ``snr``: reset a unit whose silence its own firing rate makes improbable
=================  ==========================================================================

Two protocol options act on any of them, on streams whose tasks are epochs with validation
passes (class-incremental CIFAR-100): ``lr_schedule`` (the step size per epoch of a task, back to
``optimizer.lr`` at the next task) and ``early_stopping`` (return to the best-validation epoch's
learner before the task's test phase; :attr:`SupervisedLearner.selects_on_validation`, and
:meth:`SupervisedLearner.model_selection` lists the epoch restored per task).

The task kind follows the action space: ``MultiDiscrete`` → classification (cross-entropy),
``Box`` → regression (squared error, torch's ``mse_loss``). The online accuracy is the prediction
made in ``act``, before learning, as in the paper. MLP and linear agents run on the learner
core (:mod:`plasticity_gym_agents.lockstep`) with one replica; the others (convnet, ResNet-18, dropout,
task-boundary resets) train by ``torch.autograd`` with the same optimizer updates, CBP and ReDo.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from plasticity_gym_agents.cbp import ContinualBackprop
from plasticity_gym_agents.config import LearnerConfig
from plasticity_gym_agents.lockstep import LockstepLearner, lockstep_support
from plasticity_gym_agents.networks import PlasticNetwork, ResNet18, build_network, resolve_device, task_spec
from plasticity_gym_agents.optim import (ReferenceOptimizer, draw_noise, module_clip_bounds, shrink_perturb,
                                         shrink_perturb_decays)
from plasticity_gym_agents.protocol import learning_phase, next_phase
from plasticity_gym_agents.redo import ReDo
from plasticity_gym_agents.snr import SelfNormalizedResets
from plasticity_gym_agents.units import reset_module_parameters, zero_optimizer_slices

__all__ = ["SupervisedLearner", "build_network", "resolve_device", "task_spec"]


class SupervisedLearner:
    """A reference agent on a supervised stream (implements :class:`plasticity_gym_agents.protocol.Agent`)."""

    learns_only_in_train = True  # observe() ignores val/test batches

    def __init__(self, name: str, config: LearnerConfig, observation_space: gym.Space,
                 action_space: gym.Space, *, seed: int = 0, device: str = "auto") -> None:
        self.name = name
        self.config = config
        self.seed = int(seed)
        self.observation_space = observation_space
        self.action_space = action_space
        self._requested_device = str(device)
        self.device = resolve_device(device)
        self.spec = task_spec(observation_space, action_space)
        if self.spec["kind"] == "regression" and config.network.kind == "resnet18":
            raise ValueError("resnet18 is a classification network")
        self.boundaries_seen = 0
        self._pending: tuple | None = None
        self._selection = _BestValidation() if config.early_stopping else None
        # The learner core with one replica, when it supports the config (it is the faster one).
        self.core = (LockstepLearner(name, config, observation_space, action_space, seeds=[self.seed],
                                     device=device) if lockstep_support(config) is None else None)
        self._network: PlasticNetwork | None = None
        if self.core is None:
            self._build_autograd()

    def _build_autograd(self) -> None:
        # Construction draws from a CPU generator so a seed gives the same network on any device;
        # later draws (CBP, ReDo, dropout, resets) use one on the compute device.
        self._network = build_network(self.config, self.spec, torch.Generator().manual_seed(self.seed)).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        for m in self._network.modules():
            if hasattr(m, "generator") and isinstance(m, torch.nn.Module):
                m.generator = self.generator  # seeded dropout
        self.optimizer = self._make_optimizer()
        groups = self._network.cbp_groups()
        self._cbp = (ContinualBackprop(groups, self.config.cbp, optimizer=self.optimizer,
                                       generator=self.generator) if self.config.cbp else None)
        self._redo = (ReDo(groups, self.config.redo, optimizer=self.optimizer, generator=self.generator)
                      if self.config.redo else None)
        self._snr = (SelfNormalizedResets(groups, self.config.snr, optimizer=self.optimizer, generator=self.generator)
                     if self.config.snr else None)
        self._updates = 0

    def _make_optimizer(self) -> ReferenceOptimizer:
        """The optimizer with the update-side methods (L2 Init, weight clipping, UPGD) the config has."""
        c = self.config
        coupled, _ = shrink_perturb_decays(c.optimizer, c.shrink_perturb)
        optimizer = c.optimizer if coupled == c.optimizer.weight_decay else c.optimizer.replace(weight_decay=coupled)
        return ReferenceOptimizer(self.params, optimizer, l2_init=c.l2_init, weight_clip=c.weight_clip,
                                  clip_bounds=module_clip_bounds(self._network) if c.weight_clip else None,
                                  upgd=c.upgd, generator=self.generator)

    # -- views ---------------------------------------------------------------------------------
    @property
    def network(self) -> PlasticNetwork:
        """The network as an ``nn.Module``. On the learner core its parameters share memory with
        the core's weights (pending deferred updates are folded in first)."""
        if self.core is None:
            return self._network
        if self._network is None:
            net = build_network(self.config, self.spec, torch.Generator().manual_seed(self.seed)).to(self.device)
            lins = [*getattr(net, "layers", []), net.head]
            for lin, w, b in zip(lins, self.core.weights, self.core.biases):
                lin.weight, lin.bias = torch.nn.Parameter(w[0]), torch.nn.Parameter(b[0])
            for norm, scale, shift in zip(getattr(net, "norms", None) or (), self.core.norm_scales,
                                          self.core.norm_shifts):
                norm.weight, norm.bias = torch.nn.Parameter(scale[0]), torch.nn.Parameter(shift[0])
            self._network = net
        self.core.flush()
        return self._network

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in self.network.parameters() if p.requires_grad]

    @property
    def updates(self) -> int:
        return self.core.updates if self.core is not None else self._updates

    @property
    def cbp(self) -> ContinualBackprop | SimpleNamespace | None:
        """CBP's state; on the learner core a read-only view: ``replacements`` per hidden layer
        (``layers.i``, as :meth:`plasticity_gym_agents.networks.MLP.cbp_groups` names them) and ``steps``."""
        if self.core is None or self.core.cbp is None:
            return self._cbp if self.core is None else None
        counts = [int(s.replacements[0]) for s in self.core.cbp]
        return SimpleNamespace(replacements={f"layers.{i}": n for i, n in enumerate(counts)}, steps=self.core.updates)

    @property
    def redo(self) -> ReDo | SimpleNamespace | None:
        """ReDo's state; on the learner core a read-only view (``replacements`` per hidden layer)."""
        if self.core is None or self.core.redo is None:
            return self._redo if self.core is None else None
        counts = self.core.redo.replacements[:, 0].tolist()
        return SimpleNamespace(replacements={f"layers.{i}": n for i, n in enumerate(counts)})

    @property
    def snr(self) -> SelfNormalizedResets | SimpleNamespace | None:
        """SNR's state; on the learner core a read-only view (``replacements`` per hidden layer)."""
        if self.core is None or self.core.snr is None:
            return self._snr if self.core is None else None
        counts = self.core.snr.replacements[:, 0].tolist()
        return SimpleNamespace(replacements={f"layers.{i}": n for i, n in enumerate(counts)})

    # -- protocol ------------------------------------------------------------------------------
    @property
    def uses_task_boundaries(self) -> bool:
        return self.config.head_reset != "none" or self.config.retrain

    @property
    def selects_on_validation(self) -> bool:
        """True when the agent reads validation rewards to choose the network it is tested with
        (early stopping); it never learns from validation targets."""
        return self.config.early_stopping

    def model_selection(self) -> dict[str, list] | None:
        """With early stopping, per finished task: ``task``, the ``epoch`` whose learner was
        restored, and its ``val_accuracy``; ``None`` without it."""
        return None if self._selection is None else self._selection.record()

    def act(self, observation: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        info = info or {}
        if self.core is not None:  # the core takes (replicas, batch, *x): one replica
            batched = np.asarray(observation)[None]
            self._pending = (observation, batched)
            return self.core.act(batched, info)[0]
        if self.uses_task_boundaries and info.get("next_task_boundary", False):
            self._on_task_boundary()
        self._maybe_grow(info)
        train = next_phase(info) == "train"
        self._set_training(train)
        with torch.set_grad_enabled(train):
            out = self._network(self._tensor(observation))
        self._pending = (observation, out) if train else None
        out = out.detach()
        if self.spec["kind"] == "classification":
            return out.argmax(1).cpu().numpy().astype(np.int64)
        return out[:, 0].cpu().numpy().astype(np.float32)

    def observe(self, observation: np.ndarray, action: np.ndarray, reward: float,
                info: dict[str, Any]) -> None:
        pending, self._pending = self._pending, None
        if self._selection is not None and info.get("phase") == "val":
            self._score_validation(reward, info)
        elif self._selection is not None and info.get("phase") == "test" \
                and int(info.get("task_id", 0)) not in self._selection.tasks:
            raise ValueError(f"early_stopping: task {info.get('task_id', 0)} reached its test phase without a "
                             "validation phase to select on; this stream has none: set early_stopping to false")
        if not learning_phase(info):
            return
        if "target" not in info:
            raise KeyError("observe: info has no 'target' in a train phase")
        same = pending is not None and (pending[0] is observation or np.array_equal(pending[0], observation))
        if self.core is not None:  # the core reuses its forward pass when given the same array
            self.core.observe(pending[1] if same else np.asarray(observation)[None], None, None, info)
            return
        if not same:
            self._set_training(True)
            with torch.enable_grad():
                out = self._network(self._tensor(observation))
        else:
            out = pending[1]
        if self.config.lr_schedule is not None:
            self._schedule_step_size(info)
        self._learn(out, info["target"])

    # -- optional protocol parts ---------------------------------------------------------------
    def probe_model(self) -> torch.nn.Module:
        return self.core.probe_model(0) if self.core is not None else self._network

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy): later training does not change it."""
        if self.core is not None:
            return {"core": self.core.state_dict(), "config_hash": self.config.config_hash()}
        return copy.deepcopy({
            "network": self._network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "cbp": self._cbp.state_dict() if self._cbp else None,
            "redo": self._redo.state_dict() if self._redo else None,
            "snr": self._snr.state_dict() if self._snr else None,
            "generator": self.generator.get_state(),
            "active_outputs": getattr(self._network, "active_outputs", None),
            "boundaries_seen": self.boundaries_seen,
            "updates": self._updates,
            "selection": self._selection,
            "config_hash": self.config.config_hash(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config_hash") not in (None, self.config.config_hash()):
            raise ValueError("state was saved by an agent with a different config")
        self._pending = None
        if self.core is not None:
            self.core.load_state_dict(state["core"])
            return
        self._network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self._cbp and state["cbp"] is not None:
            self._cbp.load_state_dict(state["cbp"])
        if self._redo and state["redo"] is not None:
            self._redo.load_state_dict(state["redo"])
        if self._snr and state.get("snr") is not None:
            self._snr.load_state_dict(state["snr"])
        self.generator.set_state(state["generator"].cpu() if torch.is_tensor(state["generator"])
                                 else state["generator"])
        if state.get("active_outputs") is not None:
            self._network.active_outputs = int(state["active_outputs"])
        self.boundaries_seen = int(state["boundaries_seen"])
        self._updates = int(state["updates"])
        if self._selection is not None:
            self._selection = copy.deepcopy(state["selection"])

    def __reduce__(self):
        return (_rebuild, (type(self), self.name, self.config.to_dict(), self.observation_space,
                           self.action_space, self.seed, self._requested_device),
                self.state_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, network={self.config.network.kind}, device={self.device})"

    # -- the autograd engine -------------------------------------------------------------------
    def _set_training(self, mode: bool) -> None:
        # Module.train() walks every submodule: skip it when the mode is already right.
        if self._network.training != mode:
            self._network.train(mode)

    def _tensor(self, observation: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(observation), dtype=torch.float32, device=self.device)

    def _learn(self, out: torch.Tensor, target: Any) -> None:
        y = torch.as_tensor(np.asarray(target), device=self.device)
        classification = self.spec["kind"] == "classification"
        loss = F.cross_entropy(out, y.long()) if classification else F.mse_loss(out[:, 0], y.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._updates += 1
        sp = self.config.shrink_perturb
        if sp is not None:  # the learner core's Shrink and Perturb, on a replica axis of one
            params = [p.unsqueeze(0) for p in self.params]
            noise = None
            if sp.noise_std > 0:
                noise = torch.empty(1, sum(p.numel() for p in params), device=self.device)
                draw_noise(noise, [self.generator])
            _, after_step = shrink_perturb_decays(self.config.optimizer, sp)
            lr = self.optimizer.param_groups[0]["lr"]  # the scheduled step size, if any
            shrink_perturb(params, shrink=1.0 - lr * after_step, noise_std=sp.noise_std, noise=noise)
        if self._cbp is not None:
            self._cbp.step()
        if self._redo is not None:
            self._redo.step()
        if self._snr is not None:
            self._snr.step()

    def _on_task_boundary(self) -> None:
        self.boundaries_seen += 1
        self._pending = None
        if self.boundaries_seen == 1:
            # The first task starts from the initial network; a zeroed head is zeroed before
            # every task, the first included (the authors' Continual ImageNet loop).
            if self.config.head_reset == "zero" and not self.config.retrain:
                self._reset_head("zero")
            return
        if self.config.retrain:
            self._network.reset_parameters(self.generator)
            self.optimizer = self._make_optimizer()  # L2 Init's θ₀: the re-drawn network
            for method in (self._cbp, self._redo, self._snr):
                if method is not None:
                    method.optimizer = self.optimizer
                    method.reset_state()
        elif self.config.head_reset != "none":
            self._reset_head(self.config.head_reset)

    @torch.no_grad()
    def _reset_head(self, mode: str) -> None:
        head = self._network.head
        if mode == "zero":
            head.weight.zero_()
            head.bias.zero_()
        else:
            reset_module_parameters(head, self.generator)
        for p in (head.weight, head.bias):
            zero_optimizer_slices(self.optimizer, p, (slice(None),))

    def _schedule_step_size(self, info: dict[str, Any]) -> None:
        """Set the step size of this training batch's epoch (``lr_schedule``)."""
        epoch, epochs = info.get("epoch"), info.get("train_epochs")
        if epoch is None or epochs is None:
            raise ValueError("lr_schedule needs a stream whose info has 'epoch' and 'train_epochs' "
                             "(ClassIncCIFAR100-v0 has them); set lr_schedule to None for this stream")
        lr = self.config.lr_schedule.lr(self.config.optimizer.lr, int(epoch), int(epochs))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _score_validation(self, reward: float, info: dict[str, Any]) -> None:
        """Add a validation batch to its pass's score; at the end of the pass keep the learner if
        it is the task's best so far, and at the end of the task's training restore the best."""
        sel = self._selection
        n = len(info["target"])
        sel.correct += float(reward) * n
        sel.count += n
        if info.get("next_phase") == "val" and info.get("next_epoch") == info.get("epoch"):
            return  # the pass goes on
        accuracy = sel.correct / max(sel.count, 1)
        sel.correct, sel.count = 0.0, 0
        if sel.best is None or accuracy > sel.best[0]:
            sel.best = (accuracy, int(info["epoch"]), self._learner_state())
        if info.get("next_phase") == "val":
            return
        if info.get("next_task_id") == info.get("task_id") and info.get("next_phase") == "train":
            return  # more training epochs follow
        accuracy, epoch, state = sel.best
        self._load_learner_state(state)
        sel.best = None
        sel.tasks.append(int(info["task_id"]))
        sel.epochs.append(epoch)
        sel.accuracies.append(accuracy)

    def _learner_state(self) -> dict[str, Any]:
        """What early stopping restores: network (weights and normalisation statistics),
        optimizer state and the reset methods' per-unit state, copied together."""
        return copy.deepcopy({
            "network": self._network.state_dict(), "optimizer": self.optimizer.state_dict(),
            **{k: m.state_dict() for k, m in (("cbp", self._cbp), ("redo", self._redo), ("snr", self._snr))
               if m is not None}})

    def _load_learner_state(self, state: dict[str, Any]) -> None:
        self._network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key, method in (("cbp", self._cbp), ("redo", self._redo), ("snr", self._snr)):
            if method is not None:
                method.load_state_dict(state[key])

    def _maybe_grow(self, info: dict[str, Any]) -> None:
        n = info.get("next_n_classes", info.get("n_classes"))
        net = self._network
        if n is None or not isinstance(net, ResNet18):
            return
        n = int(n)
        if self._updates == 0 and n < net.active_outputs:
            net.active_outputs = n  # first sight of the stream: start with its classes only
        elif n > net.active_outputs:
            net.set_active_outputs(n, optimizer=self.optimizer, generator=self.generator)


def _rebuild(cls, name, config_dict, observation_space, action_space, seed, device):
    return cls(name, LearnerConfig.from_dict(config_dict), observation_space, action_space,
               seed=seed, device=device)


class _BestValidation:
    """Early stopping's bookkeeping: the running validation pass, the task's best learner state,
    and per finished task the epoch restored."""

    def __init__(self) -> None:
        self.correct, self.count = 0.0, 0
        self.best: tuple[float, int, dict[str, Any]] | None = None
        self.tasks: list[int] = []
        self.epochs: list[int] = []
        self.accuracies: list[float] = []

    def record(self) -> dict[str, list]:
        return {"task": list(self.tasks), "epoch": list(self.epochs),
                "val_accuracy": [round(a, 6) for a in self.accuracies]}
