"""Regenerate the reference entries of every board of a scale, as one command.

``plasticity-gym reference cpu`` finds the boards of that scale under ``leaderboards/`` (every env
that has a ``<env id>/<scale>/`` directory, so an env added later is included once its boards
are), and for each reference entry there re-runs its agent with the board's seeds. The runs are a
job queue served by ``--jobs`` worker processes (default: one per core), each with
``cores / jobs`` torch threads (never more threads than cores: OpenMP threads that outnumber
the cores spin-wait against each other), longest job first (by the stored entry's wall time)
so that the workers finish together. An episodic (RL) board's runs get one torch thread whatever
``--jobs`` says: PPO's mini-batches of 128 are too small for a second thread to pay, and on a
busy machine its spin-waiting made PPO several times slower.
Each run writes ``runs/<scale>/<env>-<agent>.json`` (and a ``.log``). Started again with the same
runs directory (after an interruption), the suite keeps every result there that the same run
command finished with the same source code, and the other runs resume from their checkpoints; a
new runs directory runs everything afresh. Then every finished entry is filed under its board,
the tables in ``leaderboards/README.md`` are regenerated and each board's figure is redrawn.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TextIO

from plasticity_gym.harness.threads import thread_env


@dataclass(frozen=True)
class Job:
    """One reference run: an agent on one board with its seeds."""

    env_id: str
    scale: str
    agent: str
    seeds: int
    name: str  # the entry's file name on the board (without .json)
    expected_s: float = 0.0  # the stored entry's wall time, for ordering
    episodic: bool = False  # an RL env: one torch thread per run

    @property
    def board(self) -> str:
        """The board's directory name: the env id without a ``module:`` prefix."""
        return self.env_id.split(":")[-1]

    def out(self, runs_dir: Path) -> Path:
        return runs_dir / self.scale / f"{self.board}-{self.name}.json"

    def argv(self, runs_dir: Path, threads: int) -> list[str]:
        return ["plasticity-gym", "run", self.env_id, "--agent", self.agent, "--scale", self.scale,
                "--seeds", str(self.seeds), "--out", str(self.out(runs_dir)), "--no-progress", "--resume",
                "--threads", str(threads)]


def plan(board_dir: Path, scale: str, *, envs: Sequence[str] | None = None,
         agents: Sequence[str] | None = None, seeds: int | None = None) -> list[Job]:
    """The jobs that regenerate the reference entries of ``scale`` (longest first).

    Per board: the stored reference entries give the agents (by default) and the seeds (unless
    ``seeds`` is given); ``agents`` names the agents to run instead (entry file name = agent).
    """
    env_dirs = sorted(p.parent for p in board_dir.glob(f"*/{scale}") if p.is_dir())
    if envs:
        known = {p.name for p in env_dirs}
        missing = [e for e in envs if e not in known]
        if missing and (agents is None or seeds is None):
            raise ValueError(f"no {scale} board for {', '.join(missing)} under {board_dir}; "
                             "give --agents and --seeds to start one")
        env_dirs = [board_dir / e for e in envs]
    from plasticity_gym.harness.resolve import reference_agent_names

    jobs: list[Job] = []
    for env_dir in env_dirs:
        stored = {}
        for f in sorted((env_dir / scale).glob("*.json")):
            entry = json.loads(f.read_text(encoding="utf-8"))
            if entry.get("agent", {}).get("source") == "reference" and \
                    entry.get("agent", {}).get("factory") in reference_agent_names("supervised") + \
                    reference_agent_names("episodic"):  # a name, never a module of the file's choosing
                stored[f.stem] = entry
        if not stored and (agents is None or seeds is None):
            continue  # a board without reference entries: nothing says what to run
        board_seeds = seeds or max(len(e["seeds"]) for e in stored.values())
        # The id the entries were made with (a module:Id env's directory drops the module).
        env_id = next((e["env"]["id"] for e in stored.values()), env_dir.name)
        chosen = list(agents) if agents is not None else list(stored)
        from plasticity_gym.harness.episodic import is_episodic_env
        from plasticity_gym.harness.resolve import reference_agent_names

        episodic = is_episodic_env(env_id)
        if agents is not None:  # a supervised learner has no place on an RL board, nor PPO on a stream
            other = set(reference_agent_names("supervised" if episodic else "episodic"))
            wrong = [n for n in chosen if n in other]
            if wrong and envs:
                raise ValueError(f"{', '.join(wrong)} cannot run on {env_id} "
                                 f"({'an episodic RL env' if episodic else 'a supervised stream'}); "
                                 "leave them out or name other envs")
            chosen = [n for n in chosen if n not in other]
        for name in chosen:
            entry = stored.get(name)
            agent = entry["agent"]["factory"] if entry else name
            wall = float(entry["provenance"]["wall_time_s"]) if entry else 0.0
            jobs.append(Job(env_id, scale, agent, int(board_seeds), name, wall, episodic))
    if not jobs:
        raise ValueError(f"no reference entries of scale {scale!r} under {board_dir}")
    return sorted(jobs, key=lambda j: -j.expected_s)


def default_workers() -> int:
    """One worker per core: one-thread processes side by side use the machine best for the
    reference agents' small networks."""
    return max(1, os.cpu_count() or 1)


def run_jobs(jobs: Sequence[Job], *, runs_dir: Path, n_workers: int,
             echo: Callable[[str], None] = print) -> dict[Job, int]:
    """Run ``jobs`` on ``n_workers`` processes at once, each with ``cores / n_workers`` threads;
    returns each job's exit status."""
    from plasticity_gym.harness.result import code_identity

    threads = max(1, (os.cpu_count() or 1) // n_workers)
    source = code_identity()["source_sha256"]
    queue = list(jobs)
    running: dict[subprocess.Popen, tuple[Job, float, TextIO]] = {}
    status: dict[Job, int] = {}
    while queue or running:
        while queue and len(running) < n_workers:
            job = queue.pop(0)
            out = job.out(runs_dir)
            job_threads = 1 if job.episodic else threads
            argv = job.argv(runs_dir, job_threads)
            if finished_by(out, shlex.join(argv), source):
                echo(f"kept {job.board} {job.name}: {out} was finished by this command and this code")
                status[job] = 0
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            log = open(out.with_suffix(".log"), "w", encoding="utf-8")
            env = {**os.environ, **thread_env(job_threads), "CI": "true"}
            echo(f"start {job.board} {job.name} ({job.seeds} seeds): {shlex.join(argv)}")
            # This interpreter, so the runs use the same installation as the suite.
            proc = subprocess.Popen([sys.executable, "-m", "plasticity_gym.harness.cli", *argv[1:]],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            running[proc] = (job, time.perf_counter(), log)
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            job, t0, log = running.pop(proc)
            log.close()
            status[job] = proc.returncode
            log_path = job.out(runs_dir).with_suffix(".log")
            verdict = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {log_path})"
            echo(f"{verdict} {job.board} {job.name} in {time.perf_counter() - t0:.0f} s")
    return status


def finished_by(out: Path, command: str, source_sha256: str) -> bool:
    """Whether ``out`` holds a result finished by ``command`` with the source code whose sha256 is
    ``source_sha256`` (results are written once a run has finished, atomically)."""
    try:
        provenance = json.loads(out.read_text(encoding="utf-8")).get("provenance", {})
    except (OSError, ValueError):
        return False
    return provenance.get("command") == command and provenance.get("code", {}).get("source_sha256") == source_sha256


def publish(jobs: Sequence[Job], status: dict[Job, int], *, runs_dir: Path, board_dir: Path,
            readme: Path, figures_dir: Path, echo: Callable[[str], None] = print) -> None:
    """File the finished entries, regenerate the README tables and redraw the boards' figures."""
    from plasticity_gym.harness import boards
    from plasticity_gym.harness.plot import board_figures

    for job in jobs:
        if status.get(job) == 0:
            dest = boards.submit(job.out(runs_dir), board_dir, name=job.name, replace=True)
            echo(f"filed {dest}")
    entries = boards.load_entries([board_dir])
    boards.update_readme(readme, boards.render(entries, markdown=True, relative_to=readme.parent))
    echo(f"updated {readme}")
    for board, scale in sorted({(j.board, j.scale) for j in jobs}):
        folder = (board_dir / board / scale).resolve()
        results = [res for path, res in entries if path.resolve().parent == folder]
        if results:
            for out in board_figures(results, figures_dir, board, scale):
                echo(f"wrote {out}")


def regenerate(scale: str, *, board_dir: Path, runs_dir: Path = Path("runs"), envs: Sequence[str] | None = None,
               agents: Sequence[str] | None = None, seeds: int | None = None, n_workers: int | None = None,
               dry_run: bool = False, echo: Callable[[str], None] = print) -> int:
    """Plan, run and publish a scale's reference entries; 0 when every job succeeded."""
    jobs = plan(board_dir, scale, envs=envs, agents=agents, seeds=seeds)
    n_workers = n_workers or default_workers()
    t0 = time.perf_counter()
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    echo(f"{len(jobs)} runs of scale {scale} on {n_workers} worker(s), {threads} torch thread(s) each"
         + (" (episodic runs: 1)" if any(j.episodic for j in jobs) else ""))
    if dry_run:
        for job in jobs:
            echo(shlex.join(job.argv(runs_dir, 1 if job.episodic else threads)))
        return 0
    status = run_jobs(jobs, runs_dir=runs_dir, n_workers=n_workers, echo=echo)
    publish(jobs, status, runs_dir=runs_dir, board_dir=board_dir, readme=board_dir / "README.md",
            figures_dir=board_dir / "figures", echo=echo)
    failed = [j for j in jobs if status.get(j) != 0]
    echo(f"suite {scale}: {len(jobs) - len(failed)}/{len(jobs)} runs done in {time.perf_counter() - t0:.0f} s"
         + (f"; failed: {', '.join(f'{j.board}/{j.name}' for j in failed)}" if failed else ""))
    return 1 if failed else 0
