"""The supervised reference learner: every baseline of SPEC §3 as one configurable class.

Which method runs is decided by the :class:`~agents.config.LearnerConfig` sections:

=================  ==========================================================================
backprop           SGD (``optimizer.momentum`` optional)
adam               ``optimizer.name = "adam"`` (betas configurable)
l2                 ``optimizer.weight_decay = λ``: λ·w added to the gradient
shrink-perturb     ``shrink_perturb``: after each update w ← (1 − lr·λ)·w + σ·ε (seeded ε)
dropout            ``network.dropout = p`` (seeded masks)
redo               ``redo``: recycle dormant units every ``period`` updates
head-reset         ``head_reset = "zero" | "reinit"`` at each ``next_task_boundary``
retrain            ``retrain = True``: the whole network and optimizer afresh at each boundary
linear             ``network.kind = "linear"``
cbp                ``cbp``: continual backpropagation after each update
=================  ==========================================================================

The task kind follows the action space: ``MultiDiscrete`` → classification (cross-entropy),
``Box`` → regression (squared error, torch's ``mse_loss``). The learner predicts in ``act`` and,
in a train phase, keeps that forward pass for ``observe`` (the online accuracy is the prediction
made before learning, as in the paper). For an MLP without dropout it uses a hand-written
backward pass and, for plain SGD, a single fused update: at batch size 1 autograd's bookkeeping
costs more than the arithmetic.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from agents.cbp import ContinualBackprop
from agents.config import LearnerConfig
from agents.networks import MLP, ConvNet, LinearNet, PlasticNetwork, ResNet18
from agents.protocol import learning_phase, next_phase
from agents.redo import ReDo
from agents.units import reset_module_parameters, zero_optimizer_slices

__all__ = ["SupervisedLearner", "build_network", "resolve_device", "task_spec"]


_NUMPY_MAX_PARAMS = 50_000


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def task_spec(observation_space: gym.Space, action_space: gym.Space) -> dict[str, Any]:
    """Batch size, per-example input shape, task kind and output count from the spaces."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) < 2:
        raise ValueError("observation space must be a batch-first Box (batch, *x_shape)")
    batch, *x_shape = observation_space.shape
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        kind, n_out = "classification", int(np.max(action_space.nvec))
    elif isinstance(action_space, gym.spaces.Discrete):
        kind, n_out = "classification", int(action_space.n)
    elif isinstance(action_space, gym.spaces.Box):
        kind, n_out = "regression", 1
    else:
        raise ValueError(f"unsupported action space {action_space!r}: MultiDiscrete or Box")
    return {"batch_size": int(batch), "x_shape": tuple(int(s) for s in x_shape), "kind": kind,
            "n_outputs": n_out}


def _image_layout(x_shape: tuple[int, ...]) -> tuple[int, int, bool]:
    """(channels, side, channels_last) of an image input shape (C,H,W) or (H,W,C)."""
    if len(x_shape) != 3:
        raise ValueError(f"image networks need a 3-D input shape, got {x_shape}")
    if x_shape[0] in (1, 3) and x_shape[1] == x_shape[2]:
        return x_shape[0], x_shape[1], False
    if x_shape[2] in (1, 3) and x_shape[0] == x_shape[1]:
        return x_shape[2], x_shape[0], True
    raise ValueError(f"cannot tell the channel axis of input shape {x_shape}")


def build_network(config: LearnerConfig, spec: dict[str, Any],
                  generator: torch.Generator | None) -> PlasticNetwork:
    nc = config.network
    n_in = int(np.prod(spec["x_shape"]))
    n_out = spec["n_outputs"]
    if nc.dropout > 0 and nc.kind not in ("mlp", "convnet"):
        raise ValueError(f"network.dropout is only defined for mlp and convnet, not {nc.kind}")
    if nc.kind == "mlp":
        return MLP(n_in, nc.hidden, n_out, activation=nc.activation, leaky_slope=nc.leaky_slope,
                   dropout=nc.dropout, generator=generator)
    if nc.kind == "linear":
        return LinearNet(n_in, n_out, generator=generator)
    channels, side, last = _image_layout(spec["x_shape"])
    if nc.kind == "convnet":
        return ConvNet(n_out, in_channels=channels, image_size=side, channels_last=last,
                       dropout=nc.dropout, generator=generator)
    return ResNet18(n_out, width=nc.width, in_channels=channels, channels_last=last,
                    generator=generator)


class SupervisedLearner:
    """A reference agent on a supervised stream (implements :class:`agents.protocol.Agent`)."""

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
        # Construction draws from a CPU generator so a seed gives the same network on any device;
        # later draws (CBP, ReDo, S&P noise, dropout, resets) use one on the compute device.
        init_gen = torch.Generator().manual_seed(self.seed)
        self.network = build_network(config, self.spec, init_gen).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        for m in self.network.modules():
            if hasattr(m, "generator") and isinstance(m, torch.nn.Module):
                m.generator = self.generator  # seeded dropout
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer()
        groups = self.network.cbp_groups()
        self.cbp = (ContinualBackprop(groups, config.cbp, optimizer=self.optimizer,
                                      generator=self.generator) if config.cbp else None)
        self.redo = (ReDo(groups, config.redo, optimizer=self.optimizer, generator=self.generator)
                     if config.redo else None)
        self._groups = groups
        self._fast = isinstance(self.network, MLP) and self.network.supports_manual_backward
        # On CPU the same hand-written pass runs in numpy on views of the parameters: for tiny
        # networks numpy's per-call overhead is several times smaller than torch's.
        # (Measured: ~3× faster for the 5-unit SlowRegression learner, slower than torch for a
        # 784-input 3×100 MLP, hence the size limit.)
        n_params = sum(p.numel() for p in self.network.parameters())
        self._numpy = self._fast and self.device.type == "cpu" and n_params <= _NUMPY_MAX_PARAMS
        self._pending: tuple | None = None
        self._activations: dict[str, Any] | None = None
        self.boundaries_seen = 0
        self.updates = 0

    # -- protocol ------------------------------------------------------------------------------
    @property
    def uses_task_boundaries(self) -> bool:
        return self.config.head_reset != "none" or self.config.retrain

    def act(self, observation: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        info = info or {}
        if self.uses_task_boundaries and info.get("next_task_boundary", False):
            self._on_task_boundary()
        self._maybe_grow(info)
        x = self._tensor(observation)
        if next_phase(info) == "train":
            self._set_training(True)
            out, cache = self._forward_train(x)
            self._pending = (observation, out, cache)
        else:
            self._pending = None
            self._set_training(False)
            if self._numpy:
                out, _ = self.network.forward_numpy(x)
            else:
                with torch.no_grad():
                    out = self.network(x)
        return self._to_action(out)

    def observe(self, observation: np.ndarray, action: np.ndarray, reward: float,
                info: dict[str, Any]) -> None:
        pending, self._pending = self._pending, None
        if not learning_phase(info):
            return
        if "target" not in info:
            raise KeyError("observe: info has no 'target' in a train phase")
        if pending is None or not (pending[0] is observation or np.array_equal(pending[0], observation)):
            self._set_training(True)
            out, cache = self._forward_train(self._tensor(observation))
        else:
            _, out, cache = pending
        self._learn(out, cache, info["target"])

    # -- optional protocol parts ---------------------------------------------------------------
    def probe_model(self) -> torch.nn.Module:
        return self.network

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy): later training does not change it."""
        return copy.deepcopy({
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "cbp": self.cbp.state_dict() if self.cbp else None,
            "redo": self.redo.state_dict() if self.redo else None,
            "generator": self.generator.get_state(),
            "active_outputs": getattr(self.network, "active_outputs", None),
            "boundaries_seen": self.boundaries_seen,
            "updates": self.updates,
            "config_hash": self.config.config_hash(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config_hash") not in (None, self.config.config_hash()):
            raise ValueError("state was saved by an agent with a different config")
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.cbp and state["cbp"] is not None:
            self.cbp.load_state_dict(state["cbp"])
        if self.redo and state["redo"] is not None:
            self.redo.load_state_dict(state["redo"])
        self.generator.set_state(state["generator"].cpu() if torch.is_tensor(state["generator"])
                                 else state["generator"])
        if state.get("active_outputs") is not None:
            self.network.active_outputs = int(state["active_outputs"])
        self.boundaries_seen = int(state["boundaries_seen"])
        self.updates = int(state["updates"])
        self._pending = None

    def __reduce__(self):
        return (_rebuild, (type(self), self.name, self.config.to_dict(), self.observation_space,
                           self.action_space, self.seed, self._requested_device),
                self.state_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, network={self.config.network.kind}, device={self.device})"

    # -- internals -----------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        oc = self.config.optimizer
        if oc.name == "sgd":
            return torch.optim.SGD(self.params, lr=oc.lr, momentum=oc.momentum,
                                   weight_decay=oc.weight_decay)
        return torch.optim.Adam(self.params, lr=oc.lr, betas=oc.betas, eps=oc.eps,
                                weight_decay=oc.weight_decay)

    def _set_training(self, mode: bool) -> None:
        # Module.train() walks every submodule: skip it when the mode is already right.
        if self.network.training != mode:
            self.network.train(mode)

    def _tensor(self, observation: np.ndarray) -> torch.Tensor | np.ndarray:
        if self._numpy:
            return np.asarray(observation, dtype=np.float32)
        return torch.as_tensor(np.asarray(observation), dtype=torch.float32, device=self.device)

    def _forward_train(self, x: torch.Tensor | np.ndarray) -> tuple[Any, Any]:
        if self._numpy:
            return self.network.forward_numpy(x)
        if self._fast:
            return self.network.forward_cached(x)
        with torch.enable_grad():
            return self.network(x), None

    def _to_action(self, out: torch.Tensor | np.ndarray) -> np.ndarray:
        if isinstance(out, np.ndarray):
            if self.spec["kind"] == "classification":
                return out.argmax(1).astype(np.int64)
            return out[:, 0].astype(np.float32)
        out = out.detach()
        if self.spec["kind"] == "classification":
            return out.argmax(1).cpu().numpy().astype(np.int64)
        return out[:, 0].cpu().numpy().astype(np.float32)

    def _learn(self, out: Any, cache: Any, target: Any) -> None:
        if self._numpy:
            self._learn_numpy(out, cache, target)
        else:
            self._learn_torch(out, cache, target)
        self.updates += 1
        sp = self.config.shrink_perturb
        if sp is not None:
            self._shrink_perturb(sp.weight_decay, sp.noise_std)
        if self.cbp is not None:
            self.cbp.step(self._activations)
        if self.redo is not None:
            self.redo.step(self._activations)

    def _learn_numpy(self, out: np.ndarray, cache: Any, target: Any) -> None:
        b = out.shape[0]
        if self.spec["kind"] == "classification":
            z = out - out.max(1, keepdims=True)
            g = np.exp(z)
            g /= g.sum(1, keepdims=True)
            g[np.arange(b), np.asarray(target, dtype=np.int64)] -= 1
        else:
            g = out - np.asarray(target, dtype=np.float32).reshape(b, 1)
            g *= 2
        if b > 1:
            g /= b
        grads = self.network.backward_numpy(cache, g)
        oc = self.config.optimizer
        if oc.name == "sgd" and oc.momentum == 0.0 and oc.weight_decay == 0.0:
            for (w, bias), gw, gb in zip(self.network._numpy_views(), grads[::2], grads[1::2]):
                w -= oc.lr * gw  # in place: these arrays share memory with the parameters
                bias -= oc.lr * gb
        else:
            for p, gp in zip(self.params, grads):
                p.grad = torch.from_numpy(np.ascontiguousarray(gp))
            self.optimizer.step()
        self._activations = {grp.name: post for grp, post in zip(self._groups, cache[2])}

    def _learn_torch(self, out: torch.Tensor, cache: Any, target: Any) -> None:
        y = torch.as_tensor(np.asarray(target), device=self.device)
        classification = self.spec["kind"] == "classification"
        y = y.long() if classification else y.float()
        activations = None
        if cache is not None:  # hand-written backward (MLP fast path)
            b = out.shape[0]
            if classification:
                g = torch.softmax(out, 1)
                g.scatter_add_(1, y.view(b, 1), torch.full((b, 1), -1.0, device=out.device))
            else:
                g = (out - y.view(b, 1)).mul_(2.0)
            g.div_(b)
            self.network.backward_cached(cache, g)
            activations = {grp.name: post for grp, post in zip(self._groups, cache[2])}
        else:
            loss = F.cross_entropy(out, y) if classification else F.mse_loss(out[:, 0], y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self._optimizer_step()
        self._activations = activations

    def _optimizer_step(self) -> None:
        oc = self.config.optimizer
        grads = [p.grad for p in self.params]
        if (oc.name == "sgd" and oc.momentum == 0.0 and oc.weight_decay == 0.0
                and all(g is not None for g in grads)):
            # Plain SGD: one fused update, identical to torch.optim.SGD's without its overhead.
            with torch.no_grad():
                torch._foreach_add_(self.params, grads, alpha=-oc.lr)
        else:
            self.optimizer.step()

    @torch.no_grad()
    def _shrink_perturb(self, weight_decay: float, noise_std: float) -> None:
        shrink = 1.0 - self.config.optimizer.lr * weight_decay
        if shrink != 1.0:
            torch._foreach_mul_(self.params, shrink)
        if noise_std > 0.0:
            for p in self.params:
                p.add_(torch.randn(p.shape, generator=self.generator, device=p.device,
                                   dtype=p.dtype), alpha=noise_std)

    def _on_task_boundary(self) -> None:
        self.boundaries_seen += 1
        self._pending = None
        if self.boundaries_seen == 1:
            return  # the first task starts from the initial network: nothing to reset
        if self.config.retrain:
            self.network.reset_parameters(self.generator)
            self.optimizer = self._make_optimizer()
            for method in (self.cbp, self.redo):
                if method is not None:
                    method.optimizer = self.optimizer
                    method.reset_state()
        elif self.config.head_reset != "none":
            self._reset_head(self.config.head_reset)

    @torch.no_grad()
    def _reset_head(self, mode: str) -> None:
        head = self.network.head
        if mode == "zero":
            head.weight.zero_()
            head.bias.zero_()
        else:
            reset_module_parameters(head, self.generator)
        for p in (head.weight, head.bias):
            zero_optimizer_slices(self.optimizer, p, (slice(None),))

    def _maybe_grow(self, info: dict[str, Any]) -> None:
        n = info.get("next_n_classes", info.get("n_classes"))
        net = self.network
        if n is None or not isinstance(net, ResNet18):
            return
        n = int(n)
        if self.updates == 0 and n < net.active_outputs:
            net.active_outputs = n  # first sight of the stream: start with its classes only
        elif n > net.active_outputs:
            net.set_active_outputs(n, optimizer=self.optimizer, generator=self.generator)


def _rebuild(cls, name, config_dict, observation_space, action_space, seed, device):
    return cls(name, LearnerConfig.from_dict(config_dict), observation_space, action_space,
               seed=seed, device=device)
