"""Hidden units as replaceable groups, and the unit surgery of CBP and ReDo.

A network declares, for every set of hidden units that may be re-initialised, which tensors
*produce* each unit (the rows of its incoming weight, its bias, a following BatchNorm channel)
and which *consume* it (the columns of the outgoing weight of every layer that reads it): a list
of :class:`UnitGroup` from ``cbp_groups()``, its layers tagged with :func:`set_init`.
:func:`reinit_units` re-initialises units of such a group without knowing the network, through
:func:`reinit_slices`, the surgery over a replica axis that the learner core uses too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Consumer", "InitSpec", "Slot", "UnitGroup", "batched_abs_sum", "get_init", "optimizer_states",
           "reinit_slices", "reinit_units", "reset_module_parameters", "set_init", "zero_optimizer_slices"]


@dataclass(frozen=True)
class InitSpec:
    """The initial distribution of one layer's weight and bias.

    ``kind``: ``"uniform"`` draws the weight from U(-bound, bound); ``"normal"`` from N(0, std²)
    with ``std = bound``. The bias is drawn from U(-bias_bound, bias_bound), zero when
    ``bias_bound`` is 0. (Unit surgery redraws a unit's incoming weights from this distribution
    and zeroes its bias, as continual backpropagation does.)
    """

    kind: str
    bound: float
    bias_bound: float = 0.0

    def sample(self, shape: torch.Size | tuple[int, ...], *, device: torch.device,
               dtype: torch.dtype, generator: torch.Generator | None) -> torch.Tensor:
        if self.kind == "uniform":
            u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
            return u.mul_(2.0 * self.bound).sub_(self.bound)
        if self.kind == "normal":
            return torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(self.bound)
        raise ValueError(f"unknown init kind {self.kind!r}")

    @staticmethod
    def kaiming_uniform(fan_in: int, gain: float) -> InitSpec:
        """The paper's Kaiming-uniform: bound = gain · sqrt(3 / fan_in)."""
        return InitSpec("uniform", gain * math.sqrt(3.0 / fan_in))

    @staticmethod
    def kaiming_normal(fan_in: int, gain: float = math.sqrt(2.0)) -> InitSpec:
        """``torch.nn.init.kaiming_normal_`` with fan_in: N(0, gain² / fan_in), bias zero."""
        return InitSpec("normal", gain / math.sqrt(fan_in))

    @staticmethod
    def torch_default(fan_in: int) -> InitSpec:
        """PyTorch's default ``nn.Linear``/``nn.Conv2d`` init (``reset_parameters``: Kaiming-uniform
        with a = √5): weight and bias both U(±1/√fan_in)."""
        bound = 1.0 / math.sqrt(fan_in)
        return InitSpec("uniform", bound, bias_bound=bound)


_INIT_ATTR = "_pg_init_spec"


def set_init(module: nn.Module, spec: InitSpec, generator: torch.Generator | None = None) -> None:
    """Record ``spec`` as ``module``'s initial distribution and draw its weight from it (bias zero)."""
    setattr(module, _INIT_ATTR, spec)
    reset_module_parameters(module, generator)


def get_init(module: nn.Module) -> InitSpec:
    spec = getattr(module, _INIT_ATTR, None)
    if spec is None:
        raise ValueError(f"{type(module).__name__} has no recorded initial distribution (use set_init)")
    return spec


@torch.no_grad()
def reset_module_parameters(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Redraw a module's parameters from its recorded initial distribution (a
    normalisation layer: γ=1, β=0, BatchNorm's running statistics reset)."""
    if isinstance(module, NORM_TYPES):
        module.reset_parameters()
        return
    spec = get_init(module)
    w = module.weight
    w.copy_(spec.sample(w.shape, device=w.device, dtype=w.dtype, generator=generator))
    b = getattr(module, "bias", None)
    if b is not None:
        if spec.bias_bound > 0:
            b.copy_(InitSpec("uniform", spec.bias_bound).sample(b.shape, device=b.device, dtype=b.dtype,
                                                                 generator=generator))
        else:
            b.zero_()


NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
"""The normalisation layers a unit group may have (a learned scale and shift per unit)."""


# Above this many elements, |w| is summed a cache-sized block at a time: w.abs() of a 3×2000 net's
# 2000×2000 layer would write and re-read a 16 MB temporary at every step.
ABS_SUM_BLOCK = 1 << 18


def batched_abs_sum(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ |w| over ``dim`` (1 or 2) of a (N, out, in) stack of weight matrices (CBP's outgoing and
    incoming magnitudes), on the CPU without a full-size temporary for large layers. On an
    accelerator one fused pass: blocks there cost a kernel launch each (profiled on an H200: 63
    reductions per step made CBP on a 3×2000 net 3× slower than backprop)."""
    if w.numel() <= 2 * ABS_SUM_BLOCK or not w.is_cpu:
        return w.abs().sum(dim)
    step = max(1, ABS_SUM_BLOCK // (w.shape[0] * w.shape[dim]))
    if dim == 2:  # sum over ``dim`` a block of the other axis at a time
        return torch.cat([w[:, r:r + step].abs().sum(2) for r in range(0, w.shape[1], step)], 1)
    total = None
    for r in range(0, w.shape[1], step):
        part = w[:, r:r + step].abs().sum(1)
        total = part if total is None else total.add_(part)
    return total  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class Consumer:
    """A layer that reads the group's units.

    Each unit owns ``positions`` consecutive inputs of the layer: columns of an ``nn.Linear`` (a
    conv channel flattened into a linear layer owns all its ``H·W`` spatial columns; a CReLU
    unit its 2 outputs, or ``2·H·W``), input channels of an ``nn.Conv2d`` (2 for a CReLU unit).
    """

    module: nn.Module
    positions: int = 1

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like the consumer's weight, viewed as (out, units, rest)."""
        return t.view(t.shape[0], t.shape[1] // self.positions, -1)

    def weight_view(self) -> torch.Tensor:
        """The consumer weight viewed as (out, units, rest) so unit slices are ``[:, i]``."""
        return self.view(self.module.weight)

    def outgoing_magnitude(self) -> torch.Tensor:
        """Σ_k |w_out,k| for every unit: shape (units,)."""
        w = self.module.weight
        if w.dim() == 2 and self.positions == 1:
            return batched_abs_sum(w.unsqueeze(0), 1)[0]  # the common MLP case
        return self.weight_view().abs().sum(dim=(0, 2))


@dataclass(eq=False)
class UnitGroup:
    """One set of replaceable hidden units (e.g. one hidden layer, or a conv's channels).

    Attributes:
        name: a stable name (used in state dicts and reports).
        producer: ``nn.Linear`` or ``nn.Conv2d`` whose output index ``i`` (weight dim 0) is unit i.
        activation: the module whose output is the unit's value h (hooked by CBP); unit dim 1.
        consumers: every layer that reads the units. It must be *all* of them: a unit that also
            feeds a skip path must not be declared.
        batchnorm: the normalisation layer (BatchNorm, LayerNorm over the units, or
            GroupNorm) applied to the producer's output before the activation, if any; its
            per-unit scale and shift are reset with the unit.
    """

    name: str
    producer: nn.Module
    activation: nn.Module
    consumers: tuple[Consumer, ...]
    batchnorm: nn.Module | None = None
    n_units: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_units = int(self.producer.weight.shape[0])
        for c in self.consumers:
            units = c.weight_view().shape[1]
            if units != self.n_units:
                raise ValueError(
                    f"group {self.name!r}: consumer {type(c.module).__name__} reads {units} units, "
                    f"producer has {self.n_units}"
                )
        norm = self.batchnorm
        if norm is not None and (not isinstance(norm, NORM_TYPES) or norm.weight is not None
                                 and tuple(norm.weight.shape) != (self.n_units,)):
            raise ValueError(f"group {self.name!r}: the normalisation layer must be a BatchNorm, LayerNorm "
                             f"or GroupNorm with one scale per unit ({self.n_units})")

    def outgoing_magnitude(self) -> torch.Tensor:
        """Σ_k |w_out,k| per unit over all consumers."""
        return sum(c.outgoing_magnitude() for c in self.consumers)

    def incoming_magnitude(self) -> torch.Tensor:
        """Σ_j |w_in,j| per unit (for the adaptable-contribution utility)."""
        return batched_abs_sum(self.producer.weight.flatten(1)[None], 2)[0]


def optimizer_states(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> list[torch.Tensor]:
    """Every per-element state tensor ``optimizer`` holds for ``param`` (shaped like it): SGD's
    ``momentum_buffer``, Adam's moments and, with :class:`plasticity_gym_agents.optim.ReferenceOptimizer`, its
    per-element step counts. (torch.optim.Adam's scalar ``step`` is not one of them.)"""
    state = optimizer.state.get(param) if optimizer is not None else None
    return [v for v in (state or {}).values() if torch.is_tensor(v) and v.shape == param.shape]


@torch.no_grad()
def zero_optimizer_slices(optimizer: torch.optim.Optimizer | None, param: torch.Tensor,
                          index: tuple) -> None:
    """Zero ``index`` of every per-element optimizer state of ``param``: the touched slices
    restart their moments and (with :class:`plasticity_gym_agents.optim.ReferenceOptimizer`) Adam's bias correction."""
    for value in optimizer_states(optimizer, param):
        value[index] = 0


Slot = tuple[torch.Tensor, Sequence[torch.Tensor]]  # a (R, ...) parameter, its optimizer states alike


def reinit_slices(replica: int, idx: torch.Tensor, *, incoming: Slot, bias: Slot | None,
                  outgoing: Sequence[tuple[Slot, torch.Tensor | None]], spec: InitSpec,
                  generator: torch.Generator | None, unit_means: torch.Tensor | None = None,
                  norm: tuple[Slot, Slot] | None = None) -> None:
    """The unit surgery of CBP and ReDo, over a replica axis: units ``idx`` of replica ``replica``
    afresh. Used by every network, stacked (the learner core) or not (a replica axis of one).

    ``incoming``: the producer's weight ``(R, units, ...)``, whose rows ``idx`` are redrawn from
    ``spec``; ``bias``: its bias ``(R, units)``, zeroed; ``outgoing``: each consumer's weight viewed
    as ``(R, out, units, ...)`` with its bias ``(R, out)`` (or ``None``), whose unit slices are
    zeroed. The optimizer state of every slice touched is zeroed too. The new units contribute
    nothing to the outputs and the old units' contributions are removed, unless ``unit_means``
    (the replaced units' expected values ĥ, ``(len(idx),)``) is given: then each consumer's bias
    first gains Σ_i ĥ_i·(unit i's outgoing weights, summed over its positions), which keeps the
    expected output (CBP's next-layer bias correction; a consumer without a bias is left as is).
    ``norm``: the scale and shift ``(R, units)`` of a normalisation layer between producer and
    activation, set to 1 and 0 (their optimizer state zeroed).
    Parameters that require gradients must be passed under ``torch.no_grad()``.
    """
    k = idx.numel()
    if k == 0:
        return
    if unit_means is not None:
        for (w, _), b in outgoing:
            if b is not None:
                b[replica] += w[replica][:, idx].reshape(w.shape[1], k, -1).sum(2) @ unit_means.to(w)
    w = incoming[0]
    fresh = spec.sample((k, *w.shape[2:]), device=w.device, dtype=w.dtype, generator=generator)
    # On the CPU, write through numpy views: numpy's indexing costs a fraction of torch's.
    numpy = w.is_cpu and w.dtype == torch.float32
    array = (lambda t: t.detach().numpy()) if numpy else (lambda t: t)  # noqa: E731
    rows = idx.cpu().numpy() if numpy else idx
    array(w)[replica, rows] = array(fresh)
    zeroed = [*incoming[1], *((bias[0], *bias[1]) if bias is not None else ())]
    if norm is not None:
        (scale, scale_states), (shift, shift_states) = norm
        array(scale)[replica, rows] = 1
        zeroed += [*scale_states, shift, *shift_states]
    for t in zeroed:
        array(t)[replica, rows] = 0
    for (w_out, states), _ in outgoing:
        for t in (w_out, *states):
            array(t)[replica, :, rows] = 0


@torch.no_grad()
def reinit_units(group: UnitGroup, idx: torch.Tensor, *, optimizer: torch.optim.Optimizer | None,
                 generator: torch.Generator | None, unit_means: torch.Tensor | None = None) -> None:
    """Re-initialise units ``idx`` (1-D long tensor) of ``group``, as :func:`reinit_slices` says,
    with the units' normalisation scale and shift (and BatchNorm's running statistics) reset if
    the group has a normalisation layer."""
    def slot(param: torch.Tensor, view: Any = None) -> Slot:
        view = view or (lambda t: t)
        return view(param)[None], [view(s)[None] for s in optimizer_states(optimizer, param)]

    prod = group.producer
    bias = getattr(prod, "bias", None)
    outgoing = [(slot(c.module.weight, c.view), None if getattr(c.module, "bias", None) is None
                 else c.module.bias[None]) for c in group.consumers]
    bn = group.batchnorm
    affine = bn is not None and bn.weight is not None
    reinit_slices(0, idx, incoming=slot(prod.weight), bias=None if bias is None else slot(bias),
                  outgoing=outgoing, spec=get_init(prod), generator=generator, unit_means=unit_means,
                  norm=(slot(bn.weight), slot(bn.bias)) if affine else None)
    if bn is not None and idx.numel() and getattr(bn, "running_mean", None) is not None:
        bn.running_mean[idx] = 0
        bn.running_var[idx] = 1
