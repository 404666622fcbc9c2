"""ContinualImageNet-v0: binary tasks over pairs of ImageNet classes (Dohare et al. 2024)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from plasticity_gym.data.augment import scale_table, to_float
from plasticity_gym.data.images import ClassImages
from plasticity_gym.data.imagenet32 import DATA_SOURCES, load_imagenet32
from plasticity_gym.envs.phased import IMAGE_SHAPE, PhasedStreamEnv
from plasticity_gym.envs.stream import (
    ROLE_STRUCTURE,
    StreamEndedError,
)


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
    ``cpu``       synthetic   30       25      100 train, 100 test      50 train + 2 test steps
    ``paper``     imagenet32  5,000    250     600 train, 100 test      3,000 train + 2 test steps
    ============  ==========  =======  ======  =======================  ==========================

    ``paper`` is the paper's protocol (for a GPU). ``cpu`` is sized so that one reference entry
    (3 seeds) costs about 5 core-minutes on a 2-core machine: the paper's convnet and batches of
    100, but 30 tasks (of 5,000), 100 of the 600 training images of each class and 25 (of 250)
    epochs per task, so each task is 50 training steps and the stream 1,560 steps per seed
    (≈45 ms per SGD step on one CPU core; with a plasticity probe at every task, ≈80 core-seconds
    per seed). That is far too short to show loss of plasticity: over its 30 tasks backprop's
    test accuracy on the stand-in *rises* (from ≈64% on the first six tasks to ≈73% on the last
    six, one seed). The stand-in is learnable but not trivial: a task ends at ≈70–75% test
    accuracy here, and at ≈85% with all 600 training images of a class
    (``bench/standin_calibration.py --train-per-class 600``).
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
        "cpu": {"data": "synthetic", "n_tasks": 30, "epochs": 25, "train_per_class": 100, "test_per_class": 100},
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
