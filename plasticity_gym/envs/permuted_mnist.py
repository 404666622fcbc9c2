"""PermutedMNIST-v0: Online Permuted MNIST (Dohare et al. 2024, Methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from plasticity_gym.data.mnist import DATA_SOURCES, ImageDataset, check_full_training_set, load_mnist
from plasticity_gym.envs.stream import DEFAULT_SCALE, ROLE_TASK, SupervisedStreamEnv

N_PIXELS = 28 * 28
N_CLASSES = 10
PIXEL_MAX = np.float32(255)


class PermutedMNISTEnv(SupervisedStreamEnv):
    """A stream of MNIST digits whose pixels are shuffled by a new permutation at every task.

    ## Description
    Task ``k`` draws one uniformly random permutation of the 784 pixel positions from the stream
    seed and applies it to every image. When ``examples_per_task`` equals the number of images,
    each task shows every image exactly once, in a fresh random order; otherwise its examples
    are drawn uniformly with replacement. Nothing in the observation signals a task switch
    (``task_id`` is in ``info`` for logging).

    ## Observation space
    ``Box(0, 1, (batch_size, 784), float32)``: the images divided by 255, flattened row-major,
    then permuted; no other normalization.

    ## Action space
    ``MultiDiscrete([10] * batch_size)``: the predicted digit of every example of the batch. An
    action of another shape, a non-integer dtype or a label outside 0..9 raises ``ValueError``.

    ## Rewards
    The fraction of the batch predicted correctly (1.0 or 0.0 at batch size 1).

    ## Info
    The stream keys of ``SupervisedStreamEnv`` (design.md §1): ``target`` (int64 labels of the
    batch just scored), ``task_id``, ``task_boundary``, ``phase`` (always ``"train"``),
    ``step_in_task`` and ``next_task_id``, ``next_task_boundary``, ``next_phase``.

    ## Episode end
    ``truncated`` is True on the step scoring the last example of the last task; ``terminated``
    is never True. Stepping again raises ``StreamEndedError``: call ``reset``.

    ## Arguments
    ``gym.make("PermutedMNIST-v0", scale="cpu", **kwargs)`` with:

    * ``data``: ``"embedded"`` (5,000 real MNIST training digits shipped with the package) or
      ``"mnist"`` (the 60,000 training images from IDX files; never silently replaced).
    * ``data_dir``: directory holding the MNIST IDX files (plain or ``MNIST/raw/`` layout);
      otherwise ``$PLASTICITY_GYM_DATA`` and the user cache directory are searched.
    * ``download``: fetch MNIST with torchvision into the cache if it is missing (default False).
    * ``require_full_set``: at the ``paper`` scale with ``data="mnist"``, refuse IDX files that
      are not the 60,000-image training set (default True); ``False`` runs the paper's protocol
      on whatever the files hold. A guard, not part of the stream: it is not in ``config``; the
      data actually used is (``data_id``: its image count and sha256).
    * ``n_tasks``: number of tasks (permutations).
    * ``examples_per_task``: ``None`` means the number of images (each shown once per task).
    * ``batch_size``: examples per step; must divide ``examples_per_task``.

    ## Scales
    ============  ==========  ===========  ==================  ==========
    scale         data        n_tasks      examples_per_task   images
    ============  ==========  ===========  ==================  ==========
    ``smoke``     embedded    3            1,000 (replacement) 5,000
    ``cpu``       embedded    200          5,000 (each once)   5,000
    ``paper``     mnist       800          60,000 (each once)  60,000
    ============  ==========  ===========  ==================  ==========

    ``cpu`` is the calibrated CPU scale: a 3×100 ReLU MLP trained by backprop visibly loses
    plasticity over its 200 tasks. ``paper`` is the paper's protocol and needs the MNIST files.
    """

    default_config: ClassVar[dict[str, Any]] = {
        "data": "embedded",
        "data_dir": None,
        "download": False,
        "n_tasks": 200,
        "examples_per_task": None,
        "batch_size": 1,
    }
    scales: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"data": "embedded", "n_tasks": 3, "examples_per_task": 1000},
        "cpu": {"data": "embedded", "n_tasks": 200, "examples_per_task": None},
        "paper": {"data": "mnist", "n_tasks": 800, "examples_per_task": None},
    }
    chunk_examples: ClassVar[int] = 1024
    _transient_attrs: ClassVar[tuple[str, ...]] = ("_cached_task", "_permutation", "_order")

    def __init__(self, scale: str = DEFAULT_SCALE, render_mode: str | None = None, *,
                 require_full_set: bool = True, **kwargs: Any):
        if not isinstance(require_full_set, bool):
            raise ValueError(f"require_full_set must be a bool, got {require_full_set!r}")
        self.require_full_set = require_full_set
        super().__init__(scale, render_mode, **kwargs)

    def _configure(self, config: dict[str, Any]) -> dict[str, Any]:
        if config["data"] not in DATA_SOURCES:
            raise ValueError(f"data={config['data']!r}; expected one of {list(DATA_SOURCES)}")
        if not isinstance(config["download"], bool):
            raise ValueError(f"download must be a bool, got {config['download']!r}")
        data_dir = config["data_dir"]
        if config["data"] == "embedded" and (data_dir is not None or config["download"]):
            # Most likely data="mnist" was meant: refuse rather than quietly use the 5k digits.
            raise ValueError(
                "data_dir and download apply to data='mnist' only, but data='embedded' (the 5,000 "
                "digits shipped with the package); pass data='mnist' (or scale='paper') to use "
                "the MNIST IDX files"
            )
        if data_dir is not None:
            data_dir = str(Path(data_dir).expanduser())
        self.dataset: ImageDataset = load_mnist(config["data"], data_dir, config["download"])
        n_images = self.dataset.n_examples
        if n_images == 0:
            raise ValueError(f"the {self.dataset.data_id['name']} data set holds no images")
        if self.scale == "paper" and config["data"] == "mnist" and self.require_full_set:
            check_full_training_set(self.dataset, "PermutedMNIST-v0 at the paper scale")

        examples = config["examples_per_task"]
        examples = n_images if examples is None else self._check_positive_int("examples_per_task", examples)
        self.n_tasks = self._check_positive_int("n_tasks", config["n_tasks"])
        self.examples_per_task = examples
        self.batch_size = self._check_batch_size(config["batch_size"], examples)
        self.x_shape = (N_PIXELS,)
        self.task_kind = "classification"
        self.n_classes = N_CLASSES
        self.n_images = n_images
        # Every image exactly once per task only when a task is exactly one pass over the data.
        self.with_replacement = examples != n_images
        self.data_id = dict(self.dataset.data_id)
        self._cached_task: int | None = None
        self._permutation: np.ndarray | None = None
        self._order: np.ndarray | None = None
        return {**config, "data_dir": data_dir, "examples_per_task": examples}

    def _on_new_stream(self) -> None:
        pass  # Everything is per task: permutation and order come from the task's generator.

    def _task(self, task_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The pixel permutation and example order of ``task_id`` (cached for the current task)."""
        if self._cached_task != task_id:
            rng = self._rng(ROLE_TASK, task_id)
            self._permutation = rng.permutation(N_PIXELS)
            if self.with_replacement:
                self._order = rng.integers(0, self.n_images, size=self.examples_per_task)
            else:
                self._order = rng.permutation(self.n_images)
            self._cached_task = task_id
        return self._permutation, self._order  # type: ignore[return-value]

    def _images(
        self, indices: np.ndarray, permutation: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        pixels = self.dataset.images.take(indices, axis=0).take(permutation, axis=1)
        # float32(p) / float32(255), the exact quotient "pixels divided by 255" asks for.
        return np.divide(pixels, PIXEL_MAX, out=out, dtype=np.float32)

    def _generate(
        self, task_id: int, start: int, stop: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        permutation, order = self._task(task_id)
        indices = order[start:stop]
        labels = self.dataset.labels.take(indices).astype(np.int64)
        return self._images(indices, permutation, out), labels

    def _probe(self, task_id: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        permutation, _ = self._task(task_id)
        indices = rng.choice(self.n_images, size=n, replace=n > self.n_images)
        return self._images(indices, permutation), self.dataset.labels.take(indices).astype(np.int64)

    def task_permutation(self, task_id: int | None = None) -> np.ndarray:
        """The pixel permutation of a task (default: the current one): ``obs = image[perm]``."""
        permutation, _ = self._task(self.current_task if task_id is None else task_id)
        return permutation.copy()
