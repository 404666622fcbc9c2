"""ContinualImageNet-v0: binary tasks over pairs of ImageNet classes (Dohare et al. 2024; SPEC §2).

Also home of :class:`PhasedStreamEnv`, the supervised stream whose tasks have train, validation
and test phases (shared with ``ClassIncCIFAR100-v0``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from gymnasium import spaces

from plasticity_gym.data.augment import scale_table, to_float
from plasticity_gym.data.images import ClassImages
from plasticity_gym.data.imagenet32 import DATA_SOURCES, load_imagenet32
from plasticity_gym.envs.stream import (
    DEFAULT_SCALE,
    ROLE_STRUCTURE,
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


class ContinualImageNetEnv(PhasedStreamEnv):
    """A sequence of binary classification tasks, each over a new pair of ImageNet classes.

    ## Description
    The data are 1,000 classes of 700 32×32 colour images each: the first 600 of a class are its
    training images, the last 100 its test images. Task ``k`` takes the pair of classes
    ``task_classes(k)``: the pairs are consecutive entries of a sequence of independent random
    permutations of the 1,000 classes drawn from the stream seed, so every class appears once in
    every 500 tasks and two agents given the same seed see the same pairs. Within a task the
    first class has label 0 and the second label 1. A task trains for ``epochs`` passes over its
    1,200 training images, each pass in a fresh random order, in mini-batches of ``batch_size``;
    then a ``test`` phase shows its 200 test images once. Nothing in the observation marks a task
    switch (``task_boundary`` is in ``info``; the paper's agents use it to reset their output
    layer, privileged information a leaderboard entry must declare).

    ## Observation space
    ``Box(0, 1, (batch_size, 3, 32, 32), float32)``: pixels divided by 255, channels first
    (R, G, B), no other normalization.

    ## Action space
    ``MultiDiscrete([2] * batch_size)``: the predicted label (0 or 1) of every image.

    ## Rewards
    The fraction of the batch predicted correctly.

    ## Info
    ``target`` (int64 labels of the batch just scored), ``task_id``, ``task_boundary``,
    ``phase`` (``"train"`` or ``"test"``), ``epoch`` (0..epochs-1 in training; ``epochs`` in the
    test phase), ``step_in_task``, and ``next_task_id``, ``next_task_boundary``, ``next_phase``,
    ``next_epoch`` of the returned batch. In the test phase agents must not learn from
    ``target``. The last test batch is partial when ``batch_size`` does not divide the number of
    test images (zero rows pad the observation; ``target`` has the real examples only).

    ## Episode end
    ``truncated`` is True on the step scoring the last test batch of the last task.

    ## Arguments
    ``gym.make("ContinualImageNet-v0", scale="cpu", **kwargs)`` with:

    * ``data``: ``"synthetic"`` (a procedurally generated 1,000-class stand-in, named
      ``synthetic-imagenet32`` in ``data_id``; offline) or ``"imagenet32"`` (Downsampled ImageNet
      32×32, prepared once by ``plasticity-gym data imagenet32 --from DIR``; never silently
      replaced by the stand-in).
    * ``data_dir``: where the prepared ImageNet32 is (otherwise ``$PLASTICITY_GYM_DATA`` and the
      cache directory are searched).
    * ``n_tasks``, ``epochs`` (training passes per task), ``batch_size`` (must divide
      ``2 * train_per_class``), ``train_per_class`` and ``test_per_class`` (images of each class
      used; the paper's 600 and 100).

    ## Scales
    ============  ==========  =======  ======  =======================  ==========================
    scale         data        tasks    epochs  images per class         per task
    ============  ==========  =======  ======  =======================  ==========================
    ``smoke``     synthetic   3        2       50 train, 10 test        2 train + 1 test steps
    ``cpu``       synthetic   40       25      600 train, 100 test      300 train + 2 test steps
    ``paper``     imagenet32  5,000    250     600 train, 100 test      3,000 train + 2 test steps
    ============  ==========  =======  ======  =======================  ==========================

    ``paper`` is the paper's protocol (for a GPU). ``cpu`` keeps the data and the task with ten
    times fewer epochs and 125 times fewer tasks: 12,080 steps, about 10 minutes per seed for the
    paper's convnet on one CPU core (≈50 ms per SGD step). On the stand-in that convnet ends a
    task at about 85% test accuracy (``bench/standin_calibration.py``).
    """

    default_config: ClassVar[dict[str, Any]] = {
        "data": "synthetic",
        "data_dir": None,
        "n_tasks": 5000,
        "epochs": 250,
        "batch_size": 100,
        "train_per_class": 600,
        "test_per_class": 100,
    }
    scales: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"data": "synthetic", "n_tasks": 3, "epochs": 2, "train_per_class": 50, "test_per_class": 10},
        "cpu": {"data": "synthetic", "n_tasks": 40, "epochs": 25, "train_per_class": 600, "test_per_class": 100},
        "paper": {"data": "imagenet32", "n_tasks": 5000, "epochs": 250, "train_per_class": 600,
                  "test_per_class": 100},
    }
    _transient_attrs: ClassVar[tuple[str, ...]] = ("_pair_task", "_pair_images", "_order_key", "_order")

    def _configure(self, config: dict[str, Any]) -> dict[str, Any]:
        if config["data"] not in DATA_SOURCES:
            raise ValueError(f"data={config['data']!r}; expected one of {list(DATA_SOURCES)}")
        data_dir = config["data_dir"]
        if data_dir is not None:
            if config["data"] == "synthetic":
                raise ValueError("data_dir applies to data='imagenet32' only, but data='synthetic'; "
                                 "pass data='imagenet32' (or scale='paper') to use the real images")
            data_dir = str(Path(data_dir).expanduser())
        self.n_tasks = self._check_positive_int("n_tasks", config["n_tasks"])
        self.epochs = self._check_positive_int("epochs", config["epochs"])
        self.train_per_class = self._check_positive_int("train_per_class", config["train_per_class"])
        self.test_per_class = self._check_positive_int("test_per_class", config["test_per_class"])
        self.batch_size = self._check_positive_int("batch_size", config["batch_size"])
        self.dataset: ClassImages = load_imagenet32(config["data"], data_dir,
                                                    self.train_per_class + self.test_per_class)
        self.x_shape = IMAGE_SHAPE
        self.task_kind = "classification"
        self.n_classes = 2
        self.data_id = dict(self.dataset.data_id)
        n_train, n_test = 2 * self.train_per_class, 2 * self.test_per_class
        self._set_schedule([segment for task in range(self.n_tasks) for segment in (
            (task, "train", 0, n_train, self.epochs), (task, "test", self.epochs, n_test, 1))])
        self._table = scale_table()
        self.pairs: np.ndarray | None = None
        self._pair_task: int | None = None
        self._pair_images: np.ndarray | None = None
        self._order_key: tuple[int, str, int] | None = None
        self._order: np.ndarray | None = None
        return {**config, "data_dir": data_dir}

    def _on_new_stream(self) -> None:
        rng = self._rng(ROLE_STRUCTURE)
        n_classes = self.dataset.n_classes
        rounds = -(-2 * self.n_tasks // n_classes)
        sequence = np.concatenate([rng.permutation(n_classes) for _ in range(rounds)])
        self.pairs = sequence[: 2 * self.n_tasks].reshape(self.n_tasks, 2)

    def task_classes(self, task_id: int | None = None) -> tuple[int, int]:
        """The data set classes of a task's labels 0 and 1 (default: the current task)."""
        if self.pairs is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() first")
        task = self.current_task if task_id is None else int(task_id)
        return int(self.pairs[task, 0]), int(self.pairs[task, 1])

    def _images_of(self, task_id: int) -> np.ndarray:
        """``(2, per_class, 3072)`` uint8 images of the task's two classes (kept for the task)."""
        if self._pair_task != task_id:
            a, b = self.task_classes(task_id)
            self._pair_images = np.stack([self.dataset.images(a), self.dataset.images(b)])
            self._pair_task = task_id
        return self._pair_images  # type: ignore[return-value]

    def _order_of(self, task_id: int, phase: str, epoch: int) -> np.ndarray:
        key = (task_id, phase, epoch)
        if self._order_key != key:
            n = 2 * (self.train_per_class if phase == "train" else self.test_per_class)
            self._order = self._epoch_rng(task_id, phase, epoch).permutation(n)
            self._order_key = key
        return self._order  # type: ignore[return-value]

    def _fill(self, task_id: int, phase: str, epoch: int, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        index = self._order_of(task_id, phase, epoch)[start:stop]
        per_class = self.train_per_class if phase == "train" else self.test_per_class
        labels, image = np.divmod(index, per_class)
        if phase != "train":
            image += self.train_per_class  # the test images follow the training images
        to_float(self._images_of(task_id)[labels, image], self._table, out=out)
        return labels

    def _probe(self, task_id: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        index = rng.choice(2 * self.train_per_class, size=n, replace=n > 2 * self.train_per_class)
        labels, image = np.divmod(index, self.train_per_class)
        return to_float(self._images_of(task_id)[labels, image], self._table), labels.astype(np.int64)
