"""The ``plasticity-gym`` command: demo, list, run, validate, verify, leaderboard, plot, compare,
submit, site, reference, data.

Examples::

    plasticity-gym demo                     # backprop vs CBP: loss of plasticity in a couple of minutes
    plasticity-gym list                     # the envs with their scales, and the reference agents
    plasticity-gym run SlowRegression-v0 --agent cbp --scale smoke --seeds 3 --out runs/cbp.json
    plasticity-gym run PermutedMNIST-v0 --agent mypkg.agents:make --set lr=0.01 --out runs/mine.json
    plasticity-gym run AntFriction-v0 --agent ppo-cbp --scale cpu --seeds 3   # episodic RL (PPO)
    plasticity-gym run Hopper-v5 --agent ppo --scale smoke --steps 8192       # any continuous-control env
    plasticity-gym validate runs/*.json             # shape, and every number recomputed from the runs
    plasticity-gym verify runs/cbp.json --seeds 1    # re-run a seed here and compare with the stored run
    plasticity-gym leaderboard SlowRegression-v0 --scale smoke --include runs/cbp.json
    plasticity-gym plot runs/cbp.json runs/backprop.json --out fig.png
    plasticity-gym compare SlowRegression-v0 --agents backprop cbp --scale smoke --seeds 3
    plasticity-gym submit runs/cbp.json     # validate a result and file it under its board
    plasticity-gym reference cpu            # regenerate every cpu reference entry, tables, figures
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

from plasticity_gym.harness.cliargs import UsageError, add_episodic_args, add_run_args, add_stream_args, parse_sets
from plasticity_gym.harness.resolve import AgentProtocolError, UserCodeError
from plasticity_gym.harness.schema import ResultValidationError
from plasticity_gym.harness.threads import thread_env
from plasticity_gym.harness.sweep_cli import add_sweep_parser


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seed_list:
        return list(args.seed_list)
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    return list(range(args.seeds))


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

    p = sub.add_parser("demo", help="backprop vs continual backprop on SlowRegression-v0, 10 seeds: the "
                       "paper's finding in a couple of minutes, in one sentence and a figure")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="folder for the two result files and the figure (default runs/demo)")
    p.add_argument("--seeds", type=int, default=10, metavar="N", help="seeds per agent (default 10)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None, help=argparse.SUPPRESS)
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress line (default: only on a terminal)")
    p.add_argument("--env-set", action="append", metavar="KEY=VALUE", help=argparse.SUPPRESS)  # tests: a tiny stream
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="the environments with their scales, and the reference agents")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run an agent over seeds and write a result entry")
    add_run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check result files: the schema, and every summary value, interval, "
                       "env and agent identity recomputed from the runs and the stored command")
    p.add_argument("files", nargs="+", metavar="FILE", help="result files (JSON) to check")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("verify", help="re-run some of a result file's seeds on this machine and compare the "
                       "runs with the stored ones")
    p.add_argument("file", metavar="FILE", help="the result file to verify")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="re-run the file's first K seeds (default 1; "
                   "a lockstep entry's seeds re-run in the batch they ran in)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="torch device (default: the one the file recorded)")
    p.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                   help="let the re-run import this module (and the modules under it), named by the file as a "
                   "user's agent (module:factory) or env (module:Id): its code runs on this machine, so read it "
                   "first; without it, verify imports nothing the file names")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("resummarize", help="recompute the summary of result files from their runs with this "
                       "version's code (after a change to the summary statistics), in place")
    p.add_argument("files", nargs="+", metavar="FILE", help="result files to rewrite (their runs are kept as they are)")
    p.set_defaults(func=cmd_resummarize)

    p = sub.add_parser("leaderboard", help="render the boards as tables")
    p.add_argument("env_id", nargs="?", help="only this env")
    p.add_argument("--scale", help="only this scale")
    p.add_argument("--dir", help="board directory (default ./leaderboards in the current directory)")
    p.add_argument("--include", nargs="+", default=[], metavar="FILE", help="also rank these result files")
    p.add_argument("--markdown", action="store_true", help="Markdown tables (default: plain text)")
    p.add_argument("--update-readme", metavar="README",
                   help="write the Markdown tables into README between the generated-block markers")
    p.add_argument("--figures", action="store_true",
                   help="also redraw the figures of the boards shown into <dir>/figures (from their entries; "
                   "nothing is run)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("plot", help="draw per-task curves and plasticity metrics of result files, one "
                       "figure per (env, scale)")
    p.add_argument("files", nargs="+", metavar="FILE", help="result files (JSON) to draw")
    p.add_argument("--out", required=True, help="image file (.png, .pdf, .svg); results of several (env, "
                   "scale) pairs go to one file each, named <stem>-<env>-<scale><suffix>")
    p.add_argument("--title")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="run agents head-to-head on the identical stream")
    add_stream_args(p)
    p.add_argument("--agents", nargs="+", required=True, metavar="AGENT",
                   help="two or more reference names or module:factory")
    p.add_argument("--set", action="append", metavar="NAME.KEY=VALUE",
                   help="config override for one learner: its name, then the run's --set key, e.g. "
                   "cbp.cbp.replacement_rate=1e-4 (learner cbp, key cbp.replacement_rate)")
    p.add_argument("--out-dir", help="also write each agent's result entry here")
    add_episodic_args(p)
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
    p.add_argument("--dir", help="board directory (default ./leaderboards in the current directory)")
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

    p = sub.add_parser("site", help="build the web leaderboard: static HTML pages of every board, "
                       "viewable with no network")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the site: new, empty, or a previous build (which is replaced)")
    p.add_argument("--dir", help="board directory (default ./leaderboards in the current directory)")
    p.set_defaults(func=cmd_site)

    p = sub.add_parser("submit", help="validate a result (numbers included) and file it under its board")
    p.add_argument("file", metavar="FILE", help="the result file to file")
    p.add_argument("--verify", action="store_true", help="also re-run every seed here and require the stored "
                   "runs to be reproduced (plasticity-gym verify); --verify-seeds K re-runs K seeds drawn at random")
    p.add_argument("--verify-seeds", type=int, metavar="K",
                   help="with --verify: re-run K of the entry's seeds, drawn at random and named in the output")
    p.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                   help="with --verify: let the re-run import this module of a user's agent or env (see verify)")
    p.add_argument("--dir", help="board directory (default ./leaderboards in the current directory)")
    p.add_argument("--name", help="file name of the entry (default <agent>-<config hash>)")
    p.add_argument("--replace", action="store_true", help="replace an entry of the same name (default: refuse)")
    p.set_defaults(func=cmd_submit)

    add_sweep_parser(sub)
    return parser


# --------------------------------------------------------------------------- commands
class CLIError(UsageError):
    """A mistake in the command line: printed as one line, exit status 2."""


def _known_env_ids() -> list[str]:
    import gymnasium as gym

    import plasticity_gym  # noqa: F401 - registers the ids

    return sorted(gym.registry)


def _check_env_id(env_id: str) -> None:
    """An env id that Gymnasium can make (importing a ``module:`` prefix), or a one-line error
    with the closest registered id."""
    import gymnasium as gym

    from plasticity_gym.harness.resolve import did_you_mean, import_user_module

    module, colon, name = env_id.rpartition(":")
    if colon:
        import_user_module(module, f"env {env_id!r}")
    try:
        gym.spec(name)
    except gym.error.Error:
        raise CLIError(f"unknown env {env_id!r}{did_you_mean(name, _known_env_ids())}; `plasticity-gym list` shows "
                       "the envs, or give your own as module:EnvId") from None


def _check_scale(env_id: str, scale: str) -> None:
    """A scale the env names (when it names any), or a one-line error with the closest one."""
    from plasticity_gym.harness.resolve import did_you_mean

    scales, _ = _env_scales(env_id.rpartition(":")[2])
    if scales and scale not in scales:
        raise CLIError(f"unknown scale {scale!r} of {env_id}{did_you_mean(scale, scales)}; its scales: "
                       f"{', '.join(scales)}")


def _check_agents(agents: Sequence[str]) -> None:
    """Import every ``module:factory`` agent now: a missing or broken module is said before any work."""
    from plasticity_gym.harness.resolve import load_factory

    for agent in agents:
        if ":" in agent:
            load_factory(agent)


def _check_counts(args: argparse.Namespace) -> None:
    """The numeric options of run/compare, before any work."""
    rules = [("seeds", 1, "--seeds"), ("probe_every", 0, "--probe-every"), ("probe_size", 1, "--probe-size"),
             ("bin_examples", 1, "--bin-examples"), ("checkpoint_every", 0, "--checkpoint-every"),
             ("steps", 1, "--steps"), ("diagnose_every", 1, "--diagnose-every"), ("threads", 1, "--threads"),
             ("workers", 1, "--workers")]
    for dest, low, flag in rules:
        value = getattr(args, dest, None)
        if value is not None and value < low:
            extra = " (0 disables checkpoints)" if dest == "checkpoint_every" else (
                " (0 disables probes)" if dest == "probe_every" else "")
            raise CLIError(f"{flag} must be >= {low}{extra}, got {value}")


def _checkpoint_plan(args: argparse.Namespace, ckpt: Path | None) -> None:
    """Refuse to overwrite an interrupted run's checkpoint unless told what to do with it."""
    if ckpt is None:
        return
    from plasticity_gym.harness.checkpoint import part_checkpoints

    parts = part_checkpoints(ckpt)  # a run split across worker processes keeps one per part
    exists = ckpt.exists() or bool(parts)
    if args.resume and not exists:
        print(f"plasticity-gym: no checkpoint at {ckpt}; starting from the beginning", file=sys.stderr)
    elif exists and args.fresh:
        for path in [ckpt, *parts]:
            path.unlink(missing_ok=True)
        print(f"plasticity-gym: deleted the checkpoint {ckpt} (--fresh); starting from the beginning",
              file=sys.stderr)
    elif exists and not args.resume:
        raise CLIError(f"checkpoint {ckpt} exists (an interrupted run): add --resume to continue it, or "
                       "--fresh to delete it and start over")


def cmd_run(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.checkpoint import check_writable, exclusive_run

    # Everything that can be checked is checked before any work.
    _check_counts(args)
    _check_env_id(args.env_id)
    _check_scale(args.env_id, args.scale)
    _check_agents([args.agent])
    agent_slug = args.agent.split(":")[-1].replace("/", "-")
    out = Path(args.out or f"runs/{args.env_id.split(':')[-1]}-{agent_slug}-{args.scale}.json")
    ckpt = None if args.checkpoint_every == 0 else Path(args.checkpoint or f"{out}.ckpt")
    check_writable(out, "--out")
    if ckpt is not None:
        check_writable(ckpt, "--checkpoint")
    # One run at a time writes these files: a second run with the same --out refuses at once.
    with exclusive_run([out] + ([ckpt] if ckpt is not None else [])):
        try:
            return _run_locked(args, out, ckpt)
        except KeyboardInterrupt:
            print(f"\nplasticity-gym: interrupted; {_resume_hint(args, ckpt)}", file=sys.stderr)
            return 130


def _resume_hint(args: argparse.Namespace, ckpt: Path | None) -> str:
    """Where an interrupted run's checkpoint is and the command that continues it."""
    from plasticity_gym.harness.checkpoint import part_checkpoints

    if ckpt is None:
        return "checkpoints were off (--checkpoint-every 0): nothing to resume, run it again"
    if not (ckpt.exists() or part_checkpoints(ckpt)):
        return (f"it stopped before its first checkpoint (every {args.checkpoint_every:,} examples) to {ckpt}: "
                "nothing to resume, run it again")
    argv = [a for a in shlex.split(args.command_line) if a not in ("--fresh", "--resume")]
    return (f"the checkpoint {ckpt} holds the run up to its last save (every {args.checkpoint_every:,} examples); "
            f"continue it with: {shlex.join([*argv, '--resume'])}")


def _run_locked(args: argparse.Namespace, out: Path, ckpt: Path | None) -> int:
    from plasticity_gym.harness.episodic import evaluate_episodic, is_episodic_env
    from plasticity_gym.harness.evaluate import evaluate

    _checkpoint_plan(args, ckpt)
    if is_episodic_env(args.env_id):
        if args.lockstep == "on":
            raise ValueError("--lockstep on is for supervised streams; an episodic run steps every seed's "
                             "env copies in one vector env anyway")
        if args.probe_every is not None:
            raise ValueError("--probe-every counts tasks of a supervised stream; for an episodic env give "
                             "--diagnose-every N (env steps)")
        result = evaluate_episodic(
            args.env_id, args.agent, scale=args.scale, seeds=_seeds(args),
            env_kwargs=parse_sets(args.env_set, "--env-set", nest=False), overrides=parse_sets(args.set),
            device=args.device, steps=args.steps, diagnose_every=args.diagnose_every,
            probe_size=args.probe_size, bin_examples=args.bin_examples, checkpoint=ckpt,
            checkpoint_every=args.checkpoint_every or 1, resume=args.resume, progress=args.progress,
            command=args.command_line, out=out, threads=args.threads, workers=args.workers,
        )
        return _report_written(out, result)
    if args.steps is not None or args.diagnose_every is not None:
        raise ValueError(f"--steps and --diagnose-every are for episodic envs; {args.env_id} is a supervised "
                         "stream whose length is set by its scale")
    result = evaluate(
        args.env_id, args.agent, scale=args.scale, seeds=_seeds(args),
        env_kwargs=parse_sets(args.env_set, "--env-set", nest=False), overrides=parse_sets(args.set),
        device=args.device, probe_every=args.probe_every, probe_size=args.probe_size,
        bin_examples=args.bin_examples, checkpoint=ckpt,
        checkpoint_every=args.checkpoint_every or 1, resume=args.resume,
        progress=args.progress, command=args.command_line, out=out, lockstep=args.lockstep,
        threads=args.threads, workers=args.workers,
    )
    return _report_written(out, result)


def cmd_demo(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.demo import ENV_KWARGS, run_demo

    if args.seeds < 1:
        raise CLIError(f"--seeds must be >= 1, got {args.seeds}")
    env_kwargs = {**ENV_KWARGS, **parse_sets(args.env_set, "--env-set", nest=False)}
    outcome = run_demo(args.out, seeds=args.seeds, env_kwargs=env_kwargs, progress=args.progress,
                       threads=args.threads, echo=lambda line: print(line, flush=True))
    print()
    print(outcome.finding)
    print(f"figure: {outcome.figure}")
    return 0


def _env_scales(env_id: str) -> tuple[list[str], str]:
    """The named scales of a registered env and the first line of its description."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    entry = gym.spec(env_id).entry_point
    try:
        cls = load_env_creator(entry) if isinstance(entry, str) else entry
    except Exception as exc:  # noqa: BLE001 - e.g. MuJoCo missing: still list the id
        return [], f"(cannot be loaded here: {exc})"
    doc = (cls.__doc__ or "").strip().splitlines()
    return list(getattr(cls, "scales", {})), doc[0] if doc else ""


def cmd_list(args: argparse.Namespace) -> int:
    import plasticity_gym  # noqa: F401 - registers the ids
    import plasticity_gym_agents as reference
    from plasticity_gym.registration import BUILT_ENV_IDS, EPISODIC_ENV_IDS

    print("Environments (--scale; the default is cpu):")
    width = max(map(len, BUILT_ENV_IDS))
    for env_id in BUILT_ENV_IDS:
        scales, about = _env_scales(env_id)
        kind = "episodic RL" if env_id in EPISODIC_ENV_IDS else "supervised stream"
        print(f"  {env_id.ljust(width)}  {', '.join(scales) or '-':<18}  {kind}: {about}")
    print("Reference agents (--agent):")
    print(f"  supervised streams: {', '.join(reference.AGENT_NAMES)}")
    print(f"  episodic RL envs (and any Gymnasium env with a continuous action space): "
          f"{', '.join(reference.RL_AGENT_NAMES)}")
    print("Your own: --agent module:factory, env module:EnvId (see docs/design.md)")
    return 0


def _report_written(out: Path, result: Any) -> int:
    m = result.summary[result.primary]
    ci = f" [{m['ci_low']:.4g}, {m['ci_high']:.4g}]" if m["ci_low"] is not None else ""
    print(f"wrote {out}: {result.agent_name} on {result.env_id} ({result.scale}), "
          f"{result.primary} = {m['value']:.4g}{ci} over {len(result.seeds)} seed(s)"
          if m["value"] is not None else f"wrote {out}")
    return 0


def _read_entry(path: str) -> Any:
    from plasticity_gym.harness.schema import read_entry

    try:
        return read_entry(path)  # size and nesting capped before parsing
    except OSError as exc:
        raise FileNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_file(path: str) -> tuple[list[str], list[str]]:
    from plasticity_gym.harness.verify import check_entry

    try:
        entry = _read_entry(path)
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)], []
    return check_entry(entry)


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for f in args.files:
        errors, notes = _check_file(f)
        if errors:
            bad += 1
            print(f"{f}: INVALID\n  " + "\n  ".join(errors))
        else:
            print(f"{f}: ok" + "".join(f"\n  note: {n}" for n in notes))
    return 1 if bad else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.result import Result
    from plasticity_gym.harness.verify import verify

    report = verify(Result.load(args.file).data, args.seeds, device=args.device, allow_import=args.allow_import)
    print(f"{args.file}: " + report.report(), end="")
    return 0 if report.ok else 1


def cmd_resummarize(args: argparse.Namespace) -> int:
    from plasticity_gym.harness._io import atomic_write_json
    from plasticity_gym.harness.result import Result, resummarize

    for f in args.files:
        old = Result.load(f).data
        new = resummarize(old)
        if new["summary"] == old["summary"]:
            print(f"{f}: summary unchanged")
            continue
        Result(new).validate(f)
        atomic_write_json(f, new)
        print(f"{f}: summary recomputed from its runs (runs unchanged)")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from plasticity_gym.harness import boards

    from plasticity_gym.harness.resolve import did_you_mean

    if args.include and args.dir is None and not Path("leaderboards").is_dir():
        board_dir = None  # only the included files
    else:
        board_dir = boards.board_dir(args.dir)
    if args.env_id and not args.include:  # before loading every entry: a typo is said at once
        folders = sorted(p.name for p in board_dir.iterdir() if p.is_dir()) if board_dir is not None else []
        if args.env_id not in folders and args.env_id not in _known_env_ids():
            raise CLIError(f"no board of env {args.env_id!r}{did_you_mean(args.env_id, folders)} under {board_dir}; "
                           f"its boards: {', '.join(f for f in folders if f != 'figures') or 'none'}")
    if args.scale and board_dir is not None and not args.include:
        scales = sorted({p.name for p in board_dir.glob("*/*") if p.is_dir()})
        if args.scale not in scales:
            raise CLIError(f"no board of scale {args.scale!r}{did_you_mean(args.scale, scales)} under {board_dir}; "
                           f"its scales: {', '.join(scales) or 'none'}")
    paths: list[Path] = [board_dir] if board_dir is not None else []
    paths += [Path(p) for p in args.include]
    rejected: list[Path] = []

    def skipped(path: Path, errors: Sequence[str]) -> None:
        rejected.append(path)
        _say_skipped(path, errors)

    entries = boards.load_entries(paths, skipped=skipped)
    if args.env_id or args.scale:
        # An included file the filter hides is said, not silently dropped.
        included = {f.resolve() for f in boards.entry_files(args.include)}
        shown = " ".join(x for x in (args.env_id, f"--scale {args.scale}" if args.scale else None) if x)
        for path, res in entries:
            if path.resolve() in included and ((args.env_id and res.env_id != args.env_id)
                                               or (args.scale and res.scale != args.scale)):
                print(f"plasticity-gym: note: {path} is {res.env_id} at scale {res.scale}: not shown under "
                      f"{shown}", file=sys.stderr)
    markdown = args.markdown or bool(args.update_readme)
    rel = Path(args.update_readme).parent if args.update_readme else None
    text = boards.render(entries, env_id=args.env_id, scale=args.scale, markdown=markdown, relative_to=rel)
    if args.update_readme:
        boards.update_readme(args.update_readme, text)
        print(f"updated {args.update_readme}")
    else:
        print(text, end="")
    if args.figures:
        if board_dir is None:
            raise CLIError("--figures redraws a board folder's figures: give --dir (or run beside leaderboards/)")
        own = [(p, r) for p, r in entries if board_dir.resolve() in p.resolve().parents
               and (not args.env_id or r.env_id == args.env_id) and (not args.scale or r.scale == args.scale)]
        for path in _redraw_figures(board_dir, {(r.env_id, r.scale) for _, r in own}, own):
            print(f"wrote {path}")
    # A file given with --include that was left out is a failure; a bad board file is named only.
    included = {f.resolve() for f in boards.entry_files(args.include)}
    return 1 if any(p.resolve() in included for p in rejected) else 0


def _redraw_figures(board_dir: Path, keys: set[tuple[str, str]], entries: Sequence[tuple[Path, Any]]) -> list[Path]:
    """Redraw ``<board_dir>/figures`` of each (env id, scale) in ``keys`` from ``entries``."""
    from plasticity_gym.harness.plot import board_figures

    out: list[Path] = []
    for env_id, scale in sorted(keys):
        results = [r for _, r in entries if (r.env_id, r.scale) == (env_id, scale)]
        if results:
            out += board_figures(results, board_dir / "figures", env_id.split(":")[-1], scale)
    return out


def _say_skipped(path: Path, errors: Sequence[str]) -> None:
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    print(f"plasticity-gym: skipped {path}: INVALID: {errors[0]}{more}; `plasticity-gym validate {path}` lists "
          "every problem", file=sys.stderr)


def cmd_plot(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.plot import figure_key, plot_figures
    from plasticity_gym.harness.result import Result

    results = [Result.load(f) for f in args.files]
    for path in plot_figures(results, args.out, title=args.title):
        print(f"wrote {path}")
    if len({figure_key(r) for r in results}) > 1:
        print("(one figure per env and scale)")
    return 0


def compare_overrides(items: Sequence[str] | None, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``compare --set NAME.KEY=VALUE`` items → overrides per learner name (KEY as ``run --set``'s)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items or ():
        name, dot, rest = item.partition(".")
        if not dot or name not in names:
            raise CLIError(f"--set for compare is NAME.KEY=VALUE with NAME one of {list(names)} (e.g. "
                           f"cbp.cbp.replacement_rate=1e-4), got {item!r}")
        merged = overrides.setdefault(name, {})
        for k, v in parse_sets([rest], "--set").items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k].update(v)
            else:
                merged[k] = v
    return overrides


def cmd_compare(args: argparse.Namespace) -> int:
    from plasticity_gym.harness.episodic import evaluate_episodic, is_episodic_env
    from plasticity_gym.harness.headtohead import compare, learner_names, rank

    _check_counts(args)
    _check_env_id(args.env_id)
    _check_scale(args.env_id, args.scale)
    _check_agents(args.agents)
    names = learner_names(args.agents)
    overrides = compare_overrides(args.set, names)
    if args.out_dir:
        from plasticity_gym.harness.checkpoint import check_writable

        check_writable(Path(args.out_dir) / "x.json", "--out-dir")
    if is_episodic_env(args.env_id):
        # No arena for episodes: each agent runs the same seeds (the same friction schedules and
        # initial states), then the results are ranked with paired differences over seeds.
        if len(names) < 2:
            raise ValueError("compare needs at least two agents")
        if args.probe_every is not None:
            raise ValueError("--probe-every counts tasks of a supervised stream; an episodic env is "
                             "diagnosed every fixed number of env steps")
        comp = rank({
            name: evaluate_episodic(
                args.env_id, agent, scale=args.scale, seeds=_seeds(args),
                env_kwargs=parse_sets(args.env_set, "--env-set", nest=False), overrides=overrides.get(name),
                device=args.device, steps=args.steps, diagnose_every=args.diagnose_every,
                probe_size=args.probe_size, progress=args.progress, command=args.command_line,
                threads=args.threads)
            for name, agent in zip(names, args.agents)
        })
    else:
        if args.steps is not None or args.diagnose_every is not None:
            raise ValueError(f"--steps and --diagnose-every are for episodic envs; {args.env_id} is a "
                             "supervised stream whose length is set by its scale")
        comp = compare(
            args.env_id, args.agents, scale=args.scale, seeds=_seeds(args),
            env_kwargs=parse_sets(args.env_set, "--env-set", nest=False), overrides=overrides,
            device=args.device, probe_every=args.probe_every, probe_size=args.probe_size,
            progress=args.progress, command=args.command_line, threads=args.threads,
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
        raise CLIError(f"--jobs must be >= 1, got {args.jobs}")
    if args.seeds is not None and args.seeds < 1:
        raise CLIError(f"--seeds must be >= 1, got {args.seeds}")
    return regenerate(args.scale, board_dir=boards.board_dir(args.dir),
                      runs_dir=Path(args.runs_dir), envs=args.env, agents=args.agents, seeds=args.seeds,
                      n_workers=args.jobs, dry_run=args.dry_run, echo=lambda line: print(line, flush=True))


def cmd_site(args: argparse.Namespace) -> int:
    from plasticity_gym.harness import boards
    from plasticity_gym.harness.site import build_site

    files = build_site(boards.board_dir(args.dir), args.out, skipped=_say_skipped)
    pages = [f for f in files if f.suffix == ".html"]
    print(f"wrote {len(pages)} pages ({len(files)} files) to {args.out}; open {files[0]} in a browser")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from plasticity_gym.harness import boards
    from plasticity_gym.harness.verify import verify

    target = boards.board_dir(args.dir, new=True)  # before any check: where it would go must exist
    errors, _ = _check_file(args.file)
    if errors:
        print(f"{args.file}: INVALID, not filed\n  " + "\n  ".join(errors))
        return 1
    if args.verify_seeds is not None and not args.verify:
        raise CLIError("--verify-seeds K goes with --verify")
    if args.verify:  # after the checks, which are quick; a re-run is not
        entry = _read_entry(args.file)
        seeds = list(entry["seeds"])
        if args.verify_seeds is not None:
            if not 1 <= args.verify_seeds <= len(seeds):
                raise CLIError(f"--verify-seeds must be between 1 and the entry's {len(seeds)} seeds, "
                               f"got {args.verify_seeds}")
            import random

            seeds = sorted(random.SystemRandom().sample(seeds, args.verify_seeds), key=seeds.index)
            print(f"{args.file}: re-running {len(seeds)} of its {len(entry['seeds'])} seeds, drawn at random: "
                  f"{', '.join(map(str, seeds))}")
        report = verify(entry, seeds=seeds, allow_import=args.allow_import)
        print(f"{args.file}: " + report.report(), end="")
        if not report.ok:
            print(f"{args.file}: not filed (its re-run did not reproduce it)")
            return 1
    dest = boards.submit(args.file, target, name=args.name, replace=args.replace)
    print(f"filed {args.file} as {dest}")
    # The board's figures show every entry: redrawn with the new one.
    folder = boards.load_entries([dest.parent], skipped=_say_skipped)
    for path in _redraw_figures(target, {(r.env_id, r.scale) for _, r in folder}, folder):
        print(f"redrew {path}")
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
            print(f"plasticity-gym: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        # Before torch is imported: OpenMP reads its variables when it starts.
        os.environ.update(thread_env(args.threads))
    args.command_line = shlex.join(["plasticity-gym", *argv])
    import gymnasium as gym

    from plasticity_gym.harness.plot import PlotDependencyError
    from plasticity_gym.harness.workers import WorkerError

    try:
        return int(args.func(args) or 0)
    except ResultValidationError as exc:
        print(f"plasticity-gym: {exc}", file=sys.stderr)
        return 1
    except WorkerError as exc:  # a worker process died: one line (its own error follows only when it had one)
        print(f"plasticity-gym: error: {exc}", file=sys.stderr)
        return 1
    except UserCodeError as exc:
        print(f"plasticity-gym: error: {exc}\n{_users_traceback(exc.__cause__)}", file=sys.stderr, end="")
        return 2
    except (CLIError, ValueError, AgentProtocolError, PlotDependencyError, gym.error.Error) as exc:
        print(f"plasticity-gym: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder: say which, and why
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"plasticity-gym: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nplasticity-gym: interrupted", file=sys.stderr)
        return 130


def _users_traceback(exc: BaseException | None) -> str:
    """``exc``'s traceback from the first frame of the user's own code (no importlib, no
    plasticity-gym frames): their error, where they can fix it."""
    if exc is None:
        return ""
    te = traceback.TracebackException.from_exception(exc)
    ours = (str(Path(__file__).resolve().parents[1]), "<frozen importlib", "importlib/__init__")
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if not f.filename.startswith(ours)
                                                 and "importlib" not in f.filename])
    return "".join(te.format())


if __name__ == "__main__":
    sys.exit(main())
