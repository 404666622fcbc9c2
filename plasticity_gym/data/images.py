"""Per-class stores of 32×32×3 uint8 images, shared by the CIFAR-100 and ImageNet32 data sets.

An image is one row of 3,072 bytes in the layout of CIFAR and ImageNet32: the red plane, then
green, then blue, each 32×32 row-major (so ``row.reshape(3, 32, 32)`` is channels-first). A
:class:`ClassImages` holds ``n_classes`` classes of ``per_class`` images each and hands out one
class at a time, so that a memory map or a generator never has to be read whole.

Also here: :class:`DataFormatError` (a malformed data file, named in the message), a restricted
pickle loader for the official pickled batches (it refuses anything but plain containers and
numpy arrays, so a pickle cannot run code), and the digests that identify a data set.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

IMAGE_SIDE = 32
IMAGE_BYTES = 3 * IMAGE_SIDE * IMAGE_SIDE  # 3,072


class DataFormatError(ValueError):
    """A data file is malformed; the message names the file and what was wrong."""


# What the official pickles (CIFAR-100, ImageNet32) are made of: containers and numpy arrays.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only arrays and containers)")


def load_data_pickle(path: str | os.PathLike) -> Any:
    """Unpickle an official data batch (bytes keys allowed), refusing any code object.

    Raises :class:`DataFormatError` naming ``path`` if it is not such a pickle.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataFormatError(f"{path}: cannot read the file: {error}") from error
    try:
        return _DataUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DataFormatError(f"{path}: not a readable data pickle: {error}") from error


def dict_entry(path: Path, batch: Any, key: str) -> Any:
    """``batch[key]`` of an unpickled batch dict whose keys may be ``str`` or ``bytes``."""
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: expected a dict of arrays, found a {type(batch).__name__}")
    for candidate in (key, key.encode()):
        if candidate in batch:
            return batch[candidate]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
    raise DataFormatError(f"{path}: no {key!r} entry (found {keys})")


def image_rows(path: Path, data: Any, what: str = "data") -> np.ndarray:
    """Check that ``data`` is an (N, 3072) uint8 array of 32×32×3 images (R, G, B planes)."""
    array = np.asarray(data)
    if array.ndim != 2 or array.shape[1] != IMAGE_BYTES:
        raise DataFormatError(
            f"{path}: {what!r} has shape {array.shape}; expected (N, {IMAGE_BYTES}) rows of 32x32 "
            "R, G, B planes"
        )
    if array.dtype != np.uint8:
        raise DataFormatError(f"{path}: {what!r} has dtype {array.dtype}; expected uint8")
    return array


def label_vector(path: Path, labels: Any, n: int, low: int, high: int, what: str) -> np.ndarray:
    """Check that ``labels`` are ``n`` integers in ``[low, high]``; returns them as int64."""
    try:
        array = np.asarray(labels)
    except Exception as error:  # noqa: BLE001
        raise DataFormatError(f"{path}: {what!r} is not an array of labels: {error}") from error
    if array.ndim != 1 or array.shape[0] != n:
        raise DataFormatError(f"{path}: {what!r} has shape {array.shape}; expected ({n},), one per image")
    if n and array.dtype.kind not in "iu":
        raise DataFormatError(f"{path}: {what!r} has dtype {array.dtype}; expected integers")
    array = array.astype(np.int64)
    if n and (array.min() < low or array.max() > high):
        bad = int(array.min() if array.min() < low else array.max())
        raise DataFormatError(f"{path}: {what!r} holds label {bad}, outside {low}..{high}")
    return array


def group_by_class(
    images: np.ndarray, labels: np.ndarray, n_classes: int, per_class: int, source: str
) -> np.ndarray:
    """The first ``per_class`` images of every class, in file order: ``(n_classes, per_class, 3072)``."""
    order = np.argsort(labels, kind="stable")  # stable: file order within each class
    counts = np.bincount(labels, minlength=n_classes)
    short = np.flatnonzero(counts < per_class)
    if short.size:
        c = int(short[0])
        raise DataFormatError(
            f"{source}: class {c} has {int(counts[c])} images, {per_class} are needed "
            f"({short.size} classes are short)"
        )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    picks = order[(starts[:, None] + np.arange(per_class)[None, :]).reshape(-1)]
    return images[picks].reshape(n_classes, per_class, IMAGE_BYTES)


class ClassImages:
    """``n_classes`` classes of ``per_class`` images: ``images(c)`` is ``(per_class, 3072)`` uint8.

    ``data_id`` identifies the set (name, split, n_examples, sha256, details). Subclasses keep
    their arrays out of pickles: they pickle as the call that loads them again.
    """

    n_classes: int
    per_class: int
    data_id: dict[str, Any]

    def images(self, c: int) -> np.ndarray:
        raise NotImplementedError

    def check_class(self, c: int) -> int:
        if not 0 <= int(c) < self.n_classes:
            raise IndexError(f"class {c} outside 0..{self.n_classes - 1}")
        return int(c)


class ArrayClassImages(ClassImages):
    """Classes stored as one ``(n_classes, per_class, 3072)`` uint8 array (or memory map)."""

    def __init__(self, array: np.ndarray, data_id: dict[str, Any],
                 reload: tuple[Callable[..., Any], tuple[Any, ...]] | None = None):
        if array.ndim != 3 or array.shape[2] != IMAGE_BYTES or array.dtype != np.uint8:
            raise ValueError(f"expected a (classes, images, {IMAGE_BYTES}) uint8 array, got "
                             f"{array.shape} {array.dtype}")
        self.array = array
        self.n_classes, self.per_class = int(array.shape[0]), int(array.shape[1])
        self.data_id = data_id
        self._reload = reload

    def images(self, c: int) -> np.ndarray:
        return self.array[self.check_class(c)]

    def __reduce__(self) -> tuple[Any, ...]:
        if self._reload is None:
            return (ArrayClassImages, (self.array, self.data_id))
        return self._reload


def arrays_digest(parts: Iterable[np.ndarray]) -> str:
    """sha256 of the C-order bytes of every array in turn (streamed: memory maps stay on disk)."""
    digest = hashlib.sha256()
    for part in parts:
        array = np.ascontiguousarray(part)
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()
