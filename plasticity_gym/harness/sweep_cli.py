"""``plasticity-gym sweep SWEEP_FILE``: seeds × a hyperparameter grid, locally or on Ray.

Examples::

    plasticity-gym sweep examples/tiny_sweep.toml                        # this machine, one process per core
    plasticity-gym sweep examples/slow_regression_cbp_rate.toml --jobs 1 --out docs/sweeps/run
    plasticity-gym sweep FILE --backend ray --address auto               # an existing Ray cluster
    plasticity-gym sweep FILE --dry-run                                  # check the file, print the plan

Also runnable as ``python -m plasticity_gym.harness.sweep_cli ...``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, Sequence

from plasticity_gym.harness.cliargs import UsageError
from plasticity_gym.harness.threads import thread_env

__all__ = ["add_sweep_parser", "main", "run_sweep_cli"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_file", metavar="SWEEP_FILE", help="the sweep file (TOML; see docs/sweeps.md)")
    p.add_argument("--out", metavar="DIR", help="the sweep's folder: results, checkpoints, summary "
                   "(default runs/sweeps/<name>); run again with the same folder to continue")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: worker processes on this machine (default); ray: Ray tasks")
    p.add_argument("--address", help="Ray cluster address (auto: the cluster this machine belongs to); without it "
                   "the ray backend starts a local Ray instance")
    p.add_argument("--jobs", type=int, metavar="N", help="local: worker processes (default: cores / threads; 1 runs "
                   "the tasks in this process); ray without --address: CPUs of the local instance")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads per task (default 1)")
    p.add_argument("--dry-run", action="store_true", help="check the file, the env and the agent configs, and "
                   "print the tasks that would run")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="always show the progress line (in a log: a line every 30 s)")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show it (default: only on a terminal, not under CI=true)")


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to ``plasticity-gym``'s subparsers; returns its parser."""
    p = subparsers.add_parser("sweep", help="run seeds × a hyperparameter grid from a sweep file (locally or on "
                              "Ray), select the best setting, give it more seeds, and summarise",
                              description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    p.set_defaults(func=run_sweep_cli)
    return p


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Run the sweep of parsed ``args``: 0 when every run finished, 1 when some failed."""
    threads = 1 if args.threads is None else args.threads
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    # Before torch starts: this process (which runs the tasks when --jobs 1) and the workers it
    # starts get `threads` OpenMP/BLAS threads.
    os.environ.update(thread_env(threads))
    from plasticity_gym.harness.sweep import run_sweep

    command = getattr(args, "command_line", None)
    report = run_sweep(args.sweep_file, args.out, backend=args.backend, address=args.address, jobs=args.jobs,
                       threads=threads, progress=args.progress, dry_run=args.dry_run, command=command,
                       echo=lambda line: print(line, flush=True))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m plasticity_gym.harness.sweep_cli SWEEP_FILE ...`` (the same as ``plasticity-gym sweep``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.getcwd() not in sys.path:  # a user's module:factory agent, found as with `python -m`
        sys.path.insert(0, os.getcwd())
    parser = argparse.ArgumentParser(prog="plasticity-gym sweep", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["plasticity-gym", "sweep", *argv])
    try:
        return run_sweep_cli(args)
    except ValueError as exc:
        print(f"plasticity-gym: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nplasticity-gym: interrupted (run the sweep again to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
