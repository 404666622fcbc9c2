"""An interrupted and resumed lockstep run against the uninterrupted one, per seed.

A benchmark, not a test (the test is ``tests/agents/test_lockstep_resume.py``: a compiled
learner restored mid-run continues bit for bit). This runs the whole path at a size where
``compile="auto"`` compiles CBP's update step (16 seeds of the 3×100 PermutedMNIST net): the run
once through, then the same run stopped with SIGINT after ``--stop-after`` seconds and resumed
from its checkpoint, and says which seeds' runs differ (none should)::

    python bench/resume_lockstep.py                       # 16 seeds, 6 smoke tasks, one process
    python bench/resume_lockstep.py --workers 2           # the seeds split over two processes
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], stop_after: float | None = None) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "plasticity_gym.harness.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if stop_after is not None:
        try:
            return proc.wait(timeout=stop_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    return proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default="cbp")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--stop-after", type=float, default=25.0, help="seconds before the SIGINT (default 25)")
    args = parser.parse_args()
    base = ["run", "PermutedMNIST-v0", "--agent", args.agent, "--scale", "smoke", "--seeds", str(args.seeds),
            "--env-set", f"n_tasks={args.tasks}", "--checkpoint-every", "2000", "--workers", str(args.workers),
            "--no-progress"]
    with tempfile.TemporaryDirectory() as tmp:
        full, resumed = Path(tmp) / "full.json", Path(tmp) / "resumed.json"
        t0 = time.perf_counter()
        assert run([*base, "--out", str(full)]) == 0
        print(f"uninterrupted run: {time.perf_counter() - t0:.0f} s")
        run([*base, "--out", str(resumed)], stop_after=args.stop_after)
        if resumed.exists():
            print(f"the run finished within {args.stop_after:g} s: give a smaller --stop-after")
            return
        assert run([*base, "--out", str(resumed), "--resume"]) == 0
        a, b = (json.loads(p.read_text())["runs"] for p in (full, resumed))
    differ = [x["seed"] for x, y in zip(a, b) if {**x, "wall_time_s": 0} != {**y, "wall_time_s": 0}]
    print(f"{args.agent}, {args.seeds} seeds, {args.workers} process(es), stopped after {args.stop_after:g} s and "
          f"resumed: {len(differ)} of {len(a)} seeds' runs differ from the uninterrupted run {differ or ''}")


if __name__ == "__main__":
    main()
