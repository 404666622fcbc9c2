"""One task of a sweep: some runs (setting × seed) computed together, through the one run loop.

A task is either one setting on one seed (any agent: :class:`~plasticity_gym.harness.lanes.SingleLanes`),
or several settings of one architecture × several seeds as one lockstep computation
(:class:`GridLanes`: replica ``i`` is setting ``keys[i][0]`` on seed ``keys[i][1]``, with that
setting's scalar hyperparameters). Either way :func:`plasticity_gym.harness.loop.run_segments`
drives it, checkpointing it (resumed after an interruption), and each (setting, seed) becomes its
own result file, written as soon as the task ends, with a ``plasticity-gym run`` command that
reproduces it (so ``validate`` and ``verify`` work on it). :func:`execute_task` is what a local
worker process or a Ray task runs; it never raises for a failing run: the error comes back in
the :class:`TaskOutcome`.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shlex
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from plasticity_gym.harness._io import atomic_write_json, sha256_of, to_jsonable
from plasticity_gym.harness.checkpoint import Checkpoint
from plasticity_gym.harness.cliargs import parse_value
from plasticity_gym.harness.lanes import LockstepLanes, SingleLanes
from plasticity_gym.harness.loop import Segment, run_segments
from plasticity_gym.harness.records import agent_record, build_result
from plasticity_gym.harness.resolve import AgentSpec, resolve_agent
from plasticity_gym.harness.result import Result
from plasticity_gym.harness.threads import configure_cpu

__all__ = ["GridLanes", "Task", "TaskOutcome", "TaskSetting", "error_file", "execute_task", "progress_file",
           "run_command", "run_file"]


# --------------------------------------------------------------------------- layout of a sweep folder
def run_file(out: Path, setting_dir: str, seed: int) -> Path:
    """Where the result of one (setting, seed) run lives."""
    return Path(out) / "runs" / setting_dir / f"seed-{seed}.json"


def error_file(out: Path, setting_dir: str, seed: int) -> Path:
    """Where the error of a failed (setting, seed) run is kept until it succeeds."""
    return Path(out) / "runs" / setting_dir / f"seed-{seed}.error.txt"


def checkpoint_file(out: Path, task_id: str) -> Path:
    return Path(out) / "tasks" / f"{task_id}.ckpt"


def progress_file(out: Path, task_id: str) -> Path:
    """A running task's progress (examples per run so far), read by the sweep's progress line."""
    return Path(out) / "tasks" / f"{task_id}.progress.json"


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskSetting:
    """A setting as a task needs it: its folder name (its identity), label and agent overrides."""

    dir: str
    label: str
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class Task:
    """Runs computed together: every setting × every seed (one lockstep computation), or one
    setting on one seed. Plain data, so it travels to a worker process or a Ray node."""

    id: str
    stage: str  # "search" or "final"
    env_id: str
    scale: str
    agent: str
    env_kwargs: Mapping[str, Any]
    settings: tuple[TaskSetting, ...]
    seeds: tuple[int, ...]
    lockstep: bool
    device: str  # resolved
    probe_every: int | None
    probe_size: int
    bin_examples: int | None
    checkpoint_every: int
    examples_per_run: int  # for the progress line's ETA
    threads: int = 1

    @property
    def runs(self) -> list[tuple[str, int]]:
        """``(setting dir, seed)`` of every run of the task."""
        return [(s.dir, seed) for s in self.settings for seed in self.seeds]

    def fingerprint(self) -> dict[str, Any]:
        """What the task computes (its checkpoint is resumed only by the same task)."""
        return to_jsonable({
            "env_id": self.env_id, "scale": self.scale, "agent": self.agent, "env_kwargs": dict(self.env_kwargs),
            "settings": [[s.dir, dict(s.overrides)] for s in self.settings], "seeds": list(self.seeds),
            "lockstep": self.lockstep, "device": self.device, "probe_every": self.probe_every,
            "probe_size": self.probe_size, "bin_examples": self.bin_examples,
        })


def task_id(fingerprint: Mapping[str, Any]) -> str:
    return sha256_of(dict(fingerprint))[:16]


@dataclass
class TaskOutcome:
    """What came of a task: its results (relative path → result entry) or its error."""

    task_id: str
    ok: bool
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    wall_s: float = 0.0


# --------------------------------------------------------------------------- commands
def _cli_value(v: Any) -> str:
    """A ``--set`` value that ``parse_value`` reads back as ``v``."""
    if isinstance(v, str) and parse_value(v) == v:
        return v
    return json.dumps(v)


def _dotted(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out += _dotted(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def run_command(task: Task, setting: TaskSetting, seeds: Sequence[int]) -> str:
    """The ``plasticity-gym run`` command that computes ``setting`` on ``seeds`` as the sweep did."""
    argv = ["plasticity-gym", "run", task.env_id, "--agent", task.agent, "--scale", task.scale,
            "--seed-list", *map(str, seeds)]
    for k, v in _dotted(setting.overrides):
        argv += ["--set", f"{k}={_cli_value(v)}"]
    for k, v in task.env_kwargs.items():
        argv += ["--env-set", f"{k}={_cli_value(v)}"]
    argv += ["--lockstep", "on" if task.lockstep else "off",
             "--device", "cuda" if task.device.startswith("cuda") else task.device]
    if task.probe_every is not None:
        argv += ["--probe-every", str(task.probe_every)]
    if task.probe_size != 2000:
        argv += ["--probe-size", str(task.probe_size)]
    if task.bin_examples is not None:
        argv += ["--bin-examples", str(task.bin_examples)]
    return shlex.join(argv)


# --------------------------------------------------------------------------- lanes of a grid
@dataclass(frozen=True)
class ReplicaAgent:
    """How one setting's replicas look to the result's ``agent`` block (name, config, declarations)."""

    name: str
    config: Any
    uses_task_boundaries: bool
    learns_only_in_train: bool


class GridLanes(LockstepLanes):
    """Settings of one architecture × seeds as one lockstep learner on the env's native vector
    env. Replica ``i`` is setting ``keys[i][0]`` with its own scalar hyperparameters on seed
    ``keys[i][1]``; each replica's run is filed under its setting's result."""

    def __init__(self, specs: Mapping[str, AgentSpec], keys: Sequence[tuple[str, int]], venv: Any, obs: Any,
                 info: dict[str, Any], learner: Any) -> None:
        super().__init__(specs[keys[0][0]], venv, obs, info, learner, [s for _, s in keys])
        self.specs = dict(specs)
        self.keys = [(k, int(s)) for k, s in keys]

    @staticmethod
    def learner(specs: Mapping[str, AgentSpec], keys: Sequence[tuple[str, int]], observation_space: Any,
                action_space: Any, device: str) -> Any:
        """One lockstep learner holding every replica, each with its setting's config."""
        from plasticity_gym_agents import LockstepLearner

        first = specs[keys[0][0]]
        if first.config is None:
            raise ValueError(f"agent {first.ident!r} has no lockstep implementation")
        configs = [specs[k].config(observation_space, action_space) for k, _ in keys]  # type: ignore[misc]
        return LockstepLearner(first.ident, configs, observation_space, action_space,
                               seeds=[s for _, s in keys], device=device)

    @classmethod
    def open(cls, specs: Mapping[str, AgentSpec], keys: Sequence[tuple[str, int]], env_id: str,  # type: ignore[override]
             scale: str, env_kwargs: Mapping[str, Any] | None, device: str) -> "GridLanes":
        venv = cls.make_vector_env(env_id, scale, env_kwargs, len(keys))
        obs, info = venv.reset(seed=[s for _, s in keys])
        learner = cls.learner(specs, keys, venv.single_observation_space, venv.single_action_space, device)
        return cls(specs, keys, venv, obs, info, learner)

    @classmethod
    def restore(cls, specs: Mapping[str, AgentSpec], keys: Sequence[tuple[str, int]], snapshot: Any,  # type: ignore[override]
                device: str) -> "GridLanes":
        venv, obs, info, _seeds, state = snapshot
        learner = cls.learner(specs, keys, venv.single_observation_space, venv.single_action_space, device)
        learner.load_state_dict(state)
        return cls(specs, keys, venv, obs, info, learner)

    def agent_records(self) -> dict[str | None, dict[str, Any]]:
        out: dict[str | None, dict[str, Any]] = {}
        for i, (key, _) in enumerate(self.keys):
            if key not in out:
                view = ReplicaAgent(self.learner.name, self.learner.configs[i], self.learner.uses_task_boundaries,
                                    self.learner.learns_only_in_train)
                out[key] = agent_record(view, self.specs[key])
        return out


# --------------------------------------------------------------------------- running a task
class TaskCheckpoint(Checkpoint):
    """The task's checkpoint; each save also writes the task's progress for the sweep's display."""

    def __init__(self, path: Path, fingerprint: Mapping[str, Any], progress: Path, n_runs: int) -> None:
        super().__init__(path, fingerprint)
        self.progress, self.n_runs = progress, n_runs

    def save(self, state: Mapping[str, Any]) -> None:
        super().save(state)
        current = state.get("current")
        if current is not None:
            atomic_write_json(self.progress, {"examples": int(current[0].examples), "runs": self.n_runs})


def _reset_global_rngs() -> None:
    """Every task starts from the same global RNG state, so that a run does not depend on which
    worker ran it or on what that worker ran before (reference agents use their own generators;
    a user's agent may draw from the global ones)."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _compute(task: Task, out: Path) -> dict[tuple[str, int], Result]:
    specs = {s.dir: resolve_agent(task.agent, env_id=task.env_id, scale=task.scale, overrides=dict(s.overrides))
             for s in task.settings}
    env_kwargs = dict(task.env_kwargs)
    label = f"{task.env_id} {task.agent} task {task.id}  "
    if task.lockstep:
        keys = task.runs
        segment = Segment(label, functools.partial(GridLanes.open, specs, keys, task.env_id, task.scale, env_kwargs,
                                                   task.device),
                          functools.partial(GridLanes.restore, specs, keys, device=task.device))
    else:
        if len(task.settings) != 1 or len(task.seeds) != 1:
            raise ValueError("a task that is not lockstep runs one setting on one seed")
        spec = specs[task.settings[0].dir]
        segment = Segment(label, functools.partial(SingleLanes.open, spec, task.env_id, task.scale, env_kwargs,
                                                   task.seeds[0], task.device),
                          functools.partial(SingleLanes.restore, spec, device=task.device))
    ckpt = TaskCheckpoint(checkpoint_file(out, task.id), task.fingerprint(), progress_file(out, task.id),
                          len(task.runs))
    if ckpt.exists():
        try:
            ckpt.load()
        except (ValueError, EOFError, OSError):  # another version's or a damaged checkpoint: start afresh
            ckpt.remove()
    output = run_segments(task.env_id, [segment], probe_every=task.probe_every, probe_size=task.probe_size,
                          bin_examples=task.bin_examples, checkpoint=ckpt,
                          checkpoint_every=max(1, task.checkpoint_every), resume=True, show_progress=False)
    rec = output.records
    results = {}
    for s in task.settings:
        key = s.dir if task.lockstep else None
        runs = output.runs[key]
        for seed, run in zip(task.seeds, runs):
            results[(s.dir, seed)] = build_result(
                env_rec=rec.env, agent_rec=rec.agents[key], metric=rec.metric, bin_examples=rec.bin_examples,
                probe_every=rec.schedule.every, probe_size=task.probe_size, device=task.device, seeds=[seed],
                runs=[run], command=run_command(task, s, [seed]),
                execution="lockstep" if task.lockstep else "sequential",
                probe_tasks=rec.schedule.tasks(rec.env["budget"]["n_tasks"]),
            )
    return results


def execute_task(task: Task, out_dir: str) -> TaskOutcome:
    """Run ``task`` (resuming its checkpoint), write each run's result file at once (keeping any
    written before an interruption), and report the ones written.

    A failure is returned (with its traceback), not raised, so that the other tasks go on.
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    try:
        configure_cpu(task.threads)
        _reset_global_rngs()
        progress = progress_file(out, task.id)
        if progress.exists():  # resumed: keep its count, mark it as running now
            os.utime(progress)
        else:
            atomic_write_json(progress, {"examples": 0, "runs": len(task.runs)})
        results = _compute(task, out)
        written = {}
        for (sdir, seed), result in results.items():
            path = run_file(out, sdir, seed)
            if not path.exists():  # one written before an interruption stays as it is
                result.save(path)
                written[str(path.relative_to(out))] = result.data
            error_file(out, sdir, seed).unlink(missing_ok=True)
        checkpoint_file(out, task.id).unlink(missing_ok=True)  # the results hold everything it did
        progress.unlink(missing_ok=True)
        return TaskOutcome(task.id, True, written, wall_s=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - any failure of a run is reported, not fatal to the sweep
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        return TaskOutcome(task.id, False, error=message, traceback=traceback.format_exc(),
                           wall_s=time.perf_counter() - t0)
