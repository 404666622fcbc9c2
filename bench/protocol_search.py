"""The search for `cpu` protocols that show loss of plasticity: candidate protocols, run and read.

A benchmark (measured, not asserted). Each candidate is one ``plasticity-gym run`` of a
reference agent on a longer or harder stream than today's `cpu` scale (more tasks, fewer
epochs, a larger step size...), with one torch thread, written under ``--runs-dir``. Finished
runs are kept and an interrupted one resumes from its checkpoint, so the command can be started
again after a kill. ``--report`` reads whatever has finished and prints, per candidate and
agent, the cost and the curve of its primary metric: the mean of the first 10% of tasks, the
best 10% window, the last 10%, and last − best (negative: the agent lost what it had).

    .venv/bin/python bench/protocol_search.py --problem imagenet              # run the candidates
    .venv/bin/python bench/protocol_search.py --problem imagenet --report     # read them
    .venv/bin/python bench/protocol_search.py --list                          # every candidate

A candidate runs its agents one after another; ``--only NAME`` picks candidates.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Candidate:
    name: str
    env_id: str
    env_set: dict[str, object]
    agents: tuple[str, ...]
    agent_set: dict[str, object] = field(default_factory=dict)
    seeds: int = 1
    probe_every: int = 25
    note: str = ""


CANDIDATES: dict[str, list[Candidate]] = {
    "imagenet": [
        *(Candidate(f"in-3x100-lr{lr}", "ContinualImageNet-v0", {"n_tasks": 3, "epochs": 100}, ("backprop",),
                    {"optimizer.lr": lr}, probe_every=1, note="how fast the convnet learns one task")
          for lr in (0.01, 0.03, 0.1)),
        Candidate("in-500x10-lr0.01", "ContinualImageNet-v0", {"n_tasks": 500, "epochs": 10},
                  ("backprop", "cbp"), note="the paper's step size, 20 steps a task"),
        Candidate("in-100x100-lr0.03", "ContinualImageNet-v0", {"n_tasks": 100, "epochs": 100},
                  ("backprop", "cbp"), {"optimizer.lr": 0.03}, probe_every=10,
                  note="200 steps a task at a larger step size: the convnet learns a task within it"),
        Candidate("in-500x10-lr0.03", "ContinualImageNet-v0", {"n_tasks": 500, "epochs": 10},
                  ("backprop", "cbp"), {"optimizer.lr": 0.03}, note="a larger step size loses faster in the paper"),
    ],
    "cifar": [
        Candidate("ci-10x20", "ClassIncCIFAR100-v0", {"n_increments": 10, "epochs": 20},
                  ("backprop", "retrain", "cbp"), probe_every=1, note="10 increments of 5 classes, 20 epochs each"),
        Candidate("ci-20x10", "ClassIncCIFAR100-v0", {"n_increments": 20, "epochs": 10},
                  ("backprop", "retrain", "cbp"), probe_every=1, note="all 20 increments, 10 epochs each"),
        Candidate("ci-5x60", "ClassIncCIFAR100-v0", {"n_increments": 5, "epochs": 60},
                  ("backprop", "retrain", "cbp"), probe_every=1,
                  note="fewer increments, 60 epochs each: can retrain converge within one?"),
        Candidate("ci-5x150", "ClassIncCIFAR100-v0", {"n_increments": 5, "epochs": 150},
                  ("retrain", "backprop", "cbp"), probe_every=1, note="as ci-5x60, 150 epochs each"),
    ],
}


def _out(runs_dir: Path, cand: Candidate, agent: str) -> Path:
    return runs_dir / cand.name / f"{agent}.json"


def command(cand: Candidate, agent: str, runs_dir: Path) -> list[str]:
    cmd = ["plasticity-gym", "run", cand.env_id, "--agent", agent, "--scale", "cpu",
           "--seeds", str(cand.seeds), "--threads", "1", "--no-progress", "--resume",
           "--probe-every", str(cand.probe_every), "--out", str(_out(runs_dir, cand, agent))]
    for k, v in cand.env_set.items():
        cmd += ["--env-set", f"{k}={v}"]
    for k, v in cand.agent_set.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def run(cands: list[Candidate], runs_dir: Path) -> None:
    for cand in cands:
        for agent in cand.agents:
            out = _out(runs_dir, cand, agent)
            if out.exists():
                print(f"kept {out}", flush=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = command(cand, agent, runs_dir)
            print("run", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)


def curve(data: dict) -> tuple[str, np.ndarray]:
    """The per-task series of the entry's primary metric's family (test, else online), mean over seeds."""
    family = "test" if "test" in data["runs"][0]["series"] else "online"
    rows = [np.array([np.nan if v is None else v for v in r["series"][family]["value"]], float)
            for r in data["runs"]]
    return family, np.nanmean(np.vstack(rows), 0)


def describe(values: np.ndarray) -> dict[str, float]:
    k = max(1, len(values) // 10)
    windows = np.convolve(np.nan_to_num(values), np.ones(k) / k, mode="valid")
    best = float(windows.max())
    return {"first": float(np.nanmean(values[:k])), "best": best, "last": float(np.nanmean(values[-k:])),
            "last_minus_best": float(np.nanmean(values[-k:]) - best)}


def report(cands: list[Candidate], runs_dir: Path) -> None:
    print("| candidate | agent | env kwargs | agent set | tasks | wall s | first 10% | best 10% | last 10% "
          "| last − best | final | final − retrain |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cand in cands:
        finals = {}
        for agent in cand.agents:
            out = _out(runs_dir, cand, agent)
            if out.exists():
                finals[agent] = (json.loads(out.read_text()))
        retrain = curve(finals["retrain"])[1][-1] if "retrain" in finals else None
        for agent, data in finals.items():
            _, values = curve(data)
            d = describe(values)
            wall = data["provenance"].get("wall_time_s", float("nan"))
            kwargs = ", ".join(f"{k}={v}" for k, v in cand.env_set.items())
            sets = ", ".join(f"{k}={v}" for k, v in cand.agent_set.items()) or "—"
            vs = "—" if retrain is None else f"{100 * (values[-1] - retrain):+.1f}"
            print(f"| {cand.name} | {agent} | {kwargs} | {sets} | {len(values)} | {wall:.0f} | "
                  f"{100 * d['first']:.1f} | {100 * d['best']:.1f} | {100 * d['last']:.1f} | "
                  f"{100 * d['last_minus_best']:+.1f} | {100 * values[-1]:.1f} | {vs} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", choices=sorted(CANDIDATES), help="the problem whose candidates to run or read")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these candidates")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/search"))
    p.add_argument("--report", action="store_true", help="read the finished runs, run nothing")
    p.add_argument("--list", action="store_true", help="print every candidate's commands")
    args = p.parse_args(argv)
    if args.list:
        for problem, cands in CANDIDATES.items():
            for cand in cands:
                for agent in cand.agents:
                    print(f"{problem}: {' '.join(command(cand, agent, args.runs_dir))}")
        return 0
    if args.problem is None:
        p.error("--problem is required (or --list)")
    cands = CANDIDATES[args.problem]
    if args.only:
        unknown = sorted(set(args.only) - {c.name for c in cands})
        if unknown:
            p.error(f"unknown candidate(s) {', '.join(unknown)}; valid: {', '.join(c.name for c in cands)}")
        cands = [c for c in cands if c.name in args.only]
    (report if args.report else run)(cands, args.runs_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
