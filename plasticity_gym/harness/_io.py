"""Small I/O helpers shared by the harness: atomic writes and canonical hashing."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, numpy scalars/arrays, tuples and paths into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of ``obj`` that hashes are taken over (sorted keys, no spaces)."""
    return json.dumps(
        to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def sha256_of(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def usual_mode(mode: int) -> int:
    """``mode`` less the process's umask: what ``open``/``mkdir`` would give a new file or folder
    (``mkstemp``/``mkdtemp`` make theirs private)."""
    return mode & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to a uniquely named temp file in the target directory, fsync, then move it
    into place: ``os.replace``, or with ``replace=False`` an exclusive hard link that raises
    ``FileExistsError`` when ``path`` exists (of two writers of one new name, one wins and the
    other is told).

    A crash at any point leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, usual_mode(0o666))  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path, data)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _link_exclusive(tmp: str, path: Path, data: bytes) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:  # a file system without hard links: an exclusive create instead
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
            raise
        with open(path, "xb") as fh:
            fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")


def atomic_pickle(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def load_pickle(path: str | os.PathLike) -> Any:
    with open(path, "rb") as fh:
        return pickle.load(fh)


class JSONInputError(ValueError):
    """A JSON file that is too large or too deeply nested to read, or not JSON (one line)."""


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string literal (escapes included)


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``data`` (brackets inside strings
    do not count), found without parsing, so that a deep file is refused before a parser recurses."""
    brackets = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    step = (np.isin(brackets, (ord("["), ord("{"))).astype(np.int8)
            - np.isin(brackets, (ord("]"), ord("}"))).astype(np.int8))
    deepest, level = 0, 0
    for start in range(0, step.size, 1 << 22):  # in chunks: the running depth of a huge file stays small
        depth = np.cumsum(step[start:start + (1 << 22)], dtype=np.int64) + level
        if depth.size:
            deepest, level = max(deepest, int(depth.max())), int(depth[-1])
    return deepest


def read_json(path: str | os.PathLike, *, max_bytes: int, max_depth: int, what: str = "JSON file") -> Any:
    """``path`` parsed as JSON, refusing (:class:`JSONInputError`, one line) a file over
    ``max_bytes`` or nested deeper than ``max_depth`` before parsing it."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise JSONInputError(f"{path}: {size:,} bytes; a {what} is at most {max_bytes:,} bytes")
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise JSONInputError(f"{path}: over {max_bytes:,} bytes; a {what} is at most {max_bytes:,} bytes")
    depth = json_depth(data)
    if depth > max_depth:
        raise JSONInputError(f"{path}: nested {depth} levels deep; a {what} nests at most {max_depth} levels")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise JSONInputError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"{path} is not JSON: {exc}") from None
