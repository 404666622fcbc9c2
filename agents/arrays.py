"""A thin array layer: the few batched operations of the learner core, for torch and for numpy.

The learner core (:mod:`plasticity_gym_agents.lockstep`) and CBP's statistics write their math once, on an
array namespace: :data:`TORCH` (any device) or :data:`NUMPY` (small CPU arrays, where numpy's
per-call overhead is a fraction of torch's: 1.3–1.6× the learner core's speed measured on
SlowRegression's 5-unit networks). The hidden activations and their derivatives are written once
here. Arrays have a leading replica axis: weights ``(R, out, in)``, activations ``(R, batch, units)``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

__all__ = ["ACTIVATIONS", "NUMPY", "TORCH", "activate", "activation_backward", "activation_gain", "crelu_inputs",
           "outputs_per_unit"]

ACTIVATIONS = ("sigmoid", "tanh", "elu", "leaky_relu", "relu", "swish", "crelu")


def outputs_per_unit(name: str) -> int:
    """How many outputs each unit of activation ``name`` has: 2 for CReLU, else 1."""
    return 2 if name == "crelu" else 1


def crelu_inputs(xp: Any, pre: Any, axis: int = -1) -> Any:
    """``[x, −x]`` interleaved along the unit axis ``axis``: unit ``i``'s two CReLU outputs are
    ``relu`` of entries ``2i`` and ``2i + 1`` (so a unit's outputs are adjacent columns, or
    channels, of the next layer)."""
    axis = axis % pre.ndim
    pairs = xp.stack((pre, -pre), axis + 1)
    return pairs.reshape(*pre.shape[:axis], 2 * pre.shape[axis], *pre.shape[axis + 1:])


def activation_gain(name: str, leaky_slope: float = 0.01) -> float:
    """The paper's Kaiming gains (Methods, Slowly-Changing Regression)."""
    # CReLU: the ReLU gain, with the next layer's fan-in counting both outputs of each unit
    # (the 2n outputs together carry the variance of the n inputs, as n ReLU outputs carry half).
    gains = {"sigmoid": 1.0, "tanh": 5.0 / 3.0, "elu": math.sqrt(2.0), "relu": math.sqrt(2.0),
             "leaky_relu": math.sqrt(2.0 / (1.0 + leaky_slope**2)), "swish": math.sqrt(2.0),
             "crelu": math.sqrt(2.0)}
    if name not in gains:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return gains[name]


def activate(xp: Any, name: str, pre: Any, slope: float) -> Any:
    """The hidden activation ``name`` of pre-activations ``pre`` (a new array; the units on the
    last axis, which CReLU doubles)."""
    if name == "relu":
        return xp.relu(pre)
    if name == "crelu":
        return xp.relu(crelu_inputs(xp, pre))
    if name == "leaky_relu":
        return xp.select(pre > 0, pre, pre * slope)
    if name == "tanh":
        return xp.tanh(pre)
    if name == "sigmoid":
        return xp.sigmoid(pre)
    if name == "elu":
        return xp.select(pre > 0, pre, xp.expm1(xp.minimum0(pre)))
    if name == "swish":
        return pre * xp.sigmoid(pre)
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


def activation_backward(xp: Any, name: str, g: Any, pre: Any, post: Any, slope: float) -> Any:
    """``g · d post / d pre`` (may reuse ``g``'s memory). For CReLU ``g`` and ``post`` have two
    entries per unit, the result one."""
    if name == "relu":
        return xp.relu_backward(g, post)
    if name == "crelu":
        g2, post2 = g.reshape(*pre.shape, 2), post.reshape(*pre.shape, 2)
        return xp.relu_backward(g2[..., 0], post2[..., 0]) - xp.relu_backward(g2[..., 1], post2[..., 1])
    if name == "leaky_relu":
        g *= xp.select(pre > 0, 1.0, slope)
    elif name == "tanh":
        g *= 1.0 - post * post
    elif name == "sigmoid":
        g *= post * (1.0 - post)
    elif name == "elu":
        g *= xp.select(pre > 0, 1.0, post + 1.0)
    else:
        s = xp.sigmoid(pre)
        g *= s * (1.0 + pre * (1.0 - s))
    return g


def _torch_affine(h: torch.Tensor, w: torch.Tensor, wt: torch.Tensor, b_row: torch.Tensor) -> torch.Tensor:
    """h·wᵀ + b for h (R, batch, in), w (R, out, in), wt = w.transpose(1, 2), b_row (R, 1, out).
    As h·wᵀ at batch 1 too: batched W·x (R > 1) measured 2-2.5x slower (torch 2.14, MKL)."""
    return torch.baddbmm(b_row, h, wt)


def _torch_add_outer_(w: torch.Tensor, g: torch.Tensor, x: torch.Tensor, alpha: Any) -> None:
    """w += alpha · gᵀx per replica (alpha a float or (R, 1, 1))."""
    if not isinstance(alpha, float):
        g, alpha = g * alpha, 1.0
    if g.shape[1] == 1:
        w.addcmul_(g.mT, x, value=alpha)  # a rank-1 update per replica
    else:
        w.baddbmm_(g.mT, x, alpha=alpha)


def _torch_add_rows_(b: torch.Tensor, g: torch.Tensor, alpha: Any) -> None:
    """b += alpha · Σ_batch g."""
    s = g.select(1, 0) if g.shape[1] == 1 else g.sum(1)
    b.add_(s, alpha=alpha) if isinstance(alpha, float) else b.addcmul_(s, alpha.view(-1, 1))


def _torch_softmax_minus_onehot(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(out) − onehot(y) over the last axis; y (R, batch, 1) int64."""
    return torch.softmax(out, 2).scatter_add_(2, y, torch.full_like(y, -1, dtype=out.dtype))


def _torch_unit_mean(h: torch.Tensor) -> torch.Tensor:
    """Mean of ``(R, batch, units, *spatial)`` over the examples and positions: ``(R, units)``."""
    return h.select(1, 0) if h.dim() == 3 and h.shape[1] == 1 else h.mean([1, *range(3, h.dim())])


def _numpy_unit_mean(h: np.ndarray) -> np.ndarray:
    return h[:, 0] if h.ndim == 3 and h.shape[1] == 1 else h.mean((1, *range(3, h.ndim)), dtype=h.dtype)


def _numpy_add_outer_(w: np.ndarray, g: np.ndarray, x: np.ndarray, alpha: Any) -> None:
    if g.shape[1] == 1:
        w += (g * alpha).transpose(0, 2, 1) * x  # a rank-1 update per replica
    else:
        w += np.matmul(g.transpose(0, 2, 1), x) * alpha


def _numpy_add_rows_(b: np.ndarray, g: np.ndarray, alpha: Any) -> None:
    b += (g[:, 0] if g.shape[1] == 1 else g.sum(1)) * (alpha[:, 0] if isinstance(alpha, np.ndarray) else alpha)


def _numpy_softmax_minus_onehot(out: np.ndarray, y: np.ndarray) -> np.ndarray:
    g = np.exp(out - out.max(2, keepdims=True))
    g /= g.sum(2, keepdims=True)
    r, b = out.shape[:2]
    g[np.arange(r)[:, None], np.arange(b)[None, :], y.reshape(r, b)] -= 1.0
    return g


# torch tensors (any device; fused kernels where torch has them)
TORCH = SimpleNamespace(
    relu=torch.relu, tanh=torch.tanh, sigmoid=torch.sigmoid, expm1=torch.expm1, select=torch.where,
    minimum0=lambda x: x.clamp_max(0.0), bmm=torch.bmm, affine=_torch_affine,
    relu_backward=lambda g, post: torch.ops.aten.threshold_backward(g, post, 0.0),  # one fused op
    add_outer_=_torch_add_outer_, add_rows_=_torch_add_rows_, softmax_minus_onehot=_torch_softmax_minus_onehot,
    unit_mean=_torch_unit_mean, clamp_min=torch.clamp_min, stack=torch.stack, addcmul=torch.addcmul,
    mean_units=lambda x: x.mean(2, keepdim=True), rsqrt=torch.rsqrt)
# numpy float32 arrays (the CPU, tiny networks)
NUMPY = SimpleNamespace(
    relu=lambda x: np.maximum(x, 0), tanh=np.tanh, sigmoid=lambda x: 1 / (1 + np.exp(-x)), expm1=np.expm1,
    select=lambda c, a, b: np.where(c, *(np.float32(v) if isinstance(v, float) else v for v in (a, b))),
    minimum0=lambda x: np.minimum(x, 0), bmm=np.matmul, affine=lambda h, w, wt, b_row: np.matmul(h, wt) + b_row,
    relu_backward=lambda g, post: np.multiply(g, post > 0, out=g),
    add_outer_=_numpy_add_outer_, add_rows_=_numpy_add_rows_, softmax_minus_onehot=_numpy_softmax_minus_onehot,
    unit_mean=_numpy_unit_mean, clamp_min=np.maximum, stack=np.stack, addcmul=lambda a, b, c: a + b * c,
    mean_units=lambda x: x.mean(2, keepdims=True), rsqrt=lambda x: 1 / np.sqrt(x))
