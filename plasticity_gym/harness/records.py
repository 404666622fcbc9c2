"""Building results: the ``env``, ``agent``, ``protocol`` and per-seed blocks of a result entry,
and the validated :class:`~plasticity_gym.harness.result.Result` assembled from them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np

import plasticity_gym
from plasticity_gym.harness._io import sha256_of, to_jsonable
from plasticity_gym.harness.probes import flatten_numbers, gradient_probe_tasks, plasticity_probe_settings
from plasticity_gym.harness.resolve import AgentSpec
from plasticity_gym.harness.result import Result, code_identity, file_sha256, hardware, now_iso, summarize, versions
from plasticity_gym.harness.schema import SCHEMA_VERSION

__all__ = ["BINNED_METRICS", "PlasticityLog", "agent_record", "build_result", "env_record", "flatten_numbers",
           "metric_of"]


def env_record(env_id: str, env_u: Any) -> dict[str, Any]:
    """The ``env`` block: id, resolved kwargs and their hash, data identity, budget."""
    kwargs = to_jsonable(dict(env_u.config))
    data_id = to_jsonable(dict(env_u.data_id))
    data = {k: data_id.pop(k) for k in ("name", "split", "n_examples", "sha256")}
    if data_id:
        data["details"] = data_id
    return {
        "id": env_id,
        "package_version": plasticity_gym.__version__,
        "scale": str(env_u.scale),
        "kwargs": kwargs,
        "kwargs_hash": sha256_of(kwargs),
        "data": data,
        "budget": {
            "n_examples_total": int(env_u.n_examples_total),
            "n_tasks": int(env_u.n_tasks),
            "examples_per_task": None if env_u.examples_per_task is None else int(env_u.examples_per_task),
            "batch_size": int(env_u.batch_size),
        },
    }


def agent_record(agent: Any, spec: AgentSpec) -> dict[str, Any]:
    """The ``agent`` block of a result: name, config and its hash, declarations. A user's agent
    without a ``config`` of its own is recorded with its factory's keyword options (their
    defaults), and the options it was given on top."""
    config = getattr(agent, "config", None)
    if config is None and spec.source == "custom":
        config = dict(spec.factory_defaults)
    if callable(getattr(config, "to_dict", None)):
        config = config.to_dict()
    config = to_jsonable(config) if config is not None else {}
    if not isinstance(config, dict):
        config = {"value": config}
    if spec.source == "custom" and spec.overrides:
        config = {**config, **to_jsonable(dict(spec.overrides))}
    return {
        "name": str(getattr(agent, "name", None) or spec.ident),
        "source": spec.source,
        "factory": spec.ident,
        "config": config,
        "config_hash": sha256_of(config),
        "uses_task_boundaries": bool(agent.uses_task_boundaries),
        "learns_only_in_train": bool(getattr(agent, "learns_only_in_train", True)),
        "selects_on_validation": bool(getattr(agent, "selects_on_validation", False)),
    }


# Metrics whose runs also get a ``binned`` series (bins of examples, or of env steps).
BINNED_METRICS = ("squared_error", "episodic_return")


def metric_of(action_space: gym.Space) -> str:
    """Classification (labels) is scored by accuracy, regression (values) by squared error."""
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return "accuracy"
    if isinstance(action_space, gym.spaces.Box):
        return "squared_error"
    raise TypeError(f"unsupported action space for a supervised stream: {action_space}")


class PlasticityLog:
    """Probe results of one seed: ``task`` ids and a series per metric name (None-padded).

    It also keeps the weights of the last probe (when the probe carries them,
    :class:`~plasticity_gym.harness.probes.ProbeValues`) and records each probe's
    ``weight_change`` since then (None at the first). The log travels in checkpoints, so a resumed
    run measures the same change as an uninterrupted one."""

    def __init__(self) -> None:
        self.task: list[int] = []
        self.metrics: dict[str, list[float | None]] = {}
        self.last_weights: list[Any] | None = None

    def add(self, task: int, values: Mapping[str, float | None]) -> None:
        weights = getattr(values, "weights", None)
        if weights is not None:
            previous = getattr(self, "last_weights", None)  # (absent from logs pickled by older code)
            values = dict(values, weight_change=None if previous is None else _weight_change(previous, weights))
            self.last_weights = weights
        n = len(self.task)
        for k, v in values.items():
            self.metrics.setdefault(k, [None] * n).append(v)
        self.task.append(int(task))
        for series in self.metrics.values():
            if len(series) < n + 1:
                series.append(None)

    def as_dict(self) -> dict[str, Any]:
        return {"task": list(self.task), "metrics": {k: list(v) for k, v in self.metrics.items()}}


def _weight_change(previous: list[Any], current: list[Any]) -> float | None:
    from plasticity_gym.metrics import weight_change

    try:
        value = weight_change(previous, current)
    except ValueError:  # the network changed shape (e.g. a grown head): no change to report
        return None
    return value if np.isfinite(value) else None


def agent_source(agent_rec: Mapping[str, Any]) -> dict[str, Any]:
    """``{"agent_source": {"module", "sha256"}}`` of a user's ``module:factory`` agent: the
    sha256 of its module's file, so that an edited agent is not taken for the one that ran;
    ``{}`` for a reference agent or a factory whose module has no file."""
    if agent_rec.get("source") != "custom":
        return {}
    module = str(agent_rec.get("factory", "")).partition(":")[0]
    path = getattr(sys.modules.get(module), "__file__", None)
    if not module or not path or not Path(path).is_file():
        return {}
    return {"agent_source": {"module": module, "sha256": file_sha256(path)}}


def build_result(
    *,
    env_rec: dict[str, Any],
    agent_rec: dict[str, Any],
    metric: str,
    bin_examples: int | None,
    probe_every: int,
    probe_size: int,
    device: str,
    seeds: Sequence[int],
    runs: list[dict[str, Any]],
    command: str,
    fallback_wall_s: float = 0.0,
    execution: str = "sequential",
    probe_tasks: Sequence[int] | None = None,
    extra_protocol: Mapping[str, Any] | None = None,
    wall_time_s: float | None = None,
) -> Result:
    """Assemble and validate a result entry from finished per-seed runs (``extra_protocol``:
    further ``protocol`` fields, e.g. an episodic run's ``diagnose_every_steps``). The run's wall
    time is ``wall_time_s`` when given (processes that ran at once), else the sum of the runs'."""
    protocol: dict[str, Any] = {
        "metric": metric,
        "probe_every_tasks": probe_every,
        "probe_size": probe_size,
        "bin_examples": bin_examples,
        "device": device,
        "execution": execution,
    }
    if probe_tasks is not None:
        protocol["probe_tasks"] = [int(t) for t in probe_tasks]
        if probe_tasks:
            protocol["gradient_probe_tasks"] = gradient_probe_tasks(probe_tasks)
            protocol["plasticity_probe"] = plasticity_probe_settings()
    protocol.update(extra_protocol or {})
    data = {
        "schema_version": SCHEMA_VERSION,
        "env": env_rec,
        "agent": agent_rec,
        "protocol": protocol,
        "seeds": list(seeds),
        "runs": runs,
        "summary": summarize(metric, runs),
        "provenance": {
            "command": command,
            "created": now_iso(),
            "wall_time_s": round(wall_time_s if wall_time_s is not None else
                                 sum(r["wall_time_s"] for r in runs) or fallback_wall_s, 3),
            "hardware": hardware(device),
            "versions": versions(),
            "code": {**code_identity(), **agent_source(agent_rec)},
        },
    }
    result = Result(to_jsonable(data))
    result.validate()
    return result
