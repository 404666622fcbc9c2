"""Plasticity probes: when to take them (the schedule) and how (one network, or many at once).

A probe measures the learner's network on the current task's probe batch at the start of a
task (``plasticity_gym.metrics``). By default a long stream is probed on at most
:data:`MAX_DEFAULT_PROBES` tasks, evenly spaced (every k-th task from task 0); an explicit
``probe_every`` is taken as given. Every probe measures the representation metrics (dead,
dormant and active units, feature norm, ranks, average |w|) and the weight change since the
previous probe; every :data:`GRADIENT_PROBE_EVERY`-th probe (the first, and each k-th after it)
also differentiates the network: the gradient norm on the probe batch and the plasticity score
(``plasticity_gym.metrics.PlasticityProbe()``, its defaults), which cost several backward
passes (docs/metrics.md). The seeds of a lockstep learner that can return every seed's
representations at once (``probe_features``) are measured in one batched pass, and
differentiated in one batched pass too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

MAX_DEFAULT_PROBES = 100
# Every k-th probe also measures the gradient norm and the plasticity score: together about 7
# forward passes of the probe batch against about one for the rest of a probe (docs/metrics.md).
GRADIENT_PROBE_EVERY = 5

__all__ = ["GRADIENT_PROBE_EVERY", "MAX_DEFAULT_PROBES", "ProbeSchedule", "ProbeValues", "ReplicaProber",
           "flatten_numbers", "gradient_probe_tasks", "plasticity_probe_settings", "probe_agent", "probe_gap"]


def _default_plasticity_probe() -> Any:
    from plasticity_gym.metrics import PlasticityProbe

    return PlasticityProbe()


def plasticity_probe_settings() -> dict[str, Any]:
    """The parameters of the plasticity probe the harness runs (recorded in each result)."""
    from dataclasses import asdict

    return asdict(_default_plasticity_probe())


def flatten_numbers(d: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Nested metric dicts → ``{"layer.metric": value}``, numbers only (non-finite → None)."""
    out: dict[str, float | None] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_numbers(v, key + "."))
            continue
        if hasattr(v, "item") and tuple(getattr(v, "shape", (0,))) == ():
            v = v.item()  # 0-d tensor / numpy scalar
        if isinstance(v, (bool, np.bool_)):
            v = float(v)
        if isinstance(v, (int, float, np.integer, np.floating)):
            f = float(v)
            out[key] = f if np.isfinite(f) else None
    return out


class ProbeValues(dict):
    """One lane's probe: ``{metric: value}``, plus ``weights``, the network's weights (CPU copies)
    that the seed's :class:`~plasticity_gym.harness.records.PlasticityLog` compares with the next
    probe's (the weight change); ``None`` when they could not be read."""

    def __init__(self, values: Mapping[str, float | None], weights: list[Any] | None = None) -> None:
        super().__init__(values)
        self.weights = weights


@dataclass(frozen=True)
class ProbeSchedule:
    """Probe at the start of task ``t`` when ``t % every == 0`` (``every == 0``: never); every
    ``gradient_every``-th probe (the probe of task ``t`` with ``(t // every) % gradient_every == 0``)
    also differentiates the network."""

    every: int
    size: int
    gradient_every: int = GRADIENT_PROBE_EVERY

    @classmethod
    def for_stream(cls, probe_every: int | None, n_tasks: int, size: int) -> "ProbeSchedule":
        """``probe_every=None``: every task, thinned to at most ``MAX_DEFAULT_PROBES``."""
        if probe_every is None:
            probe_every = max(1, math.ceil(n_tasks / MAX_DEFAULT_PROBES))
        return cls(int(probe_every), int(size))

    def due(self, task: int, last_probed: int) -> bool:
        return self.every > 0 and task > last_probed and task % self.every == 0

    def differentiates(self, task: int) -> bool:
        """Whether the probe of ``task`` also measures the gradient norm and plasticity score."""
        return self.every > 0 and (task // self.every) % self.gradient_every == 0

    def tasks(self, n_tasks: int) -> list[int]:
        """The task ids this schedule probes on a stream of ``n_tasks`` tasks."""
        return list(range(0, n_tasks, self.every)) if self.every > 0 else []


def gradient_probe_tasks(probe_tasks: Sequence[int], gradient_every: int = GRADIENT_PROBE_EVERY) -> list[int]:
    """Of a schedule's probe tasks (:meth:`ProbeSchedule.tasks`), those whose probe also measures
    the gradient norm and the plasticity score (:meth:`ProbeSchedule.differentiates`)."""
    return [int(t) for t in list(probe_tasks)[::gradient_every]]


def _differentiated(name: str, compute: Callable[..., Any], *args: Any) -> Any:
    """``compute(*args)``, or None with a warning when the network does not fit the probe's loss
    (e.g. a user's network whose outputs are not one logit per class): a diagnostic never stops
    a run."""
    try:
        return compute(*args)
    except (ValueError, RuntimeError, IndexError) as exc:
        warnings.warn(f"plasticity probe: {name} not measured: {str(exc).splitlines()[0][:200]}", RuntimeWarning,
                      stacklevel=2)
        return None


def _model_weights(model: Any) -> list[Any]:
    from plasticity_gym.metrics import weights_of

    return [w.cpu().clone() for w in weights_of(model)]


def _probe_network(model: Any, x: Any, y: Any | None, differentiate: bool) -> ProbeValues:
    """One network's probe on ``x`` (targets ``y``; the gradient norm needs them)."""
    from plasticity_gym.metrics import gradient_norm, measure, plasticity_score

    values = measure(model, x)
    if differentiate:
        if y is not None:
            values["grad_norm"] = _differentiated("grad_norm", gradient_norm, model, x, y)
        values["plasticity_score"] = _differentiated("plasticity_score", plasticity_score, model, x,
                                                     _default_plasticity_probe())
    return ProbeValues(flatten_numbers(values), _model_weights(model))


# What a probe of a network without hookable activations cannot measure.
_REPRESENTATION_METRICS = "dead, dormant and active units, feature norm, effective and stable rank"


def probe_gap(agent: Any, ident: str) -> str | None:
    """Why probes of ``agent`` will leave metrics out, in one line, or None when they will not:
    no ``probe_model()`` (no plasticity metric at all), or a network with no activation modules
    (``nn.ReLU``, ``nn.Tanh``, ...; e.g. one that calls ``F.relu`` in ``forward``), whose
    representation metrics are then null."""
    from plasticity_gym.metrics import ACTIVATION_TYPES

    get_model = getattr(agent, "probe_model", None)
    if not callable(get_model):
        return (f"agent {ident!r} has no probe_model(): the result will have no plasticity metrics "
                f"({_REPRESENTATION_METRICS}, average |w|, weight change, gradient norm, plasticity score); "
                "give the agent a probe_model() that returns its torch network")
    try:
        model = get_model()
    except TypeError:  # a lockstep learner's probe_model(i)
        return None
    if model is None or not callable(getattr(model, "modules", None)):
        return None
    if not any(isinstance(m, ACTIVATION_TYPES) for m in model.modules()):
        return (f"agent {ident!r}: probe_model()'s network has no activation modules to hook (a forward that "
                "calls F.relu or torch.tanh is not seen): its " + _REPRESENTATION_METRICS + " will be null; "
                "build it with activation modules (nn.ReLU(), nn.Tanh(), ...) to measure them")
    return None


def probe_agent(env_u: Any, agent: Any, size: int, differentiate: bool = True) -> ProbeValues | None:
    """Plasticity metrics of an agent's network (``probe_model()``) on the env's probe batch;
    None for an agent without one. ``differentiate``: also the gradient norm on the probe batch
    (with its targets) and the plasticity score."""
    get_model = getattr(agent, "probe_model", None)
    model = get_model() if get_model is not None else None
    if model is None:
        return None
    x, y = env_u.probe_batch(size)
    return _probe_network(model, x, y, differentiate)


class ReplicaProber:
    """Probes every seed of a lockstep learner: one batched pass with ``probe_features`` when
    the learner has it (one batched SVD per layer; the gradient norm and plasticity score of
    every seed in one batched pass over copies of their networks), else ``probe_model(i)`` seed
    by seed."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner
        self.batched = callable(getattr(learner, "probe_features", None))
        self._layers: list[tuple[str, str | None]] | None = None

    def __call__(self, probe_x: Sequence[Any], probe_y: Sequence[Any] | None = None,
                 differentiate: bool = True) -> list[ProbeValues]:
        """Each seed's probe on its own probe batch ``probe_x[i]`` (targets ``probe_y[i]``; the
        gradient norm needs them and is left out without)."""
        from plasticity_gym.metrics import (
            gradient_norms, measure_replicas, plasticity_scores, replica_state, representation_layers,
        )

        if not self.batched:
            return [_probe_network(self.learner.probe_model(i), x, None if probe_y is None else probe_y[i],
                                   differentiate) for i, x in enumerate(probe_x)]
        if self._layers is None:  # the names measure() would give, so both paths agree
            self._layers = representation_layers(self.learner.probe_model(0), probe_x[0])
        hidden, weights = self.learner.probe_features(probe_x)
        results = measure_replicas(hidden, weights, layers=self._layers)
        if differentiate:
            state = replica_state(self.learner.probe_model(i) for i in range(len(results)))
            model = self.learner.probe_model(0)
            grads = (None if probe_y is None else
                     _differentiated("grad_norm", gradient_norms, model, state, probe_x, probe_y))
            scores = _differentiated("plasticity_score", plasticity_scores, model, state, probe_x,
                                     _default_plasticity_probe())
            for i, r in enumerate(results):
                r["grad_norm"] = None if grads is None else grads[i]
                r["plasticity_score"] = None if scores is None else scores[i]
        snapshots = [[w[i].cpu().clone() for w in weights] for i in range(len(results))]
        return [ProbeValues(flatten_numbers(m), s) for m, s in zip(results, snapshots)]
