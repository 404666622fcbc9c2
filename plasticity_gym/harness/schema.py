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

from plasticity_gym.harness._io import read_json, sha256_of

SCHEMA_VERSION = 1
SCHEMA_FILENAME = f"result-schema-v{SCHEMA_VERSION}.json"
# What a result file may be, checked before it is parsed: a paper-scale entry of 10 seeds is a few
# MB and nests 7 levels (runs[].plasticity.metrics.<name>[i]).
MAX_ENTRY_BYTES = 64 * 1024 * 1024
MAX_ENTRY_DEPTH = 32
MAX_SHOWN = 80  # characters of a bad value quoted in a message
MAX_MESSAGES = 30  # problems listed per file


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


def read_entry(path: str) -> Any:
    """The JSON of the result file ``path``, refused (a one-line ``ValueError``) before parsing when
    it is over :data:`MAX_ENTRY_BYTES` or nested deeper than :data:`MAX_ENTRY_DEPTH`."""
    return read_json(path, max_bytes=MAX_ENTRY_BYTES, max_depth=MAX_ENTRY_DEPTH, what="result file")


def _short(text: str) -> str:
    """``text`` cut to a short prefix: a message never echoes a huge value back."""
    return text if len(text) <= 2 * MAX_SHOWN else text[:2 * MAX_SHOWN] + f"... ({len(text):,} characters)"


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
            msgs.append(f"{_short(field)}: required field is missing")
        else:
            msgs.append(_short(f"{path}: {err.message}"))
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
        msgs.append(_short(f"runs: seeds of the runs {run_seeds} differ from seeds {seeds}"))
    msgs += _length_messages(entry)
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


def _length_messages(entry: dict[str, Any]) -> list[str]:
    """Every series no longer than the entry's budget allows: one point per task (``online``,
    ``val``, ``test``) or per bin (``binned``), one probe per task or diagnosis, one episode per
    env step at most."""
    budget, proto = entry["env"]["budget"], entry["protocol"]
    total, n_tasks = budget["n_examples_total"], budget["n_tasks"]
    bins = -(-total // proto["bin_examples"]) if proto["bin_examples"] else total
    episodic = proto["metric"] == "episodic_return"
    diagnoses = total // proto["diagnose_every_steps"] + 2 if episodic and proto.get("diagnose_every_steps") else total
    msgs = []
    for i, run in enumerate(entry["runs"]):
        if run["n_examples"] > total:
            msgs.append(f"runs[{i}].n_examples: {run['n_examples']:,} examples; the budget is {total:,}")
        for name, series in run["series"].items():
            most = bins if name == "binned" else n_tasks
            if len(series["value"]) > most:
                per = "one per bin" if name == "binned" else "one per task"
                msgs.append(f"runs[{i}].series.{name}: {len(series['value']):,} points; a stream of {total:,} "
                            f"examples in {n_tasks:,} tasks has at most {most:,} ({per})")
        probes = len(run["plasticity"]["task"])
        most = diagnoses if episodic else n_tasks
        if probes > most:
            msgs.append(f"runs[{i}].plasticity.task: {probes:,} probes; the budget allows at most {most:,}")
        episodes = run.get("episodes")
        if episodes is not None and len(episodes["step"]) > total:
            msgs.append(f"runs[{i}].episodes: {len(episodes['step']):,} episodes in {total:,} env steps")
    return msgs[:20]


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
    if not msgs:  # semantic checks assume the shape is right
        msgs = _semantic_messages(entry)
    if len(msgs) > MAX_MESSAGES:
        msgs = msgs[:MAX_MESSAGES] + [f"... and {len(msgs) - MAX_MESSAGES:,} more problems"]
    return msgs


def validate_result(entry: Any, source: str | None = None) -> None:
    """Raise :class:`ResultValidationError` unless ``entry`` is a valid result entry."""
    errors = result_errors(entry)
    if errors:
        raise ResultValidationError(errors, source)
