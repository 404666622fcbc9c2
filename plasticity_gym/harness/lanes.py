"""The kinds of work the run loop drives: learners on streams that advance one step together.

Each lane becomes one per-seed run of one result. The loop (``plasticity_gym.harness.loop``)
sees only the :class:`Lanes` interface, so every kind is checkpointed, recorded, binned, probed
and shown the same way:

* :class:`SingleLanes` — one agent (any, a user's included) on one seed's env: one lane;
* :class:`LockstepLanes` — one lockstep learner on the env's native vector env, one lane per seed
  (``gym.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``);
* :class:`ArenaLanes` — named learners on one seed's identical stream
  (:class:`~plasticity_gym.arena.SupervisedArena`), one lane per learner;
* :class:`~plasticity_gym.harness.episodic.EpisodicLanes` — one RL agent per seed on its copies of
  an episodic env, every copy in one vector env: one lane per seed (its "examples" are env steps).

A new kind is one more class with the same methods.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import gymnasium as gym
import numpy as np

from plasticity_gym.harness.checkpoint import agent_blob, restore_agent
from plasticity_gym.harness.probes import ReplicaProber, probe_agent
from plasticity_gym.harness.records import agent_record, metric_of
from plasticity_gym.harness.recorder import VectorStreamRecorder
from plasticity_gym.harness.resolve import AgentSpec, check_agent


class Lanes(Protocol):
    """What the run loop needs of a kind of work."""

    keys: list[tuple[str | None, int]]  # per lane: (result it belongs to, seed)
    env: Any  # an unwrapped env of the stream (config, data identity, budget)
    action_space: gym.Space  # one lane's action space
    metric: str  # what the lanes' rewards score: accuracy, squared_error or episodic_return

    def info(self) -> Mapping[str, Any]:
        """The current step's info, one lane's view (``next_task_boundary``, ``next_task_id``)."""

    def step(self) -> tuple[np.ndarray, Mapping[str, Any], int, bool]:
        """Act, step, observe: ``(reward per lane, one lane's info, examples per lane, done)``."""

    def probe(self, size: int, differentiate: bool = True) -> list[dict[str, float | None] | None]:
        """Plasticity metrics per lane on the current task's probe batch (None: no network);
        ``differentiate``: also the gradient norm and the plasticity score."""

    def recorder(self, metric: str, bin_examples: int | None) -> VectorStreamRecorder:
        """A recorder of the lanes' scored batches (``record_many``, ``finish_all``)."""

    def agent_records(self) -> dict[str | None, dict[str, Any]]:
        """The ``agent`` block of each result the lanes feed."""

    def run_records(self) -> list[dict[str, Any]]:
        """Per lane, the blocks of its per-seed run that the lanes record themselves (they replace
        the recorder's ``series`` and the probes' ``plasticity``); ``{}``: none."""

    def snapshot(self) -> Any:
        """Everything needed to continue (picklable); the kind's ``restore`` takes it back."""

    def close(self) -> None: ...


def make_env(env_id: str, scale: str, env_kwargs: Mapping[str, Any] | None):
    """``gym.make`` with the scale, without the env checker (the envs have their own tests)."""
    if env_kwargs and "scale" in env_kwargs:
        raise ValueError("give the scale through scale=, not env_kwargs['scale']")
    return gym.make(env_id, scale=scale, disable_env_checker=True, **dict(env_kwargs or {}))


def stream_recorder(metric: str, bin_examples: int | None, n_lanes: int) -> VectorStreamRecorder:
    return VectorStreamRecorder(metric, bin_examples, n_lanes)


class SingleLanes:
    """One agent on one seed's stream."""

    def __init__(self, spec: AgentSpec, env_u: Any, obs: Any, info: dict[str, Any], agent: Any,
                 seed: int) -> None:
        self.spec, self.env, self.agent, self.seed = spec, env_u, agent, seed
        self.keys = [(None, seed)]
        self.action_space = env_u.action_space
        self.metric = metric_of(self.action_space)
        self._obs, self._info = obs, info
        self._act, self._observe, self._env_step = agent.act, agent.observe, env_u.step
        self._reward = np.zeros(1)

    @classmethod
    def open(cls, spec: AgentSpec, env_id: str, scale: str, env_kwargs: Mapping[str, Any] | None,
             seed: int, device: str) -> "SingleLanes":
        env_u = make_env(env_id, scale, env_kwargs).unwrapped
        obs, info = env_u.reset(seed=seed)
        agent = spec.build(env_u.observation_space, env_u.action_space, seed, device)
        check_agent(agent, spec.ident)
        return cls(spec, env_u, obs, info, agent, seed)

    @classmethod
    def restore(cls, spec: AgentSpec, snapshot: Any, device: str) -> "SingleLanes":
        env_u, obs, info, seed, blob = snapshot
        agent = restore_agent(blob, lambda: spec.build(env_u.observation_space, env_u.action_space, seed, device))
        return cls(spec, env_u, obs, info, agent, seed)

    def info(self) -> Mapping[str, Any]:
        return self._info

    def step(self) -> tuple[np.ndarray, Mapping[str, Any], int, bool]:
        obs, info = self._obs, self._info
        action = self._act(obs, info)
        next_obs, reward, terminated, truncated, next_info = self._env_step(action)
        self._observe(obs, action, reward, next_info)
        self._obs, self._info = next_obs, next_info
        self._reward[0] = reward
        return self._reward, next_info, len(next_info["target"]), terminated or truncated

    def probe(self, size: int, differentiate: bool = True) -> list[dict[str, float | None] | None]:
        return [probe_agent(self.env, self.agent, size, differentiate)]

    def recorder(self, metric: str, bin_examples: int | None) -> VectorStreamRecorder:
        return stream_recorder(metric, bin_examples, 1)

    def agent_records(self) -> dict[str | None, dict[str, Any]]:
        return {None: agent_record(self.agent, self.spec)}

    def run_records(self) -> list[dict[str, Any]]:
        # An agent that selects its tested network on validation data says which epoch it kept.
        selection = getattr(self.agent, "model_selection", None)
        chosen = selection() if callable(selection) else None
        return [{"model_selection": chosen} if chosen is not None else {}]

    def snapshot(self) -> Any:
        return (self.env, self._obs, self._info, self.seed, agent_blob(self.agent))

    def close(self) -> None:
        self.env.close()


class DeviceStream:
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


def mirror_on_device(learner: Any, venv: Any) -> bool:
    """Mirror the stream on the learner's device when that is an accelerator."""
    device = getattr(learner, "device", None)
    return device is not None and getattr(device, "type", str(device)) != "cpu" and hasattr(venv, "stream_chunk")


class LockstepLanes:
    """One lockstep learner: every seed of a run as one batched computation on the env's
    native vector env. Seed ``i``'s stream is the single env's stream for that seed."""

    def __init__(self, spec: AgentSpec, venv: Any, obs: Any, info: dict[str, Any], learner: Any,
                 seeds: Sequence[int]) -> None:
        self.spec, self.venv, self.env, self.learner = spec, venv, venv, learner
        self.seeds = [int(s) for s in seeds]
        self.keys = [(None, s) for s in self.seeds]
        self.action_space = venv.single_action_space
        self.metric = metric_of(self.action_space)
        self._obs, self._info = obs, info
        self._batch = int(venv.batch_size)
        self._prober = ReplicaProber(learner)
        self._probe_inputs: np.ndarray | None = None  # reused by every probe (not checkpointed)
        self._device_stream = DeviceStream(venv, learner.device) if mirror_on_device(learner, venv) else None

    @staticmethod
    def make_vector_env(env_id: str, scale: str, env_kwargs: Mapping[str, Any] | None, n: int):
        if env_kwargs and "scale" in env_kwargs:
            raise ValueError("give the scale through scale=, not env_kwargs['scale']")
        return gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", scale=scale,
                            **dict(env_kwargs or {}))

    @classmethod
    def open(cls, spec: AgentSpec, env_id: str, scale: str, env_kwargs: Mapping[str, Any] | None,
             seeds: Sequence[int], device: str) -> "LockstepLanes":
        assert spec.build_lockstep is not None
        venv = cls.make_vector_env(env_id, scale, env_kwargs, len(seeds))
        obs, info = venv.reset(seed=list(seeds))
        learner = spec.build_lockstep(venv.single_observation_space, venv.single_action_space, list(seeds), device)
        return cls(spec, venv, obs, info, learner, seeds)

    @classmethod
    def restore(cls, spec: AgentSpec, snapshot: Any, device: str) -> "LockstepLanes":
        assert spec.build_lockstep is not None
        venv, obs, info, seeds, state = snapshot
        learner = spec.build_lockstep(venv.single_observation_space, venv.single_action_space, seeds, device)
        learner.load_state_dict(state)
        return cls(spec, venv, obs, info, learner, seeds)

    @staticmethod
    def _view(info: Mapping[str, Any]) -> dict[str, Any]:
        # The seeds share one schedule (same phases, tasks and batch sizes): seed 0 speaks for all.
        return {"phase": info["phase"][0], "task_id": int(info["task_id"][0]),
                "next_task_boundary": bool(info["next_task_boundary"][0]),
                "next_task_id": int(info["next_task_id"][0])}

    def info(self) -> Mapping[str, Any]:
        return self._view(self._info)

    def step(self) -> tuple[np.ndarray, Mapping[str, Any], int, bool]:
        obs, info, learner = self._obs, self._info, self.learner
        if self._device_stream is None:
            actions = learner.act(obs, info)
            next_obs, rewards, _, truncated, next_info = self.venv.step(actions)
            learner.observe(obs, actions, rewards, next_info)
        else:
            x, y = self._device_stream.current()
            actions = learner.act(x, info)
            next_obs, rewards, _, truncated, next_info = self.venv.step(actions)
            learner.observe(x, actions, rewards, dict(next_info, target=y))
        self._obs, self._info = next_obs, next_info
        return (np.asarray(rewards, dtype=np.float64), self._view(next_info), self._batch,
                bool(truncated[0]))

    def probe(self, size: int, differentiate: bool = True) -> list[dict[str, float | None] | None]:
        if self._probe_inputs is None or self._probe_inputs.shape[1] != size:
            x, y = self.venv.probe_batch(size)
            self._probe_inputs = x
        else:
            x, y = self.venv.probe_batch(size, out=self._probe_inputs)
        return list(self._prober(x, y, differentiate))

    def recorder(self, metric: str, bin_examples: int | None) -> VectorStreamRecorder:
        return stream_recorder(metric, bin_examples, len(self.seeds))

    def agent_records(self) -> dict[str | None, dict[str, Any]]:
        return {None: agent_record(self.learner, self.spec)}

    def run_records(self) -> list[dict[str, Any]]:
        return [{} for _ in self.seeds]

    def snapshot(self) -> Any:
        return (self.venv, self._obs, self._info, self.seeds, self.learner.state_dict())

    def close(self) -> None:
        self.venv.close()


class ArenaLanes:
    """Named learners on one seed's identical stream, through the PettingZoo arena."""

    def __init__(self, specs: Mapping[str, AgentSpec], arena: Any, obs: Any, infos: Any,
                 learners: Mapping[str, Any], seed: int) -> None:
        self.specs, self.arena, self.learners, self.seed = dict(specs), arena, dict(learners), seed
        self.names = list(specs)
        self.keys = [(n, seed) for n in self.names]
        self.env = arena.env_of(self.names[0])
        self.action_space = arena.action_space(self.names[0])
        self.metric = metric_of(self.action_space)
        self._obs, self._infos = obs, infos
        self._rewards = np.zeros(len(self.names))

    @classmethod
    def open(cls, specs: Mapping[str, AgentSpec], env_id: str, scale: str,
             env_kwargs: Mapping[str, Any] | None, seed: int, device: str) -> "ArenaLanes":
        from plasticity_gym.arena import SupervisedArena

        names = list(specs)
        arena = SupervisedArena(env_id, names, scale=scale, env_kwargs=env_kwargs)
        obs, infos = arena.reset(seed=seed)
        learners = {}
        for n in names:
            learners[n] = specs[n].build(arena.observation_space(n), arena.action_space(n), seed, device)
            check_agent(learners[n], specs[n].ident)
        return cls(specs, arena, obs, infos, learners, seed)

    @classmethod
    def restore(cls, specs: Mapping[str, AgentSpec], snapshot: Any, device: str) -> "ArenaLanes":
        arena, obs, infos, seed, blobs = snapshot
        learners = {
            n: restore_agent(blobs[n], lambda n=n: specs[n].build(arena.observation_space(n),
                                                                  arena.action_space(n), seed, device))
            for n in specs
        }
        return cls(specs, arena, obs, infos, learners, seed)

    def info(self) -> Mapping[str, Any]:
        return self._infos[self.names[0]]

    def step(self) -> tuple[np.ndarray, Mapping[str, Any], int, bool]:
        names, learners, obs, infos = self.names, self.learners, self._obs, self._infos
        actions = {n: learners[n].act(obs[n], infos[n]) for n in names}
        next_obs, rewards, _, _, next_infos = self.arena.step(actions)
        for i, n in enumerate(names):
            learners[n].observe(obs[n], actions[n], rewards[n], next_infos[n])
            self._rewards[i] = rewards[n]
        self._obs, self._infos = next_obs, next_infos
        info0 = next_infos[names[0]]
        return self._rewards, info0, len(info0["target"]), not self.arena.agents

    def probe(self, size: int, differentiate: bool = True) -> list[dict[str, float | None] | None]:
        return [probe_agent(self.arena.env_of(n), self.learners[n], size, differentiate) for n in self.names]

    def recorder(self, metric: str, bin_examples: int | None) -> VectorStreamRecorder:
        return stream_recorder(metric, bin_examples, len(self.names))

    def agent_records(self) -> dict[str | None, dict[str, Any]]:
        return {n: agent_record(self.learners[n], self.specs[n]) for n in self.names}

    def run_records(self) -> list[dict[str, Any]]:
        return [{} for _ in self.names]

    def snapshot(self) -> Any:
        return (self.arena, self._obs, self._infos, self.seed,
                {n: agent_blob(self.learners[n]) for n in self.names})

    def close(self) -> None:
        self.arena.close()
