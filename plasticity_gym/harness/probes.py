"""Plasticity probes: when to take them (the schedule) and how (one network, or many at once).

A probe measures the learner's network on the current task's probe batch at the start of a
task (``plasticity_gym.metrics``). By default a long stream is probed on at most
:data:`MAX_DEFAULT_PROBES` tasks, evenly spaced (every k-th task from task 0); an explicit
``probe_every`` is taken as given. The seeds of a lockstep learner that can return every seed's
representations at once (``probe_features``) are measured in one batched pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from plasticity_gym.harness.records import flatten_numbers

MAX_DEFAULT_PROBES = 100


@dataclass(frozen=True)
class ProbeSchedule:
    """Probe at the start of task ``t`` when ``t % every == 0`` (``every == 0``: never)."""

    every: int
    size: int

    @classmethod
    def for_stream(cls, probe_every: int | None, n_tasks: int, size: int) -> "ProbeSchedule":
        """``probe_every=None``: every task, thinned to at most ``MAX_DEFAULT_PROBES``."""
        if probe_every is None:
            probe_every = max(1, math.ceil(n_tasks / MAX_DEFAULT_PROBES))
        return cls(int(probe_every), int(size))

    def due(self, task: int, last_probed: int) -> bool:
        return self.every > 0 and task > last_probed and task % self.every == 0

    def tasks(self, n_tasks: int) -> list[int]:
        """The task ids this schedule probes on a stream of ``n_tasks`` tasks."""
        return list(range(0, n_tasks, self.every)) if self.every > 0 else []


def probe_agent(env_u: Any, agent: Any, size: int) -> dict[str, float | None] | None:
    """Plasticity metrics of an agent's network (``probe_model()``) on the env's probe batch;
    None for an agent without one."""
    get_model = getattr(agent, "probe_model", None)
    model = get_model() if get_model is not None else None
    if model is None:
        return None
    from plasticity_gym.metrics import measure

    x, _ = env_u.probe_batch(size)
    return flatten_numbers(measure(model, x))


class ReplicaProber:
    """Probes every seed of a lockstep learner: one batched pass with ``probe_features`` when
    the learner has it (one batched SVD per layer), else ``probe_model(i)`` seed by seed."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner
        self.batched = callable(getattr(learner, "probe_features", None))
        self._layers: list[tuple[str, str | None]] | None = None

    def __call__(self, probe_x: Sequence[Any]) -> list[dict[str, float | None]]:
        from plasticity_gym.metrics import measure, measure_replicas, representation_layers

        if not self.batched:
            return [flatten_numbers(measure(self.learner.probe_model(i), x)) for i, x in enumerate(probe_x)]
        if self._layers is None:  # the names measure() would give, so both paths agree
            self._layers = representation_layers(self.learner.probe_model(0), probe_x[0])
        hidden, weights = self.learner.probe_features(probe_x)
        return [flatten_numbers(m) for m in measure_replicas(hidden, weights, layers=self._layers)]
