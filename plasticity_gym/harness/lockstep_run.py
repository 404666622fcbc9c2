"""The many-seeds path of ``evaluate``: every seed in lockstep on a native vector env (issue 5).

When the agent can run its seeds as one batched computation (a reference MLP agent: see
``agents.lockstep.lockstep_support``) and the env has a native vector env, ``evaluate`` runs
all seeds at once: ``gym.make_vec(env_id, num_envs=N, vectorization_mode="vector_entry_point")``
reset with the seeds, one :class:`agents.lockstep.LockstepLearner`, one
:class:`~plasticity_gym.harness.recorder.VectorStreamRecorder`. Seed ``i``'s stream is the single
env's stream for that seed and its learner equals the single learner for that seed, so the
result is the one the sequential path produces (to float tolerance), only faster. The result
records ``protocol.execution = "lockstep"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from plasticity_gym.harness.evaluate import (
    CHECKPOINT_FORMAT,
    _flatten_numbers,
    _Plasticity,
    _rng_state,
    _Run,
    agent_record,
    env_record,
    metric_of,
)
from plasticity_gym.harness._io import atomic_pickle
from plasticity_gym.harness.progress import Progress
from plasticity_gym.harness.recorder import VectorStreamRecorder, default_bin_examples

__all__ = ["has_vector_env", "run_lockstep"]


def has_vector_env(env_id: str) -> bool:
    """True when ``env_id`` registers a native ``vector_entry_point``."""
    try:
        return gym.spec(env_id).vector_entry_point is not None
    except gym.error.Error:
        return False


@dataclass
class _LockstepState:
    """Everything needed to continue a lockstep run (picklable; the learner is saved apart)."""

    venv: Any
    obs: Any
    info: dict[str, Any]
    recorder: VectorStreamRecorder
    plasticity: list[_Plasticity]
    last_probed_task: int = -1
    examples: int = 0  # per seed
    wall_s: float = 0.0


def _make_vector_env(run: _Run):
    return gym.make_vec(run.env_id, num_envs=len(run.seeds), vectorization_mode="vector_entry_point",
                        scale=run.scale, **run.env_kwargs)


def _probe_all(st: _LockstepState, learner: Any, size: int) -> list[dict[str, float | None]]:
    from plasticity_gym.metrics import measure

    x, _ = st.venv.probe_batch(size)
    return [_flatten_numbers(measure(learner.probe_model(i), x[i])) for i in range(len(x))]


def _save(run: _Run, st: _LockstepState, learner: Any) -> None:
    if run.checkpoint is None:
        return
    atomic_pickle(run.checkpoint, {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": run.fingerprint(),
        "done": [],
        "env_rec": run.env_rec,
        "agent_rec": run.agent_rec,
        "metric": run.metric,
        "bin_examples": run.bin_examples,
        "current": None,
        "lockstep": (st, learner.state_dict()),
        "rng": _rng_state(),
    })


def run_lockstep(run: _Run, build: Callable[..., Any], *, resume_payload: dict | None,
                 show_progress: bool) -> list[dict[str, Any]]:
    """Run every seed of ``run`` in lockstep; returns the per-seed ``runs`` entries."""
    seeds = run.seeds
    n = len(seeds)
    if resume_payload is not None and resume_payload.get("lockstep") is not None:
        st, learner_state = resume_payload["lockstep"]
        learner = build(st.venv.single_observation_space, st.venv.single_action_space, seeds, run.device)
        learner.load_state_dict(learner_state)
    else:
        venv = _make_vector_env(run)
        obs, info = venv.reset(seed=seeds)
        learner = build(venv.single_observation_space, venv.single_action_space, seeds, run.device)
        run.env_rec = env_record(run.env_id, venv)
        run.agent_rec = agent_record(learner, run.spec)
        run.metric = metric_of(venv.single_action_space)
        run.bin_examples = (
            (run.bin_examples_arg or default_bin_examples(int(venv.n_examples_total)))
            if run.metric == "squared_error" else run.bin_examples_arg
        )
        st = _LockstepState(venv=venv, obs=obs, info=info,
                            recorder=VectorStreamRecorder(run.metric, run.bin_examples, n),
                            plasticity=[_Plasticity() for _ in seeds])

    n_per_seed = run.env_rec["budget"]["n_examples_total"]
    bar = Progress(n_per_seed * n, enabled=show_progress, done=st.examples * n,
                   label=f"{run.env_id} {run.spec.ident} {n} seeds in lockstep  ")
    _loop(run, st, learner, bar)
    bar.close(st.examples * n)
    st.venv.close()
    per_seed = st.recorder.finish_all()
    return [
        {
            "seed": seed,
            "n_examples": st.examples,
            "wall_time_s": round(st.wall_s / n, 3),
            "series": per_seed[i],
            "plasticity": st.plasticity[i].as_dict(),
        }
        for i, seed in enumerate(seeds)
    ]


class _DeviceStream:
    """The vector env's current stream block kept in the learner's accelerator memory: one
    host→device copy per block (thousands of examples) instead of one per step. The learner
    gets device views in place of the env's numpy observations and targets."""

    def __init__(self, venv: Any, device: Any) -> None:
        import torch

        self._torch = torch
        self._venv = venv
        self._device = device
        self._batch = int(venv.batch_size)
        self._host: np.ndarray | None = None
        self._x = self._y = None

    def current(self) -> tuple[Any, Any]:
        """Device views ``(observation, its targets)`` of the env's last returned batch."""
        start, pos, x, y = self._venv.stream_chunk()
        if x is not self._host:
            self._x = self._torch.from_numpy(x).to(self._device)
            self._y = self._torch.from_numpy(y).to(self._device)
            self._host = x
        i = pos - start
        return self._x[:, i:i + self._batch], self._y[:, i:i + self._batch]


def _use_device_stream(learner: Any, venv: Any) -> bool:
    """Mirror the stream on the learner's device when that is an accelerator."""
    device = getattr(learner, "device", None)
    return device is not None and getattr(device, "type", str(device)) != "cpu" and hasattr(venv, "stream_chunk")


def _loop(run: _Run, st: _LockstepState, learner: Any, bar: Progress) -> None:
    """The hot loop: one act/step/observe for all seeds; probes only at task starts."""
    venv_step = st.venv.step
    device_stream = _DeviceStream(st.venv, learner.device) if _use_device_stream(learner, st.venv) else None
    act, observe = learner.act, learner.observe
    record = st.recorder.record_many
    n = len(run.seeds)
    batch = int(run.env_rec["budget"]["batch_size"])
    can_probe = run.probe_every > 0
    every = run.checkpoint_every if run.checkpoint is not None else 0
    next_ckpt = (st.examples // every + 1) * every if every else -1
    obs, info, examples = st.obs, st.info, st.examples
    t0 = time.perf_counter()
    while True:
        if can_probe and (info["next_task_boundary"][0] or st.last_probed_task < 0):
            task = int(info["next_task_id"][0])
            if task > st.last_probed_task and task % run.probe_every == 0:
                for plasticity, values in zip(st.plasticity, _probe_all(st, learner, run.probe_size)):
                    plasticity.add(task, values)
                st.last_probed_task = task
        if device_stream is None:
            actions = act(obs, info)
            next_obs, rewards, _, truncated, next_info = venv_step(actions)
            observe(obs, actions, rewards, next_info)
        else:
            x, y = device_stream.current()
            actions = act(x, info)
            next_obs, rewards, _, truncated, next_info = venv_step(actions)
            observe(x, actions, rewards, dict(next_info, target=y))
        examples += record(np.asarray(rewards, dtype=np.float64), next_info["phase"][0],
                           int(next_info["task_id"][0]), batch)
        obs, info = next_obs, next_info
        if truncated[0]:
            break
        bar.update(examples * n)
        if examples >= next_ckpt > 0:
            st.obs, st.info, st.examples = obs, info, examples
            st.wall_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            _save(run, st, learner)
            next_ckpt = (examples // every + 1) * every
    st.obs, st.info, st.examples = obs, info, examples
    st.wall_s += time.perf_counter() - t0
