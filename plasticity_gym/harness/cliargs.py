"""The ``plasticity-gym run`` grammar: its arguments and ``--set`` parsing, shared by the CLI
(:mod:`plasticity_gym.harness.cli`) and by :mod:`plasticity_gym.harness.verify`, which reads a
result's stored ``provenance.command`` with the same grammar that wrote it."""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

__all__ = ["UsageError", "add_episodic_args", "add_run_args", "add_stream_args", "parse_run_argv", "parse_sets", "parse_value"]


class UsageError(ValueError):
    """A mistake in the command line: one line, exit status 2 (as argparse's own)."""


def parse_value(text: str) -> Any:
    """A ``--set`` value: a JSON literal when it parses (``1e-4``, ``true``, ``[1,2]``), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: Sequence[str] | None, flag: str = "--set", *, nest: bool = True) -> dict[str, Any]:
    """``["optimizer.lr=0.003", "cbp.maturity=100"]`` → ``{"optimizer": {"lr": 0.003}, ...}``.

    Dotted keys nest (the reference agents' configs have sections); ``nest=False`` keeps them.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"{flag} expects key=value, got {item!r}")
        *parents, leaf = key.split(".") if nest else [key]
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"{flag} {key}: {part} is both a value and a section")
        node[leaf] = parse_value(value)
    return out


def add_stream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("env_id", help="environment id, e.g. SlowRegression-v0 (or module:Id)")
    p.add_argument("--scale", default="cpu", help="named scale of the env: smoke, cpu or paper (default cpu)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, default=1, metavar="N", help="run seeds 0..N-1 (default 1)")
    g.add_argument("--seed-list", type=int, nargs="+", metavar="S", help="run exactly these seeds")
    p.add_argument("--env-set", action="append", metavar="KEY=VALUE", help="env kwarg on top of the scale")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default auto)")
    p.add_argument("--probe-every", type=int, default=None, metavar="K",
                   help="measure plasticity metrics at the start of every K-th task; 0 disables (default: "
                        "every task, thinned evenly to at most 100 probes per run; episodic envs: see "
                        "--diagnose-every)")
    p.add_argument("--probe-size", type=int, default=2000, help="examples in the probe batch (default 2000; "
                   "episodic envs: the last observations a diagnosis is measured on)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads of this process (default: torch's, one per core, right for a run "
                        "alone); give 1 to each of several runs started at once, or they slow each other down")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="always show the progress line")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show it (default: only on a terminal, not under CI=true)")


def add_episodic_args(p: argparse.ArgumentParser) -> None:
    rl = p.add_argument_group("episodic envs (AntFriction-v0, Hopper-v5, any continuous-control env)")
    rl.add_argument("--steps", type=int, metavar="N",
                    help="env steps per seed (default: the scale's: AntFriction-v0's run_steps, else "
                         "smoke 4096, cpu 200000, paper 10000000)")
    rl.add_argument("--diagnose-every", type=int, metavar="N",
                    help="env steps between diagnoses of the policy (dormant units, stable rank, average "
                         "|w|, largest weight change in one update; default: 30 per run)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The arguments of ``plasticity-gym run``."""
    add_stream_args(p)
    p.add_argument("--agent", required=True,
                   help="reference agent name (backprop, adam, l2, shrink-perturb, cbp, ...) or module:factory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="agent config override, dotted keys nest (optimizer.lr=0.003); the value is a JSON "
                   "literal when it parses; a module:factory agent gets them as keyword arguments")
    p.add_argument("--out", help="result file (default runs/<env>-<agent>-<scale>.json)")
    p.add_argument("--bin-examples", type=int, metavar="N", help="bin width of the binned error, >= 1 (episodic "
                   "envs: of the binned return, in env steps; default 40000, narrowed on short streams)")
    p.add_argument("--checkpoint", help="checkpoint file (default <out>.ckpt)")
    p.add_argument("--checkpoint-every", type=int, default=100_000, metavar="N",
                   help="examples (episodic envs: env steps per seed) between checkpoints; 0 disables "
                        "checkpoints (default 100000)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the checkpoint if there is one")
    again.add_argument("--fresh", action="store_true", help="delete an existing checkpoint and start over (a "
                       "run refuses to start over an existing checkpoint without --resume or --fresh)")
    p.add_argument("--lockstep", choices=["auto", "on", "off"], default="auto",
                   help="run the seeds of a reference MLP agent as one batched computation on the "
                        "env's native vector env (auto: whenever supported and seeds > 1)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes that run a lockstep run's seeds on the CPU, each a part of them with one "
                        "thread (default: one per core, at most one per 8 seeds, unless --threads is given; "
                        "then 1; an episodic run: 1, or N one-thread processes of its seeds)")
    add_episodic_args(p)


def parse_run_argv(argv: Sequence[str]) -> argparse.Namespace | None:
    """The arguments of a stored ``run`` command line (after ``run``), or None when it does not
    parse with this version's grammar; options this version does not know are ignored."""
    parser = argparse.ArgumentParser(prog="plasticity-gym run", add_help=False, exit_on_error=False)
    add_run_args(parser)
    try:
        args, _ = parser.parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit):
        return None
    return args
