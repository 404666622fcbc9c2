"""Where a sweep's tasks run: ``local`` (this process, or a pool of worker processes on this
machine) or ``ray`` (Ray's task API, on a local instance or an existing cluster).

Both run :func:`plasticity_gym.harness.sweep_task.execute_task` on each task and hand every
:class:`~plasticity_gym.harness.sweep_task.TaskOutcome` to ``on_done`` as it arrives. A task
that raises is an outcome with its error; a worker that dies (killed, out of memory) fails only
the tasks it took with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from plasticity_gym.harness.sweep_task import Task, TaskOutcome, execute_task
from plasticity_gym.harness.threads import thread_env
from plasticity_gym.harness.workers import available_cores, die_with_parent

__all__ = ["available_cores", "run_local", "run_ray"]

OnDone = Callable[[Task, TaskOutcome], None]


def _worker_init(parent_pid: int, threads: int) -> None:
    """A local worker: ``threads`` CPU threads, and it dies with the sweep (a killed sweep must
    not leave workers writing into a folder that the next run of the sweep is using)."""
    os.environ.update(thread_env(threads))
    die_with_parent(parent_pid)


def run_local(tasks: Sequence[Task], out: Path, jobs: int, on_done: OnDone) -> None:
    """Run ``tasks`` with ``jobs`` worker processes (``jobs == 1``: in this process, in order)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            on_done(task, execute_task(task, str(out)))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(t.threads for t in tasks)
    # spawn: a fresh interpreter per worker (torch's threads do not survive a fork).
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(os.getpid(), threads)) as pool:
        futures = {pool.submit(execute_task, t, str(out)): t for t in tasks}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                outcome = fut.result()
            except BrokenProcessPool as exc:
                outcome = TaskOutcome(task.id, False, error=f"worker process died: {exc}")
            on_done(task, outcome)


def run_ray(tasks: Sequence[Task], out: Path, on_done: OnDone, *, address: str | None = None,
            num_cpus: int | None = None) -> None:
    """Run ``tasks`` as Ray tasks of ``task.threads`` CPUs each.

    Uses the Ray instance this process is already connected to; else connects to ``address``
    (``"auto"``: the cluster this machine belongs to, as ``ray start`` or a Slurm job set it up),
    or with no address starts a local instance of ``num_cpus`` CPUs and stops it at the end.
    Workers write result files into ``out``, which should be on a file system every node sees
    (results also come back to this process, which writes any a worker could not).
    """
    try:
        import ray
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install 'plasticity-gym[ray]' "
                         "(or pip install 'ray>=2.9')") from None
    started = not ray.is_initialized()
    if started:
        kwargs = {"include_dashboard": False, "log_to_driver": True}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(address=address, **kwargs)
    try:
        refs = {}
        for task in tasks:
            remote = ray.remote(num_cpus=task.threads, max_retries=0)(execute_task)
            refs[remote.remote(task, str(Path(out).resolve()))] = task
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                task = refs[ref]
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker or node fails only its task
                    outcome = TaskOutcome(task.id, False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                on_done(task, outcome)
    finally:
        if started:
            ray.shutdown()
