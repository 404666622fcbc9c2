"""Hidden units as replaceable groups: the declarations that CBP and ReDo work on.

A network says, for every set of hidden units that may be re-initialised, which tensors
*produce* each unit (the rows of its incoming weight, its bias, a following BatchNorm channel)
and which tensors *consume* it (the columns of the outgoing weight of every layer that reads
it). :func:`reinit_units` then re-initialises any units of such a group without knowing the
network: redraw the incoming weights from the layer's recorded initial distribution, zero the
bias and the outgoing weights, reset the BatchNorm channel and the optimizer state of every
slice touched. Because the outgoing weights become zero, the network's function is unchanged.

A network that wants CBP (MLP, convnet, ResNet-18, later PPO nets) only has to return a list of
:class:`UnitGroup` from ``cbp_groups()`` and tag its layers with :func:`set_init`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "Consumer",
    "InitSpec",
    "UnitGroup",
    "batched_abs_sum",
    "get_init",
    "add_expected_contribution",
    "reinit_units",
    "reset_module_parameters",
    "set_init",
    "zero_optimizer_slices",
]


@dataclass(frozen=True)
class InitSpec:
    """The initial distribution of one layer's weight (biases always start at zero).

    ``kind``: ``"uniform"`` draws U(-bound, bound); ``"normal"`` draws N(0, std²) with
    ``std = bound``; ``"zeros"`` gives zeros.
    """

    kind: str
    bound: float

    def sample(self, shape: torch.Size | tuple[int, ...], *, device: torch.device,
               dtype: torch.dtype, generator: torch.Generator | None) -> torch.Tensor:
        if self.kind == "uniform":
            u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
            return u.mul_(2.0 * self.bound).sub_(self.bound)
        if self.kind == "normal":
            return torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(self.bound)
        if self.kind == "zeros":
            return torch.zeros(shape, device=device, dtype=dtype)
        raise ValueError(f"unknown init kind {self.kind!r}")

    @staticmethod
    def kaiming_uniform(fan_in: int, gain: float) -> InitSpec:
        """The paper's Kaiming-uniform: bound = gain · sqrt(3 / fan_in)."""
        return InitSpec("uniform", gain * math.sqrt(3.0 / fan_in))

    @staticmethod
    def kaiming_normal_fan_out(fan_out: int, gain: float = math.sqrt(2.0)) -> InitSpec:
        """torchvision's ResNet conv init: N(0, gain² / fan_out)."""
        return InitSpec("normal", gain / math.sqrt(fan_out))


_INIT_ATTR = "_pg_init_spec"


def set_init(module: nn.Module, spec: InitSpec, generator: torch.Generator | None = None) -> None:
    """Record ``spec`` as ``module``'s initial distribution and draw its weight from it.

    The bias (if any) is set to zero.
    """
    setattr(module, _INIT_ATTR, spec)
    reset_module_parameters(module, generator)


def get_init(module: nn.Module) -> InitSpec:
    spec = getattr(module, _INIT_ATTR, None)
    if spec is None:
        raise ValueError(f"{type(module).__name__} has no recorded initial distribution (use set_init)")
    return spec


@torch.no_grad()
def reset_module_parameters(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Redraw a module's parameters from its recorded initial distribution.

    Linear/conv: weight from the spec, bias zero. BatchNorm: γ=1, β=0, running stats reset.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.reset_parameters()
        return
    spec = get_init(module)
    w = module.weight
    w.copy_(spec.sample(w.shape, device=w.device, dtype=w.dtype, generator=generator))
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()


# Above this many elements, |w| is summed a cache-sized block at a time: w.abs() of a 3×2000 net's
# 2000×2000 layer would write and re-read a 16 MB temporary at every step.
ABS_SUM_BLOCK = 1 << 18


def batched_abs_sum(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Σ |w| over ``dim`` (1 or 2) of a (N, out, in) stack of weight matrices (CBP's outgoing and
    incoming magnitudes), without a full-size temporary for large layers."""
    if w.numel() <= 2 * ABS_SUM_BLOCK:
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

    For an ``nn.Linear`` the units are ``positions`` consecutive input columns each (a conv
    channel flattened into a linear layer owns all its ``H·W`` spatial columns); for an
    ``nn.Conv2d`` unit ``i`` is input channel ``i``.
    """

    module: nn.Module
    positions: int = 1

    def weight_view(self) -> torch.Tensor:
        """The consumer weight viewed as (out, units, rest) so unit slices are ``[:, i]``."""
        w = self.module.weight
        if isinstance(self.module, nn.Linear):
            return w.view(w.shape[0], w.shape[1] // self.positions, self.positions)
        return w.view(w.shape[0], w.shape[1], -1)

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
        batchnorm: BatchNorm applied to the producer's output before the activation, if any.
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
        if self.batchnorm is not None and self.batchnorm.num_features != self.n_units:
            raise ValueError(f"group {self.name!r}: BatchNorm width differs from the producer")

    def outgoing_magnitude(self) -> torch.Tensor:
        out = self.consumers[0].outgoing_magnitude()
        for c in self.consumers[1:]:
            out = out + c.outgoing_magnitude()
        return out

    def incoming_magnitude(self) -> torch.Tensor:
        """Σ_j |w_in,j| per unit (for the adaptable-contribution utility)."""
        return self.producer.weight.abs().flatten(1).sum(1)


@torch.no_grad()
def zero_optimizer_slices(optimizer: torch.optim.Optimizer | None, param: torch.Tensor,
                          index: tuple) -> None:
    """Zero ``index`` of every per-element state tensor the optimizer holds for ``param``.

    Covers SGD's ``momentum_buffer`` and Adam's ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq`` (any
    state tensor shaped like the parameter), and so, with :class:`agents.optim.ReferenceOptimizer`,
    Adam's per-element step counts (its ``bias_correction1``/``2``): the touched slices restart
    their bias correction. (torch.optim.Adam's scalar ``step`` is shared by the whole tensor and
    is left alone.)
    """
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value[index] = 0


@torch.no_grad()
def reinit_units(group: UnitGroup, idx: torch.Tensor, *, optimizer: torch.optim.Optimizer | None,
                 generator: torch.Generator | None, unit_means: torch.Tensor | None = None) -> None:
    """Re-initialise units ``idx`` (1-D long tensor) of ``group``.

    The new units contribute nothing to the outputs (their outgoing weights are zero); the old
    units' contributions are removed, so the outputs change by them, unless ``unit_means``
    (the replaced units' expected values ĥ, shape ``(len(idx),)``) is given: then, before the
    outgoing weights are zeroed, each consumer's bias gains Σ_i ĥ_i · (the unit's outgoing
    weights summed over its positions), which keeps the expected output (CBP's next-layer bias
    correction). A consumer without a bias is left as it is.
    """
    if idx.numel() == 0:
        return
    if unit_means is not None:
        add_expected_contribution(group, idx, unit_means)
    prod = group.producer
    w = prod.weight
    spec = get_init(prod)
    shape = (idx.numel(), *w.shape[1:])
    w[idx] = spec.sample(shape, device=w.device, dtype=w.dtype, generator=generator)
    zero_optimizer_slices(optimizer, w, (idx,))
    if getattr(prod, "bias", None) is not None:
        prod.bias[idx] = 0
        zero_optimizer_slices(optimizer, prod.bias, (idx,))
    bn = group.batchnorm
    if bn is not None:
        if bn.weight is not None:
            bn.weight[idx] = 1
            bn.bias[idx] = 0
            zero_optimizer_slices(optimizer, bn.weight, (idx,))
            zero_optimizer_slices(optimizer, bn.bias, (idx,))
        if bn.running_mean is not None:
            bn.running_mean[idx] = 0
            bn.running_var[idx] = 1
    for c in group.consumers:
        cw = c.module.weight
        if isinstance(c.module, nn.Linear) and c.positions > 1:
            cols = (idx[:, None] * c.positions + torch.arange(c.positions, device=idx.device)).reshape(-1)
        else:
            cols = idx
        cw[:, cols] = 0
        zero_optimizer_slices(optimizer, cw, (slice(None), cols))


@torch.no_grad()
def add_expected_contribution(group: UnitGroup, idx: torch.Tensor, unit_means: torch.Tensor) -> None:
    """Fold units ``idx``'s expected contribution into every consumer's bias: for consumer output
    k, bias_k += Σ_i ĥ_i · Σ_positions w[k, i, position] (the next-layer bias correction)."""
    means = unit_means.to(device=group.producer.weight.device, dtype=group.producer.weight.dtype)
    for c in group.consumers:
        bias = getattr(c.module, "bias", None)
        if bias is None:
            continue
        w = c.weight_view()[:, idx, :].sum(2)  # (out, k)
        bias.add_(w @ means)
