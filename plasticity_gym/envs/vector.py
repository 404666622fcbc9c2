"""Native vector environments: many seeds' streams in lockstep, one array per step.

``gym.make_vec("PermutedMNIST-v0", num_envs=N, vectorization_mode="vector_entry_point", ...)``
returns a :class:`SupervisedStreamVectorEnv` whose observations are ``(N, batch_size, *x_shape)``
and whose actions are ``(N, batch_size)``. Sub-stream ``i`` is exactly the stream of the single
env reset with seed ``s_i``: ``reset(seed=[s_0, ..., s_{N-1}])``, or ``reset(seed=s)`` meaning
``s, s + 1, ..., s + N - 1``. All sub-streams share one configuration, hence one length and one
task schedule, so they move in lockstep and a chunk of every stream is generated at once.

Infos follow Gymnasium's vector convention: every key maps to an array over the sub-envs
(``target``: ``(N, batch_size)``) with a boolean mask ``_key``. Autoreset mode is
``NEXT_STEP``: the step after the streams end starts new streams, as the single env's
``reset()`` would, and returns zero rewards.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from plasticity_gym.envs.permuted_mnist import PermutedMNISTEnv
from plasticity_gym.envs.slow_regression import SlowRegressionEnv
from plasticity_gym.envs.stream import (
    DEFAULT_SCALE,
    ROLE_PROBE,
    StreamEndedError,
    SupervisedStreamEnv,
)

# Bytes of the block of every stream generated at once (float32 inputs of all sub-envs).
CHUNK_BYTES = 8 << 20


class SupervisedStreamVectorEnv(VectorEnv):
    """``num_envs`` independent seeds of one supervised stream, stepped as one array."""

    env_class: ClassVar[type[SupervisedStreamEnv]]
    metadata: ClassVar[dict[str, Any]] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, scale: str = DEFAULT_SCALE, render_mode: str | None = None, **kwargs: Any):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.envs = [self.env_class(scale=scale, render_mode=render_mode, **kwargs) for _ in range(self.num_envs)]
        first = self.envs[0]
        self.render_mode = None
        self.scale = scale
        self.config = first.config
        self.data_id = first.data_id
        self.batch_size = first.batch_size
        self.n_tasks = first.n_tasks
        self.examples_per_task = first.examples_per_task
        self.n_examples_total = first.n_examples_total
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(first.observation_space, self.num_envs)
        self.action_space = batch_space(first.action_space, self.num_envs)

        self._classification = first.task_kind == "classification"
        self._n_classes = getattr(first, "n_classes", 0)
        self._bound = float(getattr(first, "target_bound", math.inf))  # regression: predictions clipped to it
        # A chunk of every stream at once, kept to a cache-sized block: a larger one is written to
        # main memory and read back from it (32 MNIST streams' 2,048-example chunks: 4x slower steps).
        example_bytes = self.num_envs * int(np.prod(first.x_shape, dtype=np.int64)) * 4
        batch = first.batch_size
        self._chunk_len = max(batch, min(first._chunk_len, CHUNK_BYTES // example_bytes // batch * batch))
        self._x_shape = first.x_shape
        self._mask = np.ones(self.num_envs, dtype=bool)
        self._mask.flags.writeable = False
        self._pos: int | None = None
        self._autoreset = False
        self._clear_chunk()
        self._extras_task: int | None = None
        self._extras: dict[str, Any] = {}
        self._info_cache: dict[tuple[int, bool, str], dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ seeding and chunks

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset got {len(seeds)} seeds for {self.num_envs} environments")
        return seeds

    def _clear_chunk(self) -> None:
        self._chunk_start = -1
        self._chunk_stop = -1
        self._chunk_x: np.ndarray | None = None
        self._chunk_y: np.ndarray | None = None

    def _batch(self, pos: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._chunk_start <= pos < self._chunk_stop:
            task_id, offset = divmod(pos, self.examples_per_task)
            stop = min(self.examples_per_task, offset + self._chunk_len)
            # Each sub-env writes its inputs straight into its row of one fresh array.
            chunk_x = np.empty((self.num_envs, stop - offset, *self._x_shape), dtype=np.float32)
            targets = [env._generate(task_id, offset, stop, out=chunk_x[i])[1]
                       for i, env in enumerate(self.envs)]
            self._chunk_x, self._chunk_y = chunk_x, np.stack(targets)
            self._chunk_start, self._chunk_stop = pos, pos + (stop - offset)
        i = pos - self._chunk_start
        j = i + self.batch_size
        return self._chunk_x[:, i:j], self._chunk_y[:, i:j]  # type: ignore[index]

    def stream_chunk(self) -> tuple[int, int, np.ndarray, np.ndarray]:
        """``(chunk start, position, inputs, targets)``: the block of every stream that the last
        returned observation comes from — ``inputs`` ``(N, L, *x_shape)`` and ``targets``
        ``(N, L)`` cover positions ``start .. start + L - 1``, and that observation is
        ``inputs[:, position - start : position - start + batch_size]``. Observations and targets
        are views of these arrays, so a learner on an accelerator can copy a block once instead
        of a batch every step. Blocks never span a task boundary."""
        if self._pos is None or self._chunk_x is None or not self._chunk_start <= self._pos < self._chunk_stop:
            raise StreamEndedError(f"{type(self).__name__}: no current chunk; call reset() or step() first")
        return self._chunk_start, self._pos, self._chunk_x, self._chunk_y  # type: ignore[return-value]

    def _task_info(self, task_id: int, offset: int, prefix: str = "") -> dict[str, Any]:
        """The per-task info arrays (fresh copies of cached ones: allocation-light per step)."""
        key = (task_id, offset == 0, prefix)
        cached = self._info_cache.get(key)
        if cached is None:
            n = self.num_envs
            cached = {
                f"{prefix}task_id": np.full(n, task_id, dtype=np.int64),
                f"{prefix}task_boundary": np.full(n, offset == 0, dtype=bool),
                f"{prefix}phase": np.full(n, "train", dtype=object),
            }
            if len(self._info_cache) > 8:
                self._info_cache.clear()
            self._info_cache[key] = cached
        info: dict[str, Any] = {}
        for name, value in cached.items():
            info[name] = value.copy()
            info[f"_{name}"] = self._mask  # read-only and all True: safe to share
        return info

    def _step_in_task(self, offset: int) -> np.ndarray:
        values = np.empty(self.num_envs, dtype=np.int64)
        values.fill(offset // self.batch_size)
        return values

    def _extras_for(self, task_id: int) -> dict[str, Any]:
        if self._extras_task != task_id:
            per_env = [env._extras_for(task_id) for env in self.envs]
            self._extras = {}
            for key in per_env[0]:
                self._extras[key] = np.stack([np.asarray(extras[key]) for extras in per_env])
                self._extras[f"_{key}"] = self._mask
            self._extras_task = task_id
        return self._extras

    # ------------------------------------------------------------------ VectorEnv API

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Restart every sub-stream from its seed, or continue them (``seed=None``)."""
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options, got {sorted(options)}")
        seeds = self._seeds(seed)
        restart = seed is not None or self._pos is None or self._pos >= self.n_examples_total
        for env, env_seed in zip(self.envs, seeds):
            env._seed_stream(env_seed, restart=restart)
        if restart:
            self._pos = 0
            self._clear_chunk()
            self._extras_task = None
        self._autoreset = False
        return self._reset_result()

    def _reset_result(self) -> tuple[np.ndarray, dict[str, Any]]:
        pos: int = self._pos  # type: ignore[assignment]
        obs, _ = self._batch(pos)
        obs = obs.copy()  # a continued stream shows the last step's batch again: never shared
        task_id, offset = divmod(pos, self.examples_per_task)
        info = self._task_info(task_id, offset)
        info["step_in_task"] = self._step_in_task(offset)
        info["_step_in_task"] = self._mask
        info.update(self._task_info(task_id, offset, prefix="next_"))
        for key, value in self._extras_for(task_id).items():
            info[key] = value if key.startswith("_") else value.copy()
        return obs, info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Score every sub-env's action ``(num_envs, batch_size)`` and return the next batches."""
        n = self.num_envs
        if self._autoreset:
            for env in self.envs:
                env._seed_stream(None, restart=True)
            self._pos = 0
            self._clear_chunk()
            self._extras_task = None
            self._autoreset = False
            obs, info = self._reset_result()
            zeros = np.zeros(n, dtype=bool)
            return obs, np.zeros(n, dtype=np.float64), zeros, zeros.copy(), info
        pos = self._pos
        if pos is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() before step().")
        _, target = self._batch(pos)
        rewards = self._score(actions, target)
        task_id, offset = divmod(pos, self.examples_per_task)
        info = self._task_info(task_id, offset)
        info["target"] = target
        info["_target"] = self._mask
        info["step_in_task"] = self._step_in_task(offset)
        info["_step_in_task"] = self._mask
        for key, value in self._extras_for(task_id).items():
            info[key] = value if key.startswith("_") else value.copy()
        pos += self.batch_size
        self._pos = pos
        terminated = np.zeros(n, dtype=bool)
        if pos >= self.n_examples_total:
            info.update(self._task_info(self.n_tasks, 1, prefix="next_"))
            self._autoreset = True
            end_obs = np.zeros((n, self.batch_size, *self._x_shape), dtype=np.float32)
            return end_obs, rewards, terminated, np.ones(n, dtype=bool), info
        obs, _ = self._batch(pos)
        next_task, next_offset = divmod(pos, self.examples_per_task)
        info.update(self._task_info(next_task, next_offset, prefix="next_"))
        return obs, rewards, terminated, np.zeros(n, dtype=bool), info

    def _score(self, actions: Any, target: np.ndarray) -> np.ndarray:
        array = actions if type(actions) is np.ndarray else np.asarray(actions)
        expected_shape = (self.num_envs, self.batch_size)
        what = "integer labels" if self._classification else "finite real values"
        if array.shape != expected_shape:
            raise ValueError(
                f"{type(self).__name__}: actions of shape {array.shape}; expected {what} of shape "
                f"{expected_shape} (num_envs, batch_size)"
            )
        if self._classification:
            if array.dtype.kind not in "iu":
                raise ValueError(f"{type(self).__name__}: actions of dtype {array.dtype}; expected {what}")
            low, high = array.min(), array.max()
            if low < 0 or high >= self._n_classes:
                raise ValueError(
                    f"{type(self).__name__}: labels must lie in [0, {self._n_classes - 1}], got "
                    f"min {low} max {high}"
                )
            return np.count_nonzero(array == target, axis=1) / self.batch_size
        if array.dtype.kind not in "fiu":
            raise ValueError(f"{type(self).__name__}: actions of dtype {array.dtype}; expected {what}")
        values = array.astype(np.float64)
        # One reduction for the common case; the element-wise check only if the sum is not finite.
        if not math.isfinite(values.sum()) and not np.isfinite(values).all():
            raise ValueError(f"{type(self).__name__}: actions contain NaN or inf; expected {what}")
        np.minimum(values, self._bound, out=values)  # as the single env: scored clipped to the action space
        np.maximum(values, -self._bound, out=values)
        errors = values - target
        return np.einsum("ij,ij->i", errors, errors) * (-1.0 / self.batch_size)

    def probe_batch(self, n: int = 2000, *, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every sub-stream's probe of its current task: ``(num_envs, n, *x_shape)``, ``(num_envs, n)``.

        ``out``: an array of that shape and the observations' dtype to write the inputs into. A
        caller that probes often passes the same one each time: a fresh array of N·n inputs costs
        more in first-touch page faults than filling it does.
        """
        if self._pos is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() first")
        n = SupervisedStreamEnv._check_positive_int("n", n)
        task_id = min(self._pos // self.examples_per_task, self.n_tasks - 1)
        parts = [env._probe(task_id, n, env._rng(ROLE_PROBE, task_id)) for env in self.envs]
        if out is not None:
            shape = (len(parts), *parts[0][0].shape)
            if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != parts[0][0].dtype:
                raise ValueError(f"probe_batch: out must be a numpy array of shape {shape} and dtype "
                                 f"{parts[0][0].dtype}, got {getattr(out, 'shape', type(out).__name__)} "
                                 f"{getattr(out, 'dtype', '')}")
        return np.stack([x for x, _ in parts], out=out), np.stack([y for _, y in parts])


class PermutedMNISTVectorEnv(SupervisedStreamVectorEnv):
    """Native vector env of PermutedMNIST-v0 (kwargs and scales as :class:`PermutedMNISTEnv`)."""

    env_class = PermutedMNISTEnv


class SlowRegressionVectorEnv(SupervisedStreamVectorEnv):
    """Native vector env of SlowRegression-v0 (kwargs and scales as :class:`SlowRegressionEnv`)."""

    env_class = SlowRegressionEnv
