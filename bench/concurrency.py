"""Several runs at once: do they share the machine fairly?

A benchmark, not a test. It times one ``plasticity-gym run`` alone (torch's default threads, and
``--threads 1``), then two identical runs started together, each with ``--threads 1``, and
checks that the pair finishes within 1.3× of twice the time of one run alone (the faster of the two alone
timings; fair sharing of the cores gives 1×, less on a machine with more cores than runs). With ``--bad`` it also
times the pair with default threads, which is what ``--threads`` is for: torch's OpenMP threads
spin-wait, and two processes that each use every core slow each other down several times over.

Usage::

    python bench/concurrency.py                  # PermutedMNIST cbp, 32 seeds, 2 tasks (about 2 min)
    python bench/concurrency.py --bad            # also the pair with default threads
    python bench/concurrency.py --repeat 2 --seeds 8 --n-tasks 1

Timings on a shared machine are noisy: repeat, and read the spread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1.3


def command(args: argparse.Namespace, out: Path, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "plasticity_gym.harness.cli", "run", args.env, "--agent", args.agent,
           "--scale", args.scale, "--seeds", str(args.seeds), "--checkpoint-every", "0", "--no-progress",
           "--out", str(out)]
    if args.n_tasks:
        cmd += ["--env-set", f"n_tasks={args.n_tasks}"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return cmd


def timed(cmds: list[list[str]]) -> list[float]:
    """Start ``cmds`` together; each one's wall time from the common start."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["CI"] = "true"
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    walls = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"run failed: {err.decode()[-2000:]}")
        walls.append(time.perf_counter() - t0)
    return walls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="PermutedMNIST-v0")
    parser.add_argument("--agent", default="cbp")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--n-tasks", type=int, default=2, help="env n_tasks (0: the scale's)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--bad", action="store_true", help="also time the pair with default threads")
    args = parser.parse_args()
    print(f"{args.env} --agent {args.agent} --scale {args.scale} --seeds {args.seeds}"
          f"{f' n_tasks={args.n_tasks}' if args.n_tasks else ''}; {os.cpu_count()} cores", flush=True)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        out = [Path(tmp) / "a.json", Path(tmp) / "b.json"]
        for rep in range(args.repeat):
            alone = timed([command(args, out[0], None)])[0]
            alone1 = timed([command(args, out[0], 1)])[0]
            pair = max(timed([command(args, o, 1) for o in out]))
            best = min(alone, alone1)  # one run alone at its best: the fair-sharing baseline
            ratio = pair / (2 * best)
            ok &= ratio <= LIMIT
            line = (f"[{rep + 1}] alone: default threads {alone:.1f} s, --threads 1 {alone1:.1f} s; "
                    f"two at once, --threads 1 each: {pair:.1f} s = {ratio:.2f} x twice the faster alone "
                    f"({'within' if ratio <= LIMIT else 'OVER'} {LIMIT})")
            if args.bad:
                bad = max(timed([command(args, o, None) for o in out]))
                line += f"; two at once, default threads: {bad:.1f} s = {bad / (2 * alone):.2f} x"
            print(line, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
