"""``evaluate``: run one agent on one env over seeds and produce a schema-valid :class:`Result`.

The loop is the supervised-stream protocol of ``docs/design.md``: ``reset(seed)``, then
``act`` / ``step`` / ``observe`` until the stream is truncated. The harness talks to the agent
only through that protocol (``act``, ``observe``, ``uses_task_boundaries``; optionally
``probe_model``, ``state_dict``/``load_state_dict``, ``name``, ``config``), so a user's agent
is run exactly like a reference one. This module chooses how the seeds run (one after another,
or in lockstep) and hands them to the one run loop (:mod:`plasticity_gym.harness.loop`).
"""

from __future__ import annotations

import functools
import numbers
import os
import time
from typing import Any, Mapping, Sequence

from plasticity_gym.harness.checkpoint import Checkpoint, check_writable, open_part_manifest, part_checkpoints
from plasticity_gym.harness.lanes import LockstepLanes, SingleLanes, make_env
from plasticity_gym.harness.loop import RunOutput, Segment, run_segments
from plasticity_gym.harness.progress import progress_wanted
from plasticity_gym.harness.records import agent_record, build_result, env_record, metric_of
from plasticity_gym.harness.resolve import (
    AgentFactory,
    AgentProtocolError,
    AgentSpec,
    has_vector_env,
    load_factory,
    resolve_agent,
    resolve_device,
    seed_list,
)
from plasticity_gym.harness.result import Result
from plasticity_gym.harness.threads import configure_cpu
from plasticity_gym.harness.workers import WorkerPart, default_workers, run_parts, split_seeds, threads_per_worker

# Re-exported: these lived here before the harness was split by responsibility.
__all__ = [
    "AgentFactory", "AgentProtocolError", "AgentSpec", "agent_record", "build_result",
    "choose_execution", "env_record", "evaluate", "load_factory", "make_env", "metric_of",
    "resolve_agent", "resolve_device",
]


def evaluate(
    env_id: str,
    agent_factory: str | AgentFactory,
    scale: str = "cpu",
    seeds: int | Sequence[int] = (0,),
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
    probe_every: int | None = None,
    probe_size: int = 2000,
    bin_examples: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100_000,
    resume: bool = False,
    progress: bool | None = None,
    command: str | None = None,
    out: str | os.PathLike | None = None,
    lockstep: str = "auto",
    threads: int | None = None,
    workers: int | None = None,
) -> Result:
    """Run ``agent_factory`` on ``env_id`` at ``scale`` for each seed; return the result entry.

    Args:
        env_id: a registered id, e.g. ``"SlowRegression-v0"``.
        agent_factory: a reference agent name (``"cbp"``), ``"module:factory"``, or a callable
            ``factory(observation_space, action_space, *, seed, device) -> Agent``.
        scale: the env's named scale (``"smoke"``, ``"cpu"``, ``"paper"``).
        seeds: stream seeds, or their count ``n`` for seeds ``0..n-1``; each seed gets a fresh env (``reset(seed=s)``) and a fresh agent
            built with ``seed=s``, so two agents given the same seed see the identical stream.
        env_kwargs: env kwargs on top of the scale (recorded resolved, with their hash).
        overrides: agent config overrides (validated by reference agents; keyword arguments
            of a user's factory).
        device: ``auto``, ``cpu`` or ``cuda``; passed to the factory resolved.
        probe_every: measure plasticity metrics at the start of every ``probe_every``-th task
            (0: never). Default: every task, thinned evenly to at most 100 probes per run
            (every ``ceil(n_tasks / 100)``-th task). Agents without ``probe_model()`` are not
            probed. The result records the probed tasks (``protocol.probe_tasks``).
        probe_size: examples in the probe batch (2,000, as in the paper).
        bin_examples: bin width of the binned error (regression); default 40,000, narrowed
            on streams too short for 10 bins.
        checkpoint: path of the checkpoint file; ``None`` disables checkpointing. An existing
            checkpoint is never overwritten: without ``resume`` the run refuses to start (delete
            the file to start over).
        checkpoint_every: examples between checkpoints (also written at each seed's end), >= 1.
        resume: continue from ``checkpoint`` if it exists (the result equals that of an
            uninterrupted run).
        progress: show a progress line; default: only on a terminal and not under CI.
        command: the command recorded in the result (default: a description of this call).
        out: if given, the result is validated and written there atomically. ``out`` and
            ``checkpoint`` are checked before any work (not a directory, a writable place).
        lockstep: ``"auto"`` runs several seeds of a reference MLP agent as one batched
            computation on the env's native vector env when both support it (same result as
            the sequential path to float tolerance, many times faster); ``"on"`` requires it
            (error saying why not otherwise); ``"off"`` runs seeds one after another.
        threads: torch threads of this process (``torch.set_num_threads``). Default: torch's
            own (every core), right for a run alone; give 1 to each of several runs at once
            (see :func:`plasticity_gym.harness.threads.set_threads`). Every run also flushes
            denormal floats to zero (:func:`plasticity_gym.harness.threads.configure_cpu`).
        workers: processes that run a lockstep run's seeds on the CPU at once, each a contiguous
            part of them (the result equals one process's to float rounding; see
            :mod:`plasticity_gym.harness.workers`), each with ``threads`` threads, or the cores
            shared out. Default: one per core, at most one per 8 seeds, when ``threads`` is not
            given; else 1. Checkpoints of a split run are one file
            per part beside ``checkpoint`` (``<checkpoint>.part-i-of-n``), and a run resumes
            only with the same ``workers``.
    """
    seeds = seed_list(seeds)
    if (probe_every is not None and probe_every < 0) or probe_size < 1:
        raise ValueError("probe_every must be >= 0 (or None for the default) and probe_size >= 1")
    if lockstep not in ("auto", "on", "off"):
        raise ValueError(f"lockstep must be 'auto', 'on' or 'off', got {lockstep!r}")
    if bin_examples is not None and (isinstance(bin_examples, bool) or int(bin_examples) < 1):
        raise ValueError(f"bin_examples must be >= 1 (or None for the default), got {bin_examples!r}")
    if isinstance(checkpoint_every, bool) or int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be >= 1 examples, got {checkpoint_every!r} (to disable "
                         "checkpoints, pass checkpoint=None)")
    # Before any work: a bad path must not cost a whole run.
    if out is not None:
        check_writable(out, "out")
    if checkpoint is not None:
        check_writable(checkpoint, "checkpoint")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral)
                                or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 (or None for the default), got {workers!r}")
    configure_cpu(threads)
    dev = resolve_device(device)
    spec = resolve_agent(agent_factory, env_id=env_id, scale=scale, overrides=overrides)
    execution = choose_execution(lockstep, spec, env_id, scale, env_kwargs, seeds)
    if workers is None:
        workers = default_workers(execution=execution, device=dev, n_seeds=len(seeds), threads=threads)
    elif workers > 1 and (execution != "lockstep" or dev != "cpu" or workers > len(seeds)):
        raise ValueError(f"workers={workers} splits the seeds of a lockstep run on the CPU, at least one seed "
                         f"each; this run is {execution} on {dev} with {len(seeds)} seed(s): use workers=1")
    if command is None:
        command = (
            f"plasticity_gym.harness.evaluate({env_id!r}, {spec.ident!r}, scale={scale!r}, "
            f"seeds={seeds}, env_kwargs={dict(env_kwargs or {})!r}, overrides={dict(spec.overrides)!r})"
        )
    env_kwargs = dict(env_kwargs or {})
    if execution == "lockstep":
        segments = [Segment(
            f"{env_id} {spec.ident} {len(seeds)} seeds in lockstep  ",
            functools.partial(LockstepLanes.open, spec, env_id, scale, env_kwargs, seeds, dev),
            functools.partial(LockstepLanes.restore, spec, device=dev),
        )]
    else:
        segments = [Segment(
            f"{env_id} {spec.ident} seed {seed} ({i + 1}/{len(seeds)})  ",
            functools.partial(SingleLanes.open, spec, env_id, scale, env_kwargs, seed, dev),
            functools.partial(SingleLanes.restore, spec, device=dev),
        ) for i, seed in enumerate(seeds)]
    fingerprint = {
        "env_id": env_id, "scale": scale, "env_kwargs": env_kwargs, "agent": spec.ident,
        "overrides": dict(spec.overrides), "seeds": seeds, "probe_every": probe_every,
        "probe_size": probe_size, "bin_examples": bin_examples, "device": dev,
        "execution": execution, **({"workers": workers} if workers > 1 else {}),
    }
    ckpt = None if checkpoint is None else Checkpoint(checkpoint, fingerprint)
    show_progress = progress_wanted() if progress is None else progress
    t_start = time.perf_counter()
    if workers > 1:
        output = _run_split(env_id, spec, scale, env_kwargs, seeds, dev, workers, ckpt, fingerprint,
                            probe_every=probe_every, probe_size=probe_size, bin_examples=bin_examples,
                            checkpoint_every=int(checkpoint_every), resume=resume, show_progress=show_progress,
                            threads=threads_per_worker(workers, threads))
    else:
        output = run_segments(
            env_id, segments, probe_every=probe_every, probe_size=probe_size, bin_examples=bin_examples,
            checkpoint=ckpt, checkpoint_every=int(checkpoint_every), resume=resume, show_progress=show_progress,
        )
    rec = output.records
    result = build_result(
        env_rec=rec.env, agent_rec=rec.agents[None], metric=rec.metric, bin_examples=rec.bin_examples,
        probe_every=rec.schedule.every, probe_size=probe_size, device=dev, seeds=seeds,
        runs=output.runs[None], command=command, fallback_wall_s=time.perf_counter() - t_start,
        execution=execution, probe_tasks=rec.schedule.tasks(rec.env["budget"]["n_tasks"]),
        extra_protocol={"processes": workers} if workers > 1 else None,
        wall_time_s=time.perf_counter() - t_start if workers > 1 else None,
    )
    if out is not None:
        result.save(out)
    if ckpt is not None:
        ckpt.remove()  # the result now holds everything the checkpoint did
        for part in part_checkpoints(ckpt.path):
            part.unlink()
    return result


def _run_split(env_id: str, spec: AgentSpec, scale: str, env_kwargs: dict[str, Any], seeds: list[int], device: str,
               workers: int, ckpt: Checkpoint | None, fingerprint: dict[str, Any], *, probe_every: int | None,
               probe_size: int, bin_examples: int | None, checkpoint_every: int, resume: bool,
               show_progress: bool, threads: int) -> RunOutput:
    """The run's seeds in ``workers`` parts at once (:mod:`plasticity_gym.harness.workers`),
    merged into one output. ``ckpt`` becomes the run's manifest: it holds no state, but its
    fingerprint ties the part checkpoints beside it to this run (and to this many workers)."""
    if not isinstance(spec.ident, str) or spec.source != "reference":
        raise ValueError("workers > 1 runs reference agents only (a worker process rebuilds the agent by name)")
    chunks = split_seeds(seeds, workers)
    paths = open_part_manifest(ckpt, workers, resume)
    parts = [WorkerPart(i, env_id, spec.ident, scale, env_kwargs, dict(spec.overrides), tuple(chunk), device,
                        probe_every, probe_size, bin_examples, paths[i], {**fingerprint, "part": i, "seeds": chunk},
                        checkpoint_every if ckpt is not None else 0, resume, threads)
             for i, chunk in enumerate(chunks)]
    total = 0
    if show_progress:  # the stream's length, for the progress line only
        probe = make_env(env_id, scale, env_kwargs).unwrapped
        total = int(probe.n_examples_total) * len(seeds)
        probe.close()
    outputs = run_parts(parts, total=total, show_progress=show_progress,
                        label=f"{env_id} {spec.ident} {len(seeds)} seeds in lockstep, {workers} processes  ")
    merged = RunOutput(outputs[0].records)
    for i, output in enumerate(outputs):
        if output.records.env != merged.records.env or output.records.agents != merged.records.agents:
            raise RuntimeError(f"worker {i} ran another stream or agent than worker 0 (env or agent records "
                               "differ); this is a bug: please report it")
        for key, runs in output.runs.items():
            merged.runs.setdefault(key, []).extend(runs)
    return merged


def choose_execution(lockstep: str, spec: AgentSpec, env_id: str, scale: str,
                     env_kwargs: Mapping[str, Any] | None, seeds: Sequence[int]) -> str:
    """``"lockstep"`` or ``"sequential"``, per the ``lockstep`` argument and what is supported."""
    if lockstep == "off" or (lockstep == "auto" and len(seeds) < 2):
        return "sequential"
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
