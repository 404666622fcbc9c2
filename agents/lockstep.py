"""Many seeds of one MLP reference agent in lockstep, as one batched computation (issue 5).

The paper needed 30–100 runs per configuration. :class:`LockstepLearner` trains ``N``
independent MLPs — one per seed, each exactly the network :func:`agents.make_agent` builds for
that seed — on ``N`` streams at once: weights are stacked along a leading seed axis, the
forward and backward passes are hand-written batched matmuls, and the optimizer, Shrink and
Perturb, continual backprop and ReDo act on every seed in the same few tensor operations.

Each seed's trajectory equals running that seed alone with :class:`agents.SupervisedLearner`
(to float tolerance; tested over thousands of steps, CBP replacements included):

* the initial weights are those of the single learner's network for that seed;
* every random draw after construction (S&P noise, CBP/ReDo redraws) comes from that seed's own
  generator, in the single learner's order;
* the CBP decisions come from the same :class:`agents.cbp_state.UnitStatistics` the single
  learner uses.

It speaks a vectorised agent protocol: observations ``(N, batch, *x_shape)``, actions
``(N, batch)``, rewards ``(N,)`` and Gymnasium vector-env ``info`` (arrays over seeds), as
produced by ``gym.make_vec(env_id, num_envs=N, vectorization_mode="vector_entry_point")``.
All seeds must be in the same phase at every step (true for one env config with any seeds).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.cbp_state import UnitStatistics
from agents.config import LearnerConfig
from agents.learners import build_network, resolve_device, task_spec
from agents.networks import MLP, activation_derivative_np, activation_np
from agents.units import batched_abs_sum, get_init

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
    return None


def _activation(name: str, pre: torch.Tensor, slope: float) -> torch.Tensor:
    if name == "relu":
        return torch.relu(pre)
    if name == "leaky_relu":
        return torch.nn.functional.leaky_relu(pre, slope)
    if name == "tanh":
        return torch.tanh(pre)
    if name == "sigmoid":
        return torch.sigmoid(pre)
    if name == "elu":
        return torch.nn.functional.elu(pre)
    return torch.nn.functional.silu(pre)


def _through_activation(name: str, g: torch.Tensor, pre: torch.Tensor, post: torch.Tensor,
                        slope: float) -> torch.Tensor:
    """g · d post / d pre (may reuse g's memory)."""
    if name == "relu":
        return torch.ops.aten.threshold_backward(g, post, 0.0)  # one fused op, the hot case
    if name == "leaky_relu":
        return g.mul_(torch.where(pre > 0, 1.0, slope).to(g.dtype))
    if name == "tanh":
        return g.mul_(1.0 - post * post)
    if name == "sigmoid":
        return g.mul_(post * (1.0 - post))
    if name == "elu":
        return g.mul_(torch.where(pre > 0, torch.ones_like(post), post + 1.0))
    s = torch.sigmoid(pre)
    return g.mul_(s * (1.0 + pre * (1.0 - s)))


class LockstepLearner:
    """``len(seeds)`` independent copies of reference agent ``name``, trained in lockstep."""

    learns_only_in_train = True

    def __init__(self, name: str, config: LearnerConfig, observation_space: gym.Space,
                 action_space: gym.Space, *, seeds: Sequence[int], device: str = "auto",
                 compile: bool | str = "auto") -> None:
        reason = lockstep_support(config)
        if reason is not None:
            raise LockstepUnsupported(f"agent {name!r} cannot run in lockstep: {reason}")
        if len(seeds) == 0:
            raise ValueError("seeds must not be empty")
        self.name = name
        self.config = config
        self.seeds = [int(s) for s in seeds]
        self.n = len(self.seeds)
        self.observation_space = observation_space
        self.action_space = action_space
        self._requested_device = str(device)
        self.device = resolve_device(device)
        self.spec = task_spec(observation_space, action_space)
        self.classification = self.spec["kind"] == "classification"
        nets = [build_network(config, self.spec, torch.Generator().manual_seed(s)) for s in self.seeds]
        linears = self._linears(nets[0])
        self.activation = config.network.activation
        self.slope = config.network.leaky_slope
        self.init_specs = [get_init(lin) for lin in linears]
        # Stacked parameters in nn.Linear layout: weights (N, out, in), biases (N, out).
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        for i in range(len(linears)):
            ws = [self._linears(net)[i] for net in nets]
            self.weights.append(torch.stack([m.weight.detach() for m in ws]).to(self.device).contiguous())
            self.biases.append(torch.stack([m.bias.detach() for m in ws]).to(self.device).contiguous())
        # Cached views (the tensors are only ever changed in place, so the views stay valid).
        self._wt = [w.transpose(1, 2) for w in self.weights]  # (N, in, out) for the forward GEMM
        self._bias_rows = [b.unsqueeze(1) for b in self.biases]  # (N, 1, out) views for baddbmm
        oc = config.optimizer
        self._plain_sgd = oc.name == "sgd" and oc.momentum == 0.0 and oc.weight_decay == 0.0
        # The single learner's parameter order (network.parameters()): w0, b0, w1, b1, ..., head.
        self._params: list[torch.Tensor] = [t for pair in zip(self.weights, self.biases) for t in pair]
        self.generators = [torch.Generator(device=self.device).manual_seed(s + 1) for s in self.seeds]
        self._init_optimizer_state()
        n_hidden = len(self.weights) - 1
        widths = [int(w.shape[1]) for w in self.weights[:-1]]
        self.cbp = ([UnitStatistics(config.cbp, self.n, widths[i], device=self.device)
                     for i in range(n_hidden)] if config.cbp else None)
        self.redo_sums = ([torch.zeros(self.n, widths[i], device=self.device) for i in range(n_hidden)]
                          if config.redo else None)
        self.redo_count = 0
        self.redo_replacements = np.zeros(self.n, dtype=np.int64)
        self._deferred = self._deferred_updates()
        # Tiny networks on the CPU (SlowRegression's 5 units × 100 seeds) are bound by per-call
        # overhead, several times smaller in numpy than in torch: their forward, backward and SGD
        # step run in numpy on views that share the stacked tensors' memory.
        n_weights = sum(w.numel() for w in self.weights)
        self._numpy = (self.device.type == "cpu" and self._plain_sgd and not self._deferred
                       and n_weights <= _NUMPY_MAX_ELEMENTS)
        if self._numpy:
            self._np_weights = [w.numpy() for w in self.weights]
            self._np_wt = [w.transpose(0, 2, 1) for w in self._np_weights]
            self._np_biases = [b.numpy() for b in self.biases]
            self._np_bias_rows = [b[:, None, :] for b in self._np_biases]
        # CBP reads its consumer layers' column |w| sums right after the update; under plain SGD
        # with nothing in between (no Shrink and Perturb) the train step returns them.
        self._out_magnitude_layers = (tuple(range(1, len(self.weights)))
                                      if config.cbp is not None and self._plain_sgd
                                      and config.shrink_perturb is None else ())
        self._compile_request = compile
        self._sgd_step = self._sgd_train_step
        self.compiled = self._use_compile(compile)
        if self.compiled:  # the forward stays eager: a compiled call's own overhead is as large
            _quiet_import_cpp_extension()
            # fullgraph: nothing runs before the whole step has compiled, so a failed compile
            # can fall back to eager without having changed any weight.
            self._sgd_step = torch.compile(self._sgd_train_step, dynamic=False, fullgraph=True)
        self._pending: tuple | None = None
        self._probe_net: MLP | None = None
        self.updates = 0

    @staticmethod
    def _linears(net: torch.nn.Module) -> list[torch.nn.Linear]:
        return [*getattr(net, "layers", []), net.head]

    # -- protocol ------------------------------------------------------------------------------
    @property
    def uses_task_boundaries(self) -> bool:
        return False

    def act(self, observations: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
        """Predict every seed's batch: ``(N, batch, *x)`` → ``(N, batch)``."""
        out, cache = self._forward_any(observations)
        train = _first(infos, "next_phase", "train") == "train"
        self._pending = (observations, out, cache) if train else None
        if self._numpy or out.device.type == "cpu":
            out = out if self._numpy else out.numpy()
            return out.argmax(2) if self.classification else out[..., 0].copy()
        if self.classification:
            return out.argmax(2).cpu().numpy()
        return out[..., 0].cpu().numpy()

    def observe(self, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                infos: dict[str, Any]) -> None:
        pending, self._pending = self._pending, None
        if _first(infos, "phase", None) != "train":
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
        """Seed ``index``'s network as an ``nn.Module`` (for plasticity metrics)."""
        if self._probe_net is None:
            self._probe_net = build_network(self.config, self.spec, torch.Generator().manual_seed(0)).to(self.device)
            self._probe_net.eval()
        with torch.no_grad():
            for lin, w, b in zip(self._linears(self._probe_net), self.current_weights(), self.biases):
                lin.weight.copy_(w[index])
                lin.bias.copy_(b[index])
        return self._probe_net

    @torch.no_grad()
    def probe_features(self, observations: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every seed's hidden representations of a probe batch, in one batched pass.

        ``observations``: ``(N, P, *x_shape)``. Returns ``(hidden, weights)``: ``hidden[l]`` is
        hidden layer ``l``'s activations ``(N, P, units)``; ``weights[l]`` is layer ``l``'s weight
        ``(N, out, in)`` as the networks have it now (the head last).
        """
        x = _as_float_tensor(observations, self.device)
        if x.dim() < 3 or x.shape[0] != self.n:
            raise ValueError(f"expected probe observations of shape ({self.n}, P, ...), got {tuple(x.shape)}")
        x = x.reshape(self.n, x.shape[1], -1)
        weights = self.current_weights()
        h = x
        hidden = []
        for i, (w, b) in enumerate(zip(weights, self.biases)):
            pre = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i == len(weights) - 1:
                break
            h = _activation(self.activation, pre, self.slope)
            hidden.append(h)
        return hidden, weights

    def current_weights(self) -> list[torch.Tensor]:
        """Every layer's weights ``(N, out, in)`` as the networks have them now: the stored ones
        plus the deferred updates (copies for deferred layers; the stored tensors otherwise)."""
        return [self._deferred[i].applied_to(w) if i in self._deferred else w
                for i, w in enumerate(self.weights)]

    @property
    def params(self) -> list[torch.Tensor]:
        """The parameters in the single learner's order (w0, b0, w1, ...), deferred updates applied."""
        return [t for pair in zip(self.current_weights(), self.biases) for t in pair]

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (deep copy) of everything that changes while learning."""
        return copy.deepcopy({
            "weights": [w.cpu() for w in self.weights],
            "deferred": {i: d.state_dict() for i, d in self._deferred.items()},
            "biases": [b.cpu() for b in self.biases],
            "optimizer": {k: [t.cpu() for t in v] if isinstance(v, list) else v
                          for k, v in self.opt_state.items()},
            "cbp": [s.state_dict() for s in self.cbp] if self.cbp else None,
            "redo": ({"sums": [s.cpu() for s in self.redo_sums], "count": self.redo_count,
                      "replacements": self.redo_replacements.copy()} if self.redo_sums else None),
            "generators": [g.get_state() for g in self.generators],
            "updates": self.updates,
            "seeds": list(self.seeds),
            "config_hash": self.config.config_hash(),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config_hash") != self.config.config_hash() or state.get("seeds") != self.seeds:
            raise ValueError("state was saved by a lockstep learner with a different config or seeds")
        with torch.no_grad():
            for dst, src in zip(self.weights + self.biases, state["weights"] + state["biases"]):
                dst.copy_(src)
            saved = state.get("deferred", {})
            for i, d in self._deferred.items():
                d.load_state_dict(saved[i]) if i in saved else d.clear()
            for i in saved.keys() - self._deferred.keys():  # saved by a build that deferred more
                self.weights[i].baddbmm_(*_DeferredUpdate.factors(saved[i], self.device))
            for k, v in state["optimizer"].items():
                if isinstance(v, list):
                    for dst, src in zip(self.opt_state[k], v):
                        dst.copy_(src)
                else:
                    self.opt_state[k] = v
        if self.cbp:
            for s, st in zip(self.cbp, state["cbp"]):
                s.load_state_dict(st)
        if self.redo_sums:
            for dst, src in zip(self.redo_sums, state["redo"]["sums"]):
                dst.copy_(src)
            self.redo_count = int(state["redo"]["count"])
            self.redo_replacements[:] = state["redo"]["replacements"]
        for g, st in zip(self.generators, state["generators"]):
            g.set_state(st)
        self.updates = int(state["updates"])
        self._pending = None

    def __reduce__(self):
        return (_rebuild, (self.name, self.config.to_dict(), self.observation_space,
                           self.action_space, self.seeds, self._requested_device,
                           self._compile_request),
                self.state_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state)

    def __repr__(self) -> str:
        return f"LockstepLearner(name={self.name!r}, seeds={self.n}, device={self.device})"

    # -- internals -----------------------------------------------------------------------------
    def _tensor(self, observations: np.ndarray) -> torch.Tensor:
        x = _as_float_tensor(observations, self.device)
        if x.dim() < 3 or x.shape[0] != self.n:
            raise ValueError(f"expected observations of shape ({self.n}, batch, ...), got {tuple(x.shape)}")
        return x.reshape(self.n, x.shape[1], -1)

    def _forward_any(self, observations: np.ndarray) -> tuple[Any, tuple[list, list, list]]:
        if self._numpy:
            return self._forward_numpy(self._array(observations))
        with torch.no_grad():
            x = self._tensor(observations)
            # contiguous: the compiled step is specialised to its inputs' strides
            return self._forward(x.contiguous() if self.compiled else x)

    def _array(self, observations: np.ndarray) -> np.ndarray:
        x = np.asarray(observations, dtype=np.float32)
        if x.ndim < 3 or x.shape[0] != self.n:
            raise ValueError(f"expected observations of shape ({self.n}, batch, ...), got {x.shape}")
        return x.reshape(self.n, x.shape[1], -1)

    def _run_layers(self, x: Any, layer: Any, activate: Any) -> tuple[Any, tuple[list, list, list]]:
        """The forward pass, keeping what the backward pass needs: ``layer(i, h)`` is layer i's
        pre-activation, ``activate(pre)`` the hidden activation (numpy or torch alike)."""
        inputs, pres, posts = [], [], []
        h = x
        last = len(self.weights) - 1
        for i in range(last + 1):
            inputs.append(h)
            pre = layer(i, h)
            if i == last:
                return pre, (inputs, pres, posts)
            h = activate(pre)
            pres.append(pre)
            posts.append(h)
        raise AssertionError("unreachable")

    def _forward_numpy(self, x: np.ndarray) -> tuple[np.ndarray, tuple[list, list, list]]:
        def layer(i: int, h: np.ndarray) -> np.ndarray:
            pre = np.matmul(h, self._np_wt[i])
            pre += self._np_bias_rows[i]
            return pre

        return self._run_layers(x, layer, lambda pre: activation_np(self.activation, pre, self.slope))

    def _learn_numpy(self, out: np.ndarray, cache: tuple[list, list, list], target: Any) -> None:
        """Plain SGD in numpy: the arithmetic of :meth:`_output_gradient` and :meth:`_sgd_backward`."""
        inputs, pres, posts = cache
        batch = out.shape[1]
        if self.classification:
            y = np.asarray(target).reshape(self.n, batch)
            g = np.exp(out - out.max(2, keepdims=True))
            g /= g.sum(2, keepdims=True)
            g[np.arange(self.n)[:, None], np.arange(batch)[None, :], y] -= 1.0
            scale = 1.0 / batch
        else:
            g = out - np.asarray(target, dtype=np.float32).reshape(self.n, batch, 1)
            scale = 2.0 / batch
        alpha = np.float32(-self.config.optimizer.lr * scale)
        for i in range(len(self._np_weights) - 1, -1, -1):
            w, x = self._np_weights[i], inputs[i]
            g_prev = np.matmul(g, w) if i > 0 else None
            if batch == 1:
                w += (g * alpha).transpose(0, 2, 1) * x  # a rank-1 update per seed
            else:
                w += np.matmul(g.transpose(0, 2, 1), x) * alpha
            self._np_biases[i] += (g[:, 0] if batch == 1 else g.sum(1)) * alpha
            if g_prev is not None:
                g = g_prev * activation_derivative_np(self.activation, pres[i - 1], posts[i - 1], self.slope)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[list, list, list]]:
        def layer(i: int, h: torch.Tensor) -> torch.Tensor:
            wt, b = self._wt[i], self._bias_rows[i]
            if h.shape[1] == 1 and wt.shape[1] * wt.shape[2] >= _GEMV_MIN_ELEMENTS:
                # One example through a large layer: W·x reads W's rows in memory order, which
                # BLAS does about twice as fast as the equivalent x·Wᵀ on the transposed view.
                pre = torch.baddbmm(b.transpose(1, 2), self.weights[i], h.transpose(1, 2)).transpose(1, 2)
            else:
                pre = torch.baddbmm(b, h, wt)
            if i in self._deferred:
                self._deferred[i].add_forward(pre, h)
            return pre

        return self._run_layers(x, layer, lambda pre: _activation(self.activation, pre, self.slope))

    def _target_tensor(self, target: Any, batch: int) -> torch.Tensor:
        """The targets as a tensor on the learner's device: labels int64 ``(N, batch, 1)``,
        regression targets float32 ``(N, batch, 1)``."""
        if self.classification:
            y = (target.to(self.device) if isinstance(target, torch.Tensor) else
                 torch.as_tensor(target if type(target) is np.ndarray else np.asarray(target),
                                 device=self.device))
            if y.dtype != torch.int64:
                y = y.long()
        else:
            y = _as_float_tensor(target, self.device)
        return y.reshape(self.n, batch, 1).contiguous()

    def _output_gradient(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(g, c)`` with ``c·g`` = d loss / d output per seed (cross-entropy or torch's mse_loss,
        mean over the batch); the constant ``c`` is folded into the update's step size."""
        batch = out.shape[1]
        if self.classification:
            g = torch.softmax(out, 2)
            g.scatter_add_(2, y, torch.full_like(y, -1, dtype=g.dtype))
            return g, 1.0 / batch
        return torch.sub(out, y), 2.0 / batch

    def _sgd_train_step(self, out: torch.Tensor, y: torch.Tensor, inputs: list, pres: list,
                        posts: list) -> list[torch.Tensor]:
        """One plain-SGD update of every seed (no deferred layers), returning the column |w| sums
        of the layers CBP reads (``_out_magnitude_layers``). Run as is, or compiled."""
        g, scale = self._output_gradient(out, y)
        self._sgd_backward(g, -self.config.optimizer.lr * scale, inputs, pres, posts)
        return [batched_abs_sum(self.weights[i], 1) for i in self._out_magnitude_layers]

    def _use_compile(self, request: bool | str) -> bool:
        """Whether the plain-SGD step runs through ``torch.compile``: only on the path it covers
        (plain SGD, no deferred layers, not the numpy path); with ``"auto"``, on the CPU, for
        CBP (whose per-step column |w| sums Inductor fuses into one pass: measured 1.1–1.2×
        with 32 seeds of the 3×100 MNIST net, while plain backprop ran 5% slower compiled), for
        networks of ``_COMPILE_MIN_ELEMENTS`` weights or more (over all seeds), and when a C++
        compiler is installed (Inductor's CPU backend needs one)."""
        if request not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {request!r}")
        if request is False or self._numpy or not self._plain_sgd or self._deferred:
            return False
        if request is True:
            return True
        n_weights = sum(w.numel() for w in self.weights)
        return (self.device.type == "cpu" and bool(self._out_magnitude_layers)
                and n_weights >= _COMPILE_MIN_ELEMENTS and _cxx_compiler_available())

    def _run_sgd_step(self, *args: Any) -> list[torch.Tensor]:
        """The plain-SGD step, compiled when ``self.compiled``. If compiling fails (no working C++
        toolchain, an unsupported build) it warns once and runs eagerly from then on; with
        ``fullgraph`` nothing has run when compiling fails, so no update is applied twice."""
        if not self.compiled:
            return self._sgd_train_step(*args)
        try:
            return self._sgd_step(*args)
        except Exception as error:  # noqa: BLE001  (only compile failures are caught, below)
            if not _is_compile_error(error):
                raise
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); the "
                          "lockstep learner runs eagerly", RuntimeWarning, stacklevel=4)
            self.compiled = False
            self._sgd_step = self._sgd_train_step
            return self._sgd_train_step(*args)

    @torch.no_grad()
    def _learn(self, out: torch.Tensor, cache: tuple[list, list, list], target: Any) -> None:
        inputs, pres, posts = cache
        if self._numpy:
            self._learn_numpy(out, cache, target)
            posts = [torch.from_numpy(h) for h in posts]  # for CBP / ReDo, zero-copy
            self._after_update(posts)
            return
        if self._plain_sgd and not self._deferred:
            y = self._target_tensor(target, out.shape[1])
            magnitudes = self._run_sgd_step(out, y, inputs, pres, posts)
            self._after_update(posts, dict(zip(self._out_magnitude_layers, magnitudes)))
            return
        g, scale = self._output_gradient(out, self._target_tensor(target, out.shape[1]))
        if self._plain_sgd:
            self._sgd_backward(g, -self.config.optimizer.lr * scale, inputs, pres, posts)
        else:
            if scale != 1.0:
                g = g.mul_(scale)
            self._optimizer_step(self._gradients(g, inputs, pres, posts))
        self._after_update(posts)

    def _after_update(self, posts: list[torch.Tensor],
                      out_magnitudes: dict[int, torch.Tensor] | None = None) -> None:
        """Everything after the gradient step: Shrink and Perturb, CBP, ReDo."""
        self.updates += 1
        sp = self.config.shrink_perturb
        if sp is not None:
            self._shrink_perturb(sp.weight_decay, sp.noise_std)
        if self.cbp is not None:
            self._cbp_step(posts, out_magnitudes or {})
        if self.redo_sums is not None:
            self._redo_step(posts)

    def _gradients(self, g: torch.Tensor, inputs: list, pres: list, posts: list) -> list[torch.Tensor]:
        """Every parameter's gradient, in w0, b0, w1, b1, ... order (weights (N, out, in))."""
        grads: list[torch.Tensor] = [g] * len(self._params)
        for i in range(len(self._wt) - 1, -1, -1):
            grads[2 * i] = torch.bmm(g.transpose(1, 2), inputs[i])
            grads[2 * i + 1] = g.sum(1)
            if i > 0:
                g = _through_activation(self.activation, torch.bmm(g, self.weights[i]),
                                        pres[i - 1], posts[i - 1], self.slope)
        return grads

    def _sgd_backward(self, g: torch.Tensor, alpha: float, inputs: list, pres: list,
                      posts: list) -> None:
        """Plain SGD (the paper's runs): backpropagate and apply w += alpha·gᵀx layer by layer,
        fused, with no gradient tensors. The gradient flows back through the weights as they
        were before this update."""
        batch = g.shape[1]
        for i in range(len(self.weights) - 1, -1, -1):
            w, x = self.weights[i], inputs[i]
            deferred = self._deferred.get(i)
            g_prev = torch.bmm(g, w) if i > 0 else None
            if deferred is not None:
                if g_prev is not None:
                    deferred.add_backward(g_prev, g)
                deferred.push(w, g, x, alpha)
            elif batch == 1:
                w.addcmul_(g.mT, x, value=alpha)  # a rank-1 update per seed
            else:
                w.baddbmm_(g.mT, x, alpha=alpha)
            self.biases[i].add_(g.select(1, 0) if batch == 1 else g.sum(1), alpha=alpha)
            if g_prev is not None:
                g = _through_activation(self.activation, g_prev, pres[i - 1], posts[i - 1], self.slope)

    def _deferred_updates(self) -> dict[int, _DeferredUpdate]:
        """The layers whose plain-SGD updates are deferred: large enough to be memory-bound, and
        read by nothing but the forward and backward passes between updates (CBP reads its
        consumer layers' |w| every step, and its producers' with the adaptable utility)."""
        if not self._plain_sgd or self.config.shrink_perturb is not None:
            return {}
        read_each_step: set[int] = set()
        cbp = self.config.cbp
        if cbp is not None:
            read_each_step.update(range(1, len(self.weights)))
            if cbp.utility != "contribution":
                read_each_step.update(range(len(self.weights) - 1))
        return {i: _DeferredUpdate(w, _DEFERRED_RANK) for i, w in enumerate(self.weights)
                if i not in read_each_step and w.shape[1] * w.shape[2] >= _DEFERRED_MIN_ELEMENTS}

    def _flush(self, layer: int) -> None:
        if layer in self._deferred:
            self._deferred[layer].flush(self.weights[layer])

    def _init_optimizer_state(self) -> None:
        oc = self.config.optimizer
        self.opt_state: dict[str, Any] = {"step": 0}
        self._adam_denoms: list[torch.Tensor] | None = None
        if oc.name == "sgd" and oc.momentum > 0:
            self.opt_state["momentum"] = [torch.zeros_like(p) for p in self._params]
            self.opt_state["momentum_started"] = False
        if oc.name == "adam":
            self.opt_state["exp_avg"] = [torch.zeros_like(p) for p in self._params]
            self.opt_state["exp_avg_sq"] = [torch.zeros_like(p) for p in self._params]
        self._optimizer_slice_keys = [k for k in ("momentum", "exp_avg", "exp_avg_sq") if k in self.opt_state]

    def _optimizer_step(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.SGD / Adam's arithmetic, on every seed at once."""
        oc = self.config.optimizer
        st = self.opt_state
        st["step"] += 1
        if oc.weight_decay != 0.0:
            grads = [g.add(p, alpha=oc.weight_decay) for g, p in zip(grads, self._params)]
        if oc.name == "sgd":
            if oc.momentum > 0:
                bufs = st["momentum"]
                if not st["momentum_started"]:
                    for b, g in zip(bufs, grads):
                        b.copy_(g)  # torch's first step: buf = grad
                    st["momentum_started"] = True
                else:
                    for b, g in zip(bufs, grads):
                        b.mul_(oc.momentum).add_(g)
                grads = bufs
            for p, g in zip(self._params, grads):
                p.add_(g, alpha=-oc.lr)
            return
        beta1, beta2 = oc.betas
        step = st["step"]
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = oc.lr / bias_correction1
        if self._adam_denoms is None:  # scratch buffers, not fresh temporaries every step
            self._adam_denoms = [torch.empty_like(p) for p in self._params]
        for p, g, m, v, denom in zip(self._params, grads, st["exp_avg"], st["exp_avg_sq"], self._adam_denoms):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            torch.sqrt(v, out=denom).div_(bias_correction2_sqrt).add_(oc.eps)  # torch.optim.Adam's order
            p.addcdiv_(m, denom, value=-step_size)

    def _shrink_perturb(self, weight_decay: float, noise_std: float) -> None:
        shrink = 1.0 - self.config.optimizer.lr * weight_decay
        if shrink != 1.0:
            torch._foreach_mul_(self._params, shrink)
        if noise_std > 0.0:
            # Each seed draws from its own generator in the single learner's order.
            for r, gen in enumerate(self.generators):
                for p in self._params:
                    p[r].add_(torch.randn(p.shape[1:], generator=gen, device=p.device,
                                          dtype=p.dtype), alpha=noise_std)

    def _zero_optimizer_slices(self, param_index: int, index: tuple) -> None:
        for key in self._optimizer_slice_keys:
            self.opt_state[key][param_index][index] = 0

    def _reinit_units(self, layer: int, replica: int, idx: torch.Tensor) -> None:
        """CBP/ReDo surgery on seed ``replica``: the same as :func:`agents.units.reinit_units`."""
        self._flush(layer)
        self._flush(layer + 1)
        w, b, consumer = self.weights[layer], self.biases[layer], self.weights[layer + 1]
        fresh = self.init_specs[layer].sample((idx.numel(), w.shape[2]), device=w.device,
                                              dtype=w.dtype, generator=self.generators[replica])
        if self.device.type == "cpu":  # numpy's indexing costs a fraction of torch's here
            rows = idx.numpy()
            w.numpy()[replica, rows] = fresh.numpy()
            b.numpy()[replica, rows] = 0
            consumer.numpy()[replica][:, rows] = 0
        else:
            w[replica, idx] = fresh
            b[replica, idx] = 0
            consumer[replica, :, idx] = 0
        if self._optimizer_slice_keys:
            self._zero_optimizer_slices(2 * layer, (replica, idx))
            self._zero_optimizer_slices(2 * layer + 1, (replica, idx))
            self._zero_optimizer_slices(2 * layer + 2, (replica, slice(None), idx))

    def _cbp_step(self, posts: list[torch.Tensor], out_magnitudes: dict[int, torch.Tensor]) -> None:
        for layer, stats in enumerate(self.cbp):
            w, consumer = self.weights[layer], self.weights[layer + 1]
            in_mag = batched_abs_sum(w, 2) if stats.config.utility != "contribution" else None
            out_mag = out_magnitudes.get(layer + 1)
            stats.update(posts[layer], batched_abs_sum(consumer, 1) if out_mag is None else out_mag, in_mag)
            for replica, idx in stats.due().items():
                self._reinit_units(layer, replica, idx)
                stats.reset_units(replica, idx)

    def _redo_step(self, posts: list[torch.Tensor]) -> None:
        for sums, h in zip(self.redo_sums, posts):
            sums.add_(h.abs().mean(1))
        self.redo_count += 1
        rc = self.config.redo
        if self.redo_count < rc.period:
            return
        for layer, sums in enumerate(self.redo_sums):
            mean = sums / self.redo_count
            scores = mean / mean.mean(1, keepdim=True).clamp_min(1e-12)
            dormant = scores <= rc.threshold
            for replica in torch.nonzero(dormant.any(1)).flatten().tolist():
                idx = torch.nonzero(dormant[replica]).flatten()
                self._reinit_units(layer, replica, idx)
                self.redo_replacements[replica] += int(idx.numel())
            sums.zero_()
        self.redo_count = 0


# Plain SGD at batch 1 changes a layer by a rank-1 matrix per step; for a large layer, writing
# that into the weights every step costs a read and a write of the whole matrix. Instead the
# last few updates are kept as factors and folded into the weights every _DEFERRED_RANK steps.
_DEFERRED_RANK = 32
# Networks (all seeds together) up to this many weights take the numpy path on the CPU.
_NUMPY_MAX_ELEMENTS = 1 << 16
_GEMV_MIN_ELEMENTS = 1 << 18
# Networks (all seeds together) of at least this many weights run compiled on the CPU ("auto"):
# 3×100 MNIST nets from 6 seeds on. Below it compiling (seconds) does not pay for itself soon.
_COMPILE_MIN_ELEMENTS = 1 << 19
_DEFERRED_MIN_ELEMENTS = 1 << 18


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

    def push(self, w: torch.Tensor, g: torch.Tensor, x: torch.Tensor, alpha: float) -> None:
        """Defer ``w += α·gᵀx`` (g (N, batch, out), x (N, batch, in))."""
        batch = g.shape[1]
        if self.count + batch > self.a.shape[1]:
            self.flush(w)
            if batch > self.a.shape[1]:
                w.baddbmm_(g.transpose(1, 2), x, alpha=alpha)
                return
        k = self.count
        torch.mul(g, alpha, out=self.a[:, k:k + batch])
        self.b[:, k:k + batch].copy_(x)
        self.count = k + batch

    def flush(self, w: torch.Tensor) -> None:
        k = self.count
        if k:
            w.baddbmm_(self.a[:, :k].transpose(1, 2), self.b[:, :k])
            self.count = 0

    def clear(self) -> None:
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

    @staticmethod
    def factors(state: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return state["a"].to(device).transpose(1, 2), state["b"].to(device)


def _as_float_tensor(array: Any, device: torch.device) -> torch.Tensor:
    """A float32 tensor on ``device``; zero-copy for a float32 numpy array on the CPU and for a
    float32 tensor already on ``device`` (a stream block kept in accelerator memory)."""
    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=torch.float32)
    if type(array) is np.ndarray and array.dtype == np.float32 and device.type == "cpu":
        return torch.from_numpy(array)
    return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=device)


def _first(infos: dict[str, Any], key: str, default: Any) -> Any:
    value = infos.get(key)
    if value is None:
        return default
    return value[0] if isinstance(value, (np.ndarray, list, tuple)) else value


def _rebuild(name, config_dict, observation_space, action_space, seeds, device, compile="auto"):
    return LockstepLearner(name, LearnerConfig.from_dict(config_dict), observation_space,
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
