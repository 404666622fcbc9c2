"""CIFAR-100 for the class-incremental stream: the official pickles, or the offline stand-in.

Two sources, never substituted for one another:

* ``"cifar100"``: the official ``cifar-100-python/train`` and ``cifar-100-python/test`` pickles
  (torchvision's folder layout): dicts whose ``data`` is an ``(N, 3072)`` uint8 array (R, G, B
  planes of 32×32 images) and ``fine_labels`` the N labels 0..99. Looked for in ``data_dir``,
  ``$PLASTICITY_GYM_DATA`` and the user cache directory, each both as ``<root>/cifar-100-python/``
  and as ``<root>/`` itself. ``download=True`` fetches them with ``torchvision.datasets.CIFAR100``
  into the cache directory, and only when asked.
* ``"synthetic"``: the procedurally generated 100-class stand-in
  (:mod:`plasticity_gym.data.synthetic`), 600 images per class: the first 500 play the official
  train split, the last 100 the test split.

Either way the result is a :class:`CifarSplits`: per class, the first ``train_per_class`` images
of the train split in file order and the first ``test_per_class`` of the test split, and the
per-channel mean and standard deviation of those train-split images.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plasticity_gym.data.augment import channel_stats
from plasticity_gym.data.images import (
    ArrayClassImages,
    arrays_digest,
    dict_entry,
    group_by_class,
    image_rows,
    label_vector,
    load_data_pickle,
)
from plasticity_gym.data.mnist import DataNotFoundError
from plasticity_gym.data.paths import DATA_ENV_VAR, cache_dir, search_roots
from plasticity_gym.data.synthetic import SETS, standin_cifar100

FOLDER = "cifar-100-python"
N_CLASSES = 100
TRAIN_PER_CLASS = 500  # in the official train split
TEST_PER_CLASS = 100
DATA_SOURCES: tuple[str, ...] = ("synthetic", "cifar100")
HOW_TO_GET = (
    "download and unpack https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (it holds the "
    "cifar-100-python/ folder) into a directory and pass data_dir=... or set "
    f"${DATA_ENV_VAR}; or pass download=True to fetch it with torchvision into the cache directory"
)


@dataclass(frozen=True)
class CifarSplits:
    """Per-class train-split and test-split images, their channel statistics and identity."""

    train: ArrayClassImages  # (100, train_per_class, 3072)
    test: ArrayClassImages  # (100, test_per_class, 3072)
    mean: np.ndarray  # (3,) over the train-split images, on the 0..1 scale
    std: np.ndarray
    data_id: dict[str, Any]
    reload: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles carry the call that loads the arrays again (memoized per process), not the arrays.
        return (load_cifar100, self.reload)


def read_cifar100_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One official pickle: ``(images (N, 3072) uint8, fine labels (N,) int64)``."""
    path = Path(path)
    batch = load_data_pickle(path)
    images = image_rows(path, dict_entry(path, batch, "data"))
    labels = label_vector(path, dict_entry(path, batch, "fine_labels"), images.shape[0], 0, N_CLASSES - 1,
                          "fine_labels")
    return images, labels


def find_cifar100(data_dir: str | os.PathLike | None = None) -> tuple[Path, Path] | list[Path]:
    """``(train, test)`` pickle paths, or the list of directories that were searched."""
    tried: list[Path] = []
    for root in search_roots(data_dir):
        for directory in (root / FOLDER, root):
            tried.append(directory)
            train, test = directory / "train", directory / "test"
            if train.is_file() and test.is_file():
                return train, test
    return tried


def missing_cifar100_error(tried: list[Path]) -> DataNotFoundError:
    looked = "\n".join(f"  {d}/{{train,test}}" for d in tried)
    return DataNotFoundError(
        "CIFAR-100 not found (data='cifar100' never falls back to the synthetic stand-in). "
        f"Looked for:\n{looked}\nTo get it: {HOW_TO_GET}; or use data='synthetic'."
    )


def _download() -> None:
    try:
        from torchvision.datasets import CIFAR100
    except ImportError as error:  # pragma: no cover - torchvision is a dependency
        raise DataNotFoundError("download=True needs torchvision, which is not importable") from error
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    CIFAR100(root=str(target), train=True, download=True)


def _splits(name: str, train: np.ndarray, test: np.ndarray, sha256: str | None = None, **details: Any) -> CifarSplits:
    train.flags.writeable = False
    test.flags.writeable = False
    mean, std = channel_stats(train)
    data_id = {
        "name": name,
        "split": f"train split ({train.shape[1]} per class, file order) + test split "
                 f"({test.shape[1]} per class)",
        "n_examples": int(train.shape[0] * train.shape[1] + test.shape[0] * test.shape[1]),
        "sha256": sha256 or arrays_digest([train, test]),
        **details,
    }
    return CifarSplits(ArrayClassImages(train, data_id), ArrayClassImages(test, data_id), mean, std, data_id)


@functools.cache
def _read_official(train_path: Path, test_path: Path, mtimes: tuple[float, float],
                   train_per_class: int, test_per_class: int) -> CifarSplits:
    del mtimes  # part of the cache key only: a replaced file is read again
    images, labels = read_cifar100_file(train_path)
    train = group_by_class(images, labels, N_CLASSES, train_per_class, str(train_path))
    images, labels = read_cifar100_file(test_path)
    test = group_by_class(images, labels, N_CLASSES, test_per_class, str(test_path))
    return _splits("cifar100", train, test, files=[str(train_path), str(test_path)])


@functools.cache
def _standin(train_per_class: int, test_per_class: int) -> CifarSplits:
    whole = standin_cifar100(train_per_class + test_per_class)
    array = whole.array
    details = {k: v for k, v in whole.data_id.items() if k not in ("name", "split", "n_examples", "sha256")}
    return _splits(whole.data_id["name"], array[:, :train_per_class], array[:, train_per_class:],
                   sha256=whole.data_id["sha256"], **details)


def load_cifar100(
    data: str = "synthetic",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
) -> CifarSplits:
    """The per-class CIFAR-100 splits named by ``data`` (``"synthetic"`` or ``"cifar100"``)."""
    if data == "synthetic":
        if data_dir is not None or download:
            raise ValueError("data_dir and download apply to data='cifar100' only, not to the synthetic stand-in")
        if train_per_class + test_per_class > SETS["cifar100"]["per_class"]:
            raise ValueError(f"the stand-in has {SETS['cifar100']['per_class']} images per class; "
                             f"{train_per_class} + {test_per_class} were asked for")
        splits = _standin(train_per_class, test_per_class)
        return dataclasses.replace(splits, reload=(data, None, False, train_per_class, test_per_class))
    if data != "cifar100":
        raise ValueError(f"data={data!r} is not a known CIFAR-100 source; expected one of {list(DATA_SOURCES)}")
    found = find_cifar100(data_dir)
    if isinstance(found, list) and download:
        _download()
        found = find_cifar100(data_dir)
    if isinstance(found, list):
        raise missing_cifar100_error(found)
    train_path, test_path = (p.resolve() for p in found)
    splits = _read_official(train_path, test_path, (train_path.stat().st_mtime, test_path.stat().st_mtime),
                            train_per_class, test_per_class)
    # Unpickling reads the very files found now, whatever the search path says then.
    return dataclasses.replace(splits, reload=(data, str(train_path.parent), False, train_per_class, test_per_class))
