"""MNIST training images for the supervised streams: the embedded 5k digits or the full IDX files.

Two sources, never substituted for one another:

* ``"embedded"``: 5,000 real MNIST training digits shipped inside the package
  (``embedded/mnist_5k.npz``; provenance and licence in ``embedded/README.md``).
* ``"mnist"``: the 60,000 training images read from the official IDX files
  (``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte``, raw or ``.gz``), looked for in
  ``data_dir``, then ``$PLASTICITY_GYM_DATA``, then the user cache directory, each in the plain
  layout and in torchvision's ``MNIST/raw/`` layout. ``download=True`` fetches them with
  ``torchvision.datasets.MNIST`` into the cache directory, and only when asked.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plasticity_gym.data.idx import IdxFormatError, read_idx
from plasticity_gym.data.paths import DATA_ENV_VAR, cache_dir, search_roots

EMBEDDED_FILE = Path(__file__).with_name("embedded") / "mnist_5k.npz"
IMAGES_FILE = "train-images-idx3-ubyte"
LABELS_FILE = "train-labels-idx1-ubyte"
# Relative sub-directories tried under every search root.
LAYOUTS: tuple[str, ...] = (".", os.path.join("MNIST", "raw"))
DATA_SOURCES: tuple[str, ...] = ("embedded", "mnist")
# The official training set: the paper's protocol shows each of these once per task.
MNIST_TRAIN_SIZE = 60_000


class DataNotFoundError(FileNotFoundError):
    """The requested data set is not on disk; the message lists where it was looked for."""


@dataclass(frozen=True)
class ImageDataset:
    """Images as flat uint8 rows with their labels; arrays are read-only and shared."""

    images: np.ndarray  # (n, n_pixels) uint8
    labels: np.ndarray  # (n,) uint8
    data_id: dict[str, Any]

    @property
    def n_examples(self) -> int:
        return int(self.images.shape[0])


def arrays_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the C-order bytes of ``images`` followed by those of ``labels`` (both uint8)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _dataset(name: str, images: np.ndarray, labels: np.ndarray, **extra: Any) -> ImageDataset:
    images = np.ascontiguousarray(images.reshape(images.shape[0], -1), dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    images.flags.writeable = False
    labels.flags.writeable = False
    data_id = {
        "name": name,
        "split": "train",
        "n_examples": int(images.shape[0]),
        "sha256": arrays_sha256(images, labels),
        **extra,
    }
    return ImageDataset(images=images, labels=labels, data_id=data_id)


@functools.cache
def load_embedded_mnist() -> ImageDataset:
    """The 5,000 real MNIST training digits that ship with the package (see embedded/README.md)."""
    with np.load(EMBEDDED_FILE) as archive:
        images, labels = archive["images"], archive["labels"]
    return _dataset("mnist-embedded-5k", images, labels)


def _find_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist_files(data_dir: str | os.PathLike | None = None) -> tuple[Path, Path] | list[Path]:
    """Locate the training IDX pair: ``(images, labels)``, or the list of directories tried."""
    tried: list[Path] = []
    for root in search_roots(data_dir):
        for layout in LAYOUTS:
            directory = (root / layout) if layout != "." else root
            tried.append(directory)
            images, labels = _find_file(directory, IMAGES_FILE), _find_file(directory, LABELS_FILE)
            if images is not None and labels is not None:
                return images, labels
    return tried


def _missing_data_error(tried: list[Path]) -> DataNotFoundError:
    looked = "\n".join(f"  {d}/{{{IMAGES_FILE},{LABELS_FILE}}}[.gz]" for d in tried)
    return DataNotFoundError(
        "MNIST training files not found (data='mnist' never falls back to the embedded digits). "
        f"Looked for:\n{looked}\n"
        "To get them: put the four-file MNIST IDX set (at least the two training files) in a "
        f"directory and pass data_dir=... or set ${DATA_ENV_VAR}; or pass download=True to fetch "
        f"them with torchvision into {cache_dir()}; or use data='embedded' for the 5,000 "
        "digits shipped with the package."
    )


def _download_mnist() -> None:
    try:
        from torchvision.datasets import MNIST
    except ImportError as error:  # pragma: no cover - torchvision is a dependency
        raise DataNotFoundError("download=True needs torchvision, which is not importable") from error
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    MNIST(root=str(target), train=True, download=True)


@functools.cache
def _load_idx_pair(images_path: Path, labels_path: Path, mtimes: tuple[float, float]) -> ImageDataset:
    del mtimes  # part of the cache key only: a replaced file is read again
    images = read_idx(images_path, expected_type=0x08, expected_ndim=3)
    labels = read_idx(labels_path, expected_type=0x08, expected_ndim=1)
    if images.shape[1:] != (28, 28):
        raise IdxFormatError(f"{images_path}: images are {images.shape[1:]}, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the counts must match"
        )
    if labels.size and labels.max() > 9:
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return _dataset("mnist", images, labels)


def load_mnist_idx(data_dir: str | os.PathLike | None = None, *, download: bool = False) -> ImageDataset:
    """Read the MNIST training set from IDX files (see the module docstring for the search)."""
    found = find_mnist_files(data_dir)
    if isinstance(found, list) and download:
        _download_mnist()
        found = find_mnist_files(data_dir)
    if isinstance(found, list):
        raise _missing_data_error(found)
    images_path, labels_path = (p.resolve() for p in found)
    return _load_idx_pair(
        images_path, labels_path, (images_path.stat().st_mtime, labels_path.stat().st_mtime)
    )


def check_full_training_set(dataset: ImageDataset, where: str) -> None:
    """Refuse an IDX pair that is not the 60,000-image MNIST training set where the protocol
    needs it (``where`` names who asks, and how to opt out)."""
    if dataset.n_examples != MNIST_TRAIN_SIZE:
        raise ValueError(
            f"{where} needs the {MNIST_TRAIN_SIZE:,}-image MNIST training set, but the IDX pair found holds "
            f"{dataset.n_examples:,} images (sha256 {dataset.data_id['sha256'][:12]}...); point data_dir at "
            "the full train-images/train-labels files, or pass require_full_set=False to run on these images "
            "(their count and sha256 are recorded in every result)"
        )


def load_mnist(
    data: str = "embedded", data_dir: str | os.PathLike | None = None, download: bool = False
) -> ImageDataset:
    """The MNIST training images named by ``data`` (``"embedded"`` or ``"mnist"``)."""
    if data == "embedded":
        return load_embedded_mnist()
    if data == "mnist":
        return load_mnist_idx(data_dir, download=download)
    raise ValueError(f"data={data!r} is not a known MNIST source; expected one of {list(DATA_SOURCES)}")
