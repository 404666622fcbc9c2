"""Episodic reinforcement learning through the one run loop: :class:`EpisodicLanes` and
:func:`evaluate_episodic`.

An episodic run drives one :class:`~plasticity_gym_agents.protocol.EpisodicAgent` per seed (PPO, or a user's
``module:factory``) on its own copies of a Gymnasium env (``AntFriction-v0``, ``Hopper-v5``, any
registered env with a continuous action space). Every copy of every seed steps in ONE vector env
of this process (``SAME_STEP`` autoreset; the env's native vector env where it has one, as
AntFriction-v0 does), one lane per seed, through
:func:`plasticity_gym.harness.loop.run_segments`: checkpoints, ``--resume`` and the progress line
work as for the supervised streams. The loop's "examples" are env steps here (per seed, all of
its copies together).

What a run records, per seed:

* ``episodes``: every finished episode's return, the lifetime step at which it ended and its
  friction segment (``info["friction_index"]``; 0 for an env without one);
* ``series.online``: the mean return per friction segment; ``series.binned``: the mean return of
  the episodes that ended in each bin of ``bin_examples`` steps;
* ``plasticity``: every ``diagnose_every_steps`` steps, the agent's ``diagnostics`` on the last
  ``probe_size`` observations the seed saw: dormant units (%) of the policy's hidden units, the
  stable rank of its last hidden layer, the average weight magnitude, and the largest total
  weight change in one update since the previous diagnosis (``plasticity.step`` holds the steps).

Seeds: copy ``j`` of seed ``s`` (of ``k = agent.num_envs`` copies) is reset with seed ``s·k + j``
(with one copy, the seed itself), so two agents given the same seed meet the same friction
schedule and initial states.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import time
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np

from plasticity_gym.harness._io import sha256_of
from plasticity_gym.harness.checkpoint import Checkpoint, agent_blob, open_part_manifest, part_checkpoints, restore_agent
from plasticity_gym.harness.loop import RunOutput, Segment, run_segments
from plasticity_gym.harness.progress import progress_wanted
from plasticity_gym.harness.records import agent_record, build_result, flatten_numbers
from plasticity_gym.harness.resolve import (
    AgentFactory,
    AgentProtocolError,
    AgentSpec,
    resolve_agent,
    resolve_device,
    seed_list,
)
from plasticity_gym.harness.result import Result
from plasticity_gym.harness.threads import configure_cpu
from plasticity_gym.harness.workers import WorkerPart, run_parts, split_seeds, threads_per_worker

EPISODIC_METRIC = "episodic_return"
# Env steps per seed of an env that does not name its own (``run_steps`` per scale, as
# AntFriction-v0 does); ``steps=`` overrides either.
DEFAULT_RUN_STEPS: dict[str, int] = {"smoke": 4_096, "cpu": 200_000, "paper": 10_000_000}
DEFAULT_DIAGNOSES = 30  # diagnoses per run when diagnose_every is not given
# Diagnostics an agent reports that are counters, not plasticity metrics.
_COUNTERS = ("steps", "updates")

__all__ = [
    "DEFAULT_RUN_STEPS",
    "EPISODIC_METRIC",
    "EpisodicLanes",
    "EpisodicRun",
    "evaluate_episodic",
    "is_episodic_env",
]


def is_episodic_env(env_id: str) -> bool:
    """True for an RL env with episodes (AntFriction-v0, Hopper-v5, ...), False for a supervised
    stream (it has ``n_examples_total``). Unknown ids are built once to tell."""
    from plasticity_gym.registration import EPISODIC_ENV_IDS, SUPERVISED_ENV_IDS

    if env_id in EPISODIC_ENV_IDS:
        return True
    if env_id in SUPERVISED_ENV_IDS:
        return False
    try:
        env = gym.make(env_id, disable_env_checker=True)
    except Exception:  # noqa: BLE001 - a stream that needs its scale, or an unknown id: the stream path says which
        return False
    try:
        return not hasattr(env.unwrapped, "n_examples_total")
    finally:
        env.close()


def _takes_scale(env_id: str) -> bool:
    from plasticity_gym.registration import EPISODIC_ENV_IDS

    return env_id in EPISODIC_ENV_IDS


class EpisodicRun:
    """The fixed facts of an episodic run: the env (id, scale, kwargs), its budget, the records'
    widths. Its attributes are what :func:`plasticity_gym.harness.records.env_record` reads
    (``config``, ``data_id``, ``scale``, ``n_examples_total``, ``n_tasks``, ...), so the loop
    records an episodic env like a stream."""

    def __init__(self, env_id: str, scale: str, env_kwargs: Mapping[str, Any] | None, *,
                 steps: int | None = None, diagnose_every: int | None = None, probe_size: int = 2000) -> None:
        env_kwargs = dict(env_kwargs or {})
        if "scale" in env_kwargs:
            raise ValueError("give the scale through scale=, not env_kwargs['scale']")
        self.env_id, self.scale, self.env_kwargs = env_id, str(scale), env_kwargs
        self.make_kwargs = dict(env_kwargs, scale=scale) if _takes_scale(env_id) else env_kwargs
        env = self.make_env()
        try:
            env_u = env.unwrapped
            self.observation_space, self.action_space = env.observation_space, env.action_space
            if not isinstance(self.action_space, gym.spaces.Box):
                raise ValueError(f"{env_id} has a {type(self.action_space).__name__} action space; the episodic "
                                 "harness runs continuous-control envs (a Box action space)")
            table = getattr(type(env_u), "run_steps", DEFAULT_RUN_STEPS)
            if steps is None and self.scale not in table:
                raise ValueError(f"unknown scale {scale!r} for {env_id}: its run lengths are "
                                 f"{', '.join(f'{k} {v:,}' for k, v in table.items())} env steps; "
                                 "or give the steps")
            self.n_examples_total = int(steps if steps is not None else table[self.scale])
            if self.n_examples_total < 1:
                raise ValueError(f"steps must be >= 1, got {self.n_examples_total}")
            self.config = self._config(env, env_u)
            self.data_id = self._data_id(env_id, env_u)
            cfg = getattr(env_u, "config", None)
            every = cfg.get("change_every") if isinstance(cfg, dict) else None
            # A friction schedule's period (AntFriction-v0), else one segment.
            self.examples_per_task = int(every) if every and cfg.get("friction") is None else None
        finally:
            env.close()
        self.diagnose_every = int(diagnose_every if diagnose_every is not None
                                  else max(1, math.ceil(self.n_examples_total / DEFAULT_DIAGNOSES)))
        if self.diagnose_every < 1:
            raise ValueError(f"diagnose_every must be >= 1 env steps, got {self.diagnose_every}")
        self.probe_size = int(probe_size)
        self.bin_steps: int | None = None  # the width of series.binned, as the loop chose it
        self.set_copies(1)

    def set_copies(self, k: int) -> None:
        """``k`` env copies per seed: env steps per lane step, and the friction segments that
        start within each copy's lifetime if every change came on its mark (at most)."""
        self.batch_size = int(k)
        per_copy = -(-self.n_examples_total // self.batch_size)
        self.n_tasks = (per_copy - 1) // self.examples_per_task + 1 if self.examples_per_task else 1

    def make_env(self) -> gym.Env:
        return gym.make(self.env_id, disable_env_checker=True, **self.make_kwargs)

    def make_vector_env(self, num_envs: int) -> gym.vector.VectorEnv:
        """``num_envs`` copies in ``SAME_STEP`` autoreset mode: the env's own vector env where it
        registers one in that mode (AntFriction-v0's steps every copy in one call), else a
        ``SyncVectorEnv`` of ``gym.make`` copies."""
        spec = gym.spec(self.env_id) if self.env_id in gym.registry else None
        if spec is not None and spec.vector_entry_point is not None:
            venv = gym.make_vec(self.env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                **self.make_kwargs)
            if venv.metadata.get("autoreset_mode") == gym.vector.AutoresetMode.SAME_STEP:
                return venv
            venv.close()
        return gym.vector.SyncVectorEnv([self.env_fn()] * num_envs,
                                        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    def env_fn(self) -> Any:
        """A picklable constructor of one copy (checkpoints pickle the vector env)."""
        return functools.partial(gym.make, self.env_id, disable_env_checker=True, **self.make_kwargs)

    def _config(self, env: gym.Env, env_u: Any) -> dict[str, Any]:
        own = getattr(env_u, "config", None)
        if isinstance(own, dict):
            config = dict(own)
        else:  # a Gymnasium env: its registered kwargs and ours
            config = {**dict(env.spec.kwargs if env.spec else {}), **self.env_kwargs}
        config["max_episode_steps"] = env.spec.max_episode_steps if env.spec else None
        return config

    @staticmethod
    def _data_id(env_id: str, env_u: Any) -> dict[str, Any]:
        """A simulator's identity: its model file (MuJoCo envs), else its entry point."""
        path = getattr(env_u, "fullpath", None)
        if isinstance(path, str) and os.path.isfile(path):
            import hashlib

            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            return {"name": f"mujoco:{os.path.basename(path)}", "split": "simulator", "n_examples": 0,
                    "sha256": digest}
        entry = str(gym.spec(env_id).entry_point) if env_id in gym.registry else env_id
        return {"name": entry, "split": "simulator", "n_examples": 0, "sha256": sha256_of({"entry_point": entry})}


def check_episodic_agent(agent: Any, ident: str) -> None:
    """Raise :class:`AgentProtocolError` naming what ``agent`` lacks of the EpisodicAgent protocol."""
    missing = [a for a in ("act", "observe") if not callable(getattr(agent, a, None))]
    missing += [a for a in ("num_envs", "uses_task_boundaries") if not hasattr(agent, a)]
    if missing:
        raise AgentProtocolError(
            f"agent {ident!r} does not follow the EpisodicAgent protocol (agents/protocol.py): "
            f"missing {', '.join(missing)}"
        )


def _slice_info(info: Mapping[str, Any], sl: slice) -> dict[str, Any]:
    """One lane's part of a vector env's info (arrays and nested info dicts sliced)."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        if isinstance(v, np.ndarray):
            out[k] = v[sl]
        elif isinstance(v, Mapping):
            out[k] = _slice_info(v, sl)
        else:
            out[k] = v
    return out


def _mujoco_states(venv: Any) -> list[Any]:
    """Each copy's MuJoCo state and random generator: Gymnasium's MuJoCo envs pickle only their
    constructor arguments, so a checkpoint keeps these beside them."""
    out = []
    for env in venv.envs:
        u = env.unwrapped
        out.append((u.data, u.np_random) if hasattr(u, "data") and hasattr(u, "model") else None)
    return out


def _set_mujoco_states(venv: Any, states: Sequence[Any]) -> None:
    import mujoco

    for env, state in zip(venv.envs, states):
        if state is not None:
            u = env.unwrapped
            mujoco.mj_copyData(u.data, u.model, state[0])
            u.np_random = state[1]


class StepCounter:
    """The recorder of episodic lanes: counts env steps (the lanes keep the episode records and
    give each run its series through ``run_records``)."""

    def __init__(self, n_lanes: int) -> None:
        self.n_lanes = n_lanes

    def record_many(self, rewards: np.ndarray, phase: str, task_id: int, n: int) -> int:
        return n

    def finish_all(self) -> list[dict[str, Any]]:
        return [{} for _ in range(self.n_lanes)]


class LaneLog:
    """What one seed's lane records: episodes, diagnoses, and the probe's recent observations."""

    def __init__(self, obs_dim: int, probe_size: int) -> None:
        self.steps = 0
        self.ep_step: list[int] = []
        self.ep_return: list[float] = []
        self.ep_segment: list[int] = []
        self.diag_step: list[int] = []
        self.diag_segment: list[int] = []
        self.diag: dict[str, list[float | None]] = {}
        self.recent = np.zeros((probe_size, obs_dim), dtype=np.float32)  # a ring of observations
        self.n_recent = 0
        self.segment = 0

    def remember(self, obs: np.ndarray) -> None:
        size = len(self.recent)
        for row in obs:
            self.recent[self.n_recent % size] = row
            self.n_recent += 1

    def probe(self) -> np.ndarray:
        return self.recent[: min(self.n_recent, len(self.recent))]

    def add_diagnosis(self, values: Mapping[str, float | None]) -> None:
        n = len(self.diag_step)
        for k, v in values.items():
            self.diag.setdefault(k, [None] * n).append(v)
        self.diag_step.append(self.steps)
        self.diag_segment.append(self.segment)
        for series in self.diag.values():
            if len(series) < n + 1:
                series.append(None)

    def run_record(self, bin_steps: int | None) -> dict[str, Any]:
        """This seed's ``episodes``, ``series`` and ``plasticity`` blocks of the result."""
        steps, returns, segments = self.ep_step, self.ep_return, self.ep_segment
        n_segments = max([self.segment, *segments]) + 1
        series = {"online": _grouped(segments, returns, n_segments)}
        if bin_steps:
            series["binned"] = _grouped([(s - 1) // bin_steps for s in steps], returns,
                                        -(-self.steps // bin_steps))
        return {
            "episodes": {"step": list(steps), "return": [_finite(r) for r in returns], "segment": list(segments)},
            "series": series,
            "plasticity": {"task": list(self.diag_segment), "step": list(self.diag_step),
                           "metrics": {k: list(v) for k, v in self.diag.items()}},
        }


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _grouped(keys: Sequence[int], values: Sequence[float], n_keys: int) -> dict[str, list]:
    """Mean of ``values`` per key ``0..n_keys-1`` (a result series; every key is listed, so the
    seeds' series line up: a key without values gets ``None`` and ``n`` 0)."""
    groups: list[list[float]] = [[] for _ in range(n_keys)]
    for k, v in zip(keys, values):
        groups[int(k)].append(v)
    return {"index": list(range(n_keys)),
            "value": [_finite(float(np.mean(g))) if g else None for g in groups],
            "n": [len(g) for g in groups]}


class EpisodicLanes:
    """One :class:`~plasticity_gym_agents.protocol.EpisodicAgent` per seed, every seed's env copies stepped in one
    vector env: one lane per seed. Lane ``i`` owns copies ``i·k .. i·k+k-1``."""

    metric = EPISODIC_METRIC

    def __init__(self, spec: AgentSpec, run: EpisodicRun, venv: Any, obs: Any, info: Any,
                 agents: Sequence[Any], seeds: Sequence[int], logs: Sequence[LaneLog] | None = None,
                 running: np.ndarray | None = None) -> None:
        self.spec, self.run, self.venv, self.agents = spec, run, venv, list(agents)
        self.seeds = [int(s) for s in seeds]
        self.keys = [(None, s) for s in self.seeds]
        self.env = run
        self.action_space = run.action_space
        self.k = int(self.agents[0].num_envs)
        run.set_copies(self.k)
        self._slices = [slice(i * self.k, (i + 1) * self.k) for i in range(len(self.seeds))]
        obs_dim = int(np.prod(run.observation_space.shape))
        self.logs = list(logs) if logs is not None else [LaneLog(obs_dim, run.probe_size) for _ in self.seeds]
        self._running = np.zeros(len(self.seeds) * self.k) if running is None else running
        self._obs, self._info = obs, info
        self._lane_infos: list[Any] | None = None  # the lanes' parts of self._info, once sliced
        self._actions = np.zeros((len(self.seeds) * self.k, *run.action_space.shape), dtype=np.float32)
        self._one = len(self.seeds) * self.k == 1
        self._rewards = np.zeros(len(self.seeds))
        self._next_diag = (self.logs[0].steps // run.diagnose_every + 1) * run.diagnose_every
        for log, sl in zip(self.logs, self._slices):
            log.segment = self._segment(info, sl.start)

    @classmethod
    def open(cls, spec: AgentSpec, run: EpisodicRun, seeds: Sequence[int], device: str) -> "EpisodicLanes":
        agents = []
        for s in seeds:
            agent = spec.build(run.observation_space, run.action_space, int(s), device)
            check_episodic_agent(agent, spec.ident)
            agents.append(agent)
        k = int(agents[0].num_envs)
        if any(int(a.num_envs) != k for a in agents):
            raise ValueError(f"agent {spec.ident!r}: every seed's agent must drive the same number of env copies")
        venv = run.make_vector_env(len(seeds) * k)
        obs, info = venv.reset(seed=[int(s) * k + j for s in seeds for j in range(k)])
        return cls(spec, run, venv, obs, info, agents, seeds)

    @classmethod
    def restore(cls, spec: AgentSpec, snapshot: Any, device: str) -> "EpisodicLanes":
        run, venv, mujoco_states, obs, info, seeds, blobs, logs, running = snapshot
        _set_mujoco_states(venv, mujoco_states)
        agents = [restore_agent(b, lambda s=s: spec.build(run.observation_space, run.action_space, s, device))
                  for s, b in zip(seeds, blobs)]
        return cls(spec, run, venv, obs, info, agents, seeds, logs, running)

    @staticmethod
    def _segment(info: Mapping[str, Any], j: int) -> int:
        fi = info.get("friction_index")
        return int(fi[j]) if fi is not None else 0

    def info(self) -> Mapping[str, Any]:
        seg = self.logs[0].segment
        return {"phase": "train", "task_id": seg, "next_task_boundary": False, "next_task_id": seg}

    def step(self) -> tuple[np.ndarray, Mapping[str, Any], int, bool]:
        obs, info, actions = self._obs, self._info, self._actions
        # Each lane's part of the info that came with obs: sliced once (observe saw it last step).
        lane_infos = self._lane_infos or [info if self._one else _slice_info(info, sl) for sl in self._slices]
        for agent, sl, log, lane_info in zip(self.agents, self._slices, self.logs, lane_infos):
            o = obs[sl]
            actions[sl] = agent.act(o, lane_info)
            log.remember(o)
        next_obs, reward, terminated, truncated, next_info = self.venv.step(actions)
        lane_infos = [next_info if self._one else _slice_info(next_info, sl) for sl in self._slices]
        for agent, sl, lane_info in zip(self.agents, self._slices, lane_infos):
            agent.observe(next_obs[sl], reward[sl], terminated[sl], truncated[sl], lane_info)
        self._lane_infos = lane_infos
        self._running += reward
        k = self.k
        for i, log in enumerate(self.logs):
            log.steps += k
            self._rewards[i] = reward[self._slices[i]].sum()
        ended = np.flatnonzero(terminated | truncated)
        if len(ended):
            final = next_info.get("final_info", {})
            for j in ended:
                log = self.logs[j // k]
                log.ep_step.append(log.steps)
                log.ep_return.append(float(self._running[j]))
                log.ep_segment.append(self._segment(final, j))
                self._running[j] = 0.0
            for log, sl in zip(self.logs, self._slices):
                log.segment = self._segment(next_info, sl.start)
        self._obs, self._info = next_obs, next_info
        steps = self.logs[0].steps
        if steps >= self._next_diag:
            self._diagnose()
            self._next_diag = (steps // self.run.diagnose_every + 1) * self.run.diagnose_every
        return self._rewards, self.info(), k, steps >= self.run.n_examples_total

    def _diagnose(self) -> None:
        for agent, log in zip(self.agents, self.logs):
            probe = log.probe()
            if callable(getattr(agent, "diagnostics", None)):
                values = flatten_numbers(agent.diagnostics(probe))
            elif callable(getattr(agent, "probe_model", None)) and agent.probe_model() is not None:
                from plasticity_gym.metrics import measure

                values = flatten_numbers(measure(agent.probe_model(), probe))
            else:
                continue
            log.add_diagnosis({k: v for k, v in values.items() if k not in _COUNTERS})

    def probe(self, size: int, differentiate: bool = True) -> list[dict[str, float | None] | None]:
        return [None] * len(self.seeds)  # the lanes diagnose every diagnose_every steps themselves

    def recorder(self, metric: str, bin_examples: int | None) -> StepCounter:
        self.run.bin_steps = bin_examples  # the run travels in the snapshot
        return StepCounter(len(self.seeds))

    def run_records(self) -> list[dict[str, Any]]:
        return [log.run_record(self.run.bin_steps) for log in self.logs]

    def agent_records(self) -> dict[str | None, dict[str, Any]]:
        return {None: agent_record(self.agents[0], self.spec)}

    def snapshot(self) -> Any:
        return (self.run, self.venv, _mujoco_states(self.venv), self._obs, self._info, self.seeds,
                [agent_blob(a) for a in self.agents], self.logs, self._running)

    def close(self) -> None:
        self.venv.close()


def evaluate_episodic(
    env_id: str,
    agent_factory: str | AgentFactory,
    scale: str = "cpu",
    seeds: int | Sequence[int] = (0,),
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
    steps: int | None = None,
    diagnose_every: int | None = None,
    probe_size: int = 2000,
    bin_examples: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100_000,
    resume: bool = False,
    progress: bool | None = None,
    command: str | None = None,
    out: str | os.PathLike | None = None,
    threads: int | None = None,
    workers: int | None = None,
) -> Result:
    """Run an episodic agent (a PPO variant, or ``module:factory``) on ``env_id`` for each seed.

    ``steps``: env steps per seed (default: the env's ``run_steps[scale]``, else
    :data:`DEFAULT_RUN_STEPS`). ``diagnose_every``: env steps between diagnoses (default: the run
    in :data:`DEFAULT_DIAGNOSES` parts). ``probe_size``: the last observations a diagnosis is
    measured on. ``bin_examples``: the bin width (env steps) of ``series.binned`` (default
    40,000, narrowed on short runs). ``checkpoint_every``: env steps per seed between checkpoints.
    ``workers``: processes that run the seeds at once (a reference agent on the CPU), each a
    contiguous part of them with its own checkpoint (:mod:`plasticity_gym.harness.workers`); a
    seed's run does not depend on the seeds beside it, so the result is the one-process run's.
    Default 1: on a 2-core machine shared with other work, 4 seeds as two processes ran 0.6-1.05x
    the one-process rate (docs/performance.md); on idle cores give one per core. A resumed run
    must use the same ``workers``.
    The rest as :func:`plasticity_gym.harness.evaluate.evaluate`.
    """
    seeds = seed_list(seeds)
    if probe_size < 1:
        raise ValueError("probe_size must be >= 1")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral)
                                or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 (or None for the default), got {workers!r}")
    configure_cpu(threads)
    dev = resolve_device(device)
    spec = resolve_agent(agent_factory, env_id=env_id, scale=scale, overrides=overrides, kind="episodic")
    run = EpisodicRun(env_id, scale, env_kwargs, steps=steps, diagnose_every=diagnose_every,
                      probe_size=probe_size)
    if command is None:
        command = (f"plasticity_gym.harness.episodic.evaluate_episodic({env_id!r}, {spec.ident!r}, "
                   f"scale={scale!r}, seeds={seeds}, env_kwargs={dict(run.env_kwargs)!r}, "
                   f"overrides={dict(spec.overrides)!r}, steps={run.n_examples_total})")
    by_name = isinstance(spec.ident, str) and spec.source == "reference"
    if workers is None:
        workers = 1
    elif workers > 1 and (dev != "cpu" or workers > len(seeds) or not by_name):
        raise ValueError(f"workers={workers} splits the seeds of a reference agent's run on the CPU, at least "
                         f"one seed each; this run has {len(seeds)} seed(s) of {spec.ident!r} on {dev}: use workers=1")
    segments = [Segment(
        f"{env_id} {spec.ident} {len(seeds)} seed{'s' if len(seeds) > 1 else ''} (env steps)  ",
        functools.partial(EpisodicLanes.open, spec, run, seeds, dev),
        functools.partial(EpisodicLanes.restore, spec, device=dev),
    )]
    ckpt = None
    if checkpoint is not None:
        ckpt = Checkpoint(checkpoint, {
            "env_id": env_id, "scale": scale, "env_kwargs": run.env_kwargs, "agent": spec.ident,
            "overrides": dict(spec.overrides), "seeds": seeds, "steps": run.n_examples_total,
            "diagnose_every": run.diagnose_every, "probe_size": probe_size, "bin_examples": bin_examples,
            "device": dev, "execution": "vector", **({"workers": workers} if workers > 1 else {}),
        })
    t_start = time.perf_counter()
    show_progress = progress_wanted() if progress is None else progress
    if workers > 1:
        output = _run_split(spec, run, seeds, dev, workers, ckpt, bin_examples=bin_examples,
                            checkpoint_every=max(1, int(checkpoint_every)), resume=resume,
                            show_progress=show_progress, threads=threads_per_worker(workers, threads))
    else:
        output = run_segments(
            env_id, segments, probe_every=0, probe_size=probe_size, bin_examples=bin_examples,
            checkpoint=ckpt, checkpoint_every=max(1, int(checkpoint_every)), resume=resume,
            show_progress=show_progress,
        )
    rec = output.records
    result = build_result(
        env_rec=rec.env, agent_rec=rec.agents[None], metric=rec.metric, bin_examples=rec.bin_examples,
        probe_every=0, probe_size=probe_size, device=dev, seeds=seeds, runs=output.runs[None],
        command=command, fallback_wall_s=time.perf_counter() - t_start, execution="vector",
        extra_protocol={"diagnose_every_steps": run.diagnose_every, **({"processes": workers} if workers > 1 else {})},
        wall_time_s=time.perf_counter() - t_start if workers > 1 else None,
    )
    if out is not None:
        result.save(out)
    if ckpt is not None:
        ckpt.remove()
        for part in part_checkpoints(ckpt.path):
            part.unlink()
    return result


def open_part_segment(part: WorkerPart) -> Segment:
    """In a worker process: the segment of an episodic run's part (its seeds' lanes)."""
    spec = resolve_agent(part.agent, env_id=part.env_id, scale=part.scale, overrides=part.overrides,
                         kind="episodic")
    run = EpisodicRun(part.env_id, part.scale, part.env_kwargs, probe_size=part.probe_size, **part.options)
    return Segment(f"part {part.index}", functools.partial(EpisodicLanes.open, spec, run, list(part.seeds),
                                                           part.device),
                   functools.partial(EpisodicLanes.restore, spec, device=part.device))


def _run_split(spec: AgentSpec, run: EpisodicRun, seeds: list[int], device: str, workers: int,
               ckpt: Checkpoint | None, *, bin_examples: int | None, checkpoint_every: int, resume: bool,
               show_progress: bool, threads: int) -> RunOutput:
    """The run's seeds in ``workers`` parts at once, one process each, merged in seed order.
    ``ckpt`` becomes the run's manifest: its fingerprint ties the part checkpoints beside it to
    this run and this many workers."""
    chunks = split_seeds(seeds, workers)
    paths = open_part_manifest(ckpt, workers, resume)
    fingerprint = {} if ckpt is None else dict(ckpt.fingerprint)
    options = {"steps": run.n_examples_total, "diagnose_every": run.diagnose_every}
    parts = [WorkerPart(i, run.env_id, spec.ident, run.scale, dict(run.env_kwargs), dict(spec.overrides),
                        tuple(chunk), device, 0, run.probe_size, bin_examples, paths[i],
                        {**fingerprint, "part": i, "seeds": chunk}, checkpoint_every if ckpt is not None else 0,
                        resume, threads, open_part_segment, options)
             for i, chunk in enumerate(chunks)]
    outputs = run_parts(parts, total=run.n_examples_total * len(seeds), show_progress=show_progress,
                        label=f"{run.env_id} {spec.ident} {len(seeds)} seeds, {workers} processes (env steps)  ")
    merged = RunOutput(outputs[0].records)
    for i, output in enumerate(outputs):
        if output.records.env != merged.records.env or output.records.agents != merged.records.agents:
            raise RuntimeError(f"worker {i} ran another env or agent than worker 0 (env or agent records "
                               "differ); this is a bug: please report it")
        for key, runs in output.runs.items():
            merged.runs.setdefault(key, []).extend(runs)
    return merged
