"""Plasticity diagnostics on any torch module and a probe batch (docs/design.md §4).

``measure(module, probe_x)`` captures every hidden representation with forward hooks on the
module's activation modules (ReLU, LeakyReLU, ELU, Tanh, Sigmoid, SiLU, GELU, Softplus, …) and
returns, per layer and for the whole network: dead-unit %, dormant-unit %, active-unit %,
feature norm, effective rank and stable rank of the representation, and the average weight
magnitude. It runs on the module's device, in eval mode and without gradients, and restores the
module's mode afterwards. Further diagnostics need more than the representations:
:func:`gradient_norm` (the probe's targets), :func:`plasticity_score` (a few SGD steps on a copy
of the network) and :func:`weight_change` (the weights at the previous probe); each has a batched
form over a replica axis (:func:`gradient_norms`, :func:`plasticity_scores`,
:func:`weight_changes`) for the seeds of a lockstep run. docs/metrics.md defines every metric.

Definitions (Methods, "Understanding loss of plasticity"):

* a unit is *active* on an example when its output is > 0 (for a conv channel: its mean over
  positions is > 0, i.e. it fires somewhere); *dead*: active on no probe example; *dormant*:
  active on at most ``dormant_threshold`` (default 1%) of the probe examples. These are the
  ReLU-family notions the paper uses; for saturating activations they count units stuck ≤ 0.
* effective rank of Φ (examples × units): exp(H(p)), p_k = σ_k / ‖σ‖₁;
* stable rank (the paper's definition): min{k : Σ_{i≤k} σ_i / Σ_j σ_j > 0.99};
* average weight magnitude: Σ|w| / number of weights, over weight matrices and conv kernels
  (tensors with ≥ 2 dimensions; biases and normalisation scales are not weights here);
* active units (%): the share of (example, unit) pairs of the probe on which the unit is active,
  i.e. the mean fraction of a layer's units that fire on an example (not 100 − dead %, which
  counts units that fire on at least one example);
* feature norm: the mean over probe examples of the L2 norm of an example's representation;
* gradient norm: ‖∇θ L‖₂ over every parameter, L the probe's loss (cross-entropy for labels,
  mean squared error for values) with the network in eval mode;
* weight change: ‖W_now − W_then‖₂ over the weights (as for the average magnitude) since the
  previous probe;
* plasticity score: 1 − L_after / L_before of :class:`PlasticityProbe` (SGD on a copy of the
  network towards fresh random targets), 1 for a network that fits them fully, 0 for one that
  cannot move its outputs at all.

For conv layers the representation of an example is its per-channel mean over positions, so
Φ has one column per channel. This module knows torch modules, never the agents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATION_TYPES",
    "PlasticityProbe",
    "active_fraction",
    "average_weight_magnitude",
    "dead_fraction",
    "dormant_fraction",
    "effective_rank",
    "feature_norm",
    "gradient_norm",
    "gradient_norms",
    "measure",
    "measure_replicas",
    "plasticity_score",
    "plasticity_scores",
    "replica_state",
    "representation_layers",
    "stable_rank",
    "weight_change",
    "weight_changes",
    "weights_of",
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
    # A diverged network's NaN or infinite values make its Gram matrix non-finite (float32 inputs
    # cannot overflow a double sum): its singular values are NaN, not an eigensolver error.
    finite = torch.isfinite(gram).flatten(1).all(1)
    if bool(finite.all()):
        s = torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt().flip(-1)
    else:
        s = torch.full(gram.shape[:-1], math.nan, dtype=torch.float64, device=phi.device)
        if bool(finite.any()):
            s[finite] = torch.linalg.eigvalsh(gram[finite]).clamp_min(0.0).sqrt().flip(-1)
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


def _active_fractions(acts: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, examples, units)`` → ``(N,)``: the share of (example, unit) pairs that are active."""
    counts = _active_counts(acts) if counts is None else counts
    return counts.sum(-1).double() / (acts.shape[-2] * acts.shape[-1])


def _feature_norms(phi: torch.Tensor) -> torch.Tensor:
    """``(N, examples, units)`` → ``(N,)``: the mean over examples of each example's L2 norm."""
    return torch.linalg.vector_norm(phi, dim=-1, dtype=torch.float64).mean(-1)


def _weight_changes(previous: Sequence[torch.Tensor], current: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖current − previous‖₂ over tensors that each carry a leading replica axis → ``(N,)``."""
    if len(previous) != len(current) or any(p.shape != c.shape for p, c in zip(previous, current)):
        raise ValueError("weight change: the two sets of weights differ in number or shape "
                         f"({[tuple(p.shape) for p in previous]} vs {[tuple(c.shape) for c in current]}); "
                         "compare weights of one architecture")
    if not current:
        return torch.full((1,), math.nan, dtype=torch.float64)
    total = sum((c.detach().double() - p.detach().to(c.device).double()).square().flatten(1).sum(1)
                for p, c in zip(previous, current))
    return total.sqrt().cpu()


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


def active_fraction(acts: torch.Tensor) -> float:
    """Share of the entries of ``acts`` (examples × units) that are active (> 0)."""
    return float(_active_fractions(acts.unsqueeze(0))[0])


def feature_norm(phi: torch.Tensor) -> float:
    """Mean over the rows (examples) of ``phi`` of their L2 norms."""
    return float(_feature_norms(phi.unsqueeze(0))[0])


def weights_of(module: nn.Module) -> list[torch.Tensor]:
    """The weights of ``module`` as the metrics count them: every parameter with ≥ 2 dimensions
    (weight matrices and conv kernels; not biases or normalisation scales), detached."""
    return [p.detach() for p in module.parameters() if p.dim() >= 2]


def weight_change(previous: Sequence[torch.Tensor], current: Sequence[torch.Tensor]) -> float:
    """‖current − previous‖₂ over a network's weights (e.g. :func:`weights_of` at two probes)."""
    return float(_weight_changes([p.unsqueeze(0) for p in previous], [c.unsqueeze(0) for c in current])[0])


def weight_changes(previous: Sequence[torch.Tensor], current: Sequence[torch.Tensor]) -> list[float]:
    """:func:`weight_change` of ``N`` networks at once: each tensor ``(N, ...)``, one per weight."""
    return _weight_changes(previous, current).tolist()


def _module_weights(module: nn.Module) -> list[torch.Tensor]:
    return [w.unsqueeze(0) for w in weights_of(module)]


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

    Returns ``{"dead_pct", "dormant_pct", "active_pct", "feature_norm", "avg_weight_magnitude",
    "effective_rank", "stable_rank", "layers": {name: {...}}, "n_units", "n_layers"}``. Network
    values: dead, dormant and active % over all hidden units; effective rank = mean over layers;
    stable rank and feature norm = the last hidden layer's (the paper plots the penultimate
    layer's; it is the representation the head reads); each layer also reports its own
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


def _whole(x: float) -> int | float:
    """A count held as a float, as an int (NaN, for a diverged network, stays NaN)."""
    return x if math.isnan(x) else round(x)


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
        diverged = s.isnan().any(-1)  # a replica whose representation holds a NaN or an infinity

        def per_replica(values: torch.Tensor) -> list[float]:  # NaN for a diverged replica
            return values.double().masked_fill(diverged.to(values.device), math.nan).tolist()

        counts = _active_counts(phi)
        per_layer.append({
            "units": phi.shape[-1],
            "dead": per_replica(_dead_fractions(phi, counts)),
            "dormant": per_replica(_dormant_fractions(phi, dormant_threshold, counts)),
            "active": per_replica(_active_fractions(phi, counts)),
            "feature_norm": per_replica(_feature_norms(phi)),
            "effective_rank": per_replica(_effective_ranks(s)),
            "stable_rank": per_replica(_stable_ranks(s)),
        })
    magnitudes = [None if ws is None else _magnitudes(ws).tolist() for ws in producer_weights]
    network_magnitude = _magnitudes(network_weights).tolist()
    out = []
    for r in range(n):
        entries: dict[str, dict[str, Any]] = {}
        dead_units = dormant_units = total_units = 0
        active_units = 0.0  # Σ over layers of units × active share
        for (name, producer), stats, mag in zip(layers, per_layer, magnitudes):
            units, dead, dormant = stats["units"], stats["dead"][r], stats["dormant"][r]
            entry = {
                "units": units,
                "dead_pct": 100.0 * dead,
                "dormant_pct": 100.0 * dormant,
                "active_pct": 100.0 * stats["active"][r],
                "feature_norm": stats["feature_norm"][r],
                "effective_rank": stats["effective_rank"][r],
                "stable_rank": _whole(stats["stable_rank"][r]),
            }
            if mag is not None and producer is not None:
                entry["producer"] = producer
                entry["avg_weight_magnitude"] = mag[r]
            entries[name] = entry
            dead_units += _whole(dead * units)
            dormant_units += _whole(dormant * units)
            active_units += stats["active"][r] * units
            total_units += units
        last = list(entries.values())[-1] if entries else None
        out.append({
            "dead_pct": 100.0 * dead_units / total_units if total_units else math.nan,
            "dormant_pct": 100.0 * dormant_units / total_units if total_units else math.nan,
            "active_pct": 100.0 * active_units / total_units if total_units else math.nan,
            "feature_norm": last["feature_norm"] if last else math.nan,
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


# --------------------------------------------------------------------------- diagnostics that train
# The gradient norm and the plasticity probe differentiate the network: they run it functionally
# (torch.func) on parameters given as tensors with a leading replica axis, so N networks of one
# architecture (the seeds of a lockstep run) take one batched pass, and one network is N = 1. The
# module itself is never changed: no parameter, buffer or ``.grad`` of it is written.


@dataclass(frozen=True)
class PlasticityProbe:
    """The parameters of the direct plasticity probe (:func:`plasticity_score`).

    Fresh targets, on the first ``n_examples`` probe inputs x_i (flattened to vectors): the
    network's current outputs plus ``target_std`` times a new random linear function of the
    inputs, y_i = f(x_i) + σ·z_i with z_i = A(x_i − x̄), A a (outputs × inputs) matrix of
    N(0, 1) entries drawn from a generator seeded with ``seed``, and each output of z then scaled
    to unit variance over the examples. So L_before = σ² whatever the network's outputs, and a
    network can only lower the loss by learning something new about its inputs. A copy of the
    network takes ``steps`` plain full-batch gradient-descent steps of size ``lr`` on
    L(θ) = mean over examples and outputs of (f_θ(x_i) − y_i)², in eval mode, every parameter
    trained; the score is 1 − L_after/L_before.
    """

    steps: int = 10
    lr: float = 0.003
    n_examples: int = 256
    target_std: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "n_examples", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"PlasticityProbe.{name} must be an integer >= {0 if name == 'seed' else 1}, "
                                 f"got {value!r}")
        for name in ("lr", "target_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"PlasticityProbe.{name} must be a positive finite number, got {value!r}")


def replica_state(modules: Iterable[nn.Module]) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer of ``N`` modules of one architecture, stacked on a
    leading replica axis: ``{name: (N, ...)}``. Each module is copied as the iteration yields it,
    so one module object refilled per replica (a lockstep learner's ``probe_model(i)``) works."""
    parts: dict[str, list[torch.Tensor]] = {}
    for m in modules:
        for name, t in (*m.named_parameters(), *m.named_buffers()):
            parts.setdefault(name, []).append(t.detach().clone())
    if not parts:
        raise ValueError("replica_state: the modules have no parameters or buffers")
    return {name: torch.stack(ts) for name, ts in parts.items()}


class _Functional:
    """``module`` as a function of a replica state, in eval mode while in use (``with``)."""

    def __init__(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        names = [n for n, _ in module.named_parameters()]
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"the replica state lacks parameters {missing[:3]} of the module; build it "
                             "with replica_state() from modules of the module's architecture")
        self.module = module
        self.params = {n: state[n] for n in names}
        self.buffers = {n: t for n, t in state.items() if n not in self.params}
        self.n = next(iter(state.values())).shape[0]
        self._was_training = module.training

    def __enter__(self) -> "_Functional":
        self._was_training = self.module.training
        self.module.eval()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self._was_training)

    def __call__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.module, (params, buffers), (x,))


def _replica_inputs(net: _Functional, x: Any, name: str) -> torch.Tensor:
    """``x`` as a tensor on the state's device (floats in its dtype), with N rows on axis 0."""
    ref = next(iter(net.params.values()))
    t = torch.as_tensor(x, device=ref.device)
    t = t.to(ref.dtype) if t.is_floating_point() else t.long()
    if t.dim() < 2 or t.shape[0] != net.n:
        raise ValueError(f"{name} must have the replica axis first, shape (N={net.n}, examples, ...), "
                         f"got {tuple(t.shape)}")
    return t


def _probe_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The probe's loss: cross-entropy for integer labels, else mean squared error."""
    if not y.is_floating_point():
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if out.numel() != y.numel():
        raise ValueError(f"regression probe: the network's outputs {tuple(out.shape)} do not match the "
                         f"targets {tuple(y.shape)}")
    return (out.reshape(y.shape) - y).square().mean()


def _replica_gradients(loss: Callable[..., torch.Tensor], params: dict[str, torch.Tensor],
                       *args: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each replica's gradient of ``loss(params_r, *args_r)`` (a scalar per replica, computed under
    ``vmap``) and the losses ``(N,)``. The replicas share no parameter, so the gradient of their
    summed losses with respect to the stacked parameters is every replica's own gradient: one
    backward pass, with plain autograd (``torch.func.grad`` would import TorchDynamo, seconds)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        losses = torch.func.vmap(loss)(leaves, *args)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
    return dict(zip(leaves, grads)), losses.detach()


@torch.no_grad()
def gradient_norms(module: nn.Module, state: dict[str, torch.Tensor], x: Any, y: Any, *,
                   batch_size: int = 500) -> list[float]:
    """:func:`gradient_norm` of ``N`` networks (``state``: :func:`replica_state`) at once, each
    on its own probe: ``x`` ``(N, examples, *x_shape)``, ``y`` ``(N, examples[, outputs])``."""
    with _Functional(module, state) as net:
        xs, ys = _replica_inputs(net, x, "x"), _replica_inputs(net, y, "y")
        n = xs.shape[1]

        def chunk_loss(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                       xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            # a chunk's mean, weighted by its share: the chunks' gradients sum to the probe's
            return _probe_loss(net(params, buffers, xb), yb) * (xb.shape[0] / n)

        total: dict[str, torch.Tensor] | None = None
        for start in range(0, n, batch_size):
            g, _ = _replica_gradients(chunk_loss, net.params, net.buffers, xs[:, start:start + batch_size],
                                      ys[:, start:start + batch_size])
            total = g if total is None else {k: total[k] + g[k] for k in total}
        squares = torch.zeros(net.n, dtype=torch.float64, device=xs.device)
        for g in (total or {}).values():
            squares += g.double().square().flatten(1).sum(1)
        return squares.sqrt().tolist()


def gradient_norm(module: nn.Module, x: Any, y: Any, *, batch_size: int = 500) -> float:
    """‖∇θ L‖₂ over every parameter of ``module``, L the mean loss on the probe ``(x, y)``:
    cross-entropy of the outputs (logits) for integer labels ``y``, else the mean squared error.
    In eval mode; the module is not changed."""
    return gradient_norms(module, replica_state([module]), _unsqueezed(x), _unsqueezed(y),
                          batch_size=batch_size)[0]


def _unsqueezed(a: Any) -> torch.Tensor:
    return torch.as_tensor(a).unsqueeze(0)


def _random_linear_targets(x: torch.Tensor, out_shape: Sequence[int], seed: int) -> torch.Tensor:
    """z = A(x − x̄) per replica, ``x`` ``(N, n, *x_shape)`` → ``(N, n, outputs)``, each output
    scaled to unit variance over the n examples (0 where the inputs do not vary)."""
    flat = x.flatten(2).double()
    outputs = math.prod(out_shape)
    # drawn on the CPU from the probe's own generator: the same targets on every device, and the
    # global RNG (which the run's learners use) is not touched
    a = torch.randn(flat.shape[-1], outputs, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (flat - flat.mean(1, keepdim=True)) @ a.to(flat.device)
    z = z - z.mean(1, keepdim=True)
    std = z.square().mean(1, keepdim=True).sqrt()
    return torch.where(std > 0, z / torch.where(std > 0, std, 1.0), 0.0).to(x.dtype)


@torch.no_grad()
def plasticity_scores(module: nn.Module, state: dict[str, torch.Tensor], x: Any,
                      probe: PlasticityProbe | None = None) -> list[float]:
    """:func:`plasticity_score` of ``N`` networks (``state``: :func:`replica_state`) at once, each
    on its own probe inputs ``x`` ``(N, examples, *x_shape)`` (one random function A for all)."""
    probe = PlasticityProbe() if probe is None else probe
    with _Functional(module, state) as net:
        xs = _replica_inputs(net, x, "x")[:, :probe.n_examples]
        forward = torch.func.vmap(net)
        start = forward(net.params, net.buffers, xs)
        fresh = _random_linear_targets(xs, start.shape[2:], probe.seed).reshape(start.shape)
        targets = start + probe.target_std * fresh

        def loss(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], xb: torch.Tensor,
                 yb: torch.Tensor) -> torch.Tensor:
            return (net(params, buffers, xb) - yb).square().mean()

        params, before = net.params, None
        for _ in range(probe.steps):
            g, value = _replica_gradients(loss, params, net.buffers, xs, targets)
            before = value if before is None else before
            params = {k: p - probe.lr * g[k] for k, p in params.items()}
        after = torch.func.vmap(loss)(params, net.buffers, xs, targets)
        assert before is not None  # steps >= 1
        return (1.0 - after.double() / before.double()).cpu().tolist()


def plasticity_score(module: nn.Module, x: Any, probe: PlasticityProbe | None = None) -> float:
    """The direct plasticity probe: 1 − L_after/L_before after :class:`PlasticityProbe`'s SGD steps
    on a copy of ``module`` towards fresh targets (its outputs plus a new random linear function
    of the inputs) on the probe inputs ``x`` (batch-first). 1: the copy fits the new targets
    fully; 0: it cannot move its outputs; negative: the steps diverged. The module is not
    changed."""
    return plasticity_scores(module, replica_state([module]), _unsqueezed(x), probe)[0]
