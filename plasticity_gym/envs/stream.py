"""The supervised-stream protocol shared by the supervised environments (docs/design.md §1).

A supervised continual problem is one long Gymnasium episode: the observation is a batch of
inputs, the action is the agent's prediction for every example of the batch, the reward scores
that prediction, and ``info["target"]`` reveals the true answers so that the agent can learn.

:class:`SupervisedStreamEnv` implements everything but the data: scales and configuration,
seeding, the stream position, chunked generation, action validation, scoring, ``info``,
truncation and probe batches. A subclass describes its data through a handful of hooks
(``_configure``, ``_on_new_stream``, ``_generate``, ``_probe``, optionally ``_task_extras``).

The stream is addressed by position: example ``p`` belongs to task ``p // examples_per_task``
and its content depends only on the stream key (drawn from ``self.np_random`` when the stream
starts) and on ``p``. Examples are generated a chunk at a time (thousands at once, one
vectorized pass) and handed out as views, so a step costs a few microseconds; because content
is positional, neither the chunk size nor ``batch_size`` nor a ``reset()`` that continues the
stream nor a pickle round trip changes what the agent sees.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SCALES: tuple[str, ...] = ("smoke", "cpu", "paper")
DEFAULT_SCALE = "cpu"
TaskKind = Literal["classification", "regression"]

# Roles of the independent random streams derived from the stream key (SeedSequence spawn keys).
ROLE_STRUCTURE = 0  # drawn once per stream: target networks, slow-bit schedules, ...
ROLE_TASK = 1  # one per task: permutations, example orders, random input bits
ROLE_PROBE = 2  # one per task: the probe sample, never touching the stream itself


class StreamEndedError(RuntimeError):
    """``step`` was called after the stream's last batch (or before the first ``reset``)."""


def resolve_scale_config(
    cls_name: str,
    default_config: dict[str, Any],
    scales: dict[str, dict[str, Any]],
    scale: str,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """``default_config`` ← ``scales[scale]`` ← ``overrides``, rejecting unknown names."""
    if scale not in scales:
        raise ValueError(f"{cls_name}: unknown scale {scale!r}; valid scales: {sorted(scales)}")
    unknown = sorted(set(overrides) - set(default_config))
    if unknown:
        raise ValueError(
            f"{cls_name}: unknown keyword argument(s) {unknown}; valid ones: "
            f"{['scale', *sorted(default_config)]}"
        )
    return {**default_config, **scales[scale], **overrides}


class SupervisedStreamEnv(gym.Env[np.ndarray, np.ndarray]):
    """Base class of the supervised continual-learning streams.

    Subclasses set the class attributes ``default_config`` (every constructor kwarg with its
    default) and ``scales`` (named kwarg sets ``smoke``/``cpu``/``paper`` applied on top of the
    defaults), and implement:

    * ``_configure(config) -> config``: validate the merged kwargs, load data, and set
      ``batch_size``, ``n_tasks``, ``examples_per_task``, ``x_shape``, ``task_kind``,
      ``n_classes`` (classification) or ``target_bound`` (regression) and ``data_id``; return
      the fully resolved config (e.g. ``None`` replaced by the value it stands for).
    * ``_on_new_stream()``: draw what is fixed for a whole stream (use ``self._rng(ROLE_STRUCTURE)``).
    * ``_generate(task_id, start, stop, out=None) -> (x, y)``: the examples at positions
      ``[start, stop)`` inside task ``task_id``: float32 inputs ``(stop - start, *x_shape)``
      (written into ``out`` when given, else a fresh array) and fresh targets (int64 labels or
      float32 values). Must depend only on the stream key and the positions.
    * ``_probe(task_id, n, rng) -> (x, y)``: ``n`` examples of task ``task_id`` drawn with ``rng``.
    * optionally ``_task_extras(task_id) -> dict``: env-specific ``info`` entries of a task.

    Protocol (design.md §1), for users:

    * ``reset(seed=s)`` restarts the stream from ``s``; ``reset()`` continues it (returning the
      batch shown and not yet scored), or starts a new stream from ``np_random`` when there is
      none yet or the last one has ended.
    * ``step(action)`` scores the action against the batch just shown. ``info`` holds ``target``,
      ``task_id``, ``task_boundary``, ``phase``, ``step_in_task`` of the scored batch and
      ``next_task_id``, ``next_task_boundary``, ``next_phase`` of the returned one (``reset``'s
      info describes the returned batch with both sets of keys).
    * ``terminated`` is always False; ``truncated`` is True on the step scoring the last example.
      That step returns an all-zero placeholder observation (there is no next batch) with
      ``next_task_id == n_tasks`` and ``next_task_boundary`` False; stepping again raises
      :class:`StreamEndedError`.
    * ``config`` (resolved kwargs), ``scale``, ``data_id``, ``n_examples_total``,
      ``examples_per_task``, ``n_tasks``, ``batch_size`` and ``probe_batch(n)``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    default_config: ClassVar[dict[str, Any]] = {}
    scales: ClassVar[dict[str, dict[str, Any]]] = {}
    # Examples generated per chunk (rounded down to a multiple of the batch size, at least one batch).
    chunk_examples: ClassVar[int] = 2048

    # Set by ``_configure``.
    batch_size: int
    n_tasks: int
    examples_per_task: int
    x_shape: tuple[int, ...]
    task_kind: TaskKind
    n_classes: int
    target_bound: float
    data_id: dict[str, Any]

    def __init__(self, scale: str = DEFAULT_SCALE, render_mode: str | None = None, **kwargs: Any):
        if render_mode is not None:
            raise ValueError(f"{type(self).__name__} does not render; got render_mode={render_mode!r}")
        self.render_mode = None
        self.scale: str = scale
        config = self.resolve_config(scale, **kwargs)
        self.config: dict[str, Any] = self._configure(config)

        batch = self.batch_size
        self.observation_space = spaces.Box(0.0, 1.0, (batch, *self.x_shape), np.float32)
        if self.task_kind == "classification":
            self.action_space = spaces.MultiDiscrete(np.full(batch, self.n_classes, dtype=np.int64))
            self._score = self._score_labels
        else:
            bound = float(self.target_bound)
            self.action_space = spaces.Box(-bound, bound, (batch,), np.float32)
            self._score = self._score_values

        self.n_examples_total: int = self.n_tasks * self.examples_per_task
        self._chunk_len = max(batch, (self.chunk_examples // batch) * batch)
        self._stream_key: int | None = None
        self._pos: int | None = None  # first example of the batch shown and not yet scored
        self._clear_chunk()
        self._extras_task: int | None = None
        self._extras: dict[str, Any] = {}
        # Only subclasses that override _task_extras pay for env-specific info entries.
        self._has_extras = type(self)._task_extras is not SupervisedStreamEnv._task_extras

    # ------------------------------------------------------------------ configuration

    @classmethod
    def resolve_config(cls, scale: str = DEFAULT_SCALE, **overrides: Any) -> dict[str, Any]:
        """The kwargs that ``scale`` and ``overrides`` give, before data-dependent resolution."""
        return resolve_scale_config(cls.__name__, cls.default_config, cls.scales, scale, overrides)

    @staticmethod
    def _check_batch_size(batch_size: Any, examples_per_task: int) -> int:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if examples_per_task % int(batch_size):
            raise ValueError(
                f"batch_size={batch_size} must divide the examples per task ({examples_per_task}), "
                "so that no batch straddles two tasks"
            )
        return int(batch_size)

    @staticmethod
    def _check_positive_int(name: str, value: Any, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {str(value)[:40]!r}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{name} must be at most {maximum:,}, got {int(value):,}")
        return int(value)

    # ------------------------------------------------------------------ hooks

    def _configure(self, config: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _on_new_stream(self) -> None:
        raise NotImplementedError

    def _generate(
        self, task_id: int, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _probe(self, task_id: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _task_extras(self, task_id: int) -> dict[str, Any]:
        """Env-specific ``info`` entries of a task (small arrays are copied into every info)."""
        return {}

    # Names of per-task caches that pickling drops (they are rebuilt on demand).
    _transient_attrs: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ random streams

    def _rng(self, role: int, task_id: int = 0) -> np.random.Generator:
        """An independent generator for (role, task) of the current stream."""
        if self._stream_key is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() before using the stream")
        sequence = np.random.SeedSequence(self._stream_key, spawn_key=(role, task_id))
        return np.random.Generator(np.random.PCG64(sequence))

    def _seed_stream(self, seed: int | None, *, restart: bool) -> None:
        """Seed ``np_random`` the Gymnasium way and, if ``restart``, start a new stream from it."""
        super().reset(seed=seed)
        if restart:
            self._stream_key = int(self.np_random.integers(2**63))
            self._pos = 0
            self._clear_chunk()
            self._extras_task = None
            for name in self._transient_attrs:
                setattr(self, name, None)
            self._on_new_stream()

    # ------------------------------------------------------------------ chunks

    def _clear_chunk(self) -> None:
        self._chunk_start = -1
        self._chunk_stop = -1
        self._chunk_x: np.ndarray | None = None
        self._chunk_y: np.ndarray | None = None

    def _load_chunk(self, pos: int) -> None:
        task_id, offset = divmod(pos, self.examples_per_task)
        stop = min(self.examples_per_task, offset + self._chunk_len)
        self._chunk_x, self._chunk_y = self._generate(task_id, offset, stop)
        self._chunk_start, self._chunk_stop = pos, pos + (stop - offset)

    def _batch(self, pos: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of the inputs and targets of the batch starting at ``pos``."""
        if not self._chunk_start <= pos < self._chunk_stop:
            self._load_chunk(pos)
        i = pos - self._chunk_start
        j = i + self.batch_size
        return self._chunk_x[i:j], self._chunk_y[i:j]  # type: ignore[index]

    def _extras_for(self, task_id: int) -> dict[str, Any]:
        if self._extras_task != task_id:
            self._extras = self._task_extras(task_id)
            self._extras_task = task_id
        return self._extras

    def _add_extras(self, info: dict[str, Any], task_id: int) -> None:
        # Arrays are copied: returned data must never share memory between calls (Gymnasium 1.x).
        for key, value in self._extras_for(task_id).items():
            info[key] = value.copy() if isinstance(value, np.ndarray) else value

    # ------------------------------------------------------------------ Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``reset(seed=s)`` restarts the stream from ``s``; ``reset()`` continues it.

        Continuing returns the batch shown last and not yet scored. ``reset()`` before any
        stream, or after the stream's end, starts a new stream drawn from ``np_random``.
        """
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options, got {sorted(options)}")
        restart = seed is not None or self._pos is None or self._pos >= self.n_examples_total
        self._seed_stream(seed, restart=restart)
        pos: int = self._pos  # type: ignore[assignment]
        obs, _ = self._batch(pos)
        # A continued stream shows the batch of the last step again: a copy, never shared data.
        obs = obs.copy()
        task_id, offset = divmod(pos, self.examples_per_task)
        info: dict[str, Any] = {
            "task_id": task_id,
            "task_boundary": offset == 0,
            "phase": "train",
            "step_in_task": offset // self.batch_size,
            "next_task_id": task_id,
            "next_task_boundary": offset == 0,
            "next_phase": "train",
        }
        self._add_extras(info, task_id)
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Score ``action`` against the batch just shown and return the next batch."""
        # The hot path of every agent loop: plain attribute reads, no helper calls when the
        # batch lies in the current chunk (it does, except right after unpickling).
        pos = self._pos
        if pos is None or pos >= self.n_examples_total:
            raise self._ended_error(pos)
        batch = self.batch_size
        if not self._chunk_start <= pos < self._chunk_stop:
            self._load_chunk(pos)
        i = pos - self._chunk_start
        target = self._chunk_y[i : i + batch]  # type: ignore[index]
        reward = self._score(action, target)
        task_id, offset = divmod(pos, self.examples_per_task)
        info: dict[str, Any] = {
            "target": target,
            "task_id": task_id,
            "task_boundary": offset == 0,
            "phase": "train",
            "step_in_task": offset // batch,
        }
        if self._has_extras:
            self._add_extras(info, task_id)
        pos += batch
        self._pos = pos
        if pos >= self.n_examples_total:
            # There is no next batch: a placeholder observation, and "next" points past the end.
            info["next_task_id"] = self.n_tasks
            info["next_task_boundary"] = False
            info["next_phase"] = "train"
            end_obs = np.zeros((batch, *self.x_shape), dtype=np.float32)
            return end_obs, reward, False, True, info
        if pos >= self._chunk_stop:
            self._load_chunk(pos)
        i = pos - self._chunk_start
        offset += batch
        if offset == self.examples_per_task:
            task_id, offset = task_id + 1, 0
        info["next_task_id"] = task_id
        info["next_task_boundary"] = offset == 0
        info["next_phase"] = "train"
        return self._chunk_x[i : i + batch], reward, False, False, info  # type: ignore[index]

    def _ended_error(self, pos: int | None) -> StreamEndedError:
        name = type(self).__name__
        if pos is None:
            return StreamEndedError(f"{name}: call reset() before step().")
        return StreamEndedError(
            f"{name}: the stream ended after {self.n_examples_total} examples ({self.n_tasks} "
            "tasks); call reset() to start a new stream."
        )

    def render(self) -> None:
        return None

    # ------------------------------------------------------------------ scoring

    def _action_error(self, action: Any, problem: str) -> ValueError:
        if self.task_kind == "classification":
            expected = (
                f"an integer array of shape ({self.batch_size},) with labels in "
                f"[0, {self.n_classes - 1}], one per example of the batch"
            )
        else:
            expected = (
                f"a finite real array of shape ({self.batch_size},), one predicted value per "
                "example of the batch"
            )
        try:
            array = np.asarray(action)
            shown = repr(array.tolist()) if array.size <= 8 else f"<array of shape {array.shape}>"
        except Exception:  # noqa: BLE001 - only for the message
            shown = f"<{type(action).__name__}>"
        return ValueError(f"{type(self).__name__}: bad action {shown}: {problem}; expected {expected}")

    def _as_action_array(self, action: Any, kinds: str) -> np.ndarray:
        array = action if type(action) is np.ndarray else np.asarray(action)
        if array.shape != (self.batch_size,):
            raise self._action_error(action, f"shape {array.shape}")
        if array.dtype.kind not in kinds:
            raise self._action_error(action, f"dtype {array.dtype}")
        return array

    def _score_labels(self, action: Any, target: np.ndarray) -> float:
        labels = self._as_action_array(action, "iu")
        if self.batch_size == 1:
            label = labels.item()
            if not 0 <= label < self.n_classes:
                raise self._action_error(action, f"label {label} out of range")
            return 1.0 if label == target.item() else 0.0
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.n_classes:
            raise self._action_error(action, f"label {low if low < 0 else high} out of range")
        return np.count_nonzero(labels == target) / self.batch_size

    def _score_values(self, action: Any, target: np.ndarray) -> float:
        values = self._as_action_array(action, "fiu")
        if self.batch_size == 1:
            value = float(values.item())
            if not math.isfinite(value):
                raise self._action_error(action, f"non-finite value {value}")
            bound = self.target_bound  # a prediction beyond the targets' range is scored clipped to it
            error = min(max(value, -bound), bound) - target.item()
            return -(error * error)
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise self._action_error(action, "non-finite values (NaN or inf)")
        np.clip(values, -self.target_bound, self.target_bound, out=values)  # astype made a copy
        errors = values - target
        return -float(errors @ errors) / self.batch_size

    # ------------------------------------------------------------------ probes and state

    @property
    def current_task(self) -> int:
        """Task of the batch shown and not yet scored (the last task once the stream ended)."""
        if self._pos is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() first")
        return min(self._pos // self.examples_per_task, self.n_tasks - 1)

    @property
    def position(self) -> int | None:
        """Number of examples scored so far in the current stream (None before the first reset)."""
        return self._pos

    def probe_batch(self, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
        """``n`` examples of the current task, deterministic in (stream seed, task id).

        Does not advance the stream or touch its random state. Returns float32 inputs
        ``(n, *x_shape)`` and targets ``(n,)`` (int64 labels or float32 values).
        """
        n = self._check_positive_int("n", n)
        task_id = self.current_task
        return self._probe(task_id, n, self._rng(ROLE_PROBE, task_id))

    def __getstate__(self) -> dict[str, Any]:
        # Chunks and per-task caches are derived data: drop them, they are regenerated on demand.
        state = self.__dict__.copy()
        state.update(_chunk_start=-1, _chunk_stop=-1, _chunk_x=None, _chunk_y=None, _extras_task=None)
        for name in self._transient_attrs:
            state[name] = None
        state.pop("_score", None)  # a bound method: rebuilt in __setstate__
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._score = self._score_labels if self.task_kind == "classification" else self._score_values
