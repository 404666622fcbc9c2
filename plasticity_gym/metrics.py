"""Plasticity diagnostics on any torch module and a probe batch (SPEC §4, docs/design.md §4).

``measure(module, probe_x)`` captures every hidden representation with forward hooks on the
module's activation modules (ReLU, LeakyReLU, ELU, Tanh, Sigmoid, SiLU, GELU, Softplus, …) and
returns, per layer and for the whole network: dead-unit %, dormant-unit %, effective rank and
stable rank of the representation, and the average weight magnitude. It runs on the module's
device, in eval mode and without gradients, and restores the module's mode afterwards.

Definitions (Methods, "Understanding loss of plasticity"):

* a unit is *active* on an example when its output is > 0 (for a conv channel: its mean over
  positions is > 0, i.e. it fires somewhere); *dead*: active on no probe example; *dormant*:
  active on at most ``dormant_threshold`` (default 1%) of the probe examples. These are the
  ReLU-family notions the paper uses; for saturating activations they count units stuck ≤ 0.
* effective rank of Φ (examples × units): exp(H(p)), p_k = σ_k / ‖σ‖₁;
* stable rank (the paper's definition): min{k : Σ_{i≤k} σ_i / Σ_j σ_j > 0.99};
* average weight magnitude: Σ|w| / number of weights, over weight matrices and conv kernels
  (tensors with ≥ 2 dimensions; biases and normalisation scales are not weights here).

For conv layers the representation of an example is its per-channel mean over positions, so
Φ has one column per channel. This module knows torch modules, never the agents.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = [
    "ACTIVATION_TYPES",
    "average_weight_magnitude",
    "dead_fraction",
    "dormant_fraction",
    "effective_rank",
    "measure",
    "stable_rank",
]

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.PReLU,
)


def _singular_values(phi: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(phi.double())


def effective_rank(phi: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values; 0 for an all-zero matrix."""
    s = _singular_values(phi)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(phi: torch.Tensor, threshold: float = 0.99) -> int:
    """The paper's stable rank: min k with Σ_{i≤k} σ_i / Σ σ > threshold; 0 for a zero matrix."""
    s = _singular_values(phi)  # descending
    total = s.sum()
    if total <= 0:
        return 0
    share = torch.cumsum(s, 0) / total
    # Guard the last partial sum against rounding just under 1.
    share[-1] = 1.0
    return int(torch.nonzero(share > threshold)[0, 0]) + 1


def _active(acts: torch.Tensor) -> torch.Tensor:
    """(examples, units) bool: unit fires on the example."""
    return acts > 0


def dead_fraction(acts: torch.Tensor) -> float:
    """Fraction of units (columns) active on no example (rows)."""
    return float((~_active(acts).any(0)).double().mean())


def dormant_fraction(acts: torch.Tensor, threshold: float = 0.01) -> float:
    """Fraction of units active on at most ``threshold`` of the examples."""
    return float((_active(acts).double().mean(0) <= threshold).double().mean())


def average_weight_magnitude(module: nn.Module) -> float:
    """Σ|w| / number of weights over every parameter with ≥ 2 dimensions."""
    total, count = 0.0, 0
    for p in module.parameters():
        if p.dim() >= 2:
            total += float(p.detach().abs().sum())
            count += p.numel()
    return total / count if count else math.nan


def _per_example(output: torch.Tensor) -> torch.Tensor:
    """(B, units) from an activation output (B, units) or (B, C, *spatial) (mean over positions)."""
    if output.dim() == 2:
        return output
    if output.dim() < 2:
        return output.reshape(-1, 1)
    return output.flatten(2).mean(2)


@torch.no_grad()
def measure(module: nn.Module, probe_x: Any, *, dormant_threshold: float = 0.01,
            batch_size: int = 500) -> dict[str, Any]:
    """Plasticity metrics of ``module`` on ``probe_x`` (array or tensor, batch-first).

    Returns ``{"dead_pct", "dormant_pct", "avg_weight_magnitude", "effective_rank",
    "stable_rank", "layers": {name: {...}}, "n_units", "n_layers"}``. Network values: dead and
    dormant % over all hidden units; effective rank = mean over layers; stable rank = the last
    hidden layer's (the paper plots the penultimate layer's); each layer also reports its own
    ``avg_weight_magnitude`` (of the layer that produces it, when one can be told). A module
    without activation modules gets NaN for the representation metrics.
    """
    try:
        param = next(module.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.as_tensor(probe_x, device=device)
    if x.is_floating_point():
        x = x.to(dtype)
    names = [(n, m) for n, m in module.named_modules() if isinstance(m, ACTIVATION_TYPES)]
    captured: dict[str, list[torch.Tensor]] = {n: [] for n, _ in names}
    # The producer of a representation is the weight layer that ran last before its activation.
    producers: dict[str, tuple[str, nn.Module]] = {}
    last_weight: list[tuple[str, nn.Module]] = []

    def act_hook(n: str):
        def hook(_m, _i, out):
            captured[n].append(_per_example(out))
            if last_weight and n not in producers:
                producers[n] = last_weight[-1]
        return hook

    def weight_hook(n: str, m: nn.Module):
        def hook(_m, _i, _out):
            last_weight.append((n, m))
        return hook

    handles = [m.register_forward_hook(act_hook(n)) for n, m in names]
    handles += [m.register_forward_hook(weight_hook(n, m)) for n, m in module.named_modules()
                if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    was_training = module.training
    module.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            module(x[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)

    layers: dict[str, dict[str, Any]] = {}
    dead_units = dormant_units = total_units = 0
    for n, _ in names:
        if not captured[n]:
            continue  # an activation module the forward did not use
        phi = torch.cat(captured[n]).float()
        units = phi.shape[1]
        dead = dead_fraction(phi)
        dormant = dormant_fraction(phi, dormant_threshold)
        entry = {
            "units": units,
            "dead_pct": 100.0 * dead,
            "dormant_pct": 100.0 * dormant,
            "effective_rank": effective_rank(phi),
            "stable_rank": stable_rank(phi),
        }
        if n in producers:
            entry["producer"] = producers[n][0]
            entry["avg_weight_magnitude"] = average_weight_magnitude(producers[n][1])
        layers[n] = entry
        dead_units += round(dead * units)
        dormant_units += round(dormant * units)
        total_units += units
    last = list(layers.values())[-1] if layers else None
    return {
        "dead_pct": 100.0 * dead_units / total_units if total_units else math.nan,
        "dormant_pct": 100.0 * dormant_units / total_units if total_units else math.nan,
        "avg_weight_magnitude": average_weight_magnitude(module),
        "effective_rank": (sum(e["effective_rank"] for e in layers.values()) / len(layers)
                           if layers else math.nan),
        "stable_rank": last["stable_rank"] if last else math.nan,
        "n_units": total_units,
        "n_layers": len(layers),
        "dormant_threshold": dormant_threshold,
        "layers": layers,
    }

