"""The ``plasticity-gym`` command: run, validate, leaderboard, plot, compare, submit, reference.

Examples::

    plasticity-gym run SlowRegression-v0 --agent cbp --scale smoke --seeds 3 --out runs/cbp.json
    plasticity-gym run PermutedMNIST-v0 --agent mypkg.agents:make --set lr=0.01 --out runs/mine.json
    plasticity-gym validate runs/*.json
    plasticity-gym leaderboard SlowRegression-v0 --scale smoke --include runs/cbp.json
    plasticity-gym plot runs/cbp.json runs/backprop.json --out fig.png
    plasticity-gym compare SlowRegression-v0 --agents backprop cbp --scale smoke --seeds 3
    plasticity-gym reference cpu            # regenerate every cpu reference entry, tables, figures
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from plasticity_gym.harness.resolve import AgentProtocolError
from plasticity_gym.harness.schema import ResultValidationError
from plasticity_gym.harness.threads import thread_env


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
            raise SystemExit(f"plasticity-gym: error: {flag} expects key=value, got {item!r}")
        *parents, leaf = key.split(".") if nest else [key]
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SystemExit(f"plasticity-gym: error: {flag} {key}: {part} is both a value and a section")
        node[leaf] = parse_value(value)
    return out


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seed_list:
        return list(args.seed_list)
    if args.seeds < 1:
        raise SystemExit("plasticity-gym: error: --seeds must be >= 1")
    return list(range(args.seeds))


def _add_stream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("env_id", help="environment id, e.g. SlowRegression-v0 (or module:Id)")
    p.add_argument("--scale", default="cpu", help="named scale of the env: smoke, cpu or paper (default cpu)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, default=1, metavar="N", help="run seeds 0..N-1 (default 1)")
    g.add_argument("--seed-list", type=int, nargs="+", metavar="S", help="run exactly these seeds")
    p.add_argument("--env-set", action="append", metavar="KEY=VALUE", help="env kwarg on top of the scale")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default auto)")
    p.add_argument("--probe-every", type=int, default=None, metavar="K",
                   help="measure plasticity metrics at the start of every K-th task; 0 disables (default: "
                        "every task, thinned evenly to at most 100 probes per run)")
    p.add_argument("--probe-size", type=int, default=2000, help="examples in the probe batch (default 2000)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads of this process (default: torch's, one per core, right for a run "
                        "alone); give 1 to each of several runs started at once, or they slow each other down")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="always show the progress line")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show it (default: only on a terminal, not under CI=true)")


def _version() -> str:
    import plasticity_gym

    return plasticity_gym.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plasticity-gym",
        description="Run, check, rank and plot loss-of-plasticity benchmark results.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run an agent over seeds and write a result entry")
    _add_stream_args(p)
    p.add_argument("--agent", required=True,
                   help="reference agent name (backprop, adam, l2, shrink-perturb, cbp, ...) or module:factory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="agent config override, dotted keys nest (optimizer.lr=0.003); the value is a JSON "
                   "literal when it parses; a module:factory agent gets them as keyword arguments")
    p.add_argument("--out", help="result file (default runs/<env>-<agent>-<scale>.json)")
    p.add_argument("--bin-examples", type=int, help="bin width of the binned error (default 40000, "
                   "narrowed on short streams)")
    p.add_argument("--checkpoint", help="checkpoint file (default <out>.ckpt)")
    p.add_argument("--checkpoint-every", type=int, default=100_000, metavar="N",
                   help="examples between checkpoints; 0 disables checkpoints (default 100000)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if there is one")
    p.add_argument("--lockstep", choices=["auto", "on", "off"], default="auto",
                   help="run the seeds of a reference MLP agent as one batched computation on the "
                        "env's native vector env (auto: whenever supported and seeds > 1)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check result files against the schema")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("leaderboard", help="render the boards as tables")
    p.add_argument("env_id", nargs="?", help="only this env")
    p.add_argument("--scale", help="only this scale")
    p.add_argument("--dir", help="board directory (default ./leaderboards, else the checkout's)")
    p.add_argument("--include", nargs="+", default=[], metavar="FILE", help="also rank these result files")
    p.add_argument("--markdown", action="store_true", help="Markdown tables (default: plain text)")
    p.add_argument("--update-readme", metavar="README",
                   help="write the Markdown tables into README between the generated-block markers")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("plot", help="draw per-task curves and plasticity metrics of result files")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--title")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="run agents head-to-head on the identical stream")
    _add_stream_args(p)
    p.add_argument("--agents", nargs="+", required=True, metavar="AGENT",
                   help="two or more reference names or module:factory")
    p.add_argument("--set", action="append", metavar="NAME.KEY=VALUE",
                   help="override for one learner, e.g. cbp.replacement_rate=1e-4")
    p.add_argument("--out-dir", help="also write each agent's result entry here")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("reference", help="regenerate the reference entries of every board of a scale, "
                       "file them, redraw the README tables and figures")
    p.add_argument("scale", help="the scale whose boards to regenerate, e.g. cpu")
    p.add_argument("--env", nargs="+", metavar="ENV_ID", help="only these envs (default: every env with a board "
                   "of this scale under --dir)")
    p.add_argument("--agents", nargs="+", metavar="AGENT",
                   help="run these reference agents (default: the board's stored reference entries)")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 (default: the stored entries' seeds)")
    p.add_argument("--jobs", type=int, metavar="N", help="runs at once, each with cores/N torch threads "
                   "(default: one per core, one thread each)")
    p.add_argument("--dir", help="board directory (default ./leaderboards, else the checkout's)")
    p.add_argument("--runs-dir", default="runs", help="where the runs write results, logs and checkpoints "
                   "(default runs; a run resumes from its checkpoint there)")
    p.add_argument("--dry-run", action="store_true", help="print the run commands, run nothing")
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser("data", help="find the data sets, prepare ImageNet32, fetch CIFAR-100")
    data = p.add_subparsers(dest="data_command", required=True, metavar="{list,imagenet32,cifar100}")
    q = data.add_parser("list", help="say which data sets were found where, and how to get the others")
    q.add_argument("--data-dir", help="also look here (default: $PLASTICITY_GYM_DATA and the cache)")
    q.set_defaults(func=cmd_data_list)
    q = data.add_parser("imagenet32", help="prepare the official ImageNet32 training batches once "
                        "(the first 700 images of each class, as one memory-mapped array)")
    q.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="folder with train_data_batch_1..10 (.npz, or the pickled batches)")
    q.add_argument("--to", dest="out", metavar="DIR",
                   help="where to write imagenet32_700.npy (default: $PLASTICITY_GYM_DATA/imagenet32, "
                   "else the cache); then pass data_dir=DIR to the env")
    q.add_argument("--per-class", type=int, default=700, help="images kept per class (default 700)")
    q.set_defaults(func=cmd_data_imagenet32)
    q = data.add_parser("cifar100", help="download CIFAR-100 (torchvision) into --data-dir or the cache")
    q.add_argument("--data-dir", help="download here (default: the cache)")
    q.set_defaults(func=cmd_data_cifar100)

    p = sub.add_parser("submit", help="validate a result and file it under its board")
    p.add_argument("file")
    p.add_argument("--dir", help="board directory (default ./leaderboards, else the checkout's)")
    p.add_argument("--name", help="file name of the entry (default <agent>-<config hash>)")
    p.set_defaults(func=cmd_submit)
    return parser


# --------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.evaluate import evaluate

    agent_slug = args.agent.split(":")[-1].replace("/", "-")
    out = Path(args.out or f"runs/{args.env_id.split(':')[-1]}-{agent_slug}-{args.scale}.json")
    ckpt = None if args.checkpoint_every == 0 else Path(args.checkpoint or f"{out}.ckpt")
    if args.resume and (ckpt is None or not ckpt.exists()):
        print(f"plasticity-gym: no checkpoint at {ckpt}; starting from the beginning", file=sys.stderr)
    result = evaluate(
        args.env_id, args.agent, scale=args.scale, seeds=_seeds(args),
        env_kwargs=parse_sets(args.env_set, "--env-set", nest=False), overrides=parse_sets(args.set),
        device=args.device, probe_every=args.probe_every, probe_size=args.probe_size,
        bin_examples=args.bin_examples, checkpoint=ckpt,
        checkpoint_every=args.checkpoint_every or 1, resume=args.resume,
        progress=args.progress, command=args.command_line, out=out, lockstep=args.lockstep,
        threads=args.threads,
    )
    m = result.summary[result.primary]
    print(f"wrote {out}: {result.agent_name} on {result.env_id} ({result.scale}), "
          f"{result.primary} = {m['value']:.4g} [{m['ci_low']:.4g}, {m['ci_high']:.4g}] over {len(result.seeds)} seed(s)"
          if m["value"] is not None else f"wrote {out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.schema import result_errors

    bad = 0
    for f in args.files:
        try:
            with open(f, encoding="utf-8") as fh:
                entry = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{f}: INVALID\n  cannot read JSON: {exc}")
            bad += 1
            continue
        errors = result_errors(entry)
        if errors:
            bad += 1
            print(f"{f}: INVALID\n  " + "\n  ".join(errors))
        else:
            print(f"{f}: ok")
    return 1 if bad else 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from plasticity_gym.harness import boards

    board_dir = Path(args.dir) if args.dir else boards.default_dir()
    paths: list[Path] = [board_dir] if board_dir.is_dir() else []
    paths += [Path(p) for p in args.include]
    entries = boards.load_entries(paths)
    markdown = args.markdown or bool(args.update_readme)
    rel = Path(args.update_readme).parent if args.update_readme else None
    text = boards.render(entries, env_id=args.env_id, scale=args.scale, markdown=markdown, relative_to=rel)
    if args.update_readme:
        boards.update_readme(args.update_readme, text)
        print(f"updated {args.update_readme}")
    else:
        print(text, end="")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.plot import plot_results
    from plasticity_gym.harness.result import Result

    out = plot_results([Result.load(f) for f in args.files], args.out, title=args.title)
    print(f"wrote {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.headtohead import compare, learner_names

    names = learner_names(args.agents)
    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set or ():
        name, dot, rest = item.partition(".")
        if not dot or name not in names:
            raise SystemExit(f"plasticity-gym: error: --set for compare is NAME.KEY=VALUE with NAME one of {names}")
        merged = overrides.setdefault(name, {})
        for k, v in parse_sets([rest], "--set").items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k].update(v)
            else:
                merged[k] = v
    comp = compare(
        args.env_id, args.agents, scale=args.scale, seeds=_seeds(args),
        env_kwargs=parse_sets(args.env_set, "--env-set", nest=False), overrides=overrides, device=args.device,
        probe_every=args.probe_every, probe_size=args.probe_size, progress=args.progress,
        command=args.command_line, threads=args.threads,
    )
    print(comp.report(), end="")
    if args.out_dir:
        for name, res in comp.results.items():
            path = res.save(Path(args.out_dir) / f"{args.env_id.split(':')[-1]}-{name}-{args.scale}.json")
            print(f"wrote {path}")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from plasticity_gym.harness import boards
    from plasticity_gym.harness.suite import regenerate

    if args.jobs is not None and args.jobs < 1:
        raise SystemExit("plasticity-gym: error: --jobs must be >= 1")
    if args.seeds is not None and args.seeds < 1:
        raise SystemExit("plasticity-gym: error: --seeds must be >= 1")
    return regenerate(args.scale, board_dir=Path(args.dir) if args.dir else boards.default_dir(),
                      runs_dir=Path(args.runs_dir), envs=args.env, agents=args.agents, seeds=args.seeds,
                      n_workers=args.jobs, dry_run=args.dry_run, echo=lambda line: print(line, flush=True))


def cmd_submit(args: argparse.Namespace) -> int:
    from plasticity_gym.harness import boards

    dest = boards.submit(args.file, Path(args.dir) if args.dir else boards.default_dir(), name=args.name)
    print(f"filed {args.file} as {dest}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from plasticity_gym.data import find_datasets, format_datasets

    print(format_datasets(find_datasets(args.data_dir), args.data_dir))
    return 0


def cmd_data_imagenet32(args: argparse.Namespace) -> int:
    from plasticity_gym.data import convert_imagenet32

    path = convert_imagenet32(args.source, args.out, per_class=args.per_class, progress=print)
    print(f"wrote {path}" + (f"; pass data_dir={args.out} to the env" if args.out else ""))
    return 0


def cmd_data_cifar100(args: argparse.Namespace) -> int:
    from plasticity_gym.data import load_cifar100

    load_cifar100("cifar100", args.data_dir, download=True)
    print("CIFAR-100 is in place; `plasticity-gym data list` shows where")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A user's module:factory (and module:EnvId) is found from the working directory, as
    # with `python -m`; console scripts do not put it on sys.path themselves.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise SystemExit("plasticity-gym: error: --threads must be >= 1")
        # Before torch is imported: OpenMP reads its variables when it starts.
        os.environ.update(thread_env(args.threads))
    args.command_line = shlex.join(["plasticity-gym", *argv])
    try:
        return int(args.func(args) or 0)
    except ResultValidationError as exc:
        print(f"plasticity-gym: {exc}", file=sys.stderr)
        return 1
    except (ValueError, AgentProtocolError, FileNotFoundError) as exc:
        print(f"plasticity-gym: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nplasticity-gym: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
