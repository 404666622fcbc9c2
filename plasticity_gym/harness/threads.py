"""CPU settings of a run: its threads, and denormal floats flushed to zero.

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


def configure_cpu(threads: int | None = None) -> None:
    """A run's CPU settings: ``threads`` when given (:func:`set_threads`), and denormal floats
    flushed to zero. Running averages that decay where nothing feeds them (CBP's utilities of
    silent units, Adam's and momentum's moments of weights on always-zero inputs such as MNIST's
    border pixels) reach the denormal range after a few hundred to a few thousand steps, where
    the CPU computes about a hundred times slower: lockstep Adam on PermutedMNIST ran 3.3x slower
    after its first thousand steps. Values below 1.2e-38 becoming zero changes no result beyond
    float rounding. The setting reaches the threads that torch starts afterwards, so it is made
    before a run's first torch operation."""
    import torch

    torch.set_flush_denormal(True)
    if threads is not None:
        set_threads(threads)
