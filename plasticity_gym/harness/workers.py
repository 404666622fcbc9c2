"""One lockstep run's seeds split across worker processes: the whole CPU for a many-seed run.

On a CPU, a lockstep step is many small batched products, which torch's threads share poorly:
one process of 32 PermutedMNIST 3×100 CBP seeds with two threads ran 19,930 seed-examples/s on a
2-core machine, and two one-thread processes of 16 seeds each 26,286 together. So a
many-seed CPU run splits its seeds into contiguous parts, one per worker process (of one thread
on a machine with as many cores as workers),
each part run by the one run loop (:func:`plasticity_gym.harness.loop.run_segments`) with its own
checkpoint file, and merges their per-seed runs in seed order. A seed's stream and learner do
not depend on which other seeds share its process, so the result equals the one-process run's
to float rounding (the compiled kernels of different seed counts may round differently).
"""

from __future__ import annotations

import base64
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from plasticity_gym.harness.checkpoint import Checkpoint
from plasticity_gym.harness.loop import RunOutput
from plasticity_gym.harness.progress import Progress
from plasticity_gym.harness.threads import thread_env

__all__ = ["MIN_SEEDS_PER_WORKER", "WorkerError", "WorkerPart", "available_cores", "default_workers", "die_with_parent",
           "run_parts", "split_seeds", "threads_per_worker", "worker_main"]

# Below this many seeds per process a part's batched products are too small to gain from a
# process of its own (2-core machine, PermutedMNIST 3×100: 8 seeds as 4 + 4 ran 0.84-1.03x the
# one-process rate, 16 as 8 + 8 1.09-1.26x; docs/design.md).
MIN_SEEDS_PER_WORKER = 8


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, threads: int | None) -> int:
    """Each worker's threads: ``threads`` when given, else the cores shared out (at least 1)."""
    return threads if threads is not None else max(1, available_cores() // workers)


def default_workers(*, execution: str, device: str, n_seeds: int, threads: int | None) -> int:
    """Worker processes for a run given no ``workers``: one per core (at most one per
    :data:`MIN_SEEDS_PER_WORKER` seeds) for a lockstep run on the CPU with default threads;
    else 1. A run given ``threads`` is one of several sharing the machine: it stays one process."""
    if execution != "lockstep" or device != "cpu" or threads is not None:
        return 1
    return max(1, min(available_cores(), n_seeds // MIN_SEEDS_PER_WORKER))


def split_seeds(seeds: Sequence[int], workers: int) -> list[list[int]]:
    """``seeds`` in ``workers`` contiguous parts, their sizes differing by at most one."""
    if not 1 <= workers <= len(seeds):
        raise ValueError(f"workers must be between 1 and the number of seeds ({len(seeds)}), got {workers}")
    size, extra = divmod(len(seeds), workers)
    parts, start = [], 0
    for i in range(workers):
        end = start + size + (i < extra)
        parts.append(list(seeds[start:end]))
        start = end
    return parts


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process die when its parent does (Linux), so that a killed run leaves
    no worker writing into files that its next run will use."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


@dataclass(frozen=True)
class WorkerPart:
    """What one worker runs: ``evaluate``'s arguments for its part of the seeds (picklable)."""

    index: int
    env_id: str
    agent: str
    scale: str
    env_kwargs: Mapping[str, Any]
    overrides: Mapping[str, Any]
    seeds: tuple[int, ...]
    device: str
    probe_every: int | None
    probe_size: int
    bin_examples: int | None
    checkpoint: Path | None
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 0
    resume: bool = False
    threads: int = 1
    # What opens the part's segment, given the part (a module-level function, pickled by name);
    # None: a stream's lockstep lanes. An episodic run's part passes its own, with ``options``.
    open_segment: Callable[["WorkerPart"], Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def _run_part(part: WorkerPart) -> RunOutput:
    """In the worker: one lockstep segment over the part's seeds (or the segment that
    ``part.open_segment`` opens), through the one run loop;
    progress goes to stdout as lines of examples done (over the part's seeds)."""
    import functools

    from plasticity_gym.harness.lanes import LockstepLanes
    from plasticity_gym.harness.loop import Segment, run_segments
    from plasticity_gym.harness.resolve import resolve_agent
    from plasticity_gym.harness.threads import configure_cpu

    configure_cpu(part.threads)
    if part.open_segment is not None:
        segment = part.open_segment(part)
    else:
        spec = resolve_agent(part.agent, env_id=part.env_id, scale=part.scale, overrides=part.overrides)
        segment = Segment(f"part {part.index}", functools.partial(
            LockstepLanes.open, spec, part.env_id, part.scale, dict(part.env_kwargs), list(part.seeds),
            part.device), functools.partial(LockstepLanes.restore, spec, device=part.device))
    ckpt = None if part.checkpoint is None else Checkpoint(part.checkpoint, part.fingerprint)

    def report(examples: int) -> None:
        print(examples, flush=True)

    return run_segments(part.env_id, [segment], probe_every=part.probe_every, probe_size=part.probe_size,
                        bin_examples=part.bin_examples, checkpoint=ckpt, checkpoint_every=part.checkpoint_every,
                        resume=part.resume, report=report)


def worker_main(argv: Sequence[str]) -> int:
    """A worker process's main (argv: PARENT_PID): run the part pickled on stdin; the last line
    on stdout carries ``("ok", output)`` or ``("error", (type name, message, traceback))``."""
    (parent_pid,) = argv
    die_with_parent(int(parent_pid))
    try:
        outcome: tuple[str, Any] = ("ok", _run_part(pickle.load(sys.stdin.buffer)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        outcome = ("error", (type(exc).__name__, str(exc), traceback.format_exc()))
    print(_RESULT + base64.b64encode(pickle.dumps(outcome)).decode("ascii"), flush=True)
    return 0 if outcome[0] == "ok" else 1


_WORKER_COMMAND = ("import sys; from plasticity_gym.harness.workers import worker_main; "
                   "sys.exit(worker_main(sys.argv[1:]))")
_RESULT = "plasticity-gym-result:"  # the prefix of the worker's last line


class WorkerError(RuntimeError):
    """A worker process of a split run failed; the message carries its error and traceback
    (a ``ValueError``, bad input, is raised as itself)."""


def run_parts(parts: Sequence[WorkerPart], *, total: int, show_progress: bool, label: str) -> list[RunOutput]:
    """Run every part in its own process (of ``part.threads`` threads) at once; their outputs, in
    part order.

    Each worker is a fresh interpreter running :func:`worker_main`, given its part on stdin
    (no files: a killed run leaves nothing behind but its checkpoints): torch's threads do not
    survive a fork, and a spawned ``multiprocessing`` child would re-run the caller's script.
    ``total`` examples (over every seed) drive the progress line. A part that fails stops the
    others (their checkpoints stay for ``--resume``) and raises its error here.
    """
    env = {**os.environ, **thread_env(max(p.threads for p in parts)),
           "PYTHONPATH": os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    done = [0] * len(parts)
    outcomes: list[tuple[str, Any] | None] = [None] * len(parts)
    try:
        for part in parts:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_COMMAND, str(os.getpid())], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs.append(proc)
            readers.append(threading.Thread(target=_follow, args=(proc.stdout, done, outcomes, part.index),
                                            daemon=True))
            readers[-1].start()
            proc.stdin.write(pickle.dumps(part))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        bar: Progress | None = Progress(total, enabled=show_progress, label=label, check_every=1)
        running = set(range(len(parts)))
        while running:
            time.sleep(0.5)
            if bar is not None and sum(done) < total:
                bar.update(sum(done))
            elif bar is not None:  # every example done: end the line, not redrawn while workers finish
                bar.close(total)
                bar = None
            for i in sorted(running):
                if procs[i].poll() is None:
                    continue
                running.discard(i)
                readers[i].join()  # the result line is read to the end
                _check_outcome(parts[i], procs[i].returncode, outcomes[i])
        if bar is not None:
            bar.close(total)
        return [outcome[1] for outcome in outcomes]  # type: ignore[index]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait()
        for reader in readers:
            reader.join()


def _follow(stream: Any, done: list[int], outcomes: list[Any], index: int) -> None:
    """Read a worker's stdout: progress lines set ``done[index]``, the result line
    ``outcomes[index]``; other lines are the user's to see and are passed on."""
    for raw in stream:
        line = raw.decode("utf-8", "replace")
        if line.strip().isdigit():
            done[index] = int(line)
        elif line.startswith(_RESULT):
            outcomes[index] = pickle.loads(base64.b64decode(line[len(_RESULT):].strip()))
        else:
            sys.stdout.write(line)


def _check_outcome(part: WorkerPart, returncode: int, outcome: tuple[str, Any] | None) -> None:
    if outcome is None:
        raise WorkerError(f"worker {part.index} (seeds {list(part.seeds)}) exited with code {returncode} "
                          "without a result (killed, or out of memory?); its checkpoint stays for --resume")
    status, payload = outcome
    if status == "error":
        name, message, trace = payload
        if name == "ValueError":  # bad input: the same clear error as in one process
            raise ValueError(message)
        raise WorkerError(f"worker {part.index} (seeds {list(part.seeds)}) failed: {name}: {message}\n{trace}")
