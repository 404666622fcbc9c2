"""Planning a sweep: each setting's identity, the checks that need the env and the agent, and the
tasks of a stage.

A setting's folder name is a readable slug of its swept values plus a hash of everything that
makes its runs what they are (env, scale, agent, overrides, env kwargs, probes, bins, device), so a
finished run is recognised by its file alone and a changed sweep file never reuses a run that no
longer fits. Tasks are planned from the whole stage, never from what is left of it, so an
interrupted task is planned the same way again and resumes from its checkpoint.

Settings that share the env kwargs and differ only in scalar hyperparameters that a lockstep
learner takes per replica (step size, momentum, weight decay, Adam's betas, CBP's replacement
rate, maturity and decay, noise scales) run together: all of them × the stage's seeds (or
``seeds_per_task`` of them at a time) as one batched computation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from plasticity_gym.harness._io import sha256_of, to_jsonable
from plasticity_gym.harness.evaluate import choose_execution
from plasticity_gym.harness.lanes import make_env
from plasticity_gym.harness.resolve import resolve_agent, resolve_device
from plasticity_gym.harness.sweep_spec import Setting, SweepError, SweepSpec, short_key
from plasticity_gym.harness.sweep_task import Task, TaskSetting, task_id

__all__ = ["Plan", "PlannedSetting", "plan_sweep", "plan_stage"]


@dataclass(frozen=True)
class PlannedSetting:
    index: int
    setting: Setting
    dir: str  # its folder under runs/ (its identity)

    @property
    def label(self) -> str:
        return self.setting.label

    def task_setting(self) -> TaskSetting:
        return TaskSetting(self.dir, self.label, to_jsonable(dict(self.setting.overrides)))


@dataclass(frozen=True)
class Plan:
    """What the checks found: each setting's identity, the device, the run length, lockstep groups."""

    spec: SweepSpec
    device: str
    settings: tuple[PlannedSetting, ...]
    examples_per_run: Mapping[str, int]  # per setting dir
    groups: tuple[tuple[int, ...], ...]  # indices of settings that may share a lockstep learner
    lockstep: Mapping[int, bool]  # per group index: run in lockstep (given enough replicas)


def _slug(setting: Setting) -> str:
    text = "_".join(f"{short_key(k).split('.')[-1]}={v}" for k, v in setting.values)
    return re.sub(r"[^A-Za-z0-9_.=+\-]+", "-", text)[:80].strip("-") or "setting"


def setting_dir(spec: SweepSpec, setting: Setting, device: str) -> str:
    identity = {"env_id": spec.env_id, "scale": spec.scale, "agent": spec.agent,
                "overrides": to_jsonable(dict(setting.overrides)), "env_kwargs": to_jsonable(dict(setting.env_kwargs)),
                "probe_every": spec.probe_every, "probe_size": spec.probe_size, "bin_examples": spec.bin_examples,
                "device": device}
    return f"{_slug(setting)}-{sha256_of(identity)[:10]}"


def _keys_line(spec: SweepSpec, keys: Sequence[str]) -> str:
    """``[file line N]`` of the first of ``keys`` (as written under [grid] or [set])."""
    for key in keys:
        for section in ("grid", "set"):
            w = spec.where(section, *key.split("."))
            if "line" in w:
                return w
    return spec.where()


def _check_envs(spec: SweepSpec) -> dict[str, tuple[Any, Any, int]]:
    """Build the env of every distinct env-kwargs set once: (obs space, act space, examples)."""
    out: dict[str, tuple[Any, Any, int]] = {}
    for s in spec.settings:
        key = json.dumps(to_jsonable(dict(s.env_kwargs)), sort_keys=True)
        if key in out:
            continue
        try:
            env = make_env(spec.env_id, spec.scale, s.env_kwargs)
        except Exception as exc:  # noqa: BLE001 - gym raises many kinds; each is the user's to fix
            msg = str(exc).splitlines()[0][:300]
            where = _keys_line(spec, ["env." + k for k in _culprits(spec, s.env_kwargs)]) if s.env_kwargs \
                else spec.where("env")
            raise SweepError(f"{where} {spec.env_id} at scale {spec.scale!r} with env kwargs "
                             f"{dict(s.env_kwargs)}: {msg}") from None
        u = env.unwrapped
        out[key] = (u.observation_space, u.action_space, int(u.n_examples_total))
        env.close()
    return out


def _culprits(spec: SweepSpec, env_kwargs: Mapping[str, Any]) -> list[str]:
    """The env kwargs the env rejects on their own (all of them when none does)."""
    bad = []
    for k, v in env_kwargs.items():
        try:
            make_env(spec.env_id, spec.scale, {k: v}).close()
        except Exception:  # noqa: BLE001
            bad.append(k)
    return bad or list(env_kwargs)


def _check_agent(spec: SweepSpec, setting: Setting, spaces: tuple[Any, Any]) -> Any:
    """The setting's agent spec; a reference agent's config is validated here, naming the line."""
    try:
        agent = resolve_agent(spec.agent, env_id=spec.env_id, scale=spec.scale, overrides=dict(setting.overrides))
        if agent.config is not None:
            agent.config(*spaces)
    except (ValueError, TypeError) as exc:
        msg = str(exc).splitlines()[0][:300]
        keys = [k for k, _ in setting.values if k.startswith("agent.")]
        # The config error names the key path (LearnerConfig.cbp.replacement_rate): point at it.
        named = [k for k in keys + ["agent." + k for k in _flat_keys(setting.overrides)]
                 if k[len("agent."):] in msg.replace("LearnerConfig.", "")]
        where = _keys_line(spec, named or keys) if (named or keys) else spec.where("agent")
        raise SweepError(f"{where} agent {spec.agent!r}, setting {setting.label}: {msg}") from None
    return agent


def _flat_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, Mapping) else [f"{prefix}{k}"]
    return out


def _structure(spec: SweepSpec, setting: Setting) -> str:
    """What must be equal for settings to share a lockstep learner: the env kwargs, and the
    overrides once the per-replica scalar hyperparameters are taken out."""
    from plasticity_gym_agents import PER_REPLICA

    overrides = json.loads(json.dumps(to_jsonable(dict(setting.overrides))))
    for section, keys in PER_REPLICA.items():
        if isinstance(overrides.get(section), dict):
            for k in keys:
                overrides[section].pop(k, None)
    return json.dumps([to_jsonable(dict(setting.env_kwargs)), overrides], sort_keys=True)


def plan_sweep(spec: SweepSpec) -> Plan:
    """Check the sweep against the env and the agent and plan its settings (errors name the line)."""
    try:
        device = resolve_device(spec.device)
    except ValueError as exc:
        raise SweepError(f"{spec.where('run', 'device')} {exc}") from None
    envs = _check_envs(spec)
    settings, examples, agents = [], {}, []
    for i, s in enumerate(spec.settings):
        obs, act, n = envs[json.dumps(to_jsonable(dict(s.env_kwargs)), sort_keys=True)]
        agents.append(_check_agent(spec, s, (obs, act)))
        d = setting_dir(spec, s, device)
        settings.append(PlannedSetting(i, s, d))
        examples[d] = n
    # Lockstep groups: reference agents only (a user's agent runs one setting and seed per task).
    groups: list[tuple[int, ...]] = []
    if agents[0].config is not None and spec.lockstep != "off":
        by: dict[str, list[int]] = {}
        for i, s in enumerate(spec.settings):
            by.setdefault(_structure(spec, s), []).append(i)
        groups = [tuple(v) for v in by.values()]
    else:
        groups = [(i,) for i in range(len(spec.settings))]
    lockstep = {}
    for g, members in enumerate(groups):
        first = spec.settings[members[0]]
        # Whether the group can run in lockstep at all: asked with two replicas, the smallest lockstep.
        try:
            mode = choose_execution("on" if spec.lockstep == "on" else "auto", agents[members[0]], spec.env_id,
                                    spec.scale, first.env_kwargs, [0, 1])
        except ValueError as exc:
            raise SweepError(f"{spec.where('run', 'lockstep')} {exc}") from None
        lockstep[g] = mode == "lockstep"
    return Plan(spec, device, tuple(settings), examples, tuple(groups), lockstep)


def plan_stage(plan: Plan, stage: str, setting_indices: Sequence[int], seeds: Sequence[int],
               threads: int = 1) -> list[Task]:
    """The tasks that compute ``setting_indices`` × ``seeds`` (a pure function of its arguments)."""
    spec = plan.spec
    chosen = set(setting_indices)
    per = spec.seeds_per_task or len(seeds)
    chunks = [tuple(seeds[i:i + per]) for i in range(0, len(seeds), per)]
    tasks = []
    for g, members in enumerate(plan.groups):
        members = tuple(i for i in members if i in chosen)
        if not members:
            continue
        env_kwargs = to_jsonable(dict(spec.settings[members[0]].env_kwargs))
        if plan.lockstep[g]:
            units = [(members, chunk) for chunk in chunks]
        else:
            units = [((i,), (seed,)) for i in members for seed in seeds]
        for idx, chunk in units:
            ts = tuple(plan.settings[i].task_setting() for i in idx)
            lock = plan.lockstep[g] and len(idx) * len(chunk) > 1
            if plan.lockstep[g] and not lock:  # a single replica: run it as a single agent
                lock = spec.lockstep == "on"
            task = Task(id="", stage=stage, env_id=spec.env_id, scale=spec.scale, agent=spec.agent,
                        env_kwargs=env_kwargs, settings=ts, seeds=tuple(chunk), lockstep=lock, device=plan.device,
                        probe_every=spec.probe_every, probe_size=spec.probe_size, bin_examples=spec.bin_examples,
                        checkpoint_every=spec.checkpoint_every,
                        examples_per_run=plan.examples_per_run[ts[0].dir], threads=threads)
            tasks.append(_with_id(task))
    return tasks


def _with_id(task: Task) -> Task:
    from dataclasses import replace

    return replace(task, id=task_id(task.fingerprint()))
