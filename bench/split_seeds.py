"""One lockstep process of N seeds against the same N seeds split across one-thread processes.

A benchmark, not a test. ``plasticity-gym run`` splits a lockstep run's seeds on the CPU into one
worker process per core, at most one per 8 seeds (``plasticity_gym.harness.workers``); this
measures that rule: for each agent and seed count, seed-examples/s of one process with every
core's threads and of the split (one process per core, each with its share of the seeds, one
thread each, their rates summed), and their ratio::

    python bench/split_seeds.py                                  # PermutedMNIST 3x100, 8/16/32 seeds
    python bench/split_seeds.py --hidden 2000 2000 2000 --seeds 2 16 --agents cbp backprop
"""

from __future__ import annotations

import argparse
import os

import throughput  # bench/ is the script's directory, so on sys.path

from plasticity_gym.harness.threads import configure_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="PermutedMNIST-v0")
    parser.add_argument("--agents", nargs="+", default=["cbp", "backprop", "adam"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 100, 100])
    parser.add_argument("--seconds", type=float, default=2.5, help="timing per case (default 2.5)")
    args = parser.parse_args()
    configure_cpu(os.cpu_count() or 1)
    overrides = {"network": {"hidden": args.hidden}}
    print(f"{args.env} {'x'.join(map(str, args.hidden))}, {os.cpu_count()} cores; seed-examples/s, median of "
          f"{throughput.WINDOWS} windows")
    for agent in args.agents:
        for n in args.seeds:
            one = throughput.lockstep_learner(args.env, agent, overrides, n, args.seconds)
            split = throughput.machine_lockstep(args.env, agent, overrides, n, args.seconds)
            print(f"{agent:<16} {n:>3} seeds: one process {one.median:>9,.0f}   split ({split.note}) "
                  f"{split.median:>9,.0f}   ratio {split.median / one.median:.2f}", flush=True)


if __name__ == "__main__":
    main()
