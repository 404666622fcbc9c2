"""The supervised stream whose tasks have train, validation and test phases.

Shared by ``ContinualImageNet-v0`` and ``ClassIncCIFAR100-v0``: a task is a sequence of segments
(one phase of one task each); examples depend only on the stream key and their position, so the
chunk size, ``reset()`` and pickling never change the stream.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np
from gymnasium import spaces

from plasticity_gym.envs.stream import (
    DEFAULT_SCALE,
    StreamEndedError,
    SupervisedStreamEnv,
)

PHASES: tuple[str, ...] = ("train", "val", "test")
ROLE_EPOCH = 3  # random stream of one (task, phase, epoch): example order and augmentation
IMAGE_SHAPE = (3, 32, 32)


class PhasedStreamEnv(SupervisedStreamEnv):
    """A supervised stream whose tasks are sequences of train, validation and test phases.

    The stream is a list of *segments*, each ``(task, phase, first epoch, epoch length, epochs)``:
    a phase of one task running for a number of epochs over the same ``epoch length`` examples
    (ContinualImageNet: 250 training epochs, then one test pass; class-incremental CIFAR-100:
    200 times one training epoch and one validation pass, then one test pass). A subclass's
    ``_configure`` calls :meth:`_set_schedule` with its segments, and it implements
    ``_fill(task_id, phase, epoch, start, stop, out)``: writes examples ``start..stop-1`` of that
    epoch (float32) into ``out`` and returns their int64 labels — a function of the stream key
    and those arguments only.

    Batches never straddle segments. A training epoch is a whole number of batches; the last batch
    of a validation or test pass may be *partial*: its observation is padded with zero rows
    after the ``n`` real examples, ``info["target"]`` holds those ``n`` labels, and the reward
    is the accuracy over them (the action still has ``batch_size`` labels; the rest are ignored).
    Besides the stream keys of :class:`SupervisedStreamEnv`, ``info`` has ``epoch`` and
    ``next_epoch`` (the test pass counts as epoch ``epochs``), and the subclass's per-task
    entries both as ``key`` (scored batch) and ``next_key`` (returned batch).
    """

    chunk_examples: ClassVar[int] = 1200

    # Set by _set_schedule.
    _seg_start: list[int]
    _seg_task: list[int]
    _seg_phase: list[str]
    _seg_epoch0: list[int]
    _seg_epoch_len: list[int]
    _seg_step0: list[int]
    _task_start: list[int]

    def __init__(self, scale: str = DEFAULT_SCALE, render_mode: str | None = None, **kwargs: Any):
        super().__init__(scale, render_mode, **kwargs)
        self.n_examples_total = self._seg_start[-1]
        self.examples_per_task = self._examples_per_task
        self.n_steps_total: int = sum(self._task_steps)
        bounds = self._pixel_bounds()
        if bounds is not None:
            low, high = (np.broadcast_to(b.astype(np.float32)[:, None, None], self.x_shape) for b in bounds)
            shape = (self.batch_size, *self.x_shape)
            self.observation_space = spaces.Box(np.broadcast_to(low, shape).copy(),
                                                np.broadcast_to(high, shape).copy(), dtype=np.float32)
        self._seg = 0

    # ------------------------------------------------------------------ schedule

    def _set_schedule(self, segments: Sequence[tuple[int, str, int, int, int]]) -> None:
        """Lay out the stream: ``(task, phase, first epoch, epoch length, epochs)`` per segment."""
        batch = self.batch_size
        starts, tasks, phases, epoch0, epoch_len, step0 = [0], [], [], [], [], []
        task_start: list[int] = []
        task_steps: list[int] = []
        for task, phase, first_epoch, length, epochs in segments:
            if phase not in PHASES:
                raise ValueError(f"unknown phase {phase!r}")
            if phase == "train" and length % batch:
                raise ValueError(
                    f"batch_size={batch} must divide the {length} training examples of an epoch of "
                    f"task {task}, so that every training batch is full"
                )
            if task == len(task_start):
                task_start.append(starts[-1])
                task_steps.append(0)
            steps_per_epoch = math.ceil(length / batch)
            tasks.append(task)
            phases.append(phase)
            epoch0.append(first_epoch)
            epoch_len.append(length)
            step0.append(task_steps[task])
            task_steps[task] += steps_per_epoch * epochs
            # A partial batch can only end a segment: it must be a single pass.
            if length % batch and epochs != 1:
                raise ValueError("a segment whose epochs do not fill whole batches must have one epoch")
            starts.append(starts[-1] + length * epochs)
        if len(task_start) != self.n_tasks:
            raise ValueError(f"the schedule covers {len(task_start)} tasks, expected {self.n_tasks}")
        task_start.append(starts[-1])
        self._seg_start, self._seg_task, self._seg_phase = starts, tasks, phases
        self._seg_epoch0, self._seg_epoch_len, self._seg_step0 = epoch0, epoch_len, step0
        self._task_start, self._task_steps = task_start, task_steps
        lengths = {task_start[t + 1] - task_start[t] for t in range(self.n_tasks)}
        self._examples_per_task: int | None = lengths.pop() if len(lengths) == 1 else None
        # The base class multiplies n_tasks by examples_per_task: a placeholder until __init__ ends.
        self.examples_per_task = self._examples_per_task or 0

    def _segment_of(self, pos: int) -> int:
        return int(np.searchsorted(self._seg_start, pos, side="right")) - 1

    def _pixel_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel (low, high) of the observations when not [0, 1]."""
        return None

    def _fill(self, task_id: int, phase: str, epoch: int, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _generate(self, task_id: int, start: int, stop: int, out: np.ndarray | None = None):
        raise NotImplementedError("phased streams generate through _fill")

    def _epoch_rng(self, task_id: int, phase: str, epoch: int) -> np.random.Generator:
        """The random stream of one (task, phase, epoch) of the current stream."""
        if self._stream_key is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() before using the stream")
        key = (ROLE_EPOCH, task_id, PHASES.index(phase), epoch)
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self._stream_key, spawn_key=key)))

    # ------------------------------------------------------------------ chunks

    def _load_chunk(self, pos: int) -> None:
        s = self._segment_of(pos)
        seg_start, seg_stop = self._seg_start[s], self._seg_start[s + 1]
        stop = min(seg_stop, pos + self._chunk_len)
        rows = -(-(stop - pos) // self.batch_size) * self.batch_size  # padded to whole batches
        x = np.zeros((rows, *self.x_shape), dtype=np.float32)
        y = np.empty(stop - pos, dtype=np.int64)
        task, phase = self._seg_task[s], self._seg_phase[s]
        length, epoch0 = self._seg_epoch_len[s], self._seg_epoch0[s]
        a = pos
        while a < stop:  # one piece per epoch
            epoch, first = divmod(a - seg_start, length)
            b = min(stop, a + length - first)
            y[a - pos:b - pos] = self._fill(task, phase, epoch0 + epoch, first, first + b - a, x[a - pos:b - pos])
            a = b
        self._chunk_x, self._chunk_y = x, y
        self._chunk_start, self._chunk_stop = pos, stop

    def _batch(self, pos: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._chunk_start <= pos < self._chunk_stop:
            self._load_chunk(pos)
        i = pos - self._chunk_start
        return self._chunk_x[i:i + self.batch_size], self._chunk_y[i:i + self.batch_size]  # type: ignore[index]

    # ------------------------------------------------------------------ Gymnasium API

    def _describe(self, info: dict[str, Any], pos: int, s: int, prefix: str) -> None:
        task = self._seg_task[s]
        offset = pos - self._seg_start[s]
        length = self._seg_epoch_len[s]
        info[f"{prefix}task_id"] = task
        info[f"{prefix}task_boundary"] = pos == self._task_start[task]
        info[f"{prefix}phase"] = self._seg_phase[s]
        info[f"{prefix}epoch"] = self._seg_epoch0[s] + offset // length
        if prefix == "":
            steps_per_epoch = -(-length // self.batch_size)
            info["step_in_task"] = (self._seg_step0[s] + (offset // length) * steps_per_epoch
                                    + (offset % length) // self.batch_size)
        if self._has_extras:
            for key, value in self._extras_for(task).items():
                info[prefix + key] = value

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``reset(seed=s)`` restarts the stream from ``s``; ``reset()`` continues it."""
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options, got {sorted(options)}")
        restart = seed is not None or self._pos is None or self._pos >= self.n_examples_total
        self._seed_stream(seed, restart=restart)
        pos: int = self._pos  # type: ignore[assignment]
        self._seg = self._segment_of(pos)
        obs, _ = self._batch(pos)
        info: dict[str, Any] = {}
        self._describe(info, pos, self._seg, "")
        self._describe(info, pos, self._seg, "next_")
        return obs.copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Score ``action`` against the batch just shown and return the next batch."""
        pos = self._pos
        if pos is None or pos >= self.n_examples_total:
            raise self._ended_error(pos)
        s = self._seg
        if not self._chunk_start <= pos < self._chunk_stop:
            self._load_chunk(pos)
        i = pos - self._chunk_start
        n = min(self.batch_size, self._seg_start[s + 1] - pos)
        target = self._chunk_y[i:i + n]  # type: ignore[index]
        reward = self._score(action, target) if n == self.batch_size else self._score_part(action, target)
        info: dict[str, Any] = {"target": target}
        self._describe(info, pos, s, "")
        pos += n
        if pos == self._seg_start[s + 1]:
            s += 1
        self._pos, self._seg = pos, s
        if pos >= self.n_examples_total:
            # There is no next batch: a placeholder observation, and "next" points past the end.
            info.update(next_task_id=self.n_tasks, next_task_boundary=False, next_phase="train",
                        next_epoch=0)
            return np.zeros((self.batch_size, *self.x_shape), dtype=np.float32), reward, False, True, info
        self._describe(info, pos, s, "next_")
        obs, _ = self._batch(pos)
        return obs, reward, False, False, info

    def _score_part(self, action: Any, target: np.ndarray) -> float:
        """Accuracy over the ``len(target)`` real examples of a partial batch."""
        labels = self._as_action_array(action, "iu")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.n_classes:
            raise self._action_error(action, f"label {low if low < 0 else high} out of range")
        return np.count_nonzero(labels[: target.shape[0]] == target) / target.shape[0]

    @property
    def current_task(self) -> int:
        """Task of the batch shown and not yet scored (the last task once the stream ended)."""
        if self._pos is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() first")
        if self._pos >= self.n_examples_total:
            return self.n_tasks - 1
        return self._seg_task[self._segment_of(self._pos)]

    @property
    def current_phase(self) -> str:
        """Phase of the batch shown and not yet scored."""
        if self._pos is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() first")
        return self._seg_phase[self._segment_of(min(self._pos, self.n_examples_total - 1))]

    def phase_counts(self, task_id: int) -> dict[str, dict[str, int]]:
        """Examples and steps of each phase of a task: ``{phase: {"examples", "steps"}}``."""
        out: dict[str, dict[str, int]] = {}
        for s, task in enumerate(self._seg_task):
            if task == task_id:
                length = self._seg_start[s + 1] - self._seg_start[s]
                epochs = length // self._seg_epoch_len[s]
                entry = out.setdefault(self._seg_phase[s], {"examples": 0, "steps": 0})
                entry["examples"] += length
                entry["steps"] += epochs * -(-self._seg_epoch_len[s] // self.batch_size)
        return out
