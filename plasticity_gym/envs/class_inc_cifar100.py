"""ClassIncCIFAR100-v0: class-incremental CIFAR-100 (Dohare et al. 2024, Methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from plasticity_gym.data.augment import Augmentation, augmentation_map, draw_augmentation, standardize_table, to_float
from plasticity_gym.data.cifar100 import DATA_SOURCES, N_CLASSES, CifarSplits, load_cifar100
from plasticity_gym.envs.phased import IMAGE_SHAPE, PhasedStreamEnv
from plasticity_gym.envs.stream import ROLE_STRUCTURE, StreamEndedError


class ClassIncCIFAR100Env(PhasedStreamEnv):
    """CIFAR-100 classes arriving five at a time; training on all classes seen so far.

    ## Description
    The 100 classes are put in a random order drawn from the stream seed (the same for every
    agent given that seed); label ``k`` is the ``k``-th class of that order. Increment ``j``
    (``task_id`` j, counting from 0) makes the first ``5 (j + 1)`` classes available: it trains
    for ``epochs`` epochs over the training images of all those classes (a fresh random order
    each epoch, mini-batches of ``batch_size``), with a ``val`` phase over their validation
    images after every epoch, and ends with a ``test`` phase over their test images. Per class,
    the first 50 images of the official train split (file order) are validation images, the next
    450 training images, and the 100 of the test split test images (the authors' split).
    Validation and test batches hold only classes seen so far, and are never augmented.

    ## Observation space
    ``(batch_size, 3, 32, 32)`` float32, channels first (R, G, B): pixels divided by 255, then
    standardized per channel with the mean and standard deviation of the train-split images
    (the bounds of the ``Box`` are those of 0 and 255 after standardization). Training batches
    are augmented, each image independently: a horizontal flip with probability 0.5, a random
    32×32 crop of the image padded by 4 pixels by reflection, a rotation by an angle uniform in
    [0°, 15°]; pixels from outside the rotated image are 0 (the channel mean).

    ## Action space
    ``MultiDiscrete([100] * batch_size)``: the predicted label of every image. Only labels below
    ``info["n_classes"]`` can be right.

    ## Rewards
    The fraction of the batch predicted correctly.

    ## Info
    ``target``, ``task_id`` (the increment), ``task_boundary``, ``phase`` (``"train"``, ``"val"``
    or ``"test"``), ``epoch`` (0..epochs-1 in training and validation, ``epochs`` in the test
    phase), ``step_in_task``, ``n_classes`` (classes available in the increment: 5, 10, ...),
    ``train_epochs`` (the training epochs of every increment, for a per-epoch step-size schedule),
    and the ``next_`` versions of these for the returned batch. Agents must not learn from
    ``target`` in ``val`` and ``test`` phases. A validation or test pass whose size
    ``batch_size`` does not divide ends with a partial batch (zero rows pad the observation;
    ``target`` has the real examples only).

    ## Episode end
    ``truncated`` is True on the step scoring the last test batch of the last increment.

    ## Arguments
    ``gym.make("ClassIncCIFAR100-v0", scale="cpu", **kwargs)`` with:

    * ``data``: ``"synthetic"`` (a procedurally generated 100-class stand-in, named
      ``synthetic-cifar100`` in ``data_id``; offline) or ``"cifar100"`` (the official
      ``cifar-100-python`` pickles; never silently replaced by the stand-in).
    * ``data_dir``: where ``cifar-100-python/`` is (otherwise ``$PLASTICITY_GYM_DATA`` and the
      cache directory are searched); ``download``: fetch it with torchvision if missing.
    * ``n_increments`` (at most 100 / ``classes_per_increment``), ``classes_per_increment``,
      ``epochs``, ``batch_size`` (must divide ``classes_per_increment * train_per_class``),
      ``train_per_class``, ``val_per_class``, ``test_per_class`` (the paper's 450, 50, 100),
      ``augment`` (False turns the training augmentation off).

    ## Scales
    ============  =========  ==========  ======  =======================  =======================
    scale         data       increments  epochs  train / val / test       train steps, all incr.
    ============  =========  ==========  ======  =======================  =======================
    ``smoke``     synthetic  2           2       18 / 4 / 4 per class     6
    ``cpu``       synthetic  20          2       36 / 4 / 20 per class    840
    ``paper``     cifar100   20          200     450 / 50 / 100           1,050,000
    ============  =========  ==========  ======  =======================  =======================

    ``paper`` is the paper's protocol (for a GPU). ``cpu`` is sized so that one reference entry
    (3 seeds) costs about 5 core-minutes on a 2-core machine: all 20 increments and batches of 90,
    but 36 / 4 / 20 of the 450 / 50 / 100 images per class and 2 (of 200) epochs per increment,
    840 training steps per seed. The reference agents' defaults at this scale use ResNet-18 at an
    eighth of the paper's width (``width`` 8: 8 stem channels, 64 units in the last block, ≈80 ms
    per SGD step of a batch of 90 on one CPU core; the paper's width 64 costs ≈2.5 s). With a
    plasticity probe at every increment that is ≈90 core-seconds per seed. Each increment is
    trained far from convergence, so this scale measures the start of class-incremental
    learning, not the loss of plasticity the paper reports after 200 epochs per increment.
    """

    default_config: ClassVar[dict[str, Any]] = {
        "data": "synthetic",
        "data_dir": None,
        "download": False,
        "n_increments": 20,
        "classes_per_increment": 5,
        "epochs": 200,
        "batch_size": 90,
        "train_per_class": 450,
        "val_per_class": 50,
        "test_per_class": 100,
        "augment": True,
    }
    scales: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"data": "synthetic", "n_increments": 2, "epochs": 2, "train_per_class": 18,
                  "val_per_class": 4, "test_per_class": 4},
        "cpu": {"data": "synthetic", "n_increments": 20, "epochs": 2, "train_per_class": 36,
                "val_per_class": 4, "test_per_class": 20},
        "paper": {"data": "cifar100", "n_increments": 20, "epochs": 200, "train_per_class": 450,
                  "val_per_class": 50, "test_per_class": 100},
    }
    _transient_attrs: ClassVar[tuple[str, ...]] = ("_epoch_key", "_epoch_order", "_epoch_aug")

    def _configure(self, config: dict[str, Any]) -> dict[str, Any]:
        if config["data"] not in DATA_SOURCES:
            raise ValueError(f"data={config['data']!r}; expected one of {list(DATA_SOURCES)}")
        for flag in ("download", "augment"):
            if not isinstance(config[flag], bool):
                raise ValueError(f"{flag} must be a bool, got {config[flag]!r}")
        data_dir = config["data_dir"]
        if config["data"] == "synthetic" and (data_dir is not None or config["download"]):
            raise ValueError("data_dir and download apply to data='cifar100' only, but data='synthetic'; "
                             "pass data='cifar100' (or scale='paper') to use the real images")
        if data_dir is not None:
            data_dir = str(Path(data_dir).expanduser())
        check = self._check_positive_int
        self.n_tasks = check("n_increments", config["n_increments"])
        self.classes_per_increment = check("classes_per_increment", config["classes_per_increment"])
        if self.n_tasks * self.classes_per_increment > N_CLASSES:
            raise ValueError(f"n_increments * classes_per_increment = {self.n_tasks * self.classes_per_increment} "
                             f"exceeds the {N_CLASSES} classes")
        self.epochs = check("epochs", config["epochs"])
        self.train_per_class = check("train_per_class", config["train_per_class"])
        self.val_per_class = check("val_per_class", config["val_per_class"])
        self.test_per_class = check("test_per_class", config["test_per_class"])
        self.batch_size = check("batch_size", config["batch_size"])
        self.augment: bool = config["augment"]
        self.dataset: CifarSplits = load_cifar100(
            config["data"], data_dir, config["download"],
            train_per_class=self.train_per_class + self.val_per_class, test_per_class=self.test_per_class)
        self.x_shape = IMAGE_SHAPE
        self.task_kind = "classification"
        self.n_classes = N_CLASSES
        self.data_id = dict(self.dataset.data_id)
        self._table = standardize_table(self.dataset.mean, self.dataset.std)
        segments = []
        for task in range(self.n_tasks):
            k = self.classes_per_increment * (task + 1)
            for epoch in range(self.epochs):
                segments.append((task, "train", epoch, k * self.train_per_class, 1))
                segments.append((task, "val", epoch, k * self.val_per_class, 1))
            segments.append((task, "test", self.epochs, k * self.test_per_class, 1))
        self._set_schedule(segments)
        self.class_order: np.ndarray | None = None
        self._epoch_key: tuple[int, str, int] | None = None
        self._epoch_order: np.ndarray | None = None
        self._epoch_aug: Augmentation | None = None
        return {**config, "data_dir": data_dir}

    def _pixel_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._table[:, 0], self._table[:, 255]

    def _on_new_stream(self) -> None:
        self.class_order = self._rng(ROLE_STRUCTURE).permutation(N_CLASSES)

    def _task_extras(self, task_id: int) -> dict[str, Any]:
        return {"n_classes": self.classes_per_increment * (task_id + 1), "train_epochs": self.epochs}

    def seen_classes(self, task_id: int | None = None) -> np.ndarray:
        """Data set classes of labels ``0 .. n_classes - 1`` in an increment (default: the current one)."""
        if self.class_order is None:
            raise StreamEndedError(f"{type(self).__name__}: call reset() first")
        task = self.current_task if task_id is None else int(task_id)
        return self.class_order[: self.classes_per_increment * (task + 1)].copy()

    def _epoch(self, task_id: int, phase: str, epoch: int) -> tuple[np.ndarray, Augmentation | None]:
        """Example order (and training augmentation) of one pass; validation and test passes
        use one fixed order per increment."""
        key = (task_id, phase, epoch if phase == "train" else 0)
        if self._epoch_key != key:
            k = self.classes_per_increment * (task_id + 1)
            per_class = {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[phase]
            rng = self._epoch_rng(*key)
            self._epoch_order = rng.permutation(k * per_class)
            self._epoch_aug = draw_augmentation(rng, k * per_class) if phase == "train" and self.augment else None
            self._epoch_key = key
        return self._epoch_order, self._epoch_aug  # type: ignore[return-value]

    def _rows(self, phase: str, labels: np.ndarray, image: np.ndarray) -> np.ndarray:
        classes = self.class_order[labels]  # type: ignore[index]
        if phase == "test":
            return self.dataset.test.array[classes, image]
        if phase != "val":
            image = image + self.val_per_class  # training images follow the validation images
        return self.dataset.train.array[classes, image]

    def _fill(self, task_id: int, phase: str, epoch: int, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        order, aug = self._epoch(task_id, phase, epoch)
        per_class = {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[phase]
        labels, image = np.divmod(order[start:stop], per_class)
        mapping = None
        if aug is not None:
            mapping = augmentation_map(Augmentation(aug.flip[start:stop], aug.offset[start:stop], aug.angle[start:stop]))
        to_float(self._rows(phase, labels, image), self._table, mapping, out=out)
        return labels

    def _probe(self, task_id: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k = self.classes_per_increment * (task_id + 1)
        index = rng.choice(k * self.train_per_class, size=n, replace=n > k * self.train_per_class)
        labels, image = np.divmod(index, self.train_per_class)
        return to_float(self._rows("train", labels, image), self._table), labels.astype(np.int64)
