"""CPU threads of a run.

Alone, a run is fastest with torch's default (one thread per core). Several runs at once on
the same cores must each use fewer threads (1 when there are as many runs as cores): torch's
OpenMP threads spin-wait for work, and processes that together ask for more threads than there
are cores spin against each other (two default-threaded runs on 2 cores took 89 s each where
one alone took 17 s; with one thread each they took 28 s).
"""

from __future__ import annotations

import os

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that give a process (and the processes it starts) ``threads``
    threads; with one thread, OpenMP also sleeps instead of spin-waiting."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    env = {name: str(threads) for name in THREAD_ENV_VARS}
    if threads == 1:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in this process: ``torch.set_num_threads`` and the OpenMP/BLAS
    variables (these act fully only when set before torch is first imported, as the CLI does)."""
    os.environ.update(thread_env(threads))  # once torch runs, they still reach child processes
    import torch

    torch.set_num_threads(threads)
