"""Sweeps: seeds × a hyperparameter grid, then more seeds for the best setting, run locally or on
a Ray cluster, each run written as its own result file as soon as it finishes.

``run_sweep("examples/slow_regression_cbp_rate.toml")`` (``plasticity-gym sweep FILE``):

1. reads and checks the sweep file (:mod:`~plasticity_gym.harness.sweep_spec`), the env and the
   agent's config of every setting (:mod:`~plasticity_gym.harness.sweep_plan`), naming the line
   of anything wrong;
2. runs every setting on the search seeds: settings of one architecture together as one lockstep
   computation where the agent supports it, otherwise one run per setting and seed
   (:mod:`~plasticity_gym.harness.sweep_task`), on the chosen backend
   (:mod:`~plasticity_gym.harness.sweep_backends`);
3. selects the best setting(s) by the mean of the metric over the search seeds, and runs them on
   the final seeds;
4. writes the summary (:mod:`~plasticity_gym.harness.sweep_summary`): ``summary.md`` (a table with
   95% Student-t intervals, for a README), ``summary.json``, ``summary.png``, and one merged
   result entry per setting under ``settings/``.

Run again, the same sweep skips every finished run (its result file exists), resumes an
interrupted task from its checkpoint, and retries failed runs. The folder (default
``runs/sweeps/<name>``) holds ``runs/<setting>/seed-<s>.json`` (and ``seed-<s>.error.txt`` for a
failed run), ``tasks/`` (checkpoints and progress of unfinished tasks), and the summary files.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from plasticity_gym.harness._io import atomic_write_json, atomic_write_text
from plasticity_gym.harness.progress import progress_wanted
from plasticity_gym.harness.sweep_backends import available_cores, run_local, run_ray
from plasticity_gym.harness.sweep_plan import Plan, plan_sweep, plan_stage
from plasticity_gym.harness.sweep_spec import SweepError, SweepSpec, load_sweep
from plasticity_gym.harness.sweep_summary import SweepSummary, collect, merged_result, plot_sweep, select
from plasticity_gym.harness.sweep_task import Task, TaskOutcome, checkpoint_file, error_file, progress_file, run_file

__all__ = ["SweepError", "SweepReport", "run_sweep"]

BACKENDS = ("local", "ray")


@dataclass
class SweepReport:
    """What a call of :func:`run_sweep` did."""

    out: Path
    summary: SweepSummary | None
    computed: list[tuple[str, int]] = field(default_factory=list)  # (setting dir, seed) computed now
    skipped: int = 0  # runs already finished
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # (setting label, seed, error)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _fmt_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class SweepProgress:
    """The progress of a stage: runs done, running, failed, skipped, and an ETA from the work
    done this session (examples × runs, read from the tasks' progress files as they checkpoint).

    On a terminal the line is redrawn in place; in a log a full line is written every
    ``log_every`` seconds."""

    def __init__(self, name: str, out: Path, tasks: Sequence[Task], skipped: int, *, enabled: bool,
                 stream: TextIO | None = None, interval: float = 0.5, log_every: float = 30.0) -> None:
        self.name, self.out, self.tasks = name, out, list(tasks)
        self.skipped, self.enabled = skipped, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_every
        self.total_runs = sum(len(t.runs) for t in self.tasks)
        self.work = sum(t.examples_per_run * len(t.runs) for t in self.tasks)
        self.finished: dict[str, bool] = {}  # task id -> ok
        self.t0 = time.time()
        self.base = self._done_work()
        # Work advances in steps (a task's checkpoint, a task's end): the rate is measured up to
        # the last step, so the ETA does not drift up between two of them.
        self._last_work, self._last_change = self.base, self.t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, task: Task) -> tuple[int, float] | None:
        """(examples per run so far, mtime) of a task's progress file, None when it has none."""
        path = progress_file(self.out, task.id)
        try:
            import json

            return int(json.loads(path.read_text(encoding="utf-8"))["examples"]), path.stat().st_mtime
        except (OSError, ValueError, KeyError):
            return None

    def _done_work(self) -> int:
        done = 0
        for t in self.tasks:
            if self.finished.get(t.id):
                done += t.examples_per_run * len(t.runs)
            elif t.id not in self.finished:
                got = self._read(t)
                done += got[0] * len(t.runs) if got else 0
        return done

    def line(self) -> str:
        with self._lock:
            done_runs = sum(len(t.runs) for t in self.tasks if self.finished.get(t.id))
            failed = sum(len(t.runs) for t in self.tasks if self.finished.get(t.id) is False)
            running = 0
            for t in self.tasks:
                if t.id not in self.finished:
                    got = self._read(t)
                    running += len(t.runs) if got is not None and got[1] >= self.t0 - 1 else 0
            work = self._done_work()
        now = time.time()
        if work != self._last_work:
            self._last_work, self._last_change = work, now
        elapsed, measured = now - self.t0, self._last_change - self.t0
        rate = (work - self.base) / measured if measured > 0 else 0.0
        eta = max(0.0, (self.work - work) / rate - (now - self._last_change)) if rate > 0 else float("inf")
        pct = 100.0 * work / self.work if self.work else 100.0
        return (f"{self.name}: runs {done_runs}/{self.total_runs} done, {running} running, {failed} failed"
                + (f", {self.skipped} finished before" if self.skipped else "")
                + f" | {pct:5.1f}% of examples | {_fmt_duration(elapsed)} elapsed, ETA {_fmt_duration(eta)}")

    def task_done(self, task: Task, ok: bool) -> None:
        with self._lock:
            self.finished[task.id] = ok

    def _draw(self) -> None:
        text = self.line()
        self.stream.write(("\r" + text + "\x1b[K") if self.tty else text + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def __enter__(self) -> "SweepProgress":
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw()
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()


def _run_stage(plan: Plan, stage: str, tasks: list[Task], out: Path, report: SweepReport, *, backend: str,
               jobs: int, address: str | None, progress: bool, echo: Callable[[str], None], dry_run: bool,
               planned: set[str]) -> None:
    planned.update(t.id for t in tasks)
    def finished(sdir: str, seed: int) -> bool:
        return run_file(out, sdir, seed).exists()

    done_before = {(d, s) for t in tasks for d, s in t.runs if finished(d, s)}
    pending = [t for t in tasks if not all(r in done_before for r in t.runs)]
    for t in tasks:  # finished: a kill between writing its results and its clean-up left these behind
        if t not in pending and not dry_run:
            checkpoint_file(out, t.id).unlink(missing_ok=True)
            progress_file(out, t.id).unlink(missing_ok=True)
    skipped = len(done_before)
    report.skipped += skipped
    labels = {ps.dir: ps.label for ps in plan.settings}
    n_runs = sum(len(t.runs) for t in tasks) - skipped
    echo(f"{plan.spec.name} [{stage}]: {sum(len(t.runs) for t in tasks)} runs in {len(tasks)} task(s); "
         f"{skipped} finished before, {n_runs} to run in {len(pending)} task(s)"
         + (f" on {backend}" + (f" with {jobs} worker(s)" if backend == "local" else "") if pending else ""))
    if dry_run:
        for t in pending:
            what = "lockstep" if t.lockstep else "single"
            echo(f"  task {t.id} ({what}): {'; '.join(labels[s.dir] for s in t.settings)} × seeds {list(t.seeds)}")
        return
    if not pending:
        return

    def on_done(task: Task, outcome: TaskOutcome) -> None:
        bar.task_done(task, outcome.ok)
        if outcome.ok:
            for rel, data in outcome.results.items():  # a remote worker's files may not be visible here
                if not (out / rel).exists():
                    atomic_write_json(out / rel, data)
            for sdir, seed in task.runs:
                error_file(out, sdir, seed).unlink(missing_ok=True)
            report.computed += [r for r in task.runs if r not in done_before]
            echo(f"  done: {'; '.join(labels[s.dir] for s in task.settings)} × seeds {list(task.seeds)} "
                 f"({outcome.wall_s:,.1f} s)")
            return
        text = outcome.error or "unknown error"
        for sdir, seed in (r for r in task.runs if r not in done_before):
            atomic_write_text(error_file(out, sdir, seed), text + "\n\n" + (outcome.traceback or ""))
            report.failed.append((labels[sdir], seed, text))
        echo(f"  FAILED: {'; '.join(labels[s.dir] for s in task.settings)} × seeds {list(task.seeds)}: {text}")

    bar = SweepProgress(f"{plan.spec.name} [{stage}]", out, pending, skipped, enabled=progress)
    with bar:
        if backend == "ray":
            run_ray(pending, out, on_done, address=address, num_cpus=jobs if address is None else None)
        else:
            run_local(pending, out, jobs, on_done)


def _write_outputs(summary: SweepSummary, out: Path, command: str | None, sessions_s: float,
                   echo: Callable[[str], None]) -> None:
    for st in summary.stats:
        if st.runs:
            merged_result([st.runs[s] for s in sorted(st.runs)]).save(out / "settings" / f"{st.setting.dir}.json")
    summary.wall_s = sessions_s
    figure = None
    try:
        plot_sweep(summary, out / "summary.png")
        figure = "summary.png"
    except ImportError:
        echo("note: matplotlib is not installed, so no summary.png (pip install 'plasticity-gym[plot]')")
    atomic_write_json(out / "summary.json", summary.as_dict())
    atomic_write_text(out / "summary.md", summary.markdown(command, figure))


def run_sweep(
    sweep: str | Path | SweepSpec,
    out: str | Path | None = None,
    *,
    backend: str = "local",
    address: str | None = None,
    jobs: int | None = None,
    threads: int = 1,
    progress: bool | None = None,
    dry_run: bool = False,
    command: str | None = None,
    echo: Callable[[str], None] = print,
) -> SweepReport:
    """Run (or continue) the sweep of a sweep file; see the module docstring.

    Args:
        sweep: the sweep file (or a parsed :class:`SweepSpec`).
        out: the sweep's folder (default ``runs/sweeps/<name>``).
        backend: ``"local"`` (worker processes on this machine) or ``"ray"``.
        address: Ray's address (``"auto"``: the running cluster); without one, the Ray backend
            uses the instance this process is connected to, else starts a local one.
        jobs: local: worker processes (default: the cores / ``threads``; 1 runs the tasks in this
            process); ray without ``address``: the CPUs of the local instance.
        threads: torch CPU threads of each task.
        progress: show the progress line (default: on a terminal, not under CI).
        dry_run: check and plan only: print the tasks that would run.
        command: the command line recorded in ``summary.md``.
    """
    t0 = time.perf_counter()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if address is not None and backend != "ray":
        raise ValueError("--address is for the ray backend (--backend ray)")
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    plan = plan_sweep(spec)
    folder = Path(out) if out is not None else Path("runs") / "sweeps" / spec.name
    n_jobs = jobs or max(1, available_cores() // threads)
    show = progress_wanted() if progress is None else progress
    report = SweepReport(folder, None)
    if not dry_run:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "sweep.toml", spec.text)
    planned: set[str] = set()
    kw = dict(backend=backend, jobs=n_jobs, address=address, progress=show, echo=echo, dry_run=dry_run,
              planned=planned)
    everything = range(len(plan.settings))
    _run_stage(plan, "search", plan_stage(plan, "search", everything, spec.search_seeds, threads), folder, report, **kw)
    summary = collect(plan, folder, spec.metric) if not dry_run else None
    if summary is not None:
        select(summary)
        if spec.final_seeds and summary.selected:
            tasks = plan_stage(plan, "final", summary.selected, spec.final_seeds, threads)
            _run_stage(plan, "final", tasks, folder, report, **kw)
            summary = collect(plan, folder, spec.metric)
            select(summary)
        elif spec.final_seeds:
            echo(f"{spec.name} [final]: not started. {summary.selection_note}")
    elif spec.final_seeds:
        echo(f"{spec.name} [final]: {len(spec.final_seeds)} seeds for the top {spec.top} setting(s), "
             "once the search runs are finished")
    report.wall_s = time.perf_counter() - t0
    if summary is not None:
        if report.ok and (summary.selected or not spec.final_seeds):  # every stage ran: the rest is stale
            _remove_stale_tasks(folder, planned)
        sessions = _record_session(folder, report)
        _write_outputs(summary, folder, command, sessions, echo)
        report.summary = summary
        echo(summary.table().rstrip())
        echo(summary.selection_note)
        echo(f"wrote {folder / 'summary.md'}, {folder / 'summary.json'}"
             + (f", {folder / 'summary.png'}" if (folder / "summary.png").exists() else "")
             + f"; {len(report.computed)} run(s) computed, {report.skipped} finished before, "
             f"{len(report.failed)} failed ({report.wall_s:,.1f} s)")
    return report


def _remove_stale_tasks(folder: Path, planned: set[str]) -> None:
    """Remove checkpoints of tasks this sweep no longer plans (after a change of its file)."""
    for path in (folder / "tasks").glob("*"):
        if path.name.split(".")[0] not in planned:
            path.unlink(missing_ok=True)


def _record_session(folder: Path, report: SweepReport) -> float:
    """Append this call to ``sessions.json``; the total wall time of the sessions that computed."""
    import json

    path = folder / "sessions.json"
    try:
        sessions = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sessions = []
    sessions.append({"ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(report.wall_s, 3),
                     "computed": len(report.computed), "skipped": report.skipped, "failed": len(report.failed)})
    atomic_write_json(path, sessions)
    return sum(s["wall_s"] for s in sessions if s["computed"] or s["failed"])
