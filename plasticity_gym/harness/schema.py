"""The versioned result schema and its enforcement.

The JSON Schema ships inside the package (``result-schema-v1.json``) so that ``pip install``
users validate against the same file that is published in ``leaderboards/``; a test keeps the
two copies identical. On top of the JSON Schema, :func:`validate_result` checks what a schema
cannot express: the recorded hashes match the recorded kwargs/config, every per-seed list
lines up with ``seeds``, and an episodic entry's runs hold their episodes.

Episodic (reinforcement-learning) entries were added to version 1 as optional fields (a metric,
``runs[].episodes``, ``runs[].plasticity.step``, ``protocol.diagnose_every_steps``): every
earlier entry validates unchanged.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

from plasticity_gym.harness._io import sha256_of

SCHEMA_VERSION = 1
SCHEMA_FILENAME = f"result-schema-v{SCHEMA_VERSION}.json"


class ResultValidationError(ValueError):
    """A result entry does not follow the schema. ``errors`` lists one message per problem,
    each starting with the path of the offending field (e.g. ``env.kwargs_hash``)."""

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = errors
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "invalid result entry:\n  " + "\n  ".join(errors))


@lru_cache(maxsize=None)
def load_schema() -> dict[str, Any]:
    """The result JSON Schema shipped with the package."""
    text = resources.files("plasticity_gym.harness").joinpath(SCHEMA_FILENAME).read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def _validator() -> jsonschema.protocols.Validator:
    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _schema_messages(entry: Any) -> list[str]:
    msgs = []
    for err in sorted(_validator().iter_errors(entry), key=lambda e: (list(map(str, e.path)), e.message)):
        path = _path(err.absolute_path)
        if err.validator == "required":
            # Name the missing field itself, not only its parent.
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            field = f"{path}.{missing}" if path != "<root>" else missing
            msgs.append(f"{field}: required field is missing")
        else:
            msgs.append(f"{path}: {err.message}")
    return msgs


def _semantic_messages(entry: dict[str, Any]) -> list[str]:
    msgs: list[str] = []
    env, agent = entry["env"], entry["agent"]
    want = sha256_of(env["kwargs"])
    if env["kwargs_hash"] != want:
        msgs.append(
            f"env.kwargs_hash: does not match the sha256 of env.kwargs "
            f"(recorded {env['kwargs_hash'][:12]}..., computed {want[:12]}...)"
        )
    want = sha256_of(agent["config"])
    if agent["config_hash"] != want:
        msgs.append(
            f"agent.config_hash: does not match the sha256 of agent.config "
            f"(recorded {agent['config_hash'][:12]}..., computed {want[:12]}...)"
        )
    created = entry["provenance"]["created"]
    try:
        # jsonschema checks "date-time" only when an optional package is installed: check here.
        if _dt.datetime.fromisoformat(created.replace("Z", "+00:00")).tzinfo is None:
            raise ValueError
    except ValueError:
        msgs.append(f"provenance.created: {created!r} is not an ISO 8601 date-time with a time zone")
    seeds = entry["seeds"]
    run_seeds = [r["seed"] for r in entry["runs"]]
    if run_seeds != seeds:
        msgs.append(f"runs: seeds of the runs {run_seeds} differ from seeds {seeds}")
    for i, run in enumerate(entry["runs"]):
        for name, s in run["series"].items():
            if not len(s["index"]) == len(s["value"]) == len(s["n"]):
                msgs.append(f"runs[{i}].series.{name}: index, value and n differ in length")
        plast = run["plasticity"]
        if "step" in plast and len(plast["step"]) != len(plast["task"]):
            msgs.append(f"runs[{i}].plasticity.step: {len(plast['step'])} steps for {len(plast['task'])} probes")
        episodes = run.get("episodes")
        if entry["protocol"]["metric"] == "episodic_return" and episodes is None:
            msgs.append(f"runs[{i}].episodes: required field is missing (an episodic_return entry)")
        if episodes is not None and not len(episodes["step"]) == len(episodes["return"]) == len(episodes["segment"]):
            msgs.append(f"runs[{i}].episodes: step, return and segment differ in length")
        for name, values in plast["metrics"].items():
            if len(values) != len(plast["task"]):
                msgs.append(
                    f"runs[{i}].plasticity.metrics.{name}: {len(values)} values for "
                    f"{len(plast['task'])} probes"
                )
    summary = entry["summary"]
    if summary["primary"] not in summary["metrics"]:
        msgs.append(f"summary.primary: {summary['primary']!r} is not one of summary.metrics")
    for name, m in summary["metrics"].items():
        if len(m["per_seed"]) != len(seeds):
            msgs.append(
                f"summary.metrics.{name}.per_seed: {len(m['per_seed'])} values for {len(seeds)} seeds"
            )
    return msgs


def _non_finite_messages(node: Any, parts: tuple = ()) -> list[str]:
    """Every NaN or ±inf in ``node`` (JSON readers accept ``NaN``/``Infinity``; an entry stores
    a non-finite value as null)."""
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{_path(parts)}: {node} is not a finite number (non-finite values are stored as null)"]
    if isinstance(node, dict):
        return [m for k, v in node.items() for m in _non_finite_messages(v, (*parts, k))]
    if isinstance(node, list):
        return [m for i, v in enumerate(node) for m in _non_finite_messages(v, (*parts, i))]
    return []


def result_errors(entry: Any) -> list[str]:
    """All problems of ``entry``'s shape and consistency (the JSON Schema, finite numbers,
    hashes, per-seed lengths) as messages that start with the offending field's path.
    :func:`plasticity_gym.harness.verify.entry_errors` adds the numbers' checks."""
    msgs = _non_finite_messages(entry) + _schema_messages(entry)
    if msgs:
        return msgs  # semantic checks assume the shape is right
    return _semantic_messages(entry)


def validate_result(entry: Any, source: str | None = None) -> None:
    """Raise :class:`ResultValidationError` unless ``entry`` is a valid result entry."""
    errors = result_errors(entry)
    if errors:
        raise ResultValidationError(errors, source)
