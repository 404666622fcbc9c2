"""Tiny stand-ins that follow docs/design.md, so the harness is tested apart from the real
envs and agents (and stays testable when they change). Registered on import under
``tests.harness.fakes:FakeClassify-v0`` / ``FakeRegress-v0``; the CLI reaches them with
Gymnasium's ``module:EnvId`` syntax."""

from __future__ import annotations

import hashlib

import gymnasium as gym
import numpy as np
import torch

_SCALES = {"smoke": {"n_tasks": 4, "examples_per_task": 200}, "cpu": {"n_tasks": 20, "examples_per_task": 2000}}


class FakeStream(gym.Env):
    """Task k: a random linear teacher over 8 inputs; classification (3 classes) or regression."""

    def __init__(self, scale: str = "smoke", regression: bool = False, batch_size: int = 1, **kwargs):
        if scale not in _SCALES:
            raise ValueError(f"unknown scale {scale!r}; accepted: {', '.join(_SCALES)}")
        cfg = {**_SCALES[scale], "batch_size": batch_size, "regression": regression}
        unknown = set(kwargs) - set(cfg)
        if unknown:
            raise ValueError(f"unknown kwargs {sorted(unknown)}; accepted: {sorted(cfg)}")
        cfg.update(kwargs)
        self.config, self.scale = cfg, scale
        self.n_tasks, self.examples_per_task = cfg["n_tasks"], cfg["examples_per_task"]
        self.batch_size, self.regression = cfg["batch_size"], cfg["regression"]
        self.n_examples_total = self.n_tasks * self.examples_per_task
        self.data_id = {"name": "fake-linear-teacher", "split": "synthetic", "n_examples": self.n_examples_total,
                        "sha256": hashlib.sha256(repr(sorted(cfg.items())).encode()).hexdigest(), "generator": "v1"}
        self.observation_space = gym.spaces.Box(-10, 10, (self.batch_size, 8), np.float32)
        if self.regression:
            self.action_space = gym.spaces.Box(-100, 100, (self.batch_size,), np.float32)
        else:
            self.action_space = gym.spaces.MultiDiscrete([3] * self.batch_size)
        self._pos = 0

    def _teacher(self, task):
        return np.random.default_rng([self._seed, task]).normal(size=(8, 3)).astype(np.float32)

    def _make_batch(self):
        x = self.np_random.normal(size=(self.batch_size, 8)).astype(np.float32)
        return x, self._label(x, self._pos // self.examples_per_task)

    def _label(self, x, task):
        z = x @ self._teacher(task)
        return z[:, 0].astype(np.float32) if self.regression else z.argmax(1).astype(np.int64)

    def _next_info(self):
        task = self._pos // self.examples_per_task
        return {"next_task_id": task, "next_task_boundary": self._pos % self.examples_per_task == 0,
                "next_phase": "train"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._seed = int(self.np_random.integers(2**31)) if seed is not None or not hasattr(self, "_seed") else self._seed
        self._pos = 0
        self._x, self._y = self._make_batch()
        ni = self._next_info()
        info = {"task_id": ni["next_task_id"], "task_boundary": True, "phase": "train", "step_in_task": 0, **ni}
        return self._x, info

    def step(self, action):
        if self._pos >= self.n_examples_total:
            raise RuntimeError("stream finished: call reset")
        a = np.asarray(action)
        reward = float(-np.mean((a - self._y) ** 2)) if self.regression else float(np.mean(a == self._y))
        task = self._pos // self.examples_per_task
        info = {"target": self._y, "task_id": task, "task_boundary": self._pos % self.examples_per_task == 0,
                "phase": "train", "step_in_task": (self._pos % self.examples_per_task) // self.batch_size}
        self._pos += self.batch_size
        truncated = self._pos >= self.n_examples_total
        if not truncated:
            self._x, self._y = self._make_batch()
        info.update(self._next_info())
        return self._x, reward, False, truncated, info

    def probe_batch(self, n=2000):
        rng = np.random.default_rng([self._seed, 999, self._pos // self.examples_per_task])
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return x, self._label(x, self._pos // self.examples_per_task)


class FakeAgent:
    """A one-hidden-layer net trained online with SGD; follows the Agent protocol."""

    uses_task_boundaries = False

    def __init__(self, observation_space, action_space, *, seed=0, device="cpu", lr=0.01, hidden=16):
        self.regression = isinstance(action_space, gym.spaces.Box)
        n_out = 1 if self.regression else int(action_space.nvec[0])
        g = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(observation_space.shape[-1], hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, n_out))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.name = "fake-mlp"
        self.config = {"lr": lr, "hidden": hidden}

    def act(self, observation, info):
        self._out = self.net(torch.as_tensor(observation))
        if self.regression:
            return self._out[:, 0].detach().numpy()
        return self._out.argmax(1).numpy()

    def observe(self, observation, action, reward, info):
        if info["phase"] != "train":
            return
        y = torch.as_tensor(info["target"])
        if self.regression:
            loss = torch.nn.functional.mse_loss(self._out[:, 0], y)
        else:
            loss = torch.nn.functional.cross_entropy(self._out, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def probe_model(self):
        return self.net


def make_agent(observation_space, action_space, *, seed=0, device="cpu", **overrides):
    return FakeAgent(observation_space, action_space, seed=seed, device=device, **overrides)


for _id, _kw in (("FakeClassify-v0", {}), ("FakeRegress-v0", {"regression": True})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=FakeStream, kwargs=_kw, disable_env_checker=True)


class Interrupt(Exception):
    """Raised by ``interruptible_agent`` to simulate a crash at a chosen step."""


# Global step counter and the step at which to crash (None: never); tests set STOP_AT.
STOP_AT: int | None = None
_steps = 0


class InterruptibleAgent(FakeAgent):
    """FakeAgent that raises :class:`Interrupt` when the process-wide step count hits STOP_AT.

    It has no state_dict, so checkpoints pickle it whole (the other checkpoint path)."""

    def act(self, observation, info):
        global _steps
        _steps += 1
        if STOP_AT is not None and _steps == STOP_AT:
            raise Interrupt(f"interrupted at step {_steps}")
        return super().act(observation, info)


def interruptible_agent(observation_space, action_space, *, seed=0, device="cpu"):
    return InterruptibleAgent(observation_space, action_space, seed=seed, device=device)


def reset_counter(stop_at: int | None) -> None:
    global _steps, STOP_AT
    _steps, STOP_AT = 0, stop_at
