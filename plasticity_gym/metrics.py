"""Plasticity diagnostics on any torch module and a probe batch (docs/design.md §4).

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
from typing import Any, Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATION_TYPES",
    "average_weight_magnitude",
    "dead_fraction",
    "dormant_fraction",
    "effective_rank",
    "measure",
    "measure_replicas",
    "representation_layers",
    "stable_rank",
]

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.PReLU,
)


_BLOCK = 256  # rows of a probe processed at once (bounds the temporaries' size)


def _singular_values(phi: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of a matrix or of a stack ``(..., rows, cols)``, in double.

    Taken as the square roots of the eigenvalues of the smaller Gram matrix (ΦᵀΦ or ΦΦᵀ), in
    double: about half the time of an SVD of Φ for a probe (thousands of examples × a few hundred
    units), and exact to ~1e-13 of the largest singular value, far below what the ranks resolve.
    """
    lead, (rows, cols) = phi.shape[:-2], phi.shape[-2:]
    m = phi.reshape(-1, rows, cols)
    if rows < cols:
        m, rows, cols = m.mT, cols, rows
    # Summed over blocks of rows: small double copies that the allocator reuses, instead of a
    # double copy of the whole probe (page faults cost as much as the arithmetic here).
    gram = torch.zeros(m.shape[0], cols, cols, dtype=torch.float64, device=phi.device)
    for start in range(0, rows, _BLOCK):
        d = m[:, start:start + _BLOCK].double()
        gram.baddbmm_(d.mT, d)
    s = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt().flip(-1)
    return s.reshape(*lead, cols)


# The math below works over a leading replica axis (one network or many in lockstep); the
# one-matrix functions are that math with one replica.
def _effective_ranks(s: torch.Tensor) -> torch.Tensor:
    """``(N, k)`` singular values → ``(N,)`` effective ranks (0 for an all-zero matrix)."""
    total = s.sum(-1, keepdim=True)
    p = torch.where(total > 0, s / torch.where(total > 0, total, 1.0), 0.0)
    erank = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return torch.where(total[..., 0] > 0, erank, 0.0)


def _stable_ranks(s: torch.Tensor, threshold: float = 0.99) -> torch.Tensor:
    """``(N, k)`` descending singular values → ``(N,)`` stable ranks (0 for a zero matrix)."""
    total = s.sum(-1, keepdim=True)
    share = torch.cumsum(s, -1) / torch.where(total > 0, total, 1.0)
    share[..., -1] = 1.0  # guard the last partial sum against rounding just under 1
    k = (share > threshold).int().argmax(-1) + 1  # the first index past the threshold
    return torch.where(total[..., 0] > 0, k, 0)


def _active_counts(acts: torch.Tensor) -> torch.Tensor:
    """``(N, examples, units)`` → ``(N, units)``: on how many examples each unit fires."""
    # Summed over blocks of examples: a sum over booleans makes an int64 copy of its input.
    counts = torch.zeros(acts.shape[:-2] + acts.shape[-1:], dtype=torch.int64, device=acts.device)
    for start in range(0, acts.shape[-2], _BLOCK):
        counts += (acts[..., start:start + _BLOCK, :] > 0).sum(-2)
    return counts


def _dead_fractions(acts: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, examples, units)`` → ``(N,)``: fraction of units active on no example."""
    counts = _active_counts(acts) if counts is None else counts
    return (counts == 0).double().mean(-1)


def _dormant_fractions(acts: torch.Tensor, threshold: float, counts: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, examples, units)`` → ``(N,)``: fraction of units active on at most ``threshold``."""
    counts = _active_counts(acts) if counts is None else counts
    share = counts.double() / acts.shape[-2]  # exact counts, then one division
    return (share <= threshold).double().mean(-1)


def _magnitudes(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ|w| / number of weights over ``tensors`` (each ``(N, ...)``) → ``(N,)``; NaN if none."""
    if not tensors:
        return torch.full((1,), math.nan, dtype=torch.float64)
    total = sum(t.detach().abs().flatten(1).sum(1).double().cpu() for t in tensors)
    count = sum(t[0].numel() for t in tensors)
    return total / count


def effective_rank(phi: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values; 0 for an all-zero matrix."""
    return float(_effective_ranks(_singular_values(phi).unsqueeze(0))[0])


def stable_rank(phi: torch.Tensor, threshold: float = 0.99) -> int:
    """The paper's stable rank: min k with Σ_{i≤k} σ_i / Σ σ > threshold; 0 for a zero matrix."""
    return int(_stable_ranks(_singular_values(phi).unsqueeze(0), threshold)[0])


def dead_fraction(acts: torch.Tensor) -> float:
    """Fraction of units (columns) active on no example (rows)."""
    return float(_dead_fractions(acts.unsqueeze(0))[0])


def dormant_fraction(acts: torch.Tensor, threshold: float = 0.01) -> float:
    """Fraction of units active on at most ``threshold`` of the examples."""
    return float(_dormant_fractions(acts.unsqueeze(0), threshold)[0])


def _module_weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().unsqueeze(0) for p in module.parameters() if p.dim() >= 2]


def average_weight_magnitude(module: nn.Module) -> float:
    """Σ|w| / number of weights over every parameter with ≥ 2 dimensions."""
    return float(_magnitudes(_module_weights(module))[0])


def _per_example(output: torch.Tensor) -> torch.Tensor:
    """(B, units) from an activation output (B, units) or (B, C, *spatial) (mean over positions)."""
    if output.dim() == 2:
        return output
    if output.dim() < 2:
        return output.reshape(-1, 1)
    return output.flatten(2).mean(2)


def _capture(module: nn.Module, x: torch.Tensor, batch_size: int):
    """Run ``module`` on ``x`` with hooks: the per-example representation of every activation
    module that ran, ``[(name, (examples, units), producer (name, module) or None)]``."""
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
    return [(n, torch.cat(captured[n]).float(), producers.get(n)) for n, _ in names if captured[n]]


def _module_input(module: nn.Module, probe_x: Any) -> torch.Tensor:
    try:
        param = next(module.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.as_tensor(probe_x, device=device)
    return x.to(dtype) if x.is_floating_point() else x


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
    layers = _capture(module, _module_input(module, probe_x), batch_size)
    return _summaries(
        [phi.unsqueeze(0) for _, phi, _ in layers],
        [(n, None if prod is None else prod[0]) for n, _, prod in layers],
        [None if prod is None else _module_weights(prod[1]) for _, _, prod in layers],
        _module_weights(module), dormant_threshold,
    )[0]


def representation_layers(module: nn.Module, probe_x: Any) -> list[tuple[str, str | None]]:
    """The ``(name, producer name)`` of each representation :func:`measure` reports for
    ``module``, in order (found by running it on the first probe example)."""
    with torch.no_grad():
        layers = _capture(module, _module_input(module, probe_x)[:1], 1)
    return [(n, None if prod is None else prod[0]) for n, _, prod in layers]


@torch.no_grad()
def measure_replicas(
    hidden: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    *,
    layers: Sequence[tuple[str, str | None]] | None = None,
    dormant_threshold: float = 0.01,
) -> list[dict[str, Any]]:
    """:func:`measure` for ``N`` networks of one architecture at once (e.g. the seeds of a
    lockstep run), from their representations of their probe batches: one batched SVD per layer.

    Args:
        hidden: per hidden layer, the activations ``(N, examples, units)`` (or
            ``(N, examples, channels, *positions)``, averaged over positions like ``measure``).
        weights: every weight matrix of the networks, ``(N, out, in)``, in forward order,
            the head last; ``weights[l]`` produces ``hidden[l]``.
        layers: ``(name, producer name)`` per hidden layer, as :func:`representation_layers`
            gives them for one of the networks (then each result equals ``measure`` of that
            network); default ``("0", "0")``, ``("1", "1")``, ...
    Returns one ``measure``-style dict per network.
    """
    if layers is None:
        layers = [(str(i), str(i)) for i in range(len(hidden))]
    if len(layers) != len(hidden) or len(weights) < len(hidden):
        raise ValueError(f"got {len(hidden)} hidden layers, {len(layers)} layer names and "
                         f"{len(weights)} weight matrices; give one name per hidden layer and "
                         "one weight matrix per layer")
    phis = [h if h.dim() == 3 else h.flatten(3).mean(3) for h in hidden]
    return _summaries([p.float() for p in phis], list(layers), [[w] for w in weights[:len(hidden)]],
                      list(weights), dormant_threshold)


def _summaries(
    phis: list[torch.Tensor],
    layers: list[tuple[str, str | None]],
    producer_weights: list[list[torch.Tensor] | None],
    network_weights: list[torch.Tensor],
    dormant_threshold: float,
) -> list[dict[str, Any]]:
    """The metrics of ``N`` networks from their representations ``(N, examples, units)``."""
    n = phis[0].shape[0] if phis else (network_weights[0].shape[0] if network_weights else 1)
    per_layer = []
    for phi in phis:
        s = _singular_values(phi)
        counts = _active_counts(phi)
        per_layer.append({
            "units": phi.shape[-1],
            "dead": _dead_fractions(phi, counts).tolist(),
            "dormant": _dormant_fractions(phi, dormant_threshold, counts).tolist(),
            "effective_rank": _effective_ranks(s).tolist(),
            "stable_rank": _stable_ranks(s).tolist(),
        })
    magnitudes = [None if ws is None else _magnitudes(ws).tolist() for ws in producer_weights]
    network_magnitude = _magnitudes(network_weights).tolist()
    out = []
    for r in range(n):
        entries: dict[str, dict[str, Any]] = {}
        dead_units = dormant_units = total_units = 0
        for (name, producer), stats, mag in zip(layers, per_layer, magnitudes):
            units, dead, dormant = stats["units"], stats["dead"][r], stats["dormant"][r]
            entry = {
                "units": units,
                "dead_pct": 100.0 * dead,
                "dormant_pct": 100.0 * dormant,
                "effective_rank": stats["effective_rank"][r],
                "stable_rank": int(stats["stable_rank"][r]),
            }
            if mag is not None and producer is not None:
                entry["producer"] = producer
                entry["avg_weight_magnitude"] = mag[r]
            entries[name] = entry
            dead_units += round(dead * units)
            dormant_units += round(dormant * units)
            total_units += units
        last = list(entries.values())[-1] if entries else None
        out.append({
            "dead_pct": 100.0 * dead_units / total_units if total_units else math.nan,
            "dormant_pct": 100.0 * dormant_units / total_units if total_units else math.nan,
            "avg_weight_magnitude": network_magnitude[r] if len(network_magnitude) > 1 else network_magnitude[0],
            "effective_rank": (sum(e["effective_rank"] for e in entries.values()) / len(entries)
                               if entries else math.nan),
            "stable_rank": last["stable_rank"] if last else math.nan,
            "n_units": total_units,
            "n_layers": len(entries),
            "dormant_threshold": dormant_threshold,
            "layers": entries,
        })
    return out
