"""The reference networks: MLP, the Continual ImageNet convnet, ResNet-18 (CIFAR stem), linear.

Every layer records its initial distribution (``units.set_init``) so that CBP, ReDo, head reset
and retrain-from-scratch can redraw from it, and every network declares its replaceable hidden
units through ``cbp_groups()`` (see ``agents/units.py``). Each hidden activation is its own
module instance, so forward hooks (CBP, ``plasticity_gym.metrics``) see each layer separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from plasticity_gym_agents.arrays import ACTIVATIONS, TORCH, activation_gain, crelu_inputs, outputs_per_unit
from plasticity_gym_agents.config import LearnerConfig
from plasticity_gym_agents.units import (NORM_TYPES, Consumer, InitSpec, UnitGroup, get_init, reset_module_parameters,
                          set_init, zero_optimizer_slices)

__all__ = ["ACTIVATIONS", "CReLU", "ConvNet", "LinearNet", "MLP", "PlasticNetwork", "ResNet18", "UnitPairs",
           "activation_gain", "build_network", "image_layout", "make_activation", "resolve_device", "task_spec"]


class UnitPairs(nn.Module):
    """The hook point of CReLU units: returns a CReLU representation ``(batch, 2n, ...)`` viewed
    as ``(batch, n, 2, ...)``, unit ``i``'s two outputs on the new axis. A network calls it on its
    representation (and discards the result) so that unit-group hooks (CBP, ReDo, SNR) see one
    value pair per unit; the representation itself is the :class:`CReLU`'s ``nn.ReLU`` output."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.unflatten(1, (h.shape[1] // 2, 2))


class CReLU(nn.Module):
    """Concatenated ReLU (Abbas et al. 2023) over dim 1 (features or channels): unit ``i``
    outputs ``relu(x_i)`` and ``relu(−x_i)`` as entries ``2i`` and ``2i + 1`` (the math of
    :func:`plasticity_gym_agents.arrays.activate`). ``relu`` is an ``nn.ReLU`` so probes see
    the representation; ``units`` is its :class:`UnitPairs` hook point."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.units = UnitPairs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(crelu_inputs(TORCH, x, 1))
        self.units(h)
        return h


def make_activation(name: str, leaky_slope: float = 0.01) -> nn.Module:
    """The hidden activation as torch's own module (the autograd form of :mod:`plasticity_gym_agents.arrays`)."""
    modules = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU, "relu": nn.ReLU, "swish": nn.SiLU,
               "leaky_relu": lambda: nn.LeakyReLU(leaky_slope), "crelu": CReLU}
    if name not in modules:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return modules[name]()


def layer_units(width: int, activation: str) -> int:
    """Units of a layer whose representation is ``width`` wide: ⌈width/2⌉ for CReLU (two outputs
    each; the halved width), else ``width``."""
    k = outputs_per_unit(activation)
    return -(-int(width) // k)


def _hook_point(act: nn.Module) -> nn.Module:
    """The module whose output a unit group reads: a CReLU's unit pairs, else the activation."""
    return act.units if isinstance(act, CReLU) else act


class SeededDropout(nn.Module):
    """Dropout whose masks come from a given torch.Generator (so agents are reproducible)."""

    def __init__(self, p: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError("dropout probability must be in [0, 1)")
        self.p = p
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


class PlasticNetwork(nn.Module):
    """Common interface of the reference networks."""

    head: nn.Linear

    def cbp_groups(self) -> list[UnitGroup]:
        """The replaceable hidden-unit groups (producers and all their consumers)."""
        return []

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Redraw every layer from its recorded initial distribution (retrain from scratch)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, *NORM_TYPES)):
                reset_module_parameters(m, generator)


class MLP(PlasticNetwork):
    """Fully connected network: flatten → [Linear (→ LayerNorm) → activation (→ dropout)]* → Linear head.

    ``hidden``: the widths of the hidden representations (with ``crelu``, ⌈w/2⌉ units per layer,
    two outputs each). Hidden weights: Kaiming-uniform with the activation's gain; the head uses
    gain 1 (linear output); biases start at zero; ``layer_norm`` adds ``norms`` (scale 1, shift 0;
    registered after the head, so ``parameters()`` lists the linear layers, the head, then the
    norms). (Without dropout, the reference agents train it through the learner core,
    :mod:`plasticity_gym_agents.lockstep`, which stacks these weights; this module is its autograd
    form: dropout, probes, user code.)
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, *,
                 activation: str = "relu", leaky_slope: float = 0.01, dropout: float = 0.0,
                 layer_norm: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.activation_name = activation
        self.leaky_slope = leaky_slope
        gain = activation_gain(activation, leaky_slope)
        k = outputs_per_unit(activation)
        self.layers = nn.ModuleList()
        self.acts = nn.ModuleList()
        self.drops = nn.ModuleList()
        width = in_features
        for h in hidden:
            lin = nn.Linear(width, layer_units(h, activation))
            set_init(lin, InitSpec.kaiming_uniform(width, gain), generator)
            self.layers.append(lin)
            self.acts.append(make_activation(activation, leaky_slope))
            self.drops.append(SeededDropout(dropout, generator) if dropout > 0 else nn.Identity())
            width = lin.out_features * k
        self.head = nn.Linear(width, out_features)
        set_init(self.head, InitSpec.kaiming_uniform(width, 1.0), generator)
        self.dropout = dropout
        self.norms = nn.ModuleList(nn.LayerNorm(lin.out_features) for lin in self.layers) if layer_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, (lin, act, drop) in enumerate(zip(self.layers, self.acts, self.drops)):
            z = lin(x)
            x = drop(act(self.norms[i](z) if self.norms is not None else z))
        return self.head(x)

    def cbp_groups(self) -> list[UnitGroup]:
        nxt = [*self.layers[1:], self.head]
        k = outputs_per_unit(self.activation_name)
        return [
            UnitGroup(f"layers.{i}", lin, _hook_point(act), (Consumer(nxt[i], k),),
                      batchnorm=None if self.norms is None else self.norms[i])
            for i, (lin, act) in enumerate(zip(self.layers, self.acts))
        ]


class ConvNet(PlasticNetwork):
    """The Continual ImageNet network (Dohare et al. 2024, Extended Data Table 3).

    conv 3→32 5×5, 32→64 3×3, 64→128 3×3, each ReLU + 2×2 max-pool; flatten (512 for 32×32
    input); linear 512→128→128→n. Every layer, head included, starts as PyTorch's default layer:
    weights and biases uniform in ±1/√fan_in (the authors' code left torch's init in place;
    CBP redraws replaced units' weights from the same distribution).
    Accepts NCHW or NHWC input (``channels_last``). ``activation="crelu"``: every layer has half
    the units (16, 32, 64 channels; 64, 64 units), each with two outputs, so every representation
    keeps the width above. ``layer_norm``: ``GroupNorm(1, C)`` after each conv and ``LayerNorm``
    after each hidden linear layer (``norm1`` … ``norm5``), before the activation.
    """

    def __init__(self, out_features: int = 2, *, in_channels: int = 3, image_size: int = 32,
                 channels_last: bool = False, dropout: float = 0.0, activation: str = "relu",
                 layer_norm: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if activation not in ("relu", "crelu"):
            raise ValueError(f"the convnet takes activation 'relu' or 'crelu', got {activation!r}")
        self.channels_last = channels_last
        self.outputs_per_unit = k = outputs_per_unit(activation)
        c1, c2, c3, f = (layer_units(w, activation) for w in (32, 64, 128, 128))
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1 * k, c2, 3)
        self.conv3 = nn.Conv2d(c2 * k, c3, 3)
        self.relu1, self.relu2, self.relu3 = (make_activation(activation) for _ in range(3))
        self.pool1, self.pool2, self.pool3 = nn.MaxPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(2)
        side = image_size
        for ks in (5, 3, 3):
            side = (side - ks + 1) // 2
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for the convnet")
        self.positions = side * side
        flat = c3 * k * self.positions
        self.fc1 = nn.Linear(flat, f)
        self.fc2 = nn.Linear(f * k, f)
        self.relu4, self.relu5 = make_activation(activation), make_activation(activation)
        self.drop4 = SeededDropout(dropout, generator) if dropout > 0 else nn.Identity()
        self.drop5 = SeededDropout(dropout, generator) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(f * k, out_features)
        for layer in (self.conv1, self.conv2, self.conv3, self.fc1, self.fc2, self.head):
            set_init(layer, InitSpec.torch_default(layer.weight[0].numel()), generator)
        norms = ([nn.GroupNorm(1, c) for c in (c1, c2, c3)] + [nn.LayerNorm(f), nn.LayerNorm(f)]
                 if layer_norm else [nn.Identity() for _ in range(5)])
        self.norm1, self.norm2, self.norm3, self.norm4, self.norm5 = norms
        # CReLU conv units are read after pooling: their hook point is the pooled pair view.
        self.pooled1, self.pooled2, self.pooled3 = (UnitPairs() if k == 2 else nn.Identity() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        for conv, norm, act, pool, pooled in ((self.conv1, self.norm1, self.relu1, self.pool1, self.pooled1),
                                              (self.conv2, self.norm2, self.relu2, self.pool2, self.pooled2),
                                              (self.conv3, self.norm3, self.relu3, self.pool3, self.pooled3)):
            x = pool(act(norm(conv(x))))
            pooled(x)  # the unit groups' hook point (identity without CReLU)
        x = x.flatten(1)
        x = self.drop4(self.relu4(self.norm4(self.fc1(x))))
        x = self.drop5(self.relu5(self.norm5(self.fc2(x))))
        return self.head(x)

    def cbp_groups(self) -> list[UnitGroup]:
        # A conv unit's value h is the pooled map its consumer reads; conv3's channels each own
        # their `positions` columns of fc1 through the flatten (k channels each with CReLU).
        k = self.outputs_per_unit
        conv_h = (self.pooled1, self.pooled2, self.pooled3) if k == 2 else (self.pool1, self.pool2, self.pool3)

        def norm(m: nn.Module) -> nn.Module | None:
            return None if isinstance(m, nn.Identity) else m

        return [
            UnitGroup("conv1", self.conv1, conv_h[0], (Consumer(self.conv2, k),), batchnorm=norm(self.norm1)),
            UnitGroup("conv2", self.conv2, conv_h[1], (Consumer(self.conv3, k),), batchnorm=norm(self.norm2)),
            UnitGroup("conv3", self.conv3, conv_h[2], (Consumer(self.fc1, k * self.positions),),
                      batchnorm=norm(self.norm3)),
            UnitGroup("fc1", self.fc1, _hook_point(self.relu4), (Consumer(self.fc2, k),), batchnorm=norm(self.norm4)),
            UnitGroup("fc2", self.fc2, _hook_point(self.relu5), (Consumer(self.head, k),), batchnorm=norm(self.norm5)),
        ]


def _norm2d(channels: int, layer_norm: bool) -> nn.Module:
    """BatchNorm, or with ``layer_norm`` its batch-independent replacement: layer normalisation
    over all channels and positions of an example with a scale and shift per channel."""
    return nn.GroupNorm(1, channels) if layer_norm else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """ResNet basic block with separate ReLU modules (so hooks see the inner one alone).

    ``activation="crelu"``: the inner activation is CReLU with ⌈planes/2⌉ conv1 channels (two
    outputs each, so conv2 reads ``planes`` channels as before); the block output stays ReLU (it
    is added to the skip path). ``layer_norm``: every ``bn*`` is ``GroupNorm(1, C)`` instead."""

    def __init__(self, in_planes: int, planes: int, stride: int,
                 generator: torch.Generator | None, *, activation: str = "relu",
                 layer_norm: bool = False) -> None:
        super().__init__()
        inner = layer_units(planes, activation)
        self.conv1 = nn.Conv2d(in_planes, inner, 3, stride, 1, bias=False)
        self.bn1 = _norm2d(inner, layer_norm)
        self.relu1 = make_activation(activation)
        self.conv2 = nn.Conv2d(inner * outputs_per_unit(activation), planes, 3, 1, 1, bias=False)
        self.bn2 = _norm2d(planes, layer_norm)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        convs = [self.conv1, self.conv2]
        if stride != 1 or in_planes != planes:
            sc_conv = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
            self.shortcut = nn.Sequential(sc_conv, _norm2d(planes, layer_norm))
            convs.append(sc_conv)
        for conv in convs:
            set_init(conv, InitSpec.kaiming_normal(conv.weight[0].numel()), generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(PlasticNetwork):
    """ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max-pool), BatchNorm.

    Initialization as the authors' ``kaiming_init_resnet_module``: every conv (stem, blocks,
    shortcuts) Kaiming-normal with fan_in and the ReLU gain, N(0, 2/fan_in); BatchNorm γ 1, β 0;
    the head Kaiming-normal with the linear gain, N(0, 1/fan_in), bias 0.

    ``width`` is the stem's channel count (64 in the paper; smaller for CPU scales).
    ``layer_norm``: every BatchNorm becomes ``GroupNorm(1, C)`` (layer normalisation over an
    example's channels and positions, scale and shift per channel) — layer normalisation before
    each activation, and no statistics shared across the batch. ``activation="crelu"``: the
    blocks' inner activations are CReLU at half the units (see :class:`BasicBlock`). The head has
    ``max_outputs`` units of which the first ``active_outputs`` are used: ``set_active_outputs``
    grows the head (new rows redrawn from the init distribution), as the paper adds 5 output
    units per class increment.

    CBP groups (:meth:`cbp_groups`), the units whose every consumer can be zeroed:

    * each block's inner conv (``blocks.i.conv1``: conv1 rows, bn1 channel, read only by conv2);
    * the last block's output channels (``blocks.7.out``, ``8·width`` units: 512 at the paper's
      width, the units the paper's replacement-rate example counts). Unit ``i`` is channel ``i``
      of ``relu2(bn2(conv2(·)) + x)``, x the block's identity-shortcut input. Its producers are
      row ``i`` of the block's conv2 and channel ``i`` of its bn2, which reach nothing but this
      channel; its only consumer is column ``i`` of the linear head (after global average
      pooling). Zeroing that column removes the unit from the output whatever its new producers
      compute, in train and eval mode alike: as for every group, the fresh unit contributes
      nothing and the outputs change only by the old unit's contribution. The shortcut
      input ``x_i`` (the previous block's output, which also feeds this block's conv1) is not a
      producer and is left as it is: a fresh unit starts as ``relu(bn2(new conv2 row) + x_i)``.

    No other conv is a group: its output reaches a skip path, so zeroing its consumers would not
    remove it from the network.
    """

    def __init__(self, max_outputs: int, *, active_outputs: int | None = None, width: int = 64,
                 in_channels: int = 3, channels_last: bool = False, activation: str = "relu",
                 layer_norm: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if activation not in ("relu", "crelu"):
            raise ValueError(f"ResNet-18 takes activation 'relu' or 'crelu', got {activation!r}")
        self.channels_last = channels_last
        self.outputs_per_unit = outputs_per_unit(activation)
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        set_init(self.stem, InitSpec.kaiming_normal(in_channels * 9), generator)
        self.stem_bn = _norm2d(width, layer_norm)
        self.stem_relu = nn.ReLU()
        blocks = []
        in_planes = width
        for i, mult in enumerate((1, 2, 4, 8)):
            planes = width * mult
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, generator, activation=activation,
                                         layer_norm=layer_norm))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_planes, max_outputs)
        set_init(self.head, InitSpec.kaiming_normal(in_planes, 1.0), generator)
        self.active_outputs = max_outputs if active_outputs is None else active_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = self.stem_relu(self.stem_bn(self.stem(x)))
        x = self.pool(self.blocks(x)).flatten(1)
        return self.head(x)[:, : self.active_outputs]

    @torch.no_grad()
    def set_active_outputs(self, n: int, *, optimizer: torch.optim.Optimizer | None = None,
                           generator: torch.Generator | None = None) -> None:
        """Grow the head to ``n`` units; the new rows are drawn afresh (bias zero)."""
        n = int(n)
        if n > self.head.out_features:
            raise ValueError(f"head has only {self.head.out_features} units, asked for {n}")
        if n <= self.active_outputs:
            return
        rows = slice(self.active_outputs, n)
        w = self.head.weight
        w[rows] = get_init(self.head).sample((n - self.active_outputs, w.shape[1]),
                                             device=w.device, dtype=w.dtype, generator=generator)
        self.head.bias[rows] = 0
        zero_optimizer_slices(optimizer, w, (rows,))
        zero_optimizer_slices(optimizer, self.head.bias, (rows,))
        self.active_outputs = n

    def cbp_groups(self) -> list[UnitGroup]:
        groups = [
            UnitGroup(f"blocks.{i}.conv1", b.conv1, _hook_point(b.relu1), (Consumer(b.conv2, self.outputs_per_unit),),
                      batchnorm=b.bn1)
            for i, b in enumerate(self.blocks)
        ]
        last = self.blocks[-1]
        # With a projection shortcut, its conv and BN would be producers of the output too.
        if not isinstance(last.shortcut, nn.Identity):
            raise ValueError("the last block's output is a CBP group only with an identity shortcut")
        groups.append(UnitGroup(f"blocks.{len(self.blocks) - 1}.out", last.conv2, last.relu2,
                                (Consumer(self.head),), batchnorm=last.bn2))
        return groups


class LinearNet(PlasticNetwork):
    """The linear baseline: flatten → Linear. No hidden units, so CBP has nothing to do."""

    def __init__(self, in_features: int, out_features: int, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.head = nn.Linear(in_features, out_features)
        set_init(self.head, InitSpec.kaiming_uniform(in_features, 1.0), generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


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


def image_layout(x_shape: tuple[int, ...]) -> tuple[int, int, bool]:
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
    """The network ``config.network`` describes, for a task of ``spec`` (:func:`task_spec`)."""
    nc = config.network
    n_in = int(np.prod(spec["x_shape"]))
    n_out = spec["n_outputs"]
    if nc.dropout > 0 and nc.kind not in ("mlp", "convnet"):
        raise ValueError(f"network.dropout is only defined for mlp and convnet, not {nc.kind}")
    if nc.kind == "mlp":
        return MLP(n_in, nc.hidden, n_out, activation=nc.activation, leaky_slope=nc.leaky_slope,
                   dropout=nc.dropout, layer_norm=nc.layer_norm, generator=generator)
    if nc.kind == "linear":
        return LinearNet(n_in, n_out, generator=generator)
    channels, side, last = image_layout(spec["x_shape"])
    if nc.kind == "convnet":
        return ConvNet(n_out, in_channels=channels, image_size=side, channels_last=last,
                       dropout=nc.dropout, activation=nc.activation, layer_norm=nc.layer_norm,
                       generator=generator)
    return ResNet18(n_out, width=nc.width, in_channels=channels, channels_last=last,
                    activation=nc.activation, layer_norm=nc.layer_norm, generator=generator)
