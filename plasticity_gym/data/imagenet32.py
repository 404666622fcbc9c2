"""Downsampled ImageNet 32×32 for Continual ImageNet: official files, a prepared array, the stand-in.

The official training files (https://image-net.org/download-images, "Downsampled ImageNet
32x32", login required) come as ``Imagenet32_train_npz/train_data_batch_{1..10}.npz`` or as the
pickled ``Imagenet32_train/train_data_batch_{1..10}``; each holds ``data``, an ``(N, 3072)``
uint8 array (R, G, B planes of 32×32 images), and ``labels``, N integers 1..1000.

Continual ImageNet uses 700 images of each of the 1,000 classes (600 train, 100 test).
:func:`convert_imagenet32` reads the official files once and writes the first 700 images of each
class in file order (batch 1 first) as one ``(1000, 700, 3072)`` uint8 array,
``imagenet32_700.npy`` (2.1 GB), with ``imagenet32_700.json`` beside it (its sha256 and sources).
The env opens that array as a memory map. The per-class layout of the paper's authors,
``classes/0.npy`` .. ``classes/999.npy`` (each at least 700 images, as ``(N, 3072)``,
``(N, 3, 32, 32)`` or ``(N, 32, 32, 3)`` uint8), is accepted too.

Both prepared layouts are looked for in ``data_dir``, ``$PLASTICITY_GYM_DATA`` and the user cache
directory, each as ``<root>/imagenet32/`` and ``<root>/`` itself. ``"synthetic"`` is the
procedurally generated 1,000-class stand-in; a run asking for the real data never gets it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from plasticity_gym.data.images import (
    IMAGE_BYTES,
    IMAGE_SIDE,
    ArrayClassImages,
    ClassImages,
    DataFormatError,
    arrays_digest,
    dict_entry,
    image_rows,
    label_vector,
    load_data_pickle,
)
from plasticity_gym.data.mnist import DataNotFoundError
from plasticity_gym.data.paths import DATA_ENV_VAR, cache_dir, search_roots
from plasticity_gym.data.synthetic import SyntheticClassImages

N_CLASSES = 1000
PER_CLASS = 700
SUBDIR = "imagenet32"
ARRAY_FILE = "imagenet32_700.npy"
META_FILE = "imagenet32_700.json"
CLASSES_DIR = "classes"
RAW_FOLDERS = ("Imagenet32_train_npz", "Imagenet32_train")
N_BATCHES = 10
DATA_SOURCES: tuple[str, ...] = ("synthetic", "imagenet32")
HOW_TO_GET = (
    "download the training files of 'Downsampled ImageNet 32x32' from https://image-net.org "
    "(a free login is needed), unpack Imagenet32_train_npz.zip (or Imagenet32_train.zip) into a "
    "directory DIR and run `plasticity-gym data imagenet32 --from DIR` once "
    "(plasticity_gym.data.imagenet32.convert_imagenet32); it writes "
    f"{ARRAY_FILE} into ${DATA_ENV_VAR}/{SUBDIR} if that is set, else into the cache directory"
)
_BATCH_NAME = re.compile(r"^train_data_batch_(\d+)(\.npz)?$")


# ------------------------------------------------------------------ official files


def read_imagenet32_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One official batch (``.npz`` or pickle): ``(images (N, 3072) uint8, classes (N,) 0..999)``.

    Classes are the file's labels minus one (the files count from 1).
    """
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                batch = {key: archive[key] for key in archive.files}
        except Exception as error:  # noqa: BLE001 - any reading failure means a malformed file
            raise DataFormatError(f"{path}: not a readable .npz archive: {error}") from error
    else:
        batch = load_data_pickle(path)
    images = image_rows(path, dict_entry(path, batch, "data"))
    labels = label_vector(path, dict_entry(path, batch, "labels"), images.shape[0], 1, N_CLASSES, "labels")
    return images, labels - 1


def find_imagenet32_batches(directory: str | os.PathLike) -> list[Path]:
    """The official training batches in ``directory`` (or in its ``Imagenet32_train_npz/`` or
    ``Imagenet32_train/`` folder), in batch order; ``.npz`` files first if both kinds are there."""
    directory = Path(directory).expanduser()
    for folder in (*(directory / name for name in RAW_FOLDERS), directory):
        if not folder.is_dir():
            continue
        found: dict[bool, dict[int, Path]] = {True: {}, False: {}}
        for entry in folder.iterdir():
            match = _BATCH_NAME.match(entry.name)
            if match and entry.is_file():
                found[match.group(2) is not None][int(match.group(1))] = entry
        for batches in (found[True], found[False]):
            if batches:
                return [batches[i] for i in sorted(batches)]
    return []


def default_output_dir() -> Path:
    """Where :func:`convert_imagenet32` writes by default: ``$PLASTICITY_GYM_DATA/imagenet32``, else the cache."""
    root = os.environ.get(DATA_ENV_VAR)
    return (Path(root).expanduser() if root else cache_dir()) / SUBDIR


def convert_imagenet32(
    source: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    per_class: int = PER_CLASS,
    progress: Any = None,
) -> Path:
    """Turn the official ImageNet32 training batches in ``source`` into the prepared array.

    Reads ``train_data_batch_1``, ``_2``, ... in order and keeps the first ``per_class`` images of
    every class in file order; writes ``imagenet32_700.npy`` (``(1000, per_class, 3072)`` uint8)
    and ``imagenet32_700.json`` into ``out_dir`` (default :func:`default_output_dir`) and returns
    the array's path. ``progress`` (optional) is called with a line of text per batch file.
    Raises :class:`DataFormatError` naming the file for a malformed batch, and if some class has
    fewer than ``per_class`` images in all the files.
    """
    batches = find_imagenet32_batches(source)
    if not batches:
        raise DataNotFoundError(
            f"no ImageNet32 training batches (train_data_batch_1[.npz] ...) in {Path(source)} or its "
            f"{' or '.join(RAW_FOLDERS)} folder; to get them: {HOW_TO_GET}"
        )
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    out = Path(out_dir).expanduser() if out_dir is not None else default_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    final, partial = out / ARRAY_FILE, out / (ARRAY_FILE + ".partial")
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                      shape=(N_CLASSES, per_class, IMAGE_BYTES))
    counts = np.zeros(N_CLASSES, dtype=np.int64)
    used: list[dict[str, Any]] = []
    try:
        for path in batches:
            if counts.min() >= per_class:
                break
            images, classes = read_imagenet32_batch(path)
            # Rank of each image among its class's images so far (file order): keep ranks < per_class.
            order = np.argsort(classes, kind="stable")
            sorted_classes = classes[order]
            first = np.searchsorted(sorted_classes, sorted_classes, side="left")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size) - first + counts[sorted_classes]
            keep = rank < per_class
            array[classes[keep], rank[keep]] = images[keep]
            counts += np.bincount(classes, minlength=N_CLASSES)
            used.append({"file": path.name, "bytes": path.stat().st_size, "images": int(images.shape[0])})
            if progress is not None:
                progress(f"{path}: {images.shape[0]} images; {int((counts >= per_class).sum())} of "
                         f"{N_CLASSES} classes complete")
        short = np.flatnonzero(counts < per_class)
        if short.size:
            c = int(short[0])
            raise DataFormatError(
                f"{Path(source)}: class {c} (label {c + 1}) has {int(counts[c])} images in "
                f"{', '.join(p.name for p in batches)}; {per_class} are needed "
                f"({short.size} classes are short)"
            )
        array.flush()
        sha256 = arrays_digest(array[c] for c in range(N_CLASSES))
    except BaseException:
        del array
        partial.unlink(missing_ok=True)
        raise
    del array
    os.replace(partial, final)
    stat = final.stat()
    meta = {"format": "plasticity-gym imagenet32 per-class array v1", "shape": [N_CLASSES, per_class, IMAGE_BYTES],
            "dtype": "uint8", "order": "first images of each class in file order (batch 1 first)",
            "sha256": sha256, "array_bytes": stat.st_size, "array_mtime_ns": stat.st_mtime_ns, "sources": used}
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return final


# ------------------------------------------------------------------ prepared layouts


class ClassFileImages(ClassImages):
    """The per-class layout ``classes/{c}.npy``: each file memory-mapped when its class is used."""

    def __init__(self, directory: Path, per_class: int, data_id: dict[str, Any] | None = None):
        self.directory = directory
        self.n_classes, self.per_class = N_CLASSES, per_class
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.data_id = data_id if data_id is not None else _classes_data_id(directory, per_class)

    def images(self, c: int) -> np.ndarray:
        c = self.check_class(c)
        images = self._cache.get(c)
        if images is None:
            images = read_class_file(self.directory / f"{c}.npy", self.per_class)
            self._cache[c] = images
            if len(self._cache) > 8:
                self._cache.popitem(last=False)
        return images

    def __reduce__(self) -> tuple[Any, ...]:
        return (ClassFileImages, (self.directory, self.per_class, self.data_id))


def read_class_file(path: Path, per_class: int) -> np.ndarray:
    """The first ``per_class`` images of one ``classes/{c}.npy`` file as ``(per_class, 3072)`` uint8."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # noqa: BLE001
        raise DataFormatError(f"{path}: not a readable .npy array: {error}") from error
    if array.dtype != np.uint8:
        raise DataFormatError(f"{path}: dtype {array.dtype}; expected uint8 images")
    shapes = {(IMAGE_BYTES,): "rows", (3, IMAGE_SIDE, IMAGE_SIDE): "chw", (IMAGE_SIDE, IMAGE_SIDE, 3): "hwc"}
    layout = shapes.get(tuple(array.shape[1:]))
    if layout is None or array.shape[0] < per_class:
        raise DataFormatError(
            f"{path}: shape {array.shape}; expected at least {per_class} images as (N, 3072), "
            "(N, 3, 32, 32) or (N, 32, 32, 3)"
        )
    array = array[:per_class]
    if layout == "hwc":  # to R, G, B planes
        array = np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    return array.reshape(per_class, IMAGE_BYTES)


def _classes_data_id(directory: Path, per_class: int) -> dict[str, Any]:
    files = [directory / f"{c}.npy" for c in range(N_CLASSES)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataFormatError(f"{directory}: {len(missing)} class files missing (e.g. {missing[0]}); "
                              f"expected 0.npy .. {N_CLASSES - 1}.npy")
    stamp = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return {"name": "imagenet32", "split": f"train (first {per_class} per class, {CLASSES_DIR}/ layout)",
            "n_examples": N_CLASSES * per_class,
            "sha256": _classes_digest(directory, per_class, tuple(stamp)), "path": str(directory)}


@functools.cache
def _classes_digest(directory: Path, per_class: int, stamp: tuple[tuple[int, int], ...]) -> str:
    del stamp  # cache key only
    return arrays_digest(read_class_file(directory / f"{c}.npy", per_class) for c in range(N_CLASSES))


def find_imagenet32(data_dir: str | os.PathLike | None = None) -> tuple[str, Path] | list[Path]:
    """``("array", path)`` or ``("classes", dir)`` of a prepared layout, or the directories tried."""
    tried: list[Path] = []
    for root in search_roots(data_dir):
        for directory in (root / SUBDIR, root):
            tried.append(directory)
            if (directory / ARRAY_FILE).is_file():
                return "array", directory / ARRAY_FILE
            if (directory / CLASSES_DIR / "0.npy").is_file():
                return "classes", directory / CLASSES_DIR
    return tried


def missing_imagenet32_error(tried: list[Path]) -> DataNotFoundError:
    looked = "\n".join(f"  {d}/{{{ARRAY_FILE},{CLASSES_DIR}/0..999.npy}}" for d in tried)
    raw = [d for d in tried if find_imagenet32_batches(d)]
    hint = (f"\nOfficial batches were found in {raw[0]}: run `plasticity-gym data imagenet32 --from "
            f"{raw[0]}` once to prepare them." if raw else "")
    return DataNotFoundError(
        "ImageNet32 (prepared for Continual ImageNet) not found (data='imagenet32' never falls back "
        f"to the synthetic stand-in). Looked for:\n{looked}{hint}\nTo get it: {HOW_TO_GET}; or use "
        "data='synthetic'."
    )


def _array_sha256(path: Path, used: np.ndarray) -> str:
    """The sha256 of the whole array at ``path``: the sidecar's, when it was recorded for this very
    file (its size and modification time), else computed once and recorded there. A sidecar copied
    from another array, or an array replaced under it, never lends its data identity."""
    meta_path = path.with_name(META_FILE)
    stat = path.stat()
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = None  # missing or unreadable: hash the array
    if not isinstance(meta, dict):
        meta = None
    elif (isinstance(meta.get("sha256"), str) and meta.get("array_bytes") == stat.st_size
          and meta.get("array_mtime_ns") == stat.st_mtime_ns):
        return meta["sha256"]
    sha256 = arrays_digest(used[c] for c in range(N_CLASSES))
    record = {**(meta or {"format": "plasticity-gym imagenet32 per-class array v1"}), "sha256": sha256,
              "array_bytes": stat.st_size, "array_mtime_ns": stat.st_mtime_ns}
    try:
        tmp = meta_path.with_name(f".{META_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, meta_path)
    except OSError:
        pass  # a read-only data folder: hashed again next time
    return sha256


@functools.cache
def _open_array(path: Path, mtime_ns: int, per_class: int) -> ArrayClassImages:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # noqa: BLE001
        raise DataFormatError(f"{path}: not a readable .npy array: {error}") from error
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] != N_CLASSES \
            or array.shape[2] != IMAGE_BYTES or array.shape[1] < per_class:
        raise DataFormatError(f"{path}: {array.dtype} array of shape {array.shape}; expected uint8 "
                              f"({N_CLASSES}, >= {per_class}, {IMAGE_BYTES}); convert again with "
                              "`plasticity-gym data imagenet32 --from DIR`")
    used = array[:, :per_class]
    sha256 = _array_sha256(path, used) if array.shape[1] == per_class else None
    if sha256 is None:
        sha256 = arrays_digest(used[c] for c in range(N_CLASSES))
    data_id = {"name": "imagenet32", "split": f"train (first {per_class} per class, file order)",
               "n_examples": N_CLASSES * per_class, "sha256": sha256, "path": str(path)}
    return ArrayClassImages(used, data_id, reload=(_open_array, (path, mtime_ns, per_class)))


def load_imagenet32(
    data: str = "synthetic", data_dir: str | os.PathLike | None = None, per_class: int = PER_CLASS
) -> ClassImages:
    """The 1,000 classes of ``per_class`` images named by ``data`` (``"synthetic"`` or ``"imagenet32"``)."""
    if data == "synthetic":
        if data_dir is not None:
            raise ValueError("data_dir applies to data='imagenet32' only, not to the synthetic stand-in")
        return SyntheticClassImages("imagenet32", per_class)
    if data != "imagenet32":
        raise ValueError(f"data={data!r} is not a known ImageNet source; expected one of {list(DATA_SOURCES)}")
    found = find_imagenet32(data_dir)
    if isinstance(found, list):
        raise missing_imagenet32_error(found)
    kind, path = found
    path = path.resolve()
    if kind == "array":
        return _open_array(path, path.stat().st_mtime_ns, per_class)
    return ClassFileImages(path, per_class)

