"""Trusting an entry: check its numbers (:func:`check_entry`) and reproduce its runs (:func:`verify`).

:func:`check_entry` is what ``plasticity-gym validate`` and ``submit`` run. On top of the shape
(:func:`plasticity_gym.harness.schema.result_errors`: the JSON Schema, finite numbers, hashes) it

* recomputes the summary from the runs with the code that wrote it
  (:func:`plasticity_gym.harness.result.summary_errors`): every value, per-seed value and interval,
  the primary metric and each metric's ``higher_is_better``;
* rebuilds the env from the entry's stored invocation (its scale and the kwargs the command set)
  and compares the env block it records: ``env.id``, ``env.scale``, ``env.kwargs``, the data
  identity and the budget, and the metric the env is scored by (``protocol.metric``). An env
  whose data is not on this machine, or that is not a registered id, is not rebuilt (a note says
  so);
* for a reference agent, rebuilds the agent record: its name, config and declarations.

:func:`verify` re-runs the first ``k`` of an entry's seeds from its stored invocation on this
machine and compares the runs value by value: on the same device, CPU, versions and source they must be
identical (up to :data:`SAME_RTOL`, the last-bit differences of a batch of another size in
lockstep linear algebra); on another device, CPU (its SIMD extensions change which BLAS/LAPACK kernels run) or other
versions or source, within :data:`OTHER_RTOL`.
"""

from __future__ import annotations

import ast
import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import gymnasium as gym

from plasticity_gym.harness._io import sha256_of
from plasticity_gym.harness.cliargs import parse_run_argv, parse_sets
from plasticity_gym.harness.result import code_identity, cpu_identity, summary_errors, versions
from plasticity_gym.harness.schema import result_errors

# Relative tolerances of verify, per value of the runs (absolute floors for values near 0).
SAME_RTOL, SAME_ATOL = 1e-9, 1e-12  # same device, CPU, versions and source: float round-off of batching only
OTHER_RTOL, OTHER_ATOL = 1e-4, 1e-8  # another device, BLAS or library version

__all__ = ["Invocation", "VerifyReport", "check_entry", "entry_errors", "invocation_of", "verify",
           "OTHER_ATOL", "OTHER_RTOL", "SAME_ATOL", "SAME_RTOL"]


# --------------------------------------------------------------------------- invocation
@dataclass
class Invocation:
    """What an entry's stored command asked for (``None``: not given, the default applied)."""

    env_id: str
    agent: str
    scale: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None


def _cli_invocation(argv: list[str]) -> Invocation | None:
    if not argv or argv[0] != "run":
        return None  # compare, or anything else: one entry of several agents' runs
    args = parse_run_argv(argv[1:])
    if args is None:
        return None
    try:
        return Invocation(args.env_id, args.agent, args.scale,
                          parse_sets(args.env_set, "--env-set", nest=False), parse_sets(args.set), args.steps)
    except SystemExit:  # a malformed --set
        return None


def _api_invocation(command: str) -> Invocation | None:
    try:
        call = ast.parse(command, mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
            return None
        if call.func.attr not in ("evaluate", "evaluate_episodic"):
            return None
        pos = [ast.literal_eval(a) for a in call.args]
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except (SyntaxError, ValueError):
        return None
    names = ["env_id", "agent", "scale", "seeds", "env_kwargs"]
    kw.update(dict(zip(names, pos)))
    if not isinstance(kw.get("env_id"), str) or not isinstance(kw.get("agent"), str):
        return None
    return Invocation(kw["env_id"], kw["agent"], kw.get("scale", "cpu"), dict(kw.get("env_kwargs") or {}),
                      dict(kw.get("overrides") or {}), kw.get("steps"))


def invocation_of(entry: Mapping[str, Any]) -> Invocation | None:
    """The invocation in ``provenance.command`` (a ``plasticity-gym run`` command line, or the
    ``evaluate(...)`` call the API records), or None when it is neither."""
    command = entry["provenance"]["command"]
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = []
    if argv and argv[0].endswith("plasticity-gym"):
        return _cli_invocation(argv[1:])
    return _api_invocation(command)


# --------------------------------------------------------------------------- rebuilding
def _env_record(entry: Mapping[str, Any], env_kwargs: Mapping[str, Any], steps: int | None) -> tuple[dict, str, Any]:
    """The env block, metric and spaces that (env.id, env.scale, ``env_kwargs``) give today."""
    from plasticity_gym.harness.episodic import EPISODIC_METRIC, EpisodicRun, is_episodic_env
    from plasticity_gym.harness.lanes import make_env
    from plasticity_gym.harness.records import env_record, metric_of

    env = entry["env"]
    if is_episodic_env(env["id"]):
        run = EpisodicRun(env["id"], env["scale"], env_kwargs, steps=steps,
                          diagnose_every=entry["protocol"].get("diagnose_every_steps"),
                          probe_size=entry["protocol"]["probe_size"])
        return env_record(env["id"], run), EPISODIC_METRIC, (run.observation_space, run.action_space)
    made = make_env(env["id"], env["scale"], env_kwargs)
    try:
        u = made.unwrapped
        return env_record(env["id"], u), metric_of(u.action_space), (u.observation_space, u.action_space)
    finally:
        made.close()


def _diff_fields(prefix: str, want: Mapping[str, Any], have: Mapping[str, Any], skip: Sequence[str] = ()) -> list[str]:
    """One message per field of ``have`` that differs from ``want``, naming the innermost field."""
    msgs = []
    for key in want:
        if key in skip or want[key] == have.get(key):
            continue
        if isinstance(want[key], dict) and isinstance(have.get(key), dict) and set(want[key]) == set(have[key]):
            msgs += _diff_fields(f"{prefix}.{key}", want[key], have[key])
            continue
        w, h = json.dumps(want[key], sort_keys=True), json.dumps(have.get(key), sort_keys=True)
        msgs.append(f"{prefix}.{key}: recorded {h[:160]}, but {w[:160]} is what the stored invocation gives")
    return msgs


def _identity_messages(entry: dict[str, Any]) -> tuple[list[str], list[str]]:
    env = entry["env"]
    notes: list[str] = []
    if ":" not in env["id"] and env["id"] not in gym.registry:
        from plasticity_gym.registration import ENV_IDS

        return [f"env.id: {env['id']!r} is not a registered environment id (plasticity_gym's: "
                f"{', '.join(ENV_IDS)}; a user's env is recorded as module:Id)"], notes
    if ":" in env["id"] and env["id"].split(":", 1)[1] not in gym.registry:
        return [], [f"env not rebuilt: {env['id']} is a user's env (its module is not imported by validate)"]
    inv = invocation_of(entry)
    consistent = inv is not None and inv.env_id == env["id"] and inv.scale == env["scale"]
    if inv is not None and not consistent:
        return [f"env.id, env.scale: recorded {env['id']} at scale {env['scale']!r}, but provenance.command ran "
                f"{inv.env_id} at scale {inv.scale!r}"], notes
    # The scale and the kwargs the command set give the recorded kwargs; without a readable
    # command, the recorded kwargs are taken as given (the data identity is still checked).
    kwargs = inv.env_kwargs if inv is not None else env["kwargs"]
    steps = inv.steps if inv is not None and inv.steps is not None else env["budget"]["n_examples_total"]
    try:
        rec, metric, spaces = _env_record(entry, kwargs, steps)
    except FileNotFoundError as exc:
        return [], [f"env not rebuilt: its data is not on this machine ({str(exc).splitlines()[0][:120]})"]
    except (ValueError, TypeError, gym.error.Error) as exc:
        return [f"env.id, env.scale, env.kwargs: {env['id']} at scale {env['scale']!r} cannot be built from "
                f"them: {str(exc).splitlines()[0][:200]}"], notes
    msgs = _diff_fields("env", rec, env, skip=("package_version",))
    if metric != entry["protocol"]["metric"]:
        msgs.append(f"protocol.metric: recorded {entry['protocol']['metric']!r}, but {env['id']} is scored by {metric!r}")
    msgs += _agent_messages(entry, inv, spaces)
    return msgs, notes


def _agent_messages(entry: dict[str, Any], inv: Any, spaces: tuple[Any, Any]) -> list[str]:
    from plasticity_gym.harness.episodic import is_episodic_env
    from plasticity_gym.harness.records import agent_record
    from plasticity_gym.harness.resolve import resolve_agent

    agent, env = entry["agent"], entry["env"]
    if agent["source"] != "reference":
        return []  # a user's factory is not imported by validate
    if inv is not None and inv.agent != agent["factory"]:
        return [f"agent.factory: recorded {agent['factory']!r}, but provenance.command ran {inv.agent!r}"]
    overrides = inv.overrides if inv is not None else agent["config"]
    kind = "episodic" if is_episodic_env(env["id"]) else "supervised"
    try:
        spec = resolve_agent(agent["factory"], env_id=env["id"], scale=env["scale"], overrides=overrides, kind=kind)
        built = spec.build(*spaces, entry["seeds"][0], "cpu")
    except (ValueError, TypeError) as exc:
        return [f"agent.factory, agent.config: the reference agent {agent['factory']!r} cannot be built from "
                f"them: {str(exc).splitlines()[0][:200]}"]
    rebuilt = agent_record(built, spec)
    if "selects_on_validation" not in agent and not rebuilt["selects_on_validation"]:
        rebuilt.pop("selects_on_validation")  # a declaration added since the entry was made
    config = _without_added_switches(rebuilt["config"], agent["config"])
    if config is not rebuilt["config"]:
        rebuilt = dict(rebuilt, config=config, config_hash=sha256_of(config))
    return _diff_fields("agent", rebuilt, agent)


# A config key the entry lacks is a method added since the entry was made; it may be dropped from
# the rebuilt config only when it is switched off, so the entry ran without it.
_SWITCHED_OFF = (None, False, "none", 0, 0.0)


def _without_added_switches(rebuilt: Any, recorded: Any) -> Any:
    """``rebuilt`` less the keys (at any depth) that ``recorded`` lacks and whose value is a
    switched-off default (``None``, ``False``, ``"none"``, 0); ``rebuilt`` itself when none."""
    if not (isinstance(rebuilt, dict) and isinstance(recorded, dict)):
        return rebuilt
    out, changed = {}, False
    for key, value in rebuilt.items():
        if key not in recorded and any(value is off or (type(value) is type(off) and value == off)
                                       for off in _SWITCHED_OFF):
            changed = True
            continue
        inner = _without_added_switches(value, recorded.get(key))
        changed |= inner is not value
        out[key] = inner
    return out if changed else rebuilt


def check_entry(entry: Any) -> tuple[list[str], list[str]]:
    """``(errors, notes)``: every problem of ``entry`` (shape, numbers, identity), each message
    starting with the field it concerns; notes say what could not be checked on this machine."""
    errors = result_errors(entry)
    if errors:
        return errors, []  # the number checks assume the shape is right
    errors = summary_errors(entry)
    more, notes = _identity_messages(entry)
    return errors + more, notes


def entry_errors(entry: Any) -> list[str]:
    """The errors of :func:`check_entry`."""
    return check_entry(entry)[0]


# --------------------------------------------------------------------------- re-running
@dataclass
class VerifyReport:
    """The outcome of :func:`verify`: per re-run seed, ``None`` when the runs agree, else the
    first differing field."""

    seeds: list[int]
    same_setup: bool  # same device, CPU, versions and source as the entry: identical runs expected
    setup_differences: list[str]
    mismatches: dict[int, str | None]
    max_rel_diff: float
    added: list[str] = field(default_factory=list)  # fields only the re-run has, not compared

    @property
    def ok(self) -> bool:
        return all(m is None for m in self.mismatches.values())

    def report(self) -> str:
        rtol = SAME_RTOL if self.same_setup else OTHER_RTOL
        setup = ("same device, CPU, versions and source as the entry: identical runs expected" if self.same_setup else
                 "differs from the entry in " + "; ".join(self.setup_differences))
        lines = [f"re-ran seed{'s' if len(self.seeds) > 1 else ''} {', '.join(map(str, self.seeds))} ({setup}; "
                 f"tolerance {rtol:g} relative per value)"]
        for seed, m in self.mismatches.items():
            lines.append(f"  seed {seed}: " + ("MISMATCH: " + m if m else "reproduced"))
        if self.added:
            lines.append(f"  the re-run also recorded {len(self.added)} field(s) the entry lacks (newer code records "
                         f"more), not compared: {', '.join(self.added[:3])}{' ...' if len(self.added) > 3 else ''}")
        lines.append("verified: every re-run seed reproduces the stored runs" + (
            " exactly" if self.max_rel_diff == 0 else f" (largest relative difference {self.max_rel_diff:.2g})")
            if self.ok else "NOT verified: the re-run differs from the stored runs")
        return "\n".join(lines) + "\n"


def _numbers(a: Any, b: Any, path: str, added: list[str]) -> Iterator[tuple[str, Any, Any]]:
    """Pairs of leaves of two JSON trees; a structural difference yields (path, a, b) once. Keys
    that only ``b`` (the re-run) has are listed in ``added``, not compared: newer code may record
    more diagnostics than the entry's, but everything the entry holds must be reproduced."""
    if isinstance(a, dict) and isinstance(b, dict):
        if not set(a) <= set(b):
            yield path, sorted(a), sorted(b)
            return
        added.extend(f"{path}.{k}" for k in b if k not in a)
        for k in a:
            yield from _numbers(a[k], b[k], f"{path}.{k}", added)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield path + " (length)", len(a), len(b)
            return
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _numbers(x, y, f"{path}[{i}]", added)
    else:
        yield path, a, b


def compare_runs(stored: Mapping[str, Any], rerun: Mapping[str, Any], index: int, rtol: float, atol: float,
                 added: list[str] | None = None) -> tuple[str | None, float]:
    """The first value of ``rerun`` outside the tolerance of ``stored`` (as a message naming the
    field ``runs[index]....``), and the largest relative difference seen. Fields that only the
    re-run has (diagnostics newer than the entry) are appended to ``added``, not compared."""
    a = {k: v for k, v in stored.items() if k != "wall_time_s"}
    b = {k: v for k, v in rerun.items() if k != "wall_time_s"}
    worst = 0.0
    for path, x, y in _numbers(a, b, f"runs[{index}]", added if added is not None else []):
        if x == y:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        if numeric:
            rel = abs(x - y) / max(abs(x), abs(y))
            worst = max(worst, rel)
            if math.isclose(x, y, rel_tol=rtol, abs_tol=atol):
                continue
        return f"{path}: stored {json.dumps(x)[:80]}, re-run {json.dumps(y)[:80]}", worst
    return None, worst


def _setup_differences(entry: Mapping[str, Any], device: str) -> list[str]:
    prov = entry["provenance"]
    out = []
    if prov["hardware"]["device"] != device:
        out.append(f"device ({prov['hardware']['device']} -> {device})")
    stored_cpu, this_cpu = prov["hardware"].get("cpu"), cpu_identity()
    if stored_cpu != this_cpu:  # another CPU may round differently (e.g. an SVD's last float32 bit)
        out.append(f"CPU ({stored_cpu or 'not recorded'} -> {this_cpu})")
    now = versions()
    for k, v in prov["versions"].items():
        if now.get(k) != v:
            out.append(f"{k} ({v} -> {now.get(k)})")
    code = prov.get("code")
    if code and code["source_sha256"] != code_identity()["source_sha256"]:
        out.append("source code (provenance.code.source_sha256)")
    return out


def verify(entry: Mapping[str, Any], k: int = 1, *, device: str | None = None, progress: bool = False) -> VerifyReport:
    """Re-run the first ``k`` seeds of ``entry`` from its stored invocation and compare the runs.

    The env, agent and protocol (probes, bins, lockstep or not, steps and diagnoses of an episodic
    run) are the entry's; ``device`` defaults to the one it recorded. A user's agent
    (``module:factory``) must be importable here.
    """
    from plasticity_gym.harness.episodic import evaluate_episodic, is_episodic_env
    from plasticity_gym.harness.evaluate import evaluate
    from plasticity_gym.harness.resolve import resolve_device

    seeds = list(entry["seeds"])
    if not 1 <= k <= len(seeds):
        raise ValueError(f"--seeds must be between 1 and the entry's {len(seeds)} seeds, got {k}")
    chosen = seeds[:k]
    env, agent, proto = entry["env"], entry["agent"], entry["protocol"]
    inv = invocation_of(entry)
    if inv is not None and (inv.env_id, inv.scale) != (env["id"], env["scale"]):
        inv = None
    env_kwargs = inv.env_kwargs if inv is not None else env["kwargs"]
    overrides = inv.overrides if inv is not None else (agent["config"] if agent["source"] == "reference" else {})
    factory = agent["factory"]
    dev = resolve_device(device or proto["device"])
    if is_episodic_env(env["id"]):
        result = evaluate_episodic(
            env["id"], factory, scale=env["scale"], seeds=chosen, env_kwargs=env_kwargs, overrides=overrides,
            device=dev, steps=env["budget"]["n_examples_total"], diagnose_every=proto.get("diagnose_every_steps"),
            probe_size=proto["probe_size"], bin_examples=proto["bin_examples"], progress=progress)
    else:
        lockstep = proto.get("execution", "sequential") == "lockstep"
        result = evaluate(
            env["id"], factory, scale=env["scale"], seeds=chosen, env_kwargs=env_kwargs, overrides=overrides,
            device=dev, probe_every=proto["probe_every_tasks"], probe_size=proto["probe_size"],
            bin_examples=proto["bin_examples"], progress=progress, lockstep="on" if lockstep else "off")
    differences = _setup_differences(entry, dev)
    rtol, atol = (SAME_RTOL, SAME_ATOL) if not differences else (OTHER_RTOL, OTHER_ATOL)
    mismatches: dict[int, str | None] = {}
    worst, added = 0.0, []
    for i, (seed, run) in enumerate(zip(chosen, result.data["runs"])):
        mismatches[seed], rel = compare_runs(entry["runs"][i], run, i, rtol, atol, added)
        worst = max(worst, rel)
    return VerifyReport(chosen, not differences, differences, mismatches, worst, added)

