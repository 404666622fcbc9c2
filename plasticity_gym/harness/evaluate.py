"""``evaluate``: run one agent on one env over seeds and produce a schema-valid :class:`Result`.

The loop is the supervised-stream protocol of ``docs/design.md``: ``reset(seed)``, then
``act`` / ``step`` / ``observe`` until the stream is truncated. The harness talks to the agent
only through that protocol (``act``, ``observe``, ``uses_task_boundaries``; optionally
``probe_model``, ``state_dict``/``load_state_dict``, ``name``, ``config``), so a user's agent
is run exactly like a reference one.
"""

from __future__ import annotations

import importlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np

import plasticity_gym
from plasticity_gym.harness._io import atomic_pickle, load_pickle, sha256_of, to_jsonable
from plasticity_gym.harness.progress import Progress, progress_wanted
from plasticity_gym.harness.recorder import StreamRecorder, default_bin_examples
from plasticity_gym.harness.result import Result, hardware, now_iso, summarize, versions
from plasticity_gym.harness.schema import SCHEMA_VERSION

AgentFactory = Callable[..., Any]
"""``factory(observation_space, action_space, *, seed: int, device: str) -> Agent``."""

CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- agents
@dataclass(frozen=True)
class AgentSpec:
    """How to build the agent of every seed, and how the result names where it came from."""

    build: Callable[..., Any]  # (observation_space, action_space, seed, device) -> agent
    source: str  # "reference" or "custom"
    ident: str  # reference name, or "module:qualname"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # Reference MLP agents can run many seeds as one computation (issue 5):
    # lockstep_reason(obs_space, act_space) -> None when they can, else why not;
    # build_lockstep(obs_space, act_space, seeds, device) -> a vectorised agent.
    lockstep_reason: Callable[..., str | None] | None = None
    build_lockstep: Callable[..., Any] | None = None


def load_factory(spec: str) -> AgentFactory:
    """Import ``module:attr`` (``attr`` may be dotted) and return it; errors say what failed."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"agent factory must be given as module:factory, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for agent {spec!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (agent {spec!r})") from None
    if not callable(obj):
        raise ValueError(f"agent factory {spec!r} is not callable")
    return obj


def resolve_agent(
    agent: str | AgentFactory,
    *,
    env_id: str,
    scale: str,
    overrides: Mapping[str, Any] | None = None,
) -> AgentSpec:
    """A reference agent name, a ``"module:factory"`` string or a factory callable → spec.

    Reference agents are built by ``agents.make_agent`` with their (env, scale) defaults and
    ``overrides`` on top; a user's factory gets ``overrides`` as keyword arguments.
    """
    overrides = dict(overrides or {})
    if callable(agent):
        ident = f"{getattr(agent, '__module__', '?')}:{getattr(agent, '__qualname__', repr(agent))}"
        return AgentSpec(_custom_builder(agent, overrides), "custom", ident, overrides)
    if not isinstance(agent, str) or not agent:
        raise TypeError(f"agent must be a reference name, 'module:factory' or a callable, got {agent!r}")
    if ":" in agent:
        return AgentSpec(_custom_builder(load_factory(agent), overrides), "custom", agent, overrides)

    import agents as reference  # lazy: the harness needs the agents package only for names

    names = tuple(getattr(reference, "AGENT_NAMES", ()))
    if agent not in names:
        raise ValueError(
            f"unknown agent {agent!r}; reference agents: {', '.join(names) or '(none installed)'}; "
            "or give your own as module:factory"
        )

    def build(observation_space, action_space, seed, device):
        return reference.make_agent(
            agent, observation_space, action_space, env_id=env_id, scale=scale,
            overrides=overrides or None, seed=seed, device=device,
        )

    def config(observation_space, action_space):
        return reference.resolve_config(agent, observation_space, action_space, env_id=env_id,
                                        scale=scale, overrides=overrides or None)

    def lockstep_reason(observation_space, action_space):
        from agents.lockstep import lockstep_support

        return lockstep_support(config(observation_space, action_space))

    def build_lockstep(observation_space, action_space, seeds, device):
        from agents.lockstep import LockstepLearner

        return LockstepLearner(agent, config(observation_space, action_space), observation_space,
                               action_space, seeds=seeds, device=device)

    return AgentSpec(build, "reference", agent, overrides, lockstep_reason, build_lockstep)


def _custom_builder(factory: AgentFactory, overrides: Mapping[str, Any]):
    def build(observation_space, action_space, seed, device):
        return factory(observation_space, action_space, seed=seed, device=device, **overrides)

    return build


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return device


class AgentProtocolError(TypeError):
    """The object a factory returned does not follow the Agent protocol."""


def _check_agent(agent: Any, ident: str) -> None:
    missing = [a for a in ("act", "observe") if not callable(getattr(agent, a, None))]
    if missing or not hasattr(agent, "uses_task_boundaries"):
        missing += [] if hasattr(agent, "uses_task_boundaries") else ["uses_task_boundaries"]
        raise AgentProtocolError(
            f"agent {ident!r} does not follow the Agent protocol (agents/protocol.py): "
            f"missing {', '.join(missing)}"
        )


def agent_record(agent: Any, spec: AgentSpec) -> dict[str, Any]:
    """The ``agent`` block of a result: name, config and its hash, declarations."""
    config = getattr(agent, "config", None)
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
    }


def metric_of(action_space: gym.Space) -> str:
    """Classification (labels) is scored by accuracy, regression (values) by squared error."""
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return "accuracy"
    if isinstance(action_space, gym.spaces.Box):
        return "squared_error"
    raise TypeError(f"unsupported action space for a supervised stream: {action_space}")


# --------------------------------------------------------------------------- env record
def env_record(env_id: str, env_u: Any) -> dict[str, Any]:
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


def make_env(env_id: str, scale: str, env_kwargs: Mapping[str, Any] | None):
    if env_kwargs and "scale" in env_kwargs:
        raise ValueError("give the scale through scale=, not env_kwargs['scale']")
    # The env checker only inspects the first steps; the envs are checked by their own tests.
    return gym.make(env_id, scale=scale, disable_env_checker=True, **dict(env_kwargs or {}))


# --------------------------------------------------------------------------- plasticity
def _flatten_numbers(d: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Nested metric dicts → ``{"layer.metric": value}``, numbers only (non-finite → None)."""
    out: dict[str, float | None] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_numbers(v, key + "."))
            continue
        if hasattr(v, "item") and tuple(getattr(v, "shape", (0,))) == ():
            v = v.item()  # 0-d tensor / numpy scalar
        if isinstance(v, (bool, np.bool_)):
            v = float(v)
        if isinstance(v, (int, float, np.integer, np.floating)):
            f = float(v)
            out[key] = f if np.isfinite(f) else None
    return out


class _Plasticity:
    """Probe results of one seed: ``task`` ids and a series per metric name (None-padded)."""

    def __init__(self) -> None:
        self.task: list[int] = []
        self.metrics: dict[str, list[float | None]] = {}

    def add(self, task: int, values: Mapping[str, float | None]) -> None:
        n = len(self.task)
        for k, v in values.items():
            self.metrics.setdefault(k, [None] * n).append(v)
        self.task.append(int(task))
        for series in self.metrics.values():
            if len(series) < n + 1:
                series.append(None)

    def as_dict(self) -> dict[str, Any]:
        return {"task": list(self.task), "metrics": {k: list(v) for k, v in self.metrics.items()}}


def probe(env_u: Any, agent: Any, size: int) -> dict[str, float | None] | None:
    """Plasticity metrics of the agent's network on the current task's probe batch."""
    get_model = getattr(agent, "probe_model", None)
    if get_model is None:
        return None
    model = get_model()
    if model is None:
        return None
    from plasticity_gym.metrics import measure

    x, _ = env_u.probe_batch(size)
    return _flatten_numbers(measure(model, x))


# --------------------------------------------------------------------------- RNG state
def _rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _agent_blob(agent: Any) -> tuple[str, Any]:
    # Prefer the agent's own notion of its state (design.md §2); else pickle the object.
    if callable(getattr(agent, "state_dict", None)) and callable(getattr(agent, "load_state_dict", None)):
        return ("state_dict", agent.state_dict())
    return ("object", agent)


# --------------------------------------------------------------------------- the run
@dataclass
class _SeedState:
    """Everything needed to continue one seed's run where it stopped (picklable)."""

    seed: int
    env: Any  # the unwrapped env: it pickles with its stream position and RNG
    obs: Any
    info: dict[str, Any]
    recorder: StreamRecorder
    plasticity: _Plasticity
    last_probed_task: int = -1
    examples: int = 0
    wall_s: float = 0.0


class _Run:
    """One ``evaluate`` call: the fixed parameters, finished runs and checkpointing."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        self.done: list[dict[str, Any]] = []
        self.env_rec: dict[str, Any] | None = None
        self.agent_rec: dict[str, Any] | None = None
        self.metric: str | None = None
        self.bin_examples: int | None = None

    # Identity of the run, checked on resume so a checkpoint is never mixed with another run.
    def fingerprint(self) -> dict[str, Any]:
        return to_jsonable({
            "env_id": self.env_id, "scale": self.scale, "env_kwargs": self.env_kwargs,
            "agent": self.spec.ident, "overrides": dict(self.spec.overrides), "seeds": self.seeds,
            "probe_every": self.probe_every, "probe_size": self.probe_size,
            "bin_examples": self.bin_examples_arg, "device": self.device,
            "execution": self.execution,
        })

    def save_checkpoint(self, cur: _SeedState | None, agent: Any) -> None:
        if self.checkpoint is None:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint(),
            "done": self.done,
            "env_rec": self.env_rec,
            "agent_rec": self.agent_rec,
            "metric": self.metric,
            "bin_examples": self.bin_examples,
            "current": None if cur is None else (cur, _agent_blob(agent)),
            "rng": _rng_state(),
        }
        atomic_pickle(self.checkpoint, payload)

    def load_checkpoint(self) -> tuple[_SeedState, tuple[str, Any]] | None:
        payload = load_pickle(self.checkpoint)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.checkpoint}: unsupported checkpoint format {payload.get('format')!r}")
        theirs, ours = payload["fingerprint"], self.fingerprint()
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ValueError(
                f"{self.checkpoint} belongs to a different run (differs in: {', '.join(diff)}); "
                "use the same arguments, or delete the checkpoint to start afresh"
            )
        self.done = payload["done"]
        self.env_rec, self.agent_rec = payload["env_rec"], payload["agent_rec"]
        self.metric, self.bin_examples = payload["metric"], payload["bin_examples"]
        self._pending_rng = payload["rng"]
        self.lockstep_payload = payload if payload.get("lockstep") is not None else None
        return payload["current"]


def evaluate(
    env_id: str,
    agent_factory: str | AgentFactory,
    scale: str = "cpu",
    seeds: Sequence[int] = (0,),
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
    probe_every: int = 1,
    probe_size: int = 2000,
    bin_examples: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100_000,
    resume: bool = False,
    progress: bool | None = None,
    command: str | None = None,
    out: str | os.PathLike | None = None,
    lockstep: str = "auto",
) -> Result:
    """Run ``agent_factory`` on ``env_id`` at ``scale`` for each seed; return the result entry.

    Args:
        env_id: a registered id, e.g. ``"SlowRegression-v0"``.
        agent_factory: a reference agent name (``"cbp"``), ``"module:factory"``, or a callable
            ``factory(observation_space, action_space, *, seed, device) -> Agent``.
        scale: the env's named scale (``"smoke"``, ``"cpu"``, ``"paper"``).
        seeds: stream seeds; each seed gets a fresh env (``reset(seed=s)``) and a fresh agent
            built with ``seed=s``, so two agents given the same seed see the identical stream.
        env_kwargs: env kwargs on top of the scale (recorded resolved, with their hash).
        overrides: agent config overrides (validated by reference agents; keyword arguments
            of a user's factory).
        device: ``auto``, ``cpu`` or ``cuda``; passed to the factory resolved.
        probe_every: measure plasticity metrics at the start of every ``probe_every``-th task
            (0: never). Agents without ``probe_model()`` are not probed.
        probe_size: examples in the probe batch (SPEC §4: 2,000).
        bin_examples: bin width of the binned error (regression); default 40,000, narrowed
            on streams too short for 10 bins.
        checkpoint: path of the checkpoint file; ``None`` disables checkpointing.
        checkpoint_every: examples between checkpoints (also written at each seed's end).
        resume: continue from ``checkpoint`` if it exists (the result equals that of an
            uninterrupted run).
        progress: show a progress line; default: only on a terminal and not under CI.
        command: the command recorded in the result (default: a description of this call).
        out: if given, the result is validated and written there atomically.
        lockstep: ``"auto"`` runs several seeds of a reference MLP agent as one batched
            computation on the env's native vector env when both support it (same result as
            the sequential path to float tolerance, many times faster); ``"on"`` requires it
            (error saying why not otherwise); ``"off"`` runs seeds one after another.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    if probe_every < 0 or probe_size < 1:
        raise ValueError("probe_every must be >= 0 and probe_size >= 1")
    if lockstep not in ("auto", "on", "off"):
        raise ValueError(f"lockstep must be 'auto', 'on' or 'off', got {lockstep!r}")
    dev = resolve_device(device)
    spec = resolve_agent(agent_factory, env_id=env_id, scale=scale, overrides=overrides)
    execution = _choose_execution(lockstep, spec, env_id, scale, env_kwargs, seeds)
    if command is None:
        command = (
            f"plasticity_gym.harness.evaluate({env_id!r}, {spec.ident!r}, scale={scale!r}, "
            f"seeds={seeds}, env_kwargs={dict(env_kwargs or {})!r}, overrides={dict(spec.overrides)!r})"
        )
    run = _Run(
        env_id=env_id, scale=scale, env_kwargs=dict(env_kwargs or {}), spec=spec, seeds=seeds,
        probe_every=probe_every, probe_size=probe_size, bin_examples_arg=bin_examples, device=dev,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        checkpoint_every=max(1, int(checkpoint_every)), execution=execution,
        lockstep_payload=None,
    )
    t_start = time.perf_counter()

    current = None
    if resume and run.checkpoint is not None and run.checkpoint.exists():
        current = run.load_checkpoint()
        if current is None:  # stopped between seeds: the next seed starts from these RNGs
            _set_rng_state(run._pending_rng)

    show = progress_wanted() if progress is None else progress

    if execution == "lockstep":
        from plasticity_gym.harness.lockstep_run import run_lockstep

        run.done = run_lockstep(run, spec.build_lockstep, resume_payload=run.lockstep_payload,
                                show_progress=show)
    for i, seed in enumerate(seeds):
        if i < len(run.done):
            continue  # finished before the interruption
        if current is not None:
            state, blob = current
            current = None
            env_u = state.env
            agent = _restore_agent(spec, env_u, blob, seed, dev)
            _set_rng_state(run._pending_rng)  # after building: factories may seed globally
        else:
            env = make_env(env_id, scale, env_kwargs)
            env_u = env.unwrapped
            obs, info = env_u.reset(seed=seed)
            agent = spec.build(env_u.observation_space, env_u.action_space, seed, dev)
            _check_agent(agent, spec.ident)
            if run.env_rec is None:
                run.env_rec = env_record(env_id, env_u)
                run.agent_rec = agent_record(agent, spec)
                run.metric = metric_of(env_u.action_space)
                run.bin_examples = (
                    (bin_examples or default_bin_examples(int(env_u.n_examples_total)))
                    if run.metric == "squared_error" else bin_examples
                )
            state = _SeedState(
                seed=seed, env=env_u, obs=obs, info=info,
                recorder=StreamRecorder(run.metric, run.bin_examples), plasticity=_Plasticity(),
            )
        n_per_seed = run.env_rec["budget"]["n_examples_total"]
        bar = Progress(
            n_per_seed * len(seeds), enabled=show, done=i * n_per_seed + state.examples,
            label=f"{env_id} {spec.ident} seed {seed} ({i + 1}/{len(seeds)})  ",
        )
        _run_seed(run, state, agent, bar, i * n_per_seed)
        run.done.append({
            "seed": seed,
            "n_examples": state.examples,
            "wall_time_s": round(state.wall_s, 3),
            "series": state.recorder.finish(),
            "plasticity": state.plasticity.as_dict(),
        })
        bar.close(i * n_per_seed + state.examples)
        state.env.close()
        run.save_checkpoint(None, None)

    assert run.env_rec is not None and run.agent_rec is not None and run.metric is not None
    result = build_result(
        env_rec=run.env_rec, agent_rec=run.agent_rec, metric=run.metric, bin_examples=run.bin_examples,
        probe_every=probe_every, probe_size=probe_size, device=dev, seeds=seeds, runs=run.done,
        command=command, fallback_wall_s=time.perf_counter() - t_start, execution=execution,
    )
    if out is not None:
        result.save(out)
    if run.checkpoint is not None and run.checkpoint.exists():
        run.checkpoint.unlink()  # the result now holds everything the checkpoint did
    return result


def _choose_execution(lockstep: str, spec: AgentSpec, env_id: str, scale: str,
                      env_kwargs: Mapping[str, Any] | None, seeds: Sequence[int]) -> str:
    """``"lockstep"`` or ``"sequential"``, per the ``lockstep`` argument and what is supported."""
    if lockstep == "off" or (lockstep == "auto" and len(seeds) < 2):
        return "sequential"
    from plasticity_gym.harness.lockstep_run import has_vector_env

    reason = None
    if spec.lockstep_reason is None:
        reason = f"agent {spec.ident!r} is not a reference agent with a lockstep implementation"
    elif not has_vector_env(env_id):
        reason = f"{env_id} has no native vector env"
    else:
        env = make_env(env_id, scale, env_kwargs)
        reason = spec.lockstep_reason(env.unwrapped.observation_space, env.unwrapped.action_space)
        env.close()
    if reason is None:
        return "lockstep"
    if lockstep == "on":
        raise ValueError(f"lockstep execution is not available: {reason}; use lockstep='off'")
    return "sequential"


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
) -> Result:
    """Assemble and validate a result entry from finished per-seed runs."""
    data = {
        "schema_version": SCHEMA_VERSION,
        "env": env_rec,
        "agent": agent_rec,
        "protocol": {
            "metric": metric,
            "probe_every_tasks": probe_every,
            "probe_size": probe_size,
            "bin_examples": bin_examples,
            "device": device,
            "execution": execution,
        },
        "seeds": list(seeds),
        "runs": runs,
        "summary": summarize(metric, runs),
        "provenance": {
            "command": command,
            "created": now_iso(),
            "wall_time_s": round(sum(r["wall_time_s"] for r in runs) or fallback_wall_s, 3),
            "hardware": hardware(device),
            "versions": versions(),
        },
    }
    result = Result(to_jsonable(data))
    result.validate()
    return result


def _restore_agent(spec: AgentSpec, env_u: Any, blob: tuple[str, Any], seed: int, dev: str) -> Any:
    kind, payload = blob
    if kind == "object":
        return payload
    agent = spec.build(env_u.observation_space, env_u.action_space, seed, dev)
    agent.load_state_dict(payload)
    return agent


def _run_seed(run: _Run, st: _SeedState, agent: Any, bar: Progress, offset: int) -> None:
    """The hot loop. Locals instead of attribute look-ups; probes only at task starts."""
    env_step = st.env.step
    act, observe = agent.act, agent.observe
    record = st.recorder.record
    update = bar.update
    probe_every, probe_size = run.probe_every, run.probe_size
    can_probe = probe_every > 0 and getattr(agent, "probe_model", None) is not None
    every = run.checkpoint_every if run.checkpoint is not None else 0
    next_ckpt = (st.examples // every + 1) * every if every else -1
    obs, info = st.obs, st.info
    examples = st.examples
    t0 = time.perf_counter()
    while True:
        if can_probe and (info["next_task_boundary"] or st.last_probed_task < 0):
            task = int(info["next_task_id"])
            if task > st.last_probed_task and task % probe_every == 0:
                values = probe(st.env, agent, probe_size)
                if values is not None:
                    st.plasticity.add(task, values)
                st.last_probed_task = task
        action = act(obs, info)
        next_obs, reward, terminated, truncated, next_info = env_step(action)
        observe(obs, action, reward, next_info)
        examples += record(reward, next_info)
        obs, info = next_obs, next_info
        if terminated or truncated:
            break
        update(offset + examples)
        if examples >= next_ckpt > 0:
            st.obs, st.info, st.examples = obs, info, examples
            st.wall_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            run.save_checkpoint(st, agent)
            next_ckpt = (examples // every + 1) * every
    st.obs, st.info, st.examples = obs, info, examples
    st.wall_s += time.perf_counter() - t0
