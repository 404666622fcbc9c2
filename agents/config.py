"""Typed, validated, frozen configs for the reference agents (docs/design.md §3).

Every config is a frozen dataclass built with ``Config.from_dict(d)``, which rejects an unknown
key (naming it and listing the valid ones), checks every value's type and range, and fills the
rest from the defaults. ``to_dict`` gives plain JSON data; ``config_hash`` is the sha256 of its
canonical JSON. (The paper's reference code silently fell back to defaults on a misspelt key;
this is why nothing here is lenient.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

__all__ = ["CBPConfig", "ConfigBase", "L2InitConfig", "LearnerConfig", "LRScheduleConfig", "NetworkConfig",
           "OptimizerConfig", "ReDoConfig", "SNRConfig", "ShrinkPerturbConfig", "UPGDConfig", "WeightClipConfig", "config_hash",
           "deep_merge"]

C = TypeVar("C", bound="ConfigBase")


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open, hi_open)}


def _choices(*values: str) -> dict:
    return {"choices": values}


class ConfigBase:
    """Mixin for the frozen config dataclasses."""

    def __post_init__(self) -> None:
        """Check a directly constructed config as ``from_dict`` does (keys aside)."""
        _validate_all(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any] | None = None, *, _path: str | None = None) -> C:
        path = _path or cls.__name__
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a dict, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"valid keys: {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _coerce(value, hints[name], f"{path}.{name}", fields[name].metadata)
                      for name, value in d.items()})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, ConfigBase) else list(v) if isinstance(v, tuple) else v
        return out

    def config_hash(self) -> str:
        return config_hash(self.to_dict())

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with ``changes`` applied (nested dicts merge into sections)."""
        return type(self).from_dict(deep_merge(self.to_dict(), changes))


def config_hash(d: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``d``."""
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def deep_merge(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``overrides`` on top; a dict merges into a dict (or into a ``None`` section)."""
    out = dict(base)
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """``(True, X)`` for ``X | None``, else ``(False, tp)``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return True, args[0] if args[1] is type(None) else args[1]
    return False, tp


def _coerce(value: Any, tp: Any, path: str, meta: dict | Any) -> Any:
    optional, tp = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{path}: must not be None")
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        if isinstance(value, tp):
            return value
        return tp.from_dict(value, _path=path)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        elem_types = [args[0]] * len(value) if args[1:] == (Ellipsis,) else list(args)
        if len(value) != len(elem_types):
            raise ValueError(f"{path}: expected {len(args)} values, got {len(value)}")
        items = tuple(_scalar(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, elem_types)))
        for i, v in enumerate(items):
            _check(v, f"{path}[{i}]", meta)
        return items
    v = _scalar(value, tp, path)
    _check(v, path, meta)
    return v


_KINDS = {bool: "a bool", int: "an int", float: "a number", str: "a string"}


def _scalar(value: Any, tp: Any, path: str) -> Any:
    if tp not in _KINDS:
        raise TypeError(f"{path}: unsupported config type {tp!r}")
    if tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {bool: isinstance(value, bool), int: number and isinstance(value, int), float: number,
          str: isinstance(value, str)}[tp]
    if not ok:
        raise ValueError(f"{path}: expected {_KINDS[tp]}, got {type(value).__name__} {value!r}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{path}: must be finite, got {value}")
    return value


def _check(v: Any, path: str, meta: Any) -> None:
    choices = meta.get("choices") if meta else None
    if choices is not None and v not in choices:
        raise ValueError(f"{path}: {v!r} is not one of {', '.join(map(repr, choices))}")
    rng = meta.get("range") if meta else None
    if rng is not None:
        lo, hi, lo_open, hi_open = rng
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise ValueError(f"{path}: {v!r} must be {'>' if lo_open else '>='} {lo}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise ValueError(f"{path}: {v!r} must be {'<' if hi_open else '<='} {hi}")


def _validate_all(obj: ConfigBase) -> None:
    """Run the same checks on a directly constructed config (``__post_init__``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        v = getattr(obj, f.name)
        if isinstance(v, dict):
            v = _coerce(v, hints[f.name], f"{type(obj).__name__}.{f.name}", f.metadata)
            object.__setattr__(obj, f.name, v)
        elif isinstance(v, list):
            object.__setattr__(obj, f.name, tuple(v))
        if not isinstance(getattr(obj, f.name), ConfigBase):
            _coerce(getattr(obj, f.name), hints[f.name], f"{type(obj).__name__}.{f.name}", f.metadata)


@dataclass(frozen=True)
class NetworkConfig(ConfigBase):
    """Which network. ``hidden``/``leaky_slope`` are for the MLP, ``width`` for ResNet-18 (stem
    channels; 64 in the paper), ``dropout`` for MLP and convnet. ``activation``: any of them for
    the MLP; the convnet and ResNet-18 take ``relu`` or ``crelu``.

    ``crelu`` (concatenated ReLU, Abbas et al. 2023): each unit outputs ``[relu(x), relu(−x)]``.
    The width is *halved*: a layer has ⌈w/2⌉ units whose two outputs make a representation of
    the width ``w`` the network has with ReLU (``hidden`` and the convnet's and ResNet blocks'
    widths name the representations). The next layers keep their size, each CReLU layer has
    half the incoming weights: about half the parameters of the ReLU network (keeping the width
    would double every layer that reads a CReLU representation instead). In ResNet-18 only the
    blocks' inner activations are CReLU (the stem and the block outputs feed identity skip
    paths, whose widths must match).

    ``layer_norm`` (Lyle et al. 2024): layer normalisation, with a learned scale and shift per
    unit, before every hidden activation: ``nn.LayerNorm`` over a linear layer's units and
    ``GroupNorm(1, C)`` (all channels and positions of an example) after a conv; in ResNet-18 it
    replaces every BatchNorm (statistics no longer depend on the batch).
    """

    kind: str = field(default="mlp", metadata=_choices("mlp", "convnet", "resnet18", "linear"))
    hidden: tuple[int, ...] = field(default=(100, 100, 100), metadata=_range(1))
    activation: str = field(default="relu", metadata=_choices(
        "sigmoid", "tanh", "elu", "leaky_relu", "relu", "swish", "crelu"))
    leaky_slope: float = field(default=0.01, metadata=_range(0.0, 1.0, hi_open=True))
    dropout: float = field(default=0.0, metadata=_range(0.0, 1.0, hi_open=True))
    width: int = field(default=64, metadata=_range(1))
    layer_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind in ("convnet", "resnet18") and self.activation not in ("relu", "crelu"):
            raise ValueError(f"NetworkConfig.activation: the {self.kind} takes 'relu' or 'crelu', "
                             f"got {self.activation!r}")
        if self.kind == "linear" and self.layer_norm:
            raise ValueError("NetworkConfig.layer_norm: the linear model has no hidden layer to "
                             "normalise; set layer_norm to false or use kind 'mlp'")


@dataclass(frozen=True)
class OptimizerConfig(ConfigBase):
    """SGD (optionally with momentum) or Adam. ``weight_decay`` is L2: it adds λ·w to the
    gradient (torch's coupled weight decay)."""

    name: str = field(default="sgd", metadata=_choices("sgd", "adam"))
    lr: float = field(default=0.01, metadata=_range(0.0, lo_open=True))
    momentum: float = field(default=0.0, metadata=_range(0.0, 1.0, hi_open=True))
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=_range(0.0, 1.0, hi_open=True))
    eps: float = field(default=1e-8, metadata=_range(0.0, lo_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name == "adam" and self.momentum != 0.0:
            raise ValueError("OptimizerConfig.momentum: Adam uses betas, set momentum to 0")


@dataclass(frozen=True)
class LRScheduleConfig(ConfigBase):
    """A step-size schedule within each task, read from the stream's ``info``: a task of ``E``
    training epochs (``info["train_epochs"]``) trains epoch ``e`` (``info["epoch"]``) at
    ``optimizer.lr · factor^k``, ``k`` the number of milestones ``m`` with ``e ≥ ⌈m·E⌉``; the next
    task starts again at ``optimizer.lr``. The defaults are the paper's class-incremental CIFAR-100
    schedule: 0.1 → 0.02 → 0.004 → 0.0008 at epochs 60 / 120 / 160 of 200."""

    milestones: tuple[float, ...] = field(default=(0.3, 0.6, 0.8), metadata=_range(0.0, 1.0, lo_open=True))
    factor: float = field(default=0.2, metadata=_range(0.0, 1.0, lo_open=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError(f"LRScheduleConfig.milestones: must increase strictly, got {list(self.milestones)}")

    def lr(self, base: float, epoch: int, train_epochs: int) -> float:
        """The step size of training epoch ``epoch`` of a task of ``train_epochs`` epochs."""
        passed = sum(epoch >= math.ceil(m * train_epochs - 1e-9) for m in self.milestones)
        return base * self.factor ** passed


@dataclass(frozen=True)
class CBPConfig(ConfigBase):
    """Continual backpropagation (Dohare et al. 2024, Methods: Algorithm 1)."""

    replacement_rate: float = field(default=1e-4, metadata=_range(0.0, 1.0))
    maturity: int = field(default=100, metadata=_range(0))
    decay: float = field(default=0.99, metadata=_range(0.0, 1.0, hi_open=True))
    utility: str = field(default="contribution",
                         metadata=_choices("contribution", "adaptable_contribution"))
    running_average: bool = True  # False: the instantaneous mini-batch utility
    bias_correction: bool = True  # read running averages divided by (1 - decay**age)
    # Before zeroing a replaced unit's outgoing weights, add its bias-corrected mean activation
    # times those weights to each consumer's bias, so the expected output is kept. Off by
    # default: the authors' code never applied it, so the published results ran without it.
    next_layer_bias_correction: bool = False


@dataclass(frozen=True)
class ShrinkPerturbConfig(ConfigBase):
    """After every update: w ← (1 − lr·weight_decay)·w, then w ← w + noise_std·ε, ε ~ N(0, 1)."""

    weight_decay: float = field(default=1e-4, metadata=_range(0.0))
    noise_std: float = field(default=1e-5, metadata=_range(0.0))


@dataclass(frozen=True)
class ReDoConfig(ConfigBase):
    """ReDo (Sokar et al. 2023): every ``period`` updates, re-initialise units whose normalised
    mean |activation| since the last check is ≤ ``threshold``."""

    threshold: float = field(default=0.1, metadata=_range(0.0))
    period: int = field(default=100, metadata=_range(1))


@dataclass(frozen=True)
class L2InitConfig(ConfigBase):
    """L2 Init (Kumar et al. 2024, regenerative regularization): ``strength·(θ − θ₀)`` is added to
    every parameter's gradient, θ₀ the network's initial parameters — the gradient of
    ``(strength/2)·‖θ − θ₀‖²``, scaled like ``optimizer.weight_decay`` (as in the authors' update
    θ ← (1 − αλ)·θ + αλ·θ₀ − α·∇L under SGD). θ₀ is fixed at construction (a unit reset does not
    move it); ``retrain`` re-draws it with the network."""

    strength: float = field(default=1e-2, metadata=_range(0.0))


@dataclass(frozen=True)
class WeightClipConfig(ConfigBase):
    """Weight clipping (Elsayed et al. 2024): after every update clamp each weight and bias of a
    layer to ``±kappa·b``, ``b`` the bound of that layer's initial weight distribution (a normal
    init's std times √3, the bound of the uniform with its variance). Normalisation layers'
    scales and shifts are not clipped."""

    kappa: float = field(default=2.0, metadata=_range(0.0, lo_open=True))


@dataclass(frozen=True)
class UPGDConfig(ConfigBase):
    """UPGD (Elsayed and Mahmood 2024), replacing the SGD step (step size ``optimizer.lr``): per
    weight, utility ``u ← β·u + (1 − β)·(−g·w)``; then
    ``w ← (1 − lr·weight_decay)·w − lr·(g + ξ)·(1 − sigmoid(û / η))``, ξ ~ N(0, noise_std²),
    û the bias-corrected utility and η the largest (uncorrected) utility over every parameter of
    the network (the authors' global scaling)."""

    beta_utility: float = field(default=0.999, metadata=_range(0.0, 1.0, hi_open=True))
    noise_std: float = field(default=1e-3, metadata=_range(0.0))
    weight_decay: float = field(default=1e-3, metadata=_range(0.0))


@dataclass(frozen=True)
class SNRConfig(ConfigBase):
    """Self-normalized resets (Farias and Jozefiak 2024): a unit fires on an update when its
    value is > 0 for some example (and position) of the batch. Its firing rate is estimated from
    its life up to its last firing, μ = (F + 1)/(S + 2) (F firings in S updates, Laplace's rule);
    after ``a`` silent updates it is reset when ``(1 − μ)^a < 1 − percentile``, i.e. when the run
    exceeds the ``percentile`` quantile of the geometric waiting time its own rate predicts."""

    percentile: float = field(default=0.99999, metadata=_range(0.0, 1.0, lo_open=True, hi_open=True))


@dataclass(frozen=True)
class LearnerConfig(ConfigBase):
    """The whole supervised reference learner. A ``None`` section means "method off".

    ``head_reset``: at each task boundary (``next_task_boundary``) set the head to zero
    (``"zero"``, the Continual ImageNet practice) or redraw it (``"reinit"``).
    ``retrain``: re-initialise the whole network and optimizer at each task boundary.
    ``lr_schedule``: the step size per epoch of a task (:class:`LRScheduleConfig`).
    ``early_stopping``: model selection on the stream's validation phases. After every epoch's
    validation pass the learner scores it (from the validation batches' rewards: their targets
    are never learned from); when a task's training ends (its test phase begins) the learner
    returns to its state at the end of its best-validation epoch (the earliest of ties): network
    weights, normalisation statistics, optimizer state and the reset methods' statistics, ages
    and utilities, all as they were together. The test phase scores that network and the next
    task starts from it. Needs a stream with ``val`` phases.
    """

    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    head_reset: str = field(default="none", metadata=_choices("none", "zero", "reinit"))
    retrain: bool = False
    shrink_perturb: ShrinkPerturbConfig | None = None
    cbp: CBPConfig | None = None
    redo: ReDoConfig | None = None
    l2_init: L2InitConfig | None = None
    weight_clip: WeightClipConfig | None = None
    upgd: UPGDConfig | None = None
    snr: SNRConfig | None = None
    lr_schedule: LRScheduleConfig | None = None
    early_stopping: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        o = self.optimizer
        if self.upgd is not None and (o.name != "sgd" or o.momentum != 0.0 or o.weight_decay != 0.0):
            raise ValueError("LearnerConfig.upgd replaces the SGD step and has its own weight decay "
                             "(upgd.weight_decay): set optimizer to name 'sgd', momentum 0, "
                             f"weight_decay 0 (got name {o.name!r}, momentum {o.momentum}, "
                             f"weight_decay {o.weight_decay})")
        resets = [name for name in ("cbp", "redo", "snr") if getattr(self, name) is not None]
        if len(resets) > 1:  # each keeps per-unit statistics that the others' resets would corrupt
            raise ValueError(f"LearnerConfig: {' and '.join(resets)} {'both' if len(resets) == 2 else 'all'} "
                             "re-initialise hidden units and would undo each other's bookkeeping; "
                             "configure one of them (set the other sections to None)")
