"""The learner core: ``R`` replicas of an MLP (or linear) reference agent as one batched computation.

:class:`LockstepLearner` trains ``R`` independent networks — replica ``r`` is exactly the network
:func:`plasticity_gym_agents.make_agent` builds for seed ``r`` — on ``R`` streams at once: weights stacked along
a leading replica axis ``(R, out, in)``, batched forward and backward passes, and the optimizer,
Shrink and Perturb, CBP and ReDo acting on every replica in the same few operations. With one
replica it is the single learner (:class:`plasticity_gym_agents.SupervisedLearner` runs MLP and linear agents
on it), so R lockstep seeds equal R single learners up to the float rounding of batched kernels
(tested: weights to 1e-4 after 600–1,500 steps).

The scalar hyperparameters of :data:`PER_REPLICA` may differ per replica: pass one
:class:`~plasticity_gym_agents.config.LearnerConfig` per seed, alike in everything else, and a hyperparameter
grid of one architecture runs as one computation. Every random draw after construction comes
from the replica's own generator. Observations are ``(R, batch, *x_shape)``, actions
``(R, batch)``, ``info`` a Gymnasium vector env's (arrays over seeds), as from
``gym.make_vec(env_id, num_envs=R, vectorization_mode="vector_entry_point")``; every seed must be
in the same phase at every step (checked).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import types
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from plasticity_gym_agents.arrays import NUMPY, TORCH, activate, activation_backward, outputs_per_unit
from plasticity_gym_agents.cbp_state import UnitStatistics
from plasticity_gym_agents.config import LearnerConfig, config_hash
from plasticity_gym_agents.networks import MLP, build_network, resolve_device, task_spec
from plasticity_gym_agents.optim import (adam_update, along, clip_bound, clip_weights_, draw_noise, l2_init_gradient,
                                         replica_scalar, sgd_update, shrink_perturb, shrink_perturb_decays, upgd_update)
from plasticity_gym_agents.redo import DormantUnits
from plasticity_gym_agents.snr import FiringStatistics
from plasticity_gym_agents.units import batched_abs_sum, get_init, reinit_slices

__all__ = ["LockstepLearner", "LockstepUnsupported", "lockstep_support"]


class LockstepUnsupported(ValueError):
    """The config asks for something the lockstep learner does not implement."""


def lockstep_support(config: LearnerConfig) -> str | None:
    """``None`` when ``config`` can run in lockstep, else the reason it cannot."""
    net = config.network
    if net.kind not in ("mlp", "linear"):
        return f"network.kind={net.kind!r} (lockstep runs MLPs and the linear model)"
    if net.dropout > 0:
        return "dropout (its masks are drawn per example; run seeds one by one)"
    if config.head_reset != "none" or config.retrain:
        return "task-boundary resets (head reset, retrain)"
    if config.lr_schedule is not None or config.early_stopping:
        return "a per-epoch step-size schedule or early stopping (the epoch-structured vision streams)"
    return None


# The scalar hyperparameters that may differ between replicas, per config section.
PER_REPLICA = {"optimizer": ("lr", "momentum", "weight_decay", "betas", "eps"),
               "cbp": ("replacement_rate", "maturity", "decay"),
               "shrink_perturb": ("weight_decay", "noise_std"), "redo": ("threshold",), "snr": ("percentile",),
               "l2_init": ("strength",), "weight_clip": ("kappa",),
               "upgd": ("beta_utility", "noise_std", "weight_decay")}


def _structure(config: LearnerConfig) -> dict[str, Any]:
    d = config.to_dict()
    for section, keys in PER_REPLICA.items():
        for k in keys if d.get(section) is not None else ():
            d[section].pop(k)
    return d


def _replica_configs(configs: LearnerConfig | Sequence[LearnerConfig], n: int) -> list[LearnerConfig]:
    configs = [configs] * n if isinstance(configs, LearnerConfig) else list(configs)
    if len(configs) != n:
        raise ValueError(f"got {len(configs)} configs for {n} seeds: pass one config, or one per seed")
    first = _structure(configs[0])
    for i, c in enumerate(configs[1:], 1):
        other = _structure(c)
        if other != first:
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(f"lockstep configs may differ only in scalar hyperparameters "
                             f"({', '.join(f'{s}.{k}' for s, ks in PER_REPLICA.items() for k in ks)}); "
                             f"config {i} differs from config 0 in: {', '.join(diff)}")
    return configs


class LockstepLearner:
    """``len(seeds)`` independent copies of reference agent ``name``, trained in lockstep."""

    learns_only_in_train = True
    uses_task_boundaries = False

    def __init__(self, name: str, configs: LearnerConfig | Sequence[LearnerConfig],
                 observation_space: gym.Space, action_space: gym.Space, *, seeds: Sequence[int],
                 device: str = "auto", compile: bool | str = "auto") -> None:
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        self.configs = _replica_configs(configs, len(self.seeds))
        config = self.config = self.configs[0]
        reason = lockstep_support(config)
        if reason is not None:
            raise LockstepUnsupported(f"agent {name!r} cannot run in lockstep: {reason}")
        self.name = name
        self.n = len(self.seeds)
        self.observation_space = observation_space
        self.action_space = action_space
        self._requested_device = str(device)
        self.device = resolve_device(device)
        self.spec = task_spec(observation_space, action_space)
        self.classification = self.spec["kind"] == "classification"
        nets = [build_network(config, self.spec, torch.Generator().manual_seed(s)) for s in self.seeds]
        layers = [_linears(net) for net in nets]
        self.activation = config.network.activation
        self.slope = config.network.leaky_slope
        self.init_specs = [get_init(lin) for lin in layers[0]]
        # Stacked parameters in nn.Linear layout: weights (R, out, in), biases (R, out); only ever
        # changed in place, so views of them (numpy arrays, a single learner's module) stay valid.
        self.weights = [torch.stack([ls[i].weight.detach() for ls in layers]).to(self.device).contiguous()
                        for i in range(len(layers[0]))]
        self.biases = [torch.stack([ls[i].bias.detach() for ls in layers]).to(self.device).contiguous()
                       for i in range(len(layers[0]))]
        # LayerNorm's scale and shift of each hidden layer, (R, units) (empty lists without it).
        norms = [net.norms for net in nets] if config.network.layer_norm else []
        self.norm_scales = [torch.stack([ns[i].weight.detach() for ns in norms]).to(self.device).contiguous()
                            for i in range(len(norms[0]))] if norms else []
        self.norm_shifts = [torch.stack([ns[i].bias.detach() for ns in norms]).to(self.device).contiguous()
                            for i in range(len(norms[0]))] if norms else []
        self._norm_eps = norms[0][0].eps if norms else 0.0
        # CReLU: two outputs per unit, adjacent columns of the next layer.
        self._k = outputs_per_unit(self.activation)
        # The single learner's parameter order (network.parameters()): w0, b0, w1, b1, ..., head,
        # then the LayerNorm scales and shifts (MLP registers its norms after the head).
        self._params = ([t for pair in zip(self.weights, self.biases) for t in pair]
                        + [t for pair in zip(self.norm_scales, self.norm_shifts) for t in pair])
        self.generators = [torch.Generator(device=self.device).manual_seed(s + 1) for s in self.seeds]
        # L2 Init, UPGD and LayerNorm's scales and shifts need the gradients: they take the
        # optimizer path, not plain SGD's.
        self._plain_sgd = (all(c.optimizer.name == "sgd" and c.optimizer.momentum == 0.0
                               and c.optimizer.weight_decay == 0.0 for c in self.configs)
                           and config.l2_init is None and config.upgd is None and not config.network.layer_norm)
        self._deferred = self._deferred_updates()
        # The bottom layers whose updates are deferred: the train step stops above them (so it
        # can be compiled), and the rest of the backward pass runs eagerly.
        self._split = next(i for i in range(len(self.weights) + 1) if i not in self._deferred)
        # Tiny networks on the CPU (SlowRegression's 5 units × 100 seeds) are bound by per-call
        # overhead: their forward and backward passes run in numpy on views of the tensors, through
        # the same code as torch's (the array layer). With an optimizer, LayerNorm or Shrink and
        # Perturb their parameters live in one (R, total) tensor, which the update acts on in one
        # call per operation, not one per parameter (plain SGD's in-place numpy updates ran 10%
        # slower on its views).
        self._numpy = (self.device.type == "cpu" and not self._deferred
                       and sum(w.numel() for w in self.weights) <= _NUMPY_MAX_ELEMENTS)
        flat = self._numpy and (not self._plain_sgd or config.shrink_perturb is not None)
        self._flat = self._flatten_parameters() if flat else None
        # What the optimizer and Shrink and Perturb update: the flat tensor, or the parameters.
        self._update_params = [self._flat] if self._flat is not None else self._params
        self._init_hyperparameters()
        self._init_optimizer_state()
        widths = [int(w.shape[1]) for w in self.weights[:-1]]
        self.cbp = ([UnitStatistics([c.cbp for c in self.configs], self.n, w, device=self.device) for w in widths]
                    if config.cbp else None)
        self.redo = DormantUnits(widths, self.n, [c.redo for c in self.configs], self.device) if config.redo else None
        self.snr = FiringStatistics(widths, self.n, [c.snr for c in self.configs], self.device) if config.snr else None
        self._np = ([w.numpy() for w in self.weights], [b.numpy() for b in self.biases]) if self._numpy else None
        # Each layer's (w, wᵀ, bias row) views for the forward pass, made once (views stay valid),
        # and each hidden layer's LayerNorm (γ row, β row).
        ws, bs = self._np if self._numpy else (self.weights, self.biases)
        self._affine = [(w, w.swapaxes(1, 2), b[:, None, :]) for w, b in zip(ws, bs)]
        rows = (lambda t: t.numpy()[:, None, :]) if self._numpy else (lambda t: t[:, None, :])
        self._norm_rows = [(rows(scale), rows(shift)) for scale, shift in zip(self.norm_scales, self.norm_shifts)]
        # CBP reads its consumer layers' column |w| sums right after the update; under plain SGD
        # the train step returns them (clipping and Shrink and Perturb are part of that step).
        self._out_magnitude_layers = (tuple(range(1, len(self.weights)))
                                      if config.cbp is not None and self._plain_sgd else ())
        self._compile_request = compile
        self._step = self._train_step
        self.compiled = self._use_compile(compile)
        self._check_compiled = self.compiled  # the first compiled step is checked against eager
        if self.compiled:  # the forward stays eager: a compiled call's own overhead is as large
            _quiet_import_cpp_extension()
            # fullgraph: nothing runs before the whole step has compiled, so a failed compile
            # can fall back to eager without having changed any weight.
            self._step = torch.compile(_own_code(self._train_step), dynamic=False, fullgraph=True)
        self._pending: tuple | None = None
        self._alphas: dict[float, Any] = {}
        self._probe_net: MLP | None = None
        self.updates = 0

    def _init_hyperparameters(self) -> None:
        """Every scalar hyperparameter: a float when all replicas agree, else one per replica."""
        oc = [c.optimizer for c in self.configs]
        per_replica = functools.partial(replica_scalar, device=self.device)
        self.adam = oc[0].name == "adam"
        self.lr = per_replica([o.lr for o in oc])
        self.momentum = per_replica([o.momentum for o in oc])
        decays = [shrink_perturb_decays(o, c.shrink_perturb) for o, c in zip(oc, self.configs)]
        self.weight_decay = per_replica([coupled for coupled, _ in decays])
        self.betas = (per_replica([o.betas[0] for o in oc]), per_replica([o.betas[1] for o in oc]))
        self.eps = per_replica([o.eps for o in oc])
        if self.config.l2_init is not None:  # θ₀: the weights as built (kept apart from opt_state,
            # whose slices unit surgery zeroes)
            self._l2_strength = per_replica([c.l2_init.strength for c in self.configs])
            self._initial, self._update_initial = self._zeros_like_params()
            torch._foreach_copy_(self._initial, self._params)
        if self.config.weight_clip is not None:
            self._clip_kappa = per_replica([c.weight_clip.kappa for c in self.configs])
            self._clip_bounds = [clip_bound(spec) for spec in self.init_specs for _ in range(2)]  # w, b
        up = [c.upgd for c in self.configs]
        if up[0] is not None:
            self._upgd = {"beta": per_replica([u.beta_utility for u in up]),
                          "noise_std": per_replica([u.noise_std for u in up]),
                          "weight_decay": per_replica([u.weight_decay for u in up])}
            self._upgd_noisy = {r for r, u in enumerate(up) if u.noise_std > 0.0}
            self._upgd_noise = torch.zeros(self.n, sum(p[0].numel() for p in self._params) if self._upgd_noisy
                                           else 0, device=self.device)
        sp = [c.shrink_perturb for c in self.configs]
        if sp[0] is not None:
            self._shrink = per_replica([1.0 - o.lr * after for o, (_, after) in zip(oc, decays)])
            self._noise_std = per_replica([s.noise_std for s in sp])
            self._noisy = {r for r, s in enumerate(sp) if s.noise_std > 0.0}
            self._noise = torch.zeros(self.n, sum(p[0].numel() for p in self._params), device=self.device)

    # -- protocol ------------------------------------------------------------------------------
    def act(self, observations: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
        """Predict every seed's batch: ``(R, batch, *x)`` → ``(R, batch)``."""
        train = _common(infos, "next_phase", "train") == "train"
        out, cache = self._forward_any(observations)
        self._pending = (observations, out, cache) if train else None
        out = out if self._numpy else out.cpu().numpy()
        return out.argmax(2) if self.classification else out[..., 0].copy()

    def observe(self, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                infos: dict[str, Any]) -> None:
        pending, self._pending = self._pending, None
        # (the phases were checked equal at act: a seed's phase now is the next_phase it had then)
        if _common(infos, "phase", None, check=False) != "train":
            return
        if "target" not in infos:
            raise KeyError("observe: info has no 'target' in a train phase")
        if pending is None or pending[0] is not observations:
            out, cache = self._forward_any(observations)
        else:
            _, out, cache = pending
        self._learn(out, cache, infos["target"])

    # -- optional protocol parts ---------------------------------------------------------------
    def probe_model(self, index: int = 0) -> torch.nn.Module:
        """Seed ``index``'s network as an ``nn.Module`` (a copy, for plasticity metrics)."""
        if self._probe_net is None:
            self._probe_net = build_network(self.config, self.spec, torch.Generator().manual_seed(0)).to(self.device)
            self._probe_net.eval()
        with torch.no_grad():
            for lin, w, b in zip(_linears(self._probe_net), self.current_weights(), self.biases):
                lin.weight.copy_(w[index])
                lin.bias.copy_(b[index])
            for norm, scale, shift in zip(getattr(self._probe_net, "norms", None) or (), self.norm_scales,
                                          self.norm_shifts):
                norm.weight.copy_(scale[index])
                norm.bias.copy_(shift[index])
        return self._probe_net

    @torch.no_grad()
    def probe_features(self, observations: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every seed's hidden representations of a probe batch, in one batched pass.

        ``observations``: ``(R, P, *x_shape)``. Returns ``(hidden, weights)``: ``hidden[l]`` is
        hidden layer ``l``'s activations ``(R, P, units)``; ``weights[l]`` is layer ``l``'s weight
        ``(R, out, in)`` as the networks have it now (the head last).
        """
        x = self._tensor(observations)
        weights = self.current_weights()
        hidden = []
        for i, (w, b) in enumerate(zip(weights[:-1], self.biases)):
            pre = TORCH.affine(x, w, w.transpose(1, 2), b.unsqueeze(1))
            if self.norm_scales:
                pre = self._layer_norm(TORCH, pre, self.norm_scales[i][:, None], self.norm_shifts[i][:, None])[0]
            x = activate(TORCH, self.activation, pre, self.slope)
            hidden.append(x)
        return hidden, weights

    def current_weights(self) -> list[torch.Tensor]:
        """Every layer's weights ``(R, out, in)`` as the networks have them now: the stored ones
        plus the deferred updates (copies for deferred layers; the stored tensors otherwise)."""
        return [self._deferred[i].applied_to(w) if i in self._deferred else w
                for i, w in enumerate(self.weights)]

    def flush(self) -> None:
        """Fold the deferred updates into the stored weights (which then are the networks')."""
        for i in self._deferred:
            self._flush(i)

    @property
    def params(self) -> list[torch.Tensor]:
        """The parameters in the single learner's order (w0, b0, w1, ..., then LayerNorm's γ0, β0,
        ...), deferred updates applied."""
        return [t for pair in zip(self.current_weights(), self.biases) for t in pair] + self._params[2 * len(self.weights):]

    def config_hash(self) -> str:
        if all(c == self.config for c in self.configs):
            return self.config.config_hash()
        return config_hash({"replicas": [c.to_dict() for c in self.configs]})

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy) of everything that changes while learning."""
        return copy.deepcopy({
            "weights": [w.cpu() for w in self.weights],
            "deferred": {i: d.state_dict() for i, d in self._deferred.items()},
            "biases": [b.cpu() for b in self.biases],
            "optimizer": {k: [t.cpu() for t in v] for k, v in self.opt_state.items()},
            "cbp": [s.state_dict() for s in self.cbp] if self.cbp else None,
            "redo": self.redo.state_dict() if self.redo else None,
            "snr": self.snr.state_dict() if self.snr else None,
            "norms": [t.cpu() for t in self.norm_scales + self.norm_shifts],
            "l2_init_initial": [t.cpu() for t in self._initial] if self.config.l2_init is not None else None,
            "generators": [g.get_state() for g in self.generators],
            "updates": self.updates,
            "seeds": list(self.seeds),
            "config_hash": self.config_hash(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config_hash") != self.config_hash() or state.get("seeds") != self.seeds:
            raise ValueError("state was saved by a lockstep learner with a different config or seeds")
        with torch.no_grad():
            for dst, src in zip(self.weights + self.biases + self.norm_scales + self.norm_shifts,
                                state["weights"] + state["biases"] + state["norms"]):
                dst.copy_(src)
            for i, d in self._deferred.items():
                d.load_state_dict(state["deferred"][i])
            for k, tensors in self.opt_state.items():
                for dst, src in zip(tensors, state["optimizer"][k]):
                    dst.copy_(src)
        for s, st in zip(self.cbp or [], state["cbp"] or []):
            s.load_state_dict(st)
        if self.redo:
            self.redo.load_state_dict(state["redo"])
        if self.snr:
            self.snr.load_state_dict(state["snr"])
        if self.config.l2_init is not None:
            with torch.no_grad():
                for dst, src in zip(self._initial, state["l2_init_initial"]):
                    dst.copy_(src)
        for g, st in zip(self.generators, state["generators"]):
            g.set_state(st)
        self.updates = int(state["updates"])
        self._pending = None

    def __reduce__(self):
        return (_rebuild, (self.name, [c.to_dict() for c in self.configs], self.observation_space,
                           self.action_space, self.seeds, self._requested_device,
                           self._compile_request),
                self.state_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state)

    def __repr__(self) -> str:
        return f"LockstepLearner(name={self.name!r}, seeds={self.n}, device={self.device})"

    # -- the forward pass ----------------------------------------------------------------------
    def _tensor(self, observations: Any, numpy: bool = False) -> Any:
        """``(R, batch, *x_shape)`` observations as a float32 ``(R, batch, inputs)`` tensor (or
        numpy array on the numpy path)."""
        shape = tuple(np.shape(observations))
        if len(shape) < 3 or shape[0] != self.n:
            raise ValueError(f"expected observations of shape ({self.n}, batch, ...), got {shape}")
        x = np.asarray(observations, dtype=np.float32) if numpy else _as_float_tensor(observations, self.device)
        return x.reshape(self.n, shape[1], -1)

    def _forward_any(self, observations: np.ndarray) -> tuple[Any, tuple[list, list, list, list]]:
        if self._numpy:
            return self._forward(NUMPY, self._tensor(observations, numpy=True))
        with torch.no_grad():
            x = self._tensor(observations)
            # contiguous: the compiled step is specialised to its inputs' strides
            return self._forward(TORCH, x.contiguous() if self.compiled else x)

    def _forward(self, xp: Any, x: Any) -> tuple[Any, tuple[list, list, list, list]]:
        """The forward pass, keeping what the backward pass needs: (inputs, pres, posts, norms);
        with LayerNorm ``pres`` are the normalised pre-activations and ``norms`` holds each
        hidden layer's (x̂, 1/σ) (empty without)."""
        inputs, pres, posts, norms = [], [], [], []
        h = x
        last = len(self._affine) - 1
        for i, views in enumerate(self._affine):
            inputs.append(h)
            pre = xp.affine(h, *views)
            if i in self._deferred:
                self._deferred[i].add_forward(pre, h)
            if i == last:
                return pre, (inputs, pres, posts, norms)
            if self.norm_scales:
                pre, xhat, rstd = self._layer_norm(xp, pre, *self._norm_rows[i])
                norms += [xhat, rstd]
            h = activate(xp, self.activation, pre, self.slope)
            pres.append(pre)
            posts.append(h)
        raise AssertionError("unreachable")

    # -- the update ----------------------------------------------------------------------------
    def _targets(self, target: Any, batch: int) -> Any:
        """Labels int64 ``(R, batch, 1)`` or regression targets float32 ``(R, batch, 1)``."""
        if self._numpy:
            return np.asarray(target, dtype=np.int64 if self.classification else np.float32).reshape(self.n, batch, 1)
        if self.classification:
            y = (target.to(self.device) if isinstance(target, torch.Tensor) else
                 torch.as_tensor(target if type(target) is np.ndarray else np.asarray(target),
                                 device=self.device))
            if y.dtype != torch.int64:
                y = y.long()
        else:
            y = _as_float_tensor(target, self.device)
        return y.reshape(self.n, batch, 1).contiguous()

    def _output_gradient(self, xp: Any, out: Any, y: Any) -> tuple[Any, float]:
        """``(g, c)`` with ``c·g`` = d loss / d output per replica (cross-entropy or torch's
        mse_loss, mean over the batch); the constant ``c`` is folded into the step size."""
        scale = self._loss_scale(out.shape[1])
        return (xp.softmax_minus_onehot(out, y) if self.classification else out - y), scale

    def _loss_scale(self, batch: int) -> float:
        return (1.0 if self.classification else 2.0) / batch

    def _alpha(self, scale: float) -> Any:
        """The plain-SGD step ``−lr·scale``: a float, or ``(R, 1, 1)`` per replica (float32
        numpy on the numpy path); made once per scale (the batch size fixes it)."""
        alpha = self._alphas.get(scale)
        if alpha is None:
            alpha = along(-self.lr * scale if isinstance(self.lr, float) else self.lr * -scale, self.weights[0])
            if self._numpy:
                alpha = np.float32(alpha) if isinstance(alpha, float) else alpha.numpy()
            alpha = self._alphas[scale] = alpha
        return alpha

    def _layer_norm(self, xp: Any, pre: Any, scale: Any, shift: Any) -> tuple[Any, Any, Any]:
        """``(y, x̂, 1/σ)``: the LayerNorm of ``pre`` ``(R, batch, units)`` over the units (biased
        variance, ``nn.LayerNorm``'s ε), y = γ·x̂ + β, with γ and β rows ``(R, 1, units)``."""
        centred = pre - xp.mean_units(pre)
        rstd = xp.rsqrt(xp.mean_units(centred * centred) + self._norm_eps)
        xhat = centred * rstd
        return xp.addcmul(shift, xhat, scale), xhat, rstd

    def _layer_norm_backward(self, xp: Any, g: Any, scale: Any, xhat: Any, rstd: Any) -> tuple[Any, Any, Any]:
        """From ``g`` = d loss / d y, with γ row ``scale``: (d loss / d pre, d loss / d γ, d loss / d β)."""
        gx = g * scale
        g_pre = rstd * (gx - xp.mean_units(gx) - xhat * xp.mean_units(gx * xhat))
        return g_pre, (g * xhat).sum(1), g.sum(1)

    def _backward(self, xp: Any, weights: list, g: Any, cache: tuple[list, list, list, list], biases: list | None = None,
                  alpha: Any = None, *, top: int | None = None, bottom: int = 0) -> Any:
        """Backpropagate the output gradient ``g`` of layer ``top`` (default: the head) down to
        layer ``bottom``. With ``biases`` and ``alpha``: plain SGD (the paper's runs), w += alpha·gᵀx
        layer by layer with no gradient tensors (the gradient flows on through the weights as they
        were before the update); returns the gradient flowing into layer ``bottom − 1`` (for the
        rest of the pass). Without: return every parameter's gradient, in w0, b0, w1, b1, ... order
        (weights (R, out, in)), then the LayerNorm scales' and shifts' (γ0, β0, γ1, ...; LayerNorm
        takes this path only)."""
        inputs, pres, posts, norms = cache
        grads: list = []
        norm_grads: list = []
        for i in range(len(weights) - 1 if top is None else top, bottom - 1, -1):
            g_prev = xp.bmm(g, weights[i]) if i > 0 else None
            if biases is None:
                grads[:0] = [xp.bmm(g.mT, inputs[i]), g.sum(1)]
            else:
                deferred = self._deferred.get(i)
                if deferred is None:
                    xp.add_outer_(weights[i], g, inputs[i], alpha)
                else:
                    if g_prev is not None:
                        deferred.add_backward(g_prev, g)
                    deferred.push(weights[i], g, inputs[i], alpha)
                xp.add_rows_(biases[i], g, alpha)
            if g_prev is not None:
                g = activation_backward(xp, self.activation, g_prev, pres[i - 1], posts[i - 1], self.slope)
                if norms:
                    g, d_scale, d_shift = self._layer_norm_backward(xp, g, self._norm_rows[i - 1][0],
                                                                    norms[2 * i - 2], norms[2 * i - 1])
                    norm_grads[:0] = [d_scale, d_shift]
        return g if biases is not None else grads + norm_grads

    def _train_step(self, out: torch.Tensor, y: torch.Tensor, inputs: list, pres: list,
                    posts: list, norms: list) -> list[torch.Tensor]:
        """One update of every replica — plain SGD straight into the weights, else through the
        gradients and the optimizer; then weight clipping and Shrink and Perturb — returning the
        gradient flowing into the layers below ``_split`` (updated by the caller: their updates
        are deferred) and the column |w| sums of the layers CBP reads (``_out_magnitude_layers``).
        Run as is, or compiled."""
        g, scale = self._output_gradient(TORCH, out, y)
        if self._plain_sgd:
            g = self._backward(TORCH, self.weights, g, (inputs, pres, posts, norms), self.biases, self._alpha(scale),
                               bottom=self._split)
        else:
            self._optimizer_step(self._backward(TORCH, self.weights, g.mul_(scale) if scale != 1.0 else g,
                                                (inputs, pres, posts, norms)))
        self._finish_update()
        return [g, *(batched_abs_sum(self.weights[i], 1) for i in self._out_magnitude_layers)]

    def _finish_update(self) -> None:
        """What follows the gradient step within an update, before CBP and ReDo: weight clipping,
        then Shrink and Perturb (its noise already drawn). No layer is deferred when either is on."""
        if self.config.weight_clip is not None:
            clip_weights_(self._params, self._clip_bounds, kappa=self._clip_kappa)
        if self.config.shrink_perturb is not None:
            shrink_perturb(self._update_params, shrink=self._shrink, noise_std=self._noise_std,
                           noise=self._noise if self._noisy else None)

    @torch.no_grad()
    def _learn(self, out: Any, cache: tuple[list, list, list, list], target: Any) -> None:
        inputs, pres, posts, norms = cache
        y = self._targets(target, out.shape[1])
        magnitudes: dict[int, torch.Tensor] = {}
        if self.config.shrink_perturb is not None and self._noisy:  # drawn here: the step may be compiled
            draw_noise(self._noise, [g if r in self._noisy else None for r, g in enumerate(self.generators)])
        if self._numpy:
            g, scale = self._output_gradient(NUMPY, out, y)
            if self._plain_sgd:
                self._backward(NUMPY, self._np[0], g, cache, self._np[1], self._alpha(scale))
            else:  # the gradients, laid out as the flat parameters
                if scale != 1.0:
                    g *= np.float32(scale)
                grads = self._backward(NUMPY, self._np[0], g, cache)
                self._optimizer_step([torch.from_numpy(np.concatenate([a.reshape(self.n, -1) for a in grads], 1))])
            self._finish_update()
            posts = [torch.from_numpy(h) for h in posts]  # for CBP / ReDo, zero-copy
        else:
            g, *sums = self._run_step(out, y, inputs, pres, posts, norms)
            magnitudes = dict(zip(self._out_magnitude_layers, sums))
            if self._split:  # the bottom layers, whose updates are deferred: eagerly
                self._backward(TORCH, self.weights, g, cache, self.biases, self._alpha(self._loss_scale(out.shape[1])),
                               top=self._split - 1)
        self.updates += 1
        if self._k > 1:  # CReLU: each unit's outputs as a pair, (R, batch, units, 2)
            posts = [h.reshape(*h.shape[:2], -1, self._k) for h in posts]
        if self.cbp is not None:
            self._cbp_step(posts, magnitudes)
        for layer, replica, idx in self.redo.update(posts) if self.redo else ():
            self._reinit_units(layer, replica, idx)
        for layer, replica, idx in self.snr.update(posts) if self.snr else ():
            self._reinit_units(layer, replica, idx)

    def _init_optimizer_state(self) -> None:
        keys = (("exp_avg", "exp_avg_sq", "bias_correction1", "bias_correction2") if self.adam else
                ("utility", "utility_correction") if self.config.upgd is not None else
                ("momentum_buffer",) if not self._plain_sgd and any(
                    c.optimizer.momentum > 0 for c in self.configs) else ())
        # Each state tensor per parameter (unit surgery and checkpoints use these), and as the
        # update takes it (the same memory: one flat tensor on the flat layout).
        self.opt_state: dict[str, list[torch.Tensor]] = {}
        self._update_state: dict[str, list[torch.Tensor]] = {}
        for k in keys:
            self.opt_state[k], self._update_state[k] = self._zeros_like_params()
        self._scratch = [torch.empty_like(p) for p in self._update_params] if self.adam else None

    def _flatten_parameters(self) -> torch.Tensor:
        """Move every parameter into one ``(R, total)`` tensor, in ``_params`` order, and make the
        weights, biases and ``_params`` views of it; returns it."""
        flat = torch.cat([p.reshape(self.n, -1) for p in self._params], 1)
        self._params = self._views(flat)
        n_layers = len(self.weights)
        self.weights, self.biases = self._params[0:2 * n_layers:2], self._params[1:2 * n_layers:2]
        self.norm_scales, self.norm_shifts = self._params[2 * n_layers::2], self._params[2 * n_layers + 1::2]
        return flat

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``flat`` ``(R, total)`` split into tensors shaped like the parameters (views)."""
        views, start = [], 0
        for p in self._params:
            size = p[0].numel()
            views.append(flat[:, start:start + size].view(p.shape))
            start += size
        return views

    def _zeros_like_params(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Zeros shaped like the parameters, as (one per parameter, what the update takes): on the
        flat layout, views of one new flat tensor and [that tensor]; else the same list twice."""
        if self._flat is None:
            tensors = [torch.zeros_like(p) for p in self._params]
            return tensors, tensors
        flat = torch.zeros_like(self._flat)
        return self._views(flat), [flat]

    def _optimizer_step(self, grads: list[torch.Tensor]) -> None:
        """The optimizer's update from ``grads``, shaped like ``_update_params``."""
        st, params = self._update_state, self._update_params
        if self.config.l2_init is not None:
            grads = l2_init_gradient(grads, params, self._update_initial, strength=self._l2_strength)
        if self.config.upgd is not None:
            upgd_update(params, grads, st["utility"], st["utility_correction"], lr=self.lr,
                        **self._upgd, noise=self._upgd_noise,
                        generators=[g if r in self._upgd_noisy else None for r, g in enumerate(self.generators)])
        elif self.adam:
            adam_update(params, grads, st["exp_avg"], st["exp_avg_sq"], st["bias_correction1"],
                        st["bias_correction2"], lr=self.lr, scratch=self._scratch,
                        beta1=self.betas[0], beta2=self.betas[1], eps=self.eps, weight_decay=self.weight_decay)
        else:
            sgd_update(params, grads, st.get("momentum_buffer"), lr=self.lr, momentum=self.momentum,
                       weight_decay=self.weight_decay)

    # -- unit surgery: CBP and ReDo ------------------------------------------------------------
    def _reinit_units(self, layer: int, replica: int, idx: torch.Tensor,
                      unit_means: torch.Tensor | None = None) -> None:
        """Units ``idx`` of hidden layer ``layer`` of one replica afresh (:func:`plasticity_gym_agents.units.reinit_slices`)."""
        # The surgery overwrites the producer's rows and the consumer's columns of these units,
        # so their deferred updates are dropped, not folded in (a fold would read the whole layer).
        if layer in self._deferred:
            self._deferred[layer].drop(replica, rows=idx)
        if layer + 1 in self._deferred:
            if unit_means is None:  # (the bias correction reads the consumer's weights as they are)
                columns = (idx[:, None] * self._k + torch.arange(self._k, device=idx.device)).reshape(-1)
                self._deferred[layer + 1].drop(replica, columns=columns)
            else:
                self._flush(layer + 1)
        states = list(self.opt_state.values())

        def slot(i: int, view: Any = None) -> tuple[torch.Tensor, list[torch.Tensor]]:  # in _params order
            view = view or (lambda t: t)
            return view(self._params[i]), [view(s[i]) for s in states]

        def pairs(t: torch.Tensor) -> torch.Tensor:  # consumer (R, out, units·k): unit i owns k columns
            return t.view(t.shape[0], t.shape[1], -1, self._k)

        norm = 2 * len(self.weights) + 2 * layer  # LayerNorm's scale and shift follow the head in _params
        reinit_slices(replica, idx, incoming=slot(2 * layer), bias=slot(2 * layer + 1),
                      outgoing=[(slot(2 * layer + 2, pairs if self._k > 1 else None), self.biases[layer + 1])],
                      spec=self.init_specs[layer], generator=self.generators[replica], unit_means=unit_means,
                      norm=(slot(norm), slot(norm + 1)) if self.norm_scales else None)

    def _cbp_step(self, posts: list[torch.Tensor], out_magnitudes: dict[int, torch.Tensor]) -> None:
        for layer, stats in enumerate(self.cbp):
            w, consumer = self.weights[layer], self.weights[layer + 1]
            in_mag = batched_abs_sum(w, 2) if stats.config.utility != "contribution" else None
            out_mag = out_magnitudes.get(layer + 1)
            out_mag = batched_abs_sum(consumer, 1) if out_mag is None else out_mag
            if self._k > 1:  # a CReLU unit's outgoing magnitude: both its columns
                out_mag = out_mag.view(self.n, -1, self._k).sum(2)
            stats.update(posts[layer], out_mag, in_mag)
            for replica, idx in stats.due().items():
                self._reinit_units(layer, replica, idx, stats.expected_values(replica, idx))
                stats.reset_units(replica, idx)

    # -- deferred updates and compiling --------------------------------------------------------
    def _deferred_updates(self) -> dict[int, _DeferredUpdate]:
        """The layers whose plain-SGD updates are deferred: large enough to be memory-bound, and
        read by nothing but the forward and backward passes between updates (CBP reads its
        consumer layers' |w| every step, and its producers' with the adaptable utility)."""
        if not self._plain_sgd or self.config.shrink_perturb is not None or self.config.weight_clip is not None:
            return {}
        read_each_step: set[int] = set()
        cbp = self.config.cbp
        if cbp is not None:
            read_each_step.update(range(1, len(self.weights)))
            if cbp.utility != "contribution":
                read_each_step.update(range(len(self.weights) - 1))
        return {i: _DeferredUpdate(w, _DEFERRED_RANK) for i, w in enumerate(self.weights)
                if i not in read_each_step and (w.shape[1] * w.shape[2] >= _DEFERRED_MIN_ELEMENTS
                                                or w.numel() >= _DEFERRED_MIN_STACKED)}

    def _flush(self, layer: int) -> None:
        if layer in self._deferred:
            self._deferred[layer].flush(self.weights[layer])

    def _use_compile(self, request: bool | str) -> bool:
        """Whether the update step runs through ``torch.compile`` (any torch-path step; the
        deferred bottom layers stay eager). With ``"auto"``, on the CPU when a C++ compiler is
        installed: Adam (Inductor fuses its dozen elementwise passes per parameter into one); CBP
        on large networks (its column |w| sums fused into the update: measured 1.1–1.2× with 32
        seeds of the 3×100 MNIST net; plain backprop ran 5% slower compiled); and SGD with
        momentum or weight decay, and Shrink and Perturb, from one 3×100 MNIST net on (3 seeds
        of that net, ``bench/profile_step.py --compile on|off``: L2 1.35–1.45×, S&P 1.15–1.3×).
        L2 Init, UPGD, LayerNorm and weight clipping stay eager under "auto": not measured
        compiled yet."""
        if request not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {request!r}")
        # (the numpy path is not torch; the deferred layers' updates run eagerly below the step)
        eligible = not self._numpy and set(self._deferred) == set(range(self._split))
        if request is False or not eligible:
            return False
        if request is True:
            return True
        if self.device.type != "cpu" or not _cxx_compiler_available() or _torch_version() < _COMPILE_TESTED_TORCH:
            return False
        n_weights = sum(w.numel() for w in self.weights)
        config = self.config
        sgd_with_state_or_noise = (not self.adam and config.l2_init is None and config.upgd is None
                                   and not config.network.layer_norm and config.weight_clip is None
                                   and config.cbp is None and (not self._plain_sgd or config.shrink_perturb is not None))
        return self.adam and n_weights >= _COMPILE_MIN_ADAM or (
            bool(self._out_magnitude_layers) and n_weights >= _COMPILE_MIN_ELEMENTS) or (
            sgd_with_state_or_noise and n_weights >= _COMPILE_MIN_SGD)

    def _run_step(self, *args: Any) -> list[torch.Tensor]:
        """The update step, compiled when ``self.compiled``. If compiling fails (no working C++
        toolchain, an unsupported build) it warns once and runs eagerly from then on; with
        ``fullgraph`` nothing has run when compiling fails, so no update is applied twice."""
        if not self.compiled:
            return self._train_step(*args)
        if self._check_compiled:
            return self._checked_first_step(*args)
        try:
            return self._step(*args)
        except Exception as error:  # noqa: BLE001  (only compile failures are caught, below)
            if not _is_compile_error(error):
                raise
            self._fall_back(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]})")
            return self._train_step(*args)

    def _fall_back(self, why: str) -> None:
        warnings.warn(f"{why}; the lockstep learner runs eagerly", RuntimeWarning, stacklevel=5)
        self.compiled, self._step = False, self._train_step

    def _checked_first_step(self, *args: Any) -> list[torch.Tensor]:
        """The first compiled step, then the same step eagerly from the same state; a compiled step
        that disagrees (torch 2.11's CPU Inductor was measured wrong on a 16-core machine) is
        dropped for good. A run's very first update keeps the eager result; the first step of a
        learner restored mid-run keeps the compiled one, which the uninterrupted run took at that
        update, so that a resumed run is the uninterrupted one bit for bit."""
        self._check_compiled = False
        keep_compiled = self.updates > 0
        state = [*self._params, *(t for ts in self.opt_state.values() for t in ts)]
        before, eager_args = [t.clone() for t in state], [_clone(a) for a in args]
        try:
            compiled = [t.clone() for t in [*self._step(*args), *state]]
        except Exception as error:  # noqa: BLE001  (only compile failures are caught, below)
            if not _is_compile_error(error):
                raise
            self._fall_back(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]})")
            return self._train_step(*eager_args)
        for t, b in zip(state, before):
            t.copy_(b)
        out = self._train_step(*eager_args)
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(compiled, [*out, *state])):
            self._fall_back(f"the compiled update step disagrees with the eager one under torch {torch.__version__}")
        elif keep_compiled:
            for t, c in zip(state, compiled[len(out):]):
                t.copy_(c)
            return compiled[:len(out)]
        return out


def _own_code(method: Any) -> Any:
    """``method`` bound to its instance through a copy of its function with a code object of its
    own: Dynamo keeps the compiled variants of a code object in one cache of at most
    ``recompile_limit`` (8) entries, and every learner's step is one more (a sweep's process, a
    benchmark, builds many)."""
    f = method.__func__
    own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    return types.MethodType(own, method.__self__)


def _clone(a: Any) -> Any:
    return [t.clone() for t in a] if isinstance(a, list) else a.clone()


# Plain SGD at batch 1 changes a layer by a rank-1 matrix per step; for a large layer, writing
# that into the weights every step costs a read and a write of the whole matrix. Instead the
# last few updates are kept as factors and folded into the weights every _DEFERRED_RANK steps.
_DEFERRED_RANK = 32
_DEFERRED_MIN_ELEMENTS = 1 << 18
# ... or a layer of many replicas, stacked (3×100 MNIST nets' first layer from 14 seeds on).
_DEFERRED_MIN_STACKED = 1 << 20
# Networks (all seeds together) up to this many weights take the numpy path on the CPU.
_NUMPY_MAX_ELEMENTS = 1 << 16
# Networks (all seeds together) of at least this many weights run compiled on the CPU ("auto"):
# 3×100 MNIST nets from 6 seeds on. Below it compiling (seconds) does not pay for itself soon.
_COMPILE_MIN_ELEMENTS = 1 << 19
# SGD with momentum or weight decay, and Shrink and Perturb, compiled ("auto", CPU) from this many
# weights over all seeds: one 3×100 MNIST net (89,610); SlowRegression's tiny nets gained nothing.
_COMPILE_MIN_SGD = 1 << 16
# Adam compiled ("auto", CPU) from this many weights over all seeds: measured 3× the eager step
# (PermutedMNIST 3×100, 3 seeds) once compiled (a few seconds); a single tiny network stays eager.
# (Networks up to _NUMPY_MAX_ELEMENTS take the numpy path instead: SlowRegression's 5 seeds ran
# 1.5× as fast there as compiled, bench/profile_step.py --torch-path.)
_COMPILE_MIN_ADAM = 1 << 9
# "auto" compiles only under torch versions whose compiled step this project's tests have run
# (under 2.11 the CPU-compiled step was measured wrong on a 16-core machine).
_COMPILE_TESTED_TORCH = (2, 14)


def _torch_version() -> tuple[int, ...]:
    return tuple(int("".join(filter(str.isdigit, part)) or 0) for part in torch.__version__.split(".")[:2])


class _DeferredUpdate:
    """Pending updates of one layer: ``W_now = W + Σ_k a_k b_kᵀ`` with ``a_k = α·g_k`` (``(N, out)``)
    and ``b_k = x_k`` (``(N, in)``), at most ``rank`` of them; pushing the next one when full
    first folds them into ``W`` with one batched GEMM. Forward and backward passes add the
    pending part's product, so the network computes exactly with ``W_now`` (to float rounding)."""

    def __init__(self, w: torch.Tensor, rank: int) -> None:
        n, out, inp = w.shape
        self.a = torch.zeros(n, rank, out, device=w.device, dtype=w.dtype)
        self.b = torch.zeros(n, rank, inp, device=w.device, dtype=w.dtype)
        self.count = 0

    def add_forward(self, pre: torch.Tensor, x: torch.Tensor) -> None:
        """``pre += x · (Σ a_k b_kᵀ)ᵀ`` for inputs ``x`` (N, batch, in)."""
        k = self.count
        if k:
            pre.baddbmm_(torch.bmm(x, self.b[:, :k].transpose(1, 2)), self.a[:, :k])

    def add_backward(self, g_in: torch.Tensor, g: torch.Tensor) -> None:
        """``g_in += g · Σ a_k b_kᵀ`` for output gradients ``g`` (N, batch, out)."""
        k = self.count
        if k:
            g_in.baddbmm_(torch.bmm(g, self.a[:, :k].transpose(1, 2)), self.b[:, :k])

    def push(self, w: torch.Tensor, g: torch.Tensor, x: torch.Tensor, alpha: Any) -> None:
        """Defer ``w += α·gᵀx`` (g (N, batch, out), x (N, batch, in); α a float or (N, 1, 1))."""
        batch = g.shape[1]
        if self.count + batch > self.a.shape[1]:
            self.flush(w)
            if batch > self.a.shape[1]:
                TORCH.add_outer_(w, g, x, alpha)
                return
        k = self.count
        torch.mul(g, alpha, out=self.a[:, k:k + batch])
        self.b[:, k:k + batch].copy_(x)
        self.count = k + batch

    def drop(self, replica: int, *, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None) -> None:
        """Forget the pending updates of ``rows`` (outputs) or ``columns`` (inputs) of one replica:
        for slices that are about to be overwritten."""
        k = self.count
        if k and rows is not None:
            self.a[replica, :k, rows] = 0
        if k and columns is not None:
            self.b[replica, :k, columns] = 0

    def flush(self, w: torch.Tensor) -> None:
        k = self.count
        if k:
            w.baddbmm_(self.a[:, :k].transpose(1, 2), self.b[:, :k])
            self.count = 0

    def applied_to(self, w: torch.Tensor) -> torch.Tensor:
        k = self.count
        return torch.baddbmm(w, self.a[:, :k].transpose(1, 2), self.b[:, :k]) if k else w.clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"a": self.a[:, :self.count].cpu(), "b": self.b[:, :self.count].cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        k = int(state["a"].shape[1])
        if k > self.a.shape[1]:
            raise ValueError(f"saved deferred updates of rank {k} exceed this learner's {self.a.shape[1]}")
        self.a[:, :k].copy_(state["a"])
        self.b[:, :k].copy_(state["b"])
        self.count = k


def _as_float_tensor(array: Any, device: torch.device) -> torch.Tensor:
    """A float32 tensor on ``device``; zero-copy for a float32 numpy array on the CPU and for a
    float32 tensor already on ``device`` (a stream block kept in accelerator memory)."""
    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=torch.float32)
    if type(array) is np.ndarray and array.dtype == np.float32 and device.type == "cpu":
        return torch.from_numpy(array)
    return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=device)


def _common(infos: dict[str, Any], key: str, default: Any, check: bool = True) -> Any:
    """``infos[key]``, which must be the same for every seed (a vector env gives an array)."""
    value = infos.get(key, default)
    if not isinstance(value, (np.ndarray, list, tuple)):
        return value
    if check and list(value).count(value[0]) != len(value):
        raise ValueError(f"lockstep seeds must be in the same phase at every step, got {key}="
                         f"{sorted(set(map(str, value)))}: run seeds of one env config together")
    return value[0]


def _linears(net: torch.nn.Module) -> list[torch.nn.Linear]:
    return [*getattr(net, "layers", []), net.head]


def _rebuild(name, configs, observation_space, action_space, seeds, device, compile="auto"):
    return LockstepLearner(name, [LearnerConfig.from_dict(c) for c in configs], observation_space,
                           action_space, seeds=seeds, device=device, compile=compile)


def _quiet_import_cpp_extension() -> None:
    """Inductor imports torch.utils.cpp_extension, which warns about a missing CUDA runtime on
    CPU-only machines: noise for a CPU compile."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.setLevel(level)


def _cxx_compiler_available() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if c)


def _is_compile_error(error: Exception) -> bool:
    """An error raised while compiling (Dynamo / Inductor / the C++ toolchain), not by the math."""
    module = type(error).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) or isinstance(
        error, (OSError, ImportError, RuntimeError)) and "compil" in str(error).lower()
