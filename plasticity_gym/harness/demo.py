"""``plasticity-gym demo``: the paper's finding in a couple of minutes, from a fresh install.

Backprop and continual backprop (CBP) learn the same Slowly-Changing Regression stream
(``SlowRegression-v0`` at the ``cpu`` scale: a 5-unit network, the target's slow bits flipping
every 10,000 examples) with 10 seeds each, every agent's seeds in lockstep. The stream is
shortened from the scale's 3,000,000 examples to 500,000 (50 tasks), the only change to the
scale, which is enough for backprop's error to climb back up while most of its hidden units die.
Both runs go through :func:`~plasticity_gym.harness.evaluate.evaluate` (the one run loop); the
comparison is :func:`~plasticity_gym.harness.headtohead.rank`'s paired gap over seeds, and the
figure is :func:`~plasticity_gym.harness.plot.plot_results`'s. Every number printed is read from
the two results.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from plasticity_gym.harness.checkpoint import check_writable
from plasticity_gym.harness.evaluate import evaluate
from plasticity_gym.harness.headtohead import Comparison, rank
from plasticity_gym.harness.result import Result

ENV_ID = "SlowRegression-v0"
SCALE = "cpu"
AGENTS = ("backprop", "cbp")
SEEDS = 10
# The cpu scale's 3,000,000 examples cost ~10 minutes for the two agents on a 2-core machine;
# 500,000 (50 tasks of 10,000 examples, the scale's task length) show the same thing in ~2.
ENV_KWARGS: dict[str, Any] = {"n_examples": 500_000}
FIGURE = "demo.png"


@dataclass
class DemoOutcome:
    results: dict[str, Result]  # agent -> result
    comparison: Comparison
    files: list[Path]  # the result files, then the figure
    figure: Path
    finding: str  # the one sentence


def describe(env_kwargs: Mapping[str, Any], seeds: int) -> str:
    """What the demo runs, in words (printed before it starts)."""
    n = int(env_kwargs.get("n_examples", 0))
    return (f"Loss of plasticity in a couple of minutes: backprop vs continual backprop (CBP) on {ENV_ID}, "
            f"scale {SCALE} shortened to {n:,} examples (--env-set n_examples={n}), "
            f"{seeds} seeds each, run in lockstep.")


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    seeds: int = SEEDS,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
) -> DemoOutcome:
    """Run backprop and CBP, write both results and the figure under ``out_dir``, say what
    they show. ``env_kwargs`` replace the demo's stream kwargs (tests use a tiny stream)."""
    out_dir = Path(out_dir)
    kwargs = dict(ENV_KWARGS if env_kwargs is None else env_kwargs)
    outs = {a: out_dir / f"{ENV_ID}-{a}.json" for a in AGENTS}
    figure = out_dir / FIGURE
    for path in (*outs.values(), figure):  # before any work
        check_writable(path, "--out")
    from plasticity_gym.harness.plot import plot_results, pyplot

    pyplot()  # matplotlib is a dependency; a broken install is said before the runs, not after
    echo(describe(kwargs, seeds))
    results: dict[str, Result] = {}
    for agent in AGENTS:
        # The command that reproduces this entry on its own (what `verify` re-runs).
        command = shlex.join(["plasticity-gym", "run", ENV_ID, "--agent", agent, "--scale", SCALE,
                              "--seeds", str(seeds), *(a for k, v in kwargs.items()
                                                         for a in ("--env-set", f"{k}={v}")),
                              "--out", str(outs[agent])])
        results[agent] = evaluate(ENV_ID, agent, scale=SCALE, seeds=seeds, env_kwargs=kwargs,
                                  progress=progress, threads=threads, command=command, out=outs[agent])
        echo(f"wrote {outs[agent]}")
    comparison = rank(results)
    plot_results(list(results.values()), figure,
                 title=f"{ENV_ID}, scale {SCALE} ({int(kwargs.get('n_examples', 0)):,} examples): backprop vs "
                       f"CBP, {seeds} seeds, mean and 95% band")
    return DemoOutcome(results, comparison, [*outs.values(), figure], figure, finding(results, comparison))


def _f(v: float) -> str:
    return f"{v:.2f}"


def finding(results: Mapping[str, Result], comparison: Comparison) -> str:
    """One sentence with the numbers: backprop's best and final error, CBP's final error, the
    paired gap with its interval, and the dead units. Worded by what the numbers say."""
    bp, cbp = results["backprop"], results["cbp"]
    n = len(bp.seeds)
    curve = np.nanmean(bp.series("binned"), axis=0)  # mean over seeds, bin by bin
    best = float(np.nanmin(curve))
    bp_last = bp.summary["error_last10"]["value"]
    cbp_last = cbp.summary["error_last10"]["value"]
    trend = "then rose to" if bp_last > 1.05 * best else "ended at"
    text = (f"Backprop's error (mean squared error, mean over {n} seed{'s' if n > 1 else ''}) fell to "
            f"{_f(best)} at its best and {trend} {_f(bp_last)} over the last 10% of the stream, "
            f"while CBP's ended at {_f(cbp_last)}")
    g, lo, hi = comparison.gaps[comparison.ranking[1]]
    leader = {"backprop": "backprop", "cbp": "CBP"}[comparison.ranking[0]]
    if math.isnan(lo):
        text += f"; {leader} is ahead by {_f(g)}, but one seed cannot decide (run --seeds 5 or more)"
    elif lo > 0:
        text += f"; {leader} is ahead by {_f(g)} (95% CI {_f(lo)} to {_f(hi)}, paired over {n} seeds)"
    else:
        text += (f"; {leader} is ahead by {_f(g)}, but the 95% CI ({_f(lo)} to {_f(hi)}, paired over {n} "
                 "seeds) includes 0: this run does not tell them apart")
    dead = [r.summary.get("final_dead_pct", {}).get("value") for r in (bp, cbp)]
    if None not in dead:
        text += f"; {dead[0]:.0f}% of backprop's hidden units are dead at the end, {dead[1]:.0f}% of CBP's"
    return text + "."
