"""Loss of plasticity on SlowRegression-v0: backprop degrades, continual backprop does not.

A benchmark (measured, not asserted). A 5-unit ReLU learner trained online with SGD 0.01
(the reference ``backprop`` agent) against the same learner with CBP (ρ 1e-4, maturity 100,
η 0.99: the ``cbp`` agent), over the paper's 3M examples by default, a few seeds, squared
error per 40k bin. Expected (SPEC §5, the authors' S_i reading, the env's default): backprop
≈0.44 early rising to ≈1.0; CBP stays low.

    .venv/bin/python bench/phenomenon.py                       # 3M examples, 3 seeds, 2 jobs
    .venv/bin/python bench/phenomenon.py --examples 400000 --seeds 2 --out runs/phen.json

Each (agent, seed) runs the single-seed reference learner through the plain Gymnasium loop;
jobs run in parallel processes (``--jobs``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import numpy as np

ENV_ID = "SlowRegression-v0"


def run_one(job: tuple[str, int, int, int, str]) -> tuple[str, int, list[float], float]:
    """Run agent ``name`` on seed ``seed``: binned mean squared error and wall time."""
    name, seed, examples, bin_size, scale = job
    import gymnasium as gym
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import plasticity_gym  # noqa: F401  (registers the ids)
    from plasticity_gym_agents import make_agent

    env = gym.make(ENV_ID, n_examples=examples)
    agent = make_agent(name, env.observation_space, env.action_space, env_id=ENV_ID, scale=scale,
                       seed=seed, device="cpu")
    obs, info = env.reset(seed=seed)
    n_bins = -(-examples // bin_size)
    sums = np.zeros(n_bins)
    counts = np.zeros(n_bins)
    batch = env.observation_space.shape[0]
    t0 = time.perf_counter()
    seen = 0
    while True:
        action = agent.act(obs, info)
        next_obs, reward, terminated, truncated, info = env.step(action)
        agent.observe(obs, action, reward, info)
        b = seen // bin_size
        sums[b] += -reward * batch  # reward = −(mean squared error of the batch)
        counts[b] += batch
        seen += batch
        obs = next_obs
        if terminated or truncated:
            break
    return name, seed, (sums / np.maximum(counts, 1)).tolist(), time.perf_counter() - t0


def summarize(curves: dict[str, np.ndarray], bin_size: int) -> dict[str, dict[str, float]]:
    """Print and return early / best / late errors per agent (mean ± sd over seeds).

    early: the first 200k examples; late: the last 1M (the noise of single 40k bins is large
    with a few seeds, so the late window is wide); last: the last 200k.
    """
    n_bins = next(iter(curves.values())).shape[1]
    k200 = max(1, min(n_bins, 200_000 // bin_size))
    k1m = max(1, min(n_bins, 1_000_000 // bin_size))
    print("# summary (mean ± sd over seeds)")
    out = {}
    for a, c in curves.items():
        early, late, last = c[:, :k200].mean(1), c[:, -k1m:].mean(1), c[:, -k200:].mean(1)
        best = c.min(1)
        out[a] = {"early": float(early.mean()), "best_bin": float(best.mean()),
                  "late": float(late.mean()), "late_sd": float(late.std()),
                  "last": float(last.mean())}
        print(f"#   {a:>10}: first {k200} bins {early.mean():.3f} ± {early.std():.3f}; "
              f"best bin {best.mean():.3f} ± {best.std():.3f}; last {k1m} bins "
              f"{late.mean():.3f} ± {late.std():.3f}; last {k200} bins {last.mean():.3f} ± {last.std():.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=3_000_000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--bin", type=int, default=40_000, help="examples per bin (paper: 40,000)")
    p.add_argument("--agents", nargs="+", default=["backprop", "cbp"])
    p.add_argument("--scale", default="cpu", help="agent defaults scale (cpu: SPEC §5 calibration)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", help="write the binned errors as JSON here")
    p.add_argument("--report", metavar="JSON", help="only print the summary of a saved --out file")
    args = p.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        print(f"# {saved['env_id']}: {saved['examples']:,} examples, {saved['seeds']} seeds")
        summarize({a: np.array(c) for a, c in saved["curves"].items()}, saved["bin"])
        return 0

    jobs = [(a, s, args.examples, args.bin, args.scale) for a in args.agents for s in range(args.seeds)]
    t0 = time.perf_counter()
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(run_one, jobs)
    else:
        results = [run_one(j) for j in jobs]
    wall = time.perf_counter() - t0

    curves = {a: np.array([r[2] for r in results if r[0] == a]) for a in args.agents}
    secs = {a: [r[3] for r in results if r[0] == a] for a in args.agents}
    print(f"# {ENV_ID}: {args.examples:,} examples, {args.seeds} seeds, bins of {args.bin:,}; "
          f"agents at scale {args.scale!r}; wall {wall:.0f}s")
    for a in args.agents:
        rate = args.examples / np.mean(secs[a])
        print(f"#   {a}: {np.mean(secs[a]):.0f}s per seed ({rate:,.0f} examples/s)")
    header = "bin  examples  " + "  ".join(f"{a + ' mean±sd':>20}" for a in args.agents)
    print(header)
    n_bins = curves[args.agents[0]].shape[1]
    for b in range(n_bins):
        end = min((b + 1) * args.bin, args.examples)
        cells = "  ".join(f"{curves[a][:, b].mean():>11.3f} ± {curves[a][:, b].std():<6.3f}"
                          for a in args.agents)
        print(f"{b:>3}  {end:>8}  {cells}")
    summary = summarize(curves, args.bin)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"env_id": ENV_ID, "examples": args.examples, "seeds": args.seeds,
                       "bin": args.bin, "scale": args.scale,
                       "curves": {a: curves[a].tolist() for a in args.agents},
                       "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
