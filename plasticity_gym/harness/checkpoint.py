"""Checkpoints of a run: one pickle, written atomically, that names the run it belongs to.

A checkpoint holds the run's fingerprint (its arguments: a checkpoint is never resumed by another
run), what is finished, the state of the part in progress and every global RNG, so that a
resumed run produces the result of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from plasticity_gym.harness._io import atomic_pickle, load_pickle, to_jsonable

CHECKPOINT_FORMAT = 2


def rng_state() -> dict[str, Any]:
    """The global RNG states (Python, numpy, torch, CUDA when in use)."""
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def agent_blob(agent: Any) -> tuple[str, Any]:
    """A picklable snapshot of an agent: its own ``state_dict`` if it has one, else itself."""
    if callable(getattr(agent, "state_dict", None)) and callable(getattr(agent, "load_state_dict", None)):
        return ("state_dict", agent.state_dict())
    return ("object", agent)


def restore_agent(blob: tuple[str, Any], build: Any) -> Any:
    """The agent of :func:`agent_blob`; ``build()`` makes a fresh one to load a state into."""
    kind, payload = blob
    if kind == "object":
        return payload
    agent = build()
    agent.load_state_dict(payload)
    return agent


class Checkpoint:
    """The checkpoint file of one run, identified by ``fingerprint`` (JSON-able arguments)."""

    def __init__(self, path: str | os.PathLike, fingerprint: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = to_jsonable(dict(fingerprint))

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` with the fingerprint and the global RNG states, atomically."""
        atomic_pickle(self.path, {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint,
                                  "rng": rng_state(), **state})

    def load(self) -> dict[str, Any]:
        """The saved state; errors when it is unreadable, or belongs to another run or format."""
        try:
            payload = load_pickle(self.path)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError,
                ValueError) as exc:  # what unpickling a cut-off or overwritten file raises
            raise ValueError(f"{self.path} is not a readable checkpoint (truncated or corrupt: "
                             f"{type(exc).__name__}: {exc}); run with --fresh (or delete it) to start "
                             "over") from None
        if not isinstance(payload, dict):
            raise ValueError(f"{self.path} is not a checkpoint of plasticity-gym; run with --fresh (or "
                             "delete it) to start over")
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.path}: checkpoint format {payload.get('format')!r} is not this version's "
                             f"({CHECKPOINT_FORMAT}); delete it to start afresh")
        theirs, ours = payload["fingerprint"], self.fingerprint
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ValueError(
                f"{self.path} belongs to a different run (differs in: {', '.join(diff)}); "
                "use the same arguments, or delete the checkpoint to start afresh"
            )
        return payload

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()


def part_checkpoint(path: str | os.PathLike, index: int, parts: int) -> Path:
    """The checkpoint of part ``index`` of ``parts`` of a run split across worker processes,
    beside the run's own checkpoint ``path``."""
    return Path(f"{path}.part-{index}-of-{parts}")


def part_checkpoints(path: str | os.PathLike) -> list[Path]:
    """Every part checkpoint (:func:`part_checkpoint`) that exists beside ``path``."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(path.name)}.part-*-of-*")) if path.parent.is_dir() else []


def open_part_manifest(ckpt: Checkpoint | None, workers: int, resume: bool) -> list[Path | None]:
    """The part checkpoints of a run split into ``workers`` processes (``None`` each without a
    checkpoint). ``ckpt`` becomes the run's manifest: it holds no state, but its fingerprint ties
    the part checkpoints beside it to this run and this many workers. Refuses existing
    checkpoints unless ``resume``."""
    if ckpt is None:
        return [None] * workers
    paths: list[Path | None] = [part_checkpoint(ckpt.path, i, workers) for i in range(workers)]
    existing = [p for p in [ckpt.path, *part_checkpoints(ckpt.path)] if p.exists()]
    if existing and not resume:
        raise ValueError(f"checkpoint {existing[0]} exists (an interrupted run): pass resume=True "
                         "(--resume) to continue it, or delete it (--fresh) to start over")
    if ckpt.exists():
        ckpt.load()  # raises when it belongs to another run, or to a run with other workers
    else:
        ckpt.save({"parts": [str(p) for p in paths]})
    return paths


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a file this process can create or replace, checked before any work starts.

    Raises ``ValueError`` naming ``what`` (e.g. ``--out``) and the problem: the path is a
    directory, a parent is a file, or the nearest existing parent cannot be written. Nothing is
    left behind (missing parents are created later, by the write itself).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name (e.g. {path / 'result.json'})")
    parent = path.parent
    while not parent.exists():  # the nearest existing ancestor decides
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is not a directory (it is a file); choose another path")
    try:  # root may write where os.access says no, and /proc says yes where nobody can: try it
        probe = tempfile.mkdtemp(prefix=".plasticity-gym-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot write in {parent} ({exc.strerror or exc}); choose a "
                         "writable path") from None
    return path


class RunLockedError(ValueError):
    """Another process holds the lock of a run's output (it is writing the same files)."""


def _lock(path: Path) -> int:
    """An exclusive ``flock`` on ``path`` (created), or :class:`RunLockedError` at once."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise RunLockedError(f"another run{f' (pid {holder})' if holder.isdigit() else ''} is writing "
                                 f"{str(path)[:-len('.lock')]}; wait for it to end, or give this one another --out"
                                 ) from None
        try:  # the holder before us may have removed the file: lock the one that is there
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def exclusive_run(paths: Any) -> Iterator[None]:
    """Hold ``<path>.lock`` for every path in ``paths`` (a run's result and checkpoint files) while
    the run lasts: a second run writing the same files refuses at once (:class:`RunLockedError`)
    instead of overwriting the first one's checkpoint. The lock goes with the process, so a killed
    run leaves none; stale temp files of killed writes to these paths are removed on entry and exit."""
    try:
        import fcntl  # noqa: F401 - POSIX; elsewhere runs are not locked
    except ImportError:
        yield
        return
    held: list[tuple[Path, int]] = []
    try:
        for path in dict.fromkeys(Path(p) for p in paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = path.with_name(path.name + ".lock")
            held.append((lock, _lock(lock)))
        for path, _ in held:
            remove_stale_temps(path.with_name(path.name[:-len(".lock")]))
        yield
        for path, _ in held:
            remove_stale_temps(path.with_name(path.name[:-len(".lock")]))
    finally:
        for lock, fd in reversed(held):
            with contextlib.suppress(OSError):
                lock.unlink()  # while still held: the next run locks a fresh file
            os.close(fd)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that killed atomic writes of ``path`` (and of its part checkpoints)
    left behind: ``.<name>.*.tmp`` and ``.<name>.part-*.tmp`` beside it. Only safe while no other
    process writes ``path`` (:func:`exclusive_run`)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
