"""Trusting an entry: check its numbers (:func:`check_entry`) and reproduce its runs (:func:`verify`).

A result file is data: nothing here imports a module that a file names. :func:`check_entry` is
what ``plasticity-gym validate``, ``leaderboard``, ``site`` and ``submit`` run. On top of the shape
(:func:`plasticity_gym.harness.schema.result_errors`: the JSON Schema, finite numbers, hashes,
series within the budget) it

* recomputes the summary from the runs with the code that wrote it
  (:func:`plasticity_gym.harness.result.summary_errors`): every value, per-seed value and interval,
  the primary metric and each metric's ``higher_is_better``;
* checks the seeds against the stored command: distinct, and exactly the ones it asked for
  (``--seeds N``: 0..N-1; ``--seed-list``), so that no seed is dropped, repeated or relabelled;
* rebuilds the env from the entry's stored invocation (its scale and the kwargs the command set)
  and compares the env block it records: ``env.id``, ``env.scale``, ``env.kwargs``, the data
  identity and the budget, and the metric the env is scored by (``protocol.metric``). An env
  whose data is not on this machine, or a user's ``module:Id`` env, is not rebuilt (a note says
  so);
* for a reference agent (a name of the installed reference agents), rebuilds the agent record:
  its name, config and declarations. A user's agent is not rebuilt (``custom agent: not rebuilt``).

:func:`verify` re-runs some of an entry's seeds on this machine, each in the lockstep batch it ran
in (:func:`layout_of`), and compares the runs value by value: on the same device, CPU, versions and
source the series exactly and the probe diagnostics to :data:`PROBE_RTOL`; on another device,
CPU (its SIMD extensions change which BLAS/LAPACK kernels run) or other versions or source,
everything within :data:`OTHER_RTOL`. It runs a user's agent or env only when the caller names its
module in ``allow_import``.
"""

from __future__ import annotations

import ast
import json
import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import gymnasium as gym

from plasticity_gym.harness._io import sha256_of
from plasticity_gym.harness.cliargs import parse_run_argv, parse_sets
from plasticity_gym.harness.result import code_identity, cpu_identity, summary_errors, versions
from plasticity_gym.harness.schema import result_errors

# Relative tolerances of verify per value of the runs (absolute floors for values near 0), per
# field family. On the same device, CPU, versions and source, each seed re-run in the batch it ran
# in: the training series, episodes and counts exactly; the probe diagnostics
# (``runs[].plasticity``: an SVD and gradient norms of batched float32 products) to float32
# rounding, which another thread count may change. Anywhere else: everything to OTHER_RTOL.
SAME_RTOL, SAME_ATOL = 0.0, 0.0
PROBE_RTOL, PROBE_ATOL = 1e-5, 1e-9
OTHER_RTOL, OTHER_ATOL = 1e-4, 1e-8

__all__ = ["Invocation", "VerifyReport", "buildable_env", "check_entry", "compare_runs", "entry_errors",
           "invocation_of", "layout_of", "reference_agent_names", "verify",
           "OTHER_ATOL", "OTHER_RTOL", "PROBE_ATOL", "PROBE_RTOL", "SAME_ATOL", "SAME_RTOL"]


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
    seeds: Sequence[int] | None = None  # the seeds the command asked for (``--seeds N``: range(N))
    threads: int | None = None  # ``--threads`` (a lockstep batch rounds as its threads split it)


def _cli_invocation(argv: list[str]) -> Invocation | None:
    if not argv or argv[0] != "run":
        return None  # compare, or anything else: one entry of several agents' runs
    args = parse_run_argv(argv[1:])
    if args is None:
        return None
    try:
        seeds = list(args.seed_list) if args.seed_list else range(max(args.seeds, 0))
        return Invocation(args.env_id, args.agent, args.scale,
                          parse_sets(args.env_set, "--env-set", nest=False), parse_sets(args.set), args.steps,
                          seeds, args.threads)
    except (SystemExit, ValueError):  # a malformed --set
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
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):  # not a readable call
        return None
    names = ["env_id", "agent", "scale", "seeds", "env_kwargs"]
    kw.update(dict(zip(names, pos)))
    if not isinstance(kw.get("env_id"), str) or not isinstance(kw.get("agent"), str):
        return None
    seeds = kw.get("seeds", (0,))
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = range(max(seeds, 0))  # evaluate(seeds=n): seeds 0..n-1
    elif not isinstance(seeds, (list, tuple)) or not all(isinstance(x, int) for x in seeds):
        seeds = None
    return Invocation(kw["env_id"], kw["agent"], kw.get("scale", "cpu"), dict(kw.get("env_kwargs") or {}),
                      dict(kw.get("overrides") or {}), kw.get("steps"),
                      seeds if seeds is None or isinstance(seeds, range) else list(seeds),
                      kw.get("threads") if isinstance(kw.get("threads"), int) else None)


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


def reference_agent_names() -> frozenset[str]:
    """Every installed reference agent (supervised and episodic): the only agents a file may name
    that the harness builds without importing code named by the file."""
    from plasticity_gym.harness.resolve import reference_agent_names as names

    return frozenset(names("supervised")) | frozenset(names("episodic"))


def buildable_env(env_id: str) -> bool:
    """Whether ``env_id`` is a registered id that names no module: a ``module:Id`` env would make
    Gymnasium import ``module``, code named by the file."""
    return ":" not in env_id and env_id in gym.registry


def _seed_messages(entry: Mapping[str, Any], inv: Invocation | None) -> tuple[list[str], list[str]]:
    """The seeds are part of the claim: distinct, and exactly the ones the stored command asked for."""
    seeds = list(entry["seeds"])
    twice = sorted(s for s, n in Counter(seeds).items() if n > 1)
    if twice:
        return [f"seeds: seed {twice[0]} appears more than once ({seeds[:20]}); each seed is one independent "
                "repetition"], []
    if inv is None or inv.seeds is None:
        return [], ["seeds not checked against a request: provenance.command is not a run command this version "
                    "reads"]
    asked = inv.seeds  # a range for --seeds N: never expanded beyond what the entry holds
    if len(asked) == len(seeds) and all(a == b for a, b in zip(seeds, asked)):
        return [], []
    if len(asked) > len(seeds) + 1000:
        what = f"{len(asked):,} seeds asked for, {len(seeds):,} held"
    else:
        held, wanted = set(seeds), set(asked)
        dropped, added = [s for s in asked if s not in held], [s for s in seeds if s not in wanted]
        what = "; ".join(x for x in (f"missing {dropped[:10]}" if dropped else "",
                                     f"not asked for {added[:10]}" if added else "",
                                     "in another order" if not dropped and not added else "") if x)
    return [f"seeds: {seeds[:20]} are not the seeds provenance.command asked for ({list(asked[:20])}: {what}); "
            "an entry holds every seed its command ran, as it ran them"], []


def _identity_messages(entry: dict[str, Any]) -> tuple[list[str], list[str]]:
    env = entry["env"]
    notes: list[str] = []
    inv = invocation_of(entry)
    errors, notes = _seed_messages(entry, inv)
    if not buildable_env(env["id"]):
        if ":" not in env["id"]:
            from plasticity_gym.registration import ENV_IDS

            return errors + [f"env.id: {env['id']!r} is not a registered environment id (plasticity_gym's: "
                             f"{', '.join(ENV_IDS)}; a user's env is recorded as module:Id)"], notes
        # Nothing named by a file is imported: a user's env is checked for shape and numbers only.
        return errors + _agent_claim_messages(entry, inv), notes + [
            f"custom env: not rebuilt ({env['id']} names a module; validate imports no code named by a file); "
            "its shape and numbers are checked"] + _agent_notes(entry)
    consistent = inv is not None and inv.env_id == env["id"] and inv.scale == env["scale"]
    if inv is not None and not consistent:
        return errors + [f"env.id, env.scale: recorded {env['id']} at scale {env['scale']!r}, but provenance.command "
                         f"ran {inv.env_id} at scale {inv.scale!r}"], notes
    # The scale and the kwargs the command set give the recorded kwargs; without a readable
    # command, the recorded kwargs are taken as given (the data identity is still checked).
    kwargs = inv.env_kwargs if inv is not None else env["kwargs"]
    steps = inv.steps if inv is not None and inv.steps is not None else env["budget"]["n_examples_total"]
    try:
        rec, metric, spaces = _env_record(entry, kwargs, steps)
    except FileNotFoundError as exc:
        return errors + _agent_claim_messages(entry, inv), notes + [
            f"env not rebuilt: its data is not on this machine ({str(exc).splitlines()[0][:120]})"] + _agent_notes(entry)
    except (ValueError, TypeError, gym.error.Error) as exc:
        return errors + [f"env.id, env.scale, env.kwargs: {env['id']} at scale {env['scale']!r} cannot be built from "
                         f"them: {str(exc).splitlines()[0][:200]}"], notes
    msgs = errors + _diff_fields("env", rec, env, skip=("package_version",))
    if metric != entry["protocol"]["metric"]:
        msgs.append(f"protocol.metric: recorded {entry['protocol']['metric']!r}, but {env['id']} is scored by {metric!r}")
    msgs += _agent_claim_messages(entry, inv) or _agent_messages(entry, inv, spaces)
    return msgs, notes + _agent_notes(entry)


def _agent_notes(entry: Mapping[str, Any]) -> list[str]:
    agent = entry["agent"]
    if agent["source"] == "reference":
        return []
    return [f"custom agent: not rebuilt ({agent['factory']} is a user's code, which validate never imports): its "
            "config and declarations are taken as given; `plasticity-gym verify FILE --allow-import MODULE` "
            "re-runs it with the reviewer's consent"]


def _agent_claim_messages(entry: Mapping[str, Any], inv: Invocation | None) -> list[str]:
    """What can be told of the agent block without building anything: a ``reference`` agent is one
    of the installed reference agents, a ``custom`` one is not, and the command ran that agent."""
    agent = entry["agent"]
    names = reference_agent_names()
    if agent["source"] == "reference" and agent["factory"] not in names:
        return [f"agent.factory: {str(agent['factory'])[:80]!r} is not a reference agent ({', '.join(sorted(names))}), "
                "but agent.source says 'reference'; a user's agent is recorded as source 'custom'"]
    if agent["source"] == "custom" and agent["factory"] in names:
        return [f"agent.source: 'custom', but agent.factory {agent['factory']!r} is a reference agent"]
    if inv is not None and inv.agent != agent["factory"]:
        return [f"agent.factory: recorded {str(agent['factory'])[:80]!r}, but provenance.command ran {inv.agent[:80]!r}"]
    return []


def _agent_messages(entry: dict[str, Any], inv: Any, spaces: tuple[Any, Any]) -> list[str]:
    from plasticity_gym.harness.episodic import is_episodic_env
    from plasticity_gym.harness.records import agent_record
    from plasticity_gym.harness.resolve import resolve_agent

    agent, env = entry["agent"], entry["env"]
    if agent["source"] != "reference":
        return []  # a user's factory is not imported by validate
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
    batch_mates: list[int] = field(default_factory=list)  # seeds re-run only to rebuild a lockstep batch

    @property
    def ok(self) -> bool:
        return all(m is None for m in self.mismatches.values())

    def report(self) -> str:
        if self.same_setup:
            setup = ("same device, CPU, versions and source as the entry: the series exactly, the probe "
                     f"diagnostics to {PROBE_RTOL:g} relative")
        else:
            setup = ("another setup: differs from the entry in " + "; ".join(self.setup_differences)
                     + f"; tolerance {OTHER_RTOL:g} relative per value")
        lines = [f"re-ran seed{'s' if len(self.seeds) > 1 else ''} {', '.join(map(str, self.seeds))} ({setup})"]
        if self.batch_mates:
            mates = self.batch_mates
            lines.append(f"  (re-run in the lockstep batch {'it' if len(self.seeds) == 1 else 'they'} ran in, beside "
                         f"seed{'s' if len(mates) > 1 else ''} {', '.join(map(str, mates))})")
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


def _tolerance(path: str, same_setup: bool) -> tuple[float, float]:
    if not same_setup:
        return OTHER_RTOL, OTHER_ATOL
    if ".plasticity.metrics." in path:
        return PROBE_RTOL, PROBE_ATOL
    return SAME_RTOL, SAME_ATOL


def compare_runs(stored: Mapping[str, Any], rerun: Mapping[str, Any], index: int, rtol: float | None = None,
                 atol: float | None = None, added: list[str] | None = None, *,
                 same_setup: bool = True) -> tuple[str | None, float]:
    """The first value of ``rerun`` outside the tolerance of ``stored`` (as a message naming the
    field ``runs[index]....``), and the largest relative difference seen. The tolerance is
    ``rtol``/``atol`` when given, else the field family's (:data:`SAME_RTOL`, :data:`PROBE_RTOL`
    on the same setup, :data:`OTHER_RTOL` on another). Fields that only the re-run has
    (diagnostics newer than the entry) are appended to ``added``, not compared."""
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
            r, t = (rtol, atol or 0.0) if rtol is not None else _tolerance(path, same_setup)
            if math.isclose(x, y, rel_tol=r, abs_tol=t):
                continue
        return f"{path}: stored {json.dumps(x)[:80]}, re-run {json.dumps(y)[:80]}", worst
    return None, worst


def _setup_differences(entry: Mapping[str, Any], device: str, rerun_code: Mapping[str, Any] | None = None) -> list[str]:
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
    stored_agent = (code or {}).get("agent_source")
    if stored_agent and stored_agent != (rerun_code or {}).get("agent_source"):  # a user's agent, edited since
        out.append(f"the agent's module {str(stored_agent.get('module'))[:80]!r} "
                   "(provenance.code.agent_source.sha256)")
    return out


def _module_of(name: str) -> str | None:
    """The module a ``module:attr`` agent or ``module:Id`` env names, else None."""
    return name.rpartition(":")[0] or None if ":" in name else None


def _allowed(module: str, allow_import: Sequence[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in allow_import)


def layout_of(entry: Mapping[str, Any]) -> list[list[int]]:
    """The batches the entry's seeds ran in: every seed of a lockstep run in one batch (or one per
    worker process, ``protocol.processes``), each seed alone otherwise. A batch's shape decides the
    last bits of its batched products, so a re-run reproduces a seed in the batch it ran in."""
    from plasticity_gym.harness.workers import split_seeds

    seeds, proto = list(entry["seeds"]), entry["protocol"]
    if proto.get("execution") == "lockstep":
        return split_seeds(seeds, min(int(proto.get("processes", 1)), len(seeds)))
    return [[s] for s in seeds]


def verify(entry: Mapping[str, Any], k: int | None = 1, *, seeds: Sequence[int] | None = None,
           device: str | None = None, progress: bool = False, allow_import: Sequence[str] = ()) -> VerifyReport:
    """Re-run seeds of ``entry`` from its stored invocation and compare the runs.

    ``k``: the entry's first ``k`` seeds (None: every seed); ``seeds``: these seeds instead. Each
    chosen seed is re-run in the batch it ran in (:func:`layout_of`): a lockstep entry's whole
    batch, so that its batched products round as they did. The env, agent and protocol (probes,
    bins, lockstep or not, steps and diagnoses of an episodic run) are the entry's; ``device``
    defaults to the one it recorded. Code named by the file runs only with the reviewer's consent:
    a user's agent (``module:factory``) or env (``module:Id``) only when ``allow_import`` names its
    module (or a package above it); otherwise a ``ValueError`` says what the file would import.
    """
    from plasticity_gym.harness.episodic import evaluate_episodic, is_episodic_env
    from plasticity_gym.harness.evaluate import evaluate
    from plasticity_gym.harness.resolve import resolve_device

    stored_seeds = list(entry["seeds"])
    if seeds is not None:
        chosen = [int(s) for s in seeds]
        unknown = [s for s in chosen if s not in stored_seeds]
        if unknown or not chosen:
            raise ValueError(f"seeds {unknown or chosen} are not seeds of the entry ({stored_seeds[:20]})")
    else:
        k = len(stored_seeds) if k is None else k
        if not 1 <= k <= len(stored_seeds):
            raise ValueError(f"--seeds must be between 1 and the entry's {len(stored_seeds)} seeds, got {k}")
        chosen = stored_seeds[:k]
    env, agent, proto = entry["env"], entry["agent"], entry["protocol"]
    factory = agent["factory"]
    if agent["source"] == "reference" and factory not in reference_agent_names():
        raise ValueError(f"agent.factory {str(factory)[:80]!r} is not a reference agent, but the entry says it is; "
                         "`plasticity-gym validate` says more")
    for what, name in (("agent", factory if agent["source"] != "reference" else ""), ("env", env["id"])):
        module = _module_of(name)
        if module is not None and not _allowed(module, allow_import):
            raise ValueError(f"the entry's {what} {name[:80]!r} is code of module {module[:80]!r}, which verify "
                             f"imports only when told to: read that code, then pass --allow-import {module[:80]}")
    inv = invocation_of(entry)
    if inv is not None and (inv.env_id, inv.scale) != (env["id"], env["scale"]):
        inv = None
    env_kwargs = inv.env_kwargs if inv is not None else env["kwargs"]
    overrides = inv.overrides if inv is not None else (agent["config"] if agent["source"] == "reference" else {})
    threads = inv.threads if inv is not None else None
    dev = resolve_device(device or proto["device"])
    batches = [b for b in layout_of(entry) if any(s in chosen for s in b)]
    reruns: dict[int, dict[str, Any]] = {}
    for batch in batches:
        if is_episodic_env(env["id"]):
            result = evaluate_episodic(
                env["id"], factory, scale=env["scale"], seeds=batch, env_kwargs=env_kwargs, overrides=overrides,
                device=dev, steps=env["budget"]["n_examples_total"], diagnose_every=proto.get("diagnose_every_steps"),
                probe_size=proto["probe_size"], bin_examples=proto["bin_examples"], progress=progress)
        else:
            lockstep = proto.get("execution", "sequential") == "lockstep"
            result = evaluate(
                env["id"], factory, scale=env["scale"], seeds=batch, env_kwargs=env_kwargs, overrides=overrides,
                device=dev, probe_every=proto["probe_every_tasks"], probe_size=proto["probe_size"],
                bin_examples=proto["bin_examples"], progress=progress,
                lockstep=("on" if len(batch) > 1 else "auto") if lockstep else "off", threads=threads, workers=1)
        reruns.update({run["seed"]: run for run in result.data["runs"]})
    differences = _setup_differences(entry, dev, result.data["provenance"]["code"])
    mismatches: dict[int, str | None] = {}
    worst, added = 0.0, []
    for seed in chosen:
        i = stored_seeds.index(seed)
        mismatches[seed], rel = compare_runs(entry["runs"][i], reruns[seed], i, same_setup=not differences,
                                             added=added)
        worst = max(worst, rel)
    rerun_seeds = [s for b in batches for s in b]
    return VerifyReport(chosen, not differences, differences, mismatches, worst, added,
                        [s for s in rerun_seeds if s not in chosen])
