"""Head-to-head: several agents on the identical stream through the arena, per seed.

Each agent's runs become an ordinary result entry (so a comparison can be plotted or
submitted), and the agents are ranked by the board's primary metric with paired differences:
per seed, the leader's metric minus the other's (signed so that positive means the leader is
better), then the mean and its 95% Student-t interval over seeds (:func:`paired_gap`; one seed
gives no interval, and decides nothing).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from plasticity_gym.harness.lanes import ArenaLanes
from plasticity_gym.harness.loop import Segment, run_segments
from plasticity_gym.harness.progress import progress_wanted
from plasticity_gym.harness.records import build_result
from plasticity_gym.harness.resolve import AgentFactory, resolve_agent, resolve_device, seed_list
from plasticity_gym.harness.result import Result, mean_ci
from plasticity_gym.harness.threads import configure_cpu


@dataclass
class Comparison:
    """Per-agent results of a head-to-head run, ranked."""

    results: dict[str, Result]  # learner name -> result entry
    metric: str  # the primary metric compared
    higher_is_better: bool
    ranking: list[str]  # learner names, best first
    gaps: dict[str, tuple[float, float, float]]  # name -> (mean gap to leader, ci_low, ci_high)

    def report(self) -> str:
        first = self.results[self.ranking[0]]
        n = len(first.seeds)
        better = "higher" if self.higher_is_better else "lower"
        lines = [
            f"{first.env_id} (scale {first.scale}), {n} seed{'s' if n > 1 else ''}, identical stream per seed; "
            f"{self.metric} ({better} is better), mean [95% Student-t CI over seeds]"
        ]
        width = max(len(k) for k in self.ranking)
        for rank, name in enumerate(self.ranking, 1):
            m = self.results[name].summary[self.metric]
            line = f"  {rank}. {name.ljust(width)}  {_num(m['value'])}" + (
                f" [{_num(m['ci_low'])}, {_num(m['ci_high'])}]" if m["ci_low"] is not None else "")
            if name in self.gaps:
                g, lo, hi = self.gaps[name]
                line += f"   behind {self.ranking[0]} by {_num(g)}" + (f" [{_num(lo)}, {_num(hi)}]" if lo == lo else "")
            lines.append(line)
        leader = self.ranking[0]
        for name in self.ranking[1:]:
            g, lo, hi = self.gaps[name]
            if lo != lo:  # NaN: one seed (or a non-finite value) gives no interval
                lines.append(f"{leader} and {name} cannot be told apart on {n} seed{'s' if n > 1 else ''}: "
                             f"{leader} is ahead by {_num(g)} in {self.metric}, but a paired interval needs at "
                             "least 2 seeds with finite values (run --seeds 5 or more)")
                continue
            verdict = "ahead of" if lo > 0 else "not clearly ahead of (the CI includes 0)"
            lines.append(
                f"{leader} is {verdict} {name}: by {_num(g)} in {self.metric} (95% CI {_num(lo)} to {_num(hi)}, "
                f"paired over {n} seed{'s' if n > 1 else ''})"
            )
        return "\n".join(lines) + "\n"


def _num(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.4g}"


def learner_names(agents: Sequence[str | AgentFactory]) -> list[str]:
    """Readable distinct names: the reference name or the factory's name, ``#2`` on repeats."""
    names: list[str] = []
    for a in agents:
        base = a.split(":")[-1].split(".")[-1] if isinstance(a, str) else getattr(a, "__name__", "agent")
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def compare(
    env_id: str,
    agents: Sequence[str | AgentFactory],
    scale: str = "cpu",
    seeds: int | Sequence[int] = (0,),
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "auto",
    probe_every: int | None = None,
    probe_size: int = 2000,
    progress: bool | None = None,
    command: str | None = None,
    threads: int | None = None,
) -> Comparison:
    """Run ``agents`` head-to-head on ``env_id`` (one arena per seed) and rank them.

    ``overrides`` maps a learner name (as :func:`learner_names` gives it) to its overrides;
    the other arguments are :func:`~plasticity_gym.harness.evaluate`'s.
    """
    if len(agents) < 2:
        raise ValueError("compare needs at least two agents")
    seeds = seed_list(seeds)
    names = learner_names(agents)
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"overrides for unknown learner(s) {sorted(unknown)}; learners: {names}")
    configure_cpu(threads)
    dev = resolve_device(device)
    specs = {
        n: resolve_agent(a, env_id=env_id, scale=scale, overrides=overrides.get(n))
        for n, a in zip(names, agents)
    }
    command = command or (
        f"plasticity_gym.harness.compare({env_id!r}, {[s.ident for s in specs.values()]!r}, "
        f"scale={scale!r}, seeds={seeds})"
    )
    env_kwargs = dict(env_kwargs or {})
    segments = [Segment(
        f"{env_id} {' vs '.join(names)} seed {seed} ({i + 1}/{len(seeds)})  ",
        functools.partial(ArenaLanes.open, specs, env_id, scale, env_kwargs, seed, dev),
        functools.partial(ArenaLanes.restore, specs, device=dev),
    ) for i, seed in enumerate(seeds)]
    output = run_segments(env_id, segments, probe_every=probe_every, probe_size=probe_size,
                          show_progress=progress_wanted() if progress is None else progress)
    rec = output.records
    results = {
        n: build_result(
            env_rec=rec.env, agent_rec=rec.agents[n], metric=rec.metric, bin_examples=rec.bin_examples,
            probe_every=rec.schedule.every, probe_size=probe_size, device=dev, seeds=seeds,
            runs=output.runs[n], command=command,
            probe_tasks=rec.schedule.tasks(rec.env["budget"]["n_tasks"]),
        )
        for n in names
    }
    return rank(results)


def rank(results: Mapping[str, Result]) -> Comparison:
    """Rank results of the same seeds by their primary metric; paired gaps to the leader."""
    names = list(results)
    first = results[names[0]]
    metric = first.primary
    higher = first.summary[metric]["higher_is_better"]
    for n in names:
        if results[n].seeds != first.seeds or results[n].board_key() != first.board_key():
            raise ValueError(f"{n}: results compared head-to-head must share board and seeds")

    def value(n: str) -> float:
        v = results[n].summary[metric]["value"]
        return float("-inf") if v is None else (v if higher else -v)

    ranking = sorted(names, key=value, reverse=True)
    lead = results[ranking[0]].summary[metric]["per_seed"]
    gaps = {}
    for n in ranking[1:]:
        other = results[n].summary[metric]["per_seed"]
        gaps[n] = paired_gap(_floats(lead), _floats(other), higher)
    return Comparison(dict(results), metric, higher, ranking, gaps)


def _floats(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def paired_gap(lead: Any, other: Any, higher_is_better: bool) -> tuple[Any, Any, Any]:
    """How far ``lead`` is ahead of ``other``: per seed the difference (signed so that positive
    means ``lead`` is better), then its mean and 95% Student-t interval over seeds
    (:func:`~plasticity_gym.harness.result.mean_ci`). Per-seed values as 1-D sequences, or 2-D
    arrays of one row of seeds per experiment (vectorised)."""
    sign = 1.0 if higher_is_better else -1.0
    return mean_ci(sign * (np.asarray(lead, dtype=np.float64) - np.asarray(other, dtype=np.float64)))
