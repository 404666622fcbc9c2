"""The outcome of a sweep: each setting's aggregate over seeds with its Student-t interval, the
selected setting(s), a table (plain text and Markdown) and a figure (the metric against each swept
hyperparameter), and each setting's runs merged into one result entry.

Every number comes from the per-run result files through the same summary code as any result
entry (:func:`plasticity_gym.harness.result.summarize`), so a table is a pure function of the runs.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from plasticity_gym.harness.plot import save_figure
from plasticity_gym.harness.records import build_result
from plasticity_gym.harness.result import Result, summarize
from plasticity_gym.harness.sweep_plan import Plan, PlannedSetting
from plasticity_gym.harness.sweep_spec import SweepError, format_value, short_key
from plasticity_gym.harness.sweep_task import error_file, run_file

__all__ = ["SettingStats", "SweepSummary", "collect", "merged_result", "plot_sweep", "seed_span", "select"]

_PROTOCOL_KEYS = ("metric", "probe_every_tasks", "probe_size", "bin_examples", "device", "execution", "probe_tasks")


@dataclass
class SettingStats:
    """One setting's finished and failed runs and its aggregates."""

    setting: PlannedSetting
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> result entry
    failed: dict[int, str] = field(default_factory=dict)  # seed -> error (first line)
    search: dict[str, Any] | None = None  # the metric over the finished search seeds
    overall: dict[str, Any] | None = None  # over every finished seed (search and final)


@dataclass
class SweepSummary:
    plan: Plan
    metric: str
    higher_is_better: bool
    stats: list[SettingStats]
    selected: list[int]  # setting indices
    selection_note: str  # why nothing (or what) was selected
    wall_s: float = 0.0

    # ------------------------------------------------------------------ rendering
    def _rows(self) -> list[list[str]]:
        spec = self.plan.spec
        rows = []
        order = sorted(range(len(self.stats)), key=lambda i: _sort_key(self.stats[i].search, self.higher_is_better))
        for i in order:
            st = self.stats[i]
            vals = dict(st.setting.setting.values)
            n_search = sum(1 for s in spec.search_seeds if s in st.runs)
            n_final = sum(1 for s in spec.final_seeds if s in st.runs)
            seeds = f"{n_search}" + (f"+{n_final}" if n_final else "")
            if st.failed:
                seeds += f" ({len(st.failed)} failed)"
            rows.append([*(format_value(vals[k]) for k in spec.swept), seeds, _fmt(st.search),
                         _fmt(st.overall) if n_final else "", "selected" if i in self.selected else ""])
        return rows

    def _header(self) -> list[str]:
        spec = self.plan.spec
        return [*(short_key(k) for k in spec.swept), "seeds", f"{self.metric}, seeds {seed_span(spec.search_seeds)}",
                "all seeds", ""]

    def table(self) -> str:
        """A plain-text table, best setting first."""
        rows = [self._header(), *self._rows()]
        widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"

    def markdown(self, command: str | None = None, figure: str | None = None) -> str:
        spec = self.plan.spec
        direction = "higher" if self.higher_is_better else "lower"
        lines = [f"# Sweep `{spec.name}`: {spec.env_id} ({spec.scale}), agent `{spec.agent}`", "",
                 f"Selection: the best mean `{self.metric}` ({direction} is better) over seeds "
                 f"{seed_span(spec.search_seeds)}"
                 + (f"; the {'selected setting then ran' if spec.top == 1 else f'top {spec.top} then ran'} seeds "
                    f"{seed_span(spec.final_seeds)}." if spec.final_seeds else "."),
                 f"Means over seeds with 95% Student-t intervals. {self.selection_note}", ""]
        header = self._header()
        header[-2] = "all seeds (95% CI)"
        header[-3] += " (95% CI)"
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for r in self._rows():
            r[-1] = "**selected**" if r[-1] else ""
            lines.append("| " + " | ".join(r) + " |")
        failures = [(st.setting.label, seed, err) for st in self.stats for seed, err in sorted(st.failed.items())]
        if failures:
            lines += ["", "Failed runs (re-run the sweep to retry them):", ""]
            lines += [f"- {label}, seed {seed}: `{err}`" for label, seed, err in failures]
        if figure:
            lines += ["", f"![{self.metric} against the swept hyperparameters]({figure})"]
        if self.wall_s:
            lines += ["", f"Wall time of the computing sessions: {self.wall_s:,.0f} s."]
        if command:
            lines += ["", "Produced by:", "", "```bash", command, "```"]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        spec = self.plan.spec
        return {
            "sweep": spec.name, "env_id": spec.env_id, "scale": spec.scale, "agent": spec.agent,
            "metric": self.metric, "higher_is_better": self.higher_is_better, "swept": spec.swept,
            "search_seeds": list(spec.search_seeds), "final_seeds": list(spec.final_seeds),
            "selected": [self.stats[i].setting.dir for i in self.selected], "selection_note": self.selection_note,
            "settings": [{
                "dir": st.setting.dir, "label": st.setting.label, "values": dict(st.setting.setting.values),
                "seeds_done": sorted(st.runs), "seeds_failed": {str(k): v for k, v in sorted(st.failed.items())},
                "search": st.search, "all": st.overall,
            } for st in self.stats],
        }


def _sort_key(entry: dict[str, Any] | None, higher: bool) -> tuple[int, float]:
    v = None if entry is None else entry["value"]
    if v is None or not math.isfinite(v):
        return (1, 0.0)
    return (0, -v if higher else v)


def _fmt(entry: dict[str, Any] | None) -> str:
    if entry is None or entry["value"] is None:
        return "n/a"
    ci = (f" [{entry['ci_low']:.4g}, {entry['ci_high']:.4g}]"
          if entry["ci_low"] is not None and entry["ci_high"] is not None else "")
    return f"{entry['value']:.4g}{ci}"


def seed_span(seeds: Sequence[int]) -> str:
    """``0–9`` for a run of consecutive seeds, else the list."""
    s = list(seeds)
    if not s:
        return "none"
    if s == list(range(s[0], s[0] + len(s))) and len(s) > 2:
        return f"{s[0]}–{s[-1]}"
    return ", ".join(map(str, s))


# --------------------------------------------------------------------------- collecting
def _load(path: Path) -> dict[str, Any] | None:
    try:
        return Result.load(path).data
    except (OSError, ValueError):
        return None


def _metric_of(entries: list[dict[str, Any]], seeds: Sequence[int], name: str) -> dict[str, Any] | None:
    if not entries:
        return None
    runs = [e["runs"][0] for e in entries]
    metrics = summarize(entries[0]["protocol"]["metric"], runs)["metrics"]
    if name not in metrics:
        return None
    return {**metrics[name], "seeds": list(seeds)}


def collect(plan: Plan, out: Path, metric: str | None, stage_seeds: Sequence[int] | None = None) -> SweepSummary:
    """Read every setting's finished and failed runs and aggregate ``metric`` (default: the
    primary metric of the runs' board); selection is left to :func:`select`."""
    spec = plan.spec
    seeds = list(spec.search_seeds) + list(spec.final_seeds) if stage_seeds is None else list(stage_seeds)
    stats = []
    for ps in plan.settings:
        st = SettingStats(ps)
        for seed in seeds:
            entry = _load(run_file(out, ps.dir, seed))
            if entry is not None:
                st.runs[seed] = entry
            elif error_file(out, ps.dir, seed).exists():
                st.failed[seed] = error_file(out, ps.dir, seed).read_text(encoding="utf-8").splitlines()[0][:300]
        stats.append(st)
    first = next((e for st in stats for e in st.runs.values()), None)
    name = metric or (first["summary"]["primary"] if first else "")
    higher = True
    if first is not None:
        available = first["summary"]["metrics"]
        if name not in available:
            raise SweepError(f"{spec.where('select', 'metric')} select.metric: {name!r} is not a summary metric of "
                             f"these runs; they have {', '.join(sorted(available))}")
        higher = bool(available[name]["higher_is_better"])
    for st in stats:
        search = [s for s in spec.search_seeds if s in st.runs]
        st.search = _metric_of([st.runs[s] for s in search], search, name)
        every = sorted(st.runs)
        st.overall = _metric_of([st.runs[s] for s in every], every, name)
    return SweepSummary(plan, name, higher, stats, [], "")


def select(summary: SweepSummary) -> list[int]:
    """The ``top`` settings by mean over the search seeds; sets ``summary.selected`` and the note.

    With ``require_all`` (the default) nothing is selected while a search run is missing or
    failed: the ranking could still change. Otherwise settings with missing runs are left out.
    """
    spec = summary.plan.spec
    n = len(spec.search_seeds)
    complete = [i for i, st in enumerate(summary.stats) if sum(s in st.runs for s in spec.search_seeds) == n]
    missing = len(summary.stats) - len(complete)
    if spec.require_all and missing:
        summary.selected = []
        summary.selection_note = (f"Nothing selected yet: {missing} setting(s) lack finished search runs "
                                  "(re-run the sweep to retry failed runs).")
        return []
    ranked = sorted((i for i in complete if summary.stats[i].search and summary.stats[i].search["value"] is not None
                     and math.isfinite(summary.stats[i].search["value"])),
                    key=lambda i: _sort_key(summary.stats[i].search, summary.higher_is_better))
    summary.selected = ranked[:spec.top]
    labels = "; ".join(summary.stats[i].setting.label for i in summary.selected)
    summary.selection_note = (f"Selected: {labels}." if summary.selected else "Nothing selected: no setting has a "
                              "finite mean.") + (f" ({missing} incomplete setting(s) left out.)" if missing else "")
    return summary.selected


# --------------------------------------------------------------------------- merged entries
def merged_result(entries: Sequence[dict[str, Any]]) -> Result:
    """One result entry holding the runs of several single-seed entries of one setting (seed
    order), with a ``plasticity-gym run`` command for all of its seeds."""
    first = entries[0]
    proto = first["protocol"]
    seeds = [e["seeds"][0] for e in entries]
    argv = shlex.split(first["provenance"]["command"])
    i = argv.index("--seed-list")
    argv[i + 1:i + 2] = [str(s) for s in seeds]
    return build_result(
        env_rec=first["env"], agent_rec=first["agent"], metric=proto["metric"], bin_examples=proto["bin_examples"],
        probe_every=proto["probe_every_tasks"], probe_size=proto["probe_size"], device=proto["device"], seeds=seeds,
        runs=[e["runs"][0] for e in entries], command=shlex.join(argv), execution=proto["execution"],
        probe_tasks=proto.get("probe_tasks"),
        extra_protocol={k: v for k, v in proto.items() if k not in _PROTOCOL_KEYS},
    )


# --------------------------------------------------------------------------- figure
def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(summary: SweepSummary, out: str | Path) -> Path:
    """The metric (mean over the search seeds, 95% interval) against each swept hyperparameter,
    one panel per swept key; with several keys, one line per combination of the others. The
    selected setting is starred, with its mean over all its seeds beside it. Needs matplotlib."""
    from plasticity_gym.harness.plot import pyplot

    plt = pyplot()
    spec = summary.plan.spec
    keys = spec.swept
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6.4, 5.0 * len(keys)), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys):
        values = list(dict(spec.grid)[key])
        numeric = _numeric(values)
        log = numeric and min(values) > 0 and max(values) / min(values) >= 100
        pos = {json_key(v): (v if numeric else j) for j, v in enumerate(values)}
        others = [k for k in keys if k != key]
        lines: dict[str, list[SettingStats]] = {}
        for st in summary.stats:
            vals = dict(st.setting.setting.values)
            lines.setdefault(", ".join(f"{short_key(k)}={format_value(vals[k])}" for k in others), []).append(st)
        for c, (name, members) in enumerate(lines.items()):
            pts = sorted(((pos[json_key(dict(m.setting.setting.values)[key])], m) for m in members if m.search
                          and m.search["value"] is not None), key=lambda p: p[0])
            if not pts:
                continue
            x = [p for p, _ in pts]
            y = [m.search["value"] for _, m in pts]
            lo = [m.search["value"] - (m.search["ci_low"] if m.search["ci_low"] is not None else m.search["value"])
                  for _, m in pts]
            hi = [(m.search["ci_high"] if m.search["ci_high"] is not None else m.search["value"]) - m.search["value"]
                  for _, m in pts]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color=colors[c % len(colors)],
                        label=(name or f"seeds {seed_span(spec.search_seeds)}"))
        for i in summary.selected:
            st = summary.stats[i]
            xs = pos[json_key(dict(st.setting.setting.values)[key])]
            ax.plot([xs], [st.search["value"]], marker="*", ms=16, color="gold", mec="black", zorder=5,
                    label="selected")
            if st.overall is not None and len(st.overall["seeds"]) > len(st.search["seeds"]):
                o = st.overall
                err = [[o["value"] - (o["ci_low"] if o["ci_low"] is not None else o["value"])],
                       [(o["ci_high"] if o["ci_high"] is not None else o["value"]) - o["value"]]]
                shift = xs * 1.25 if log else xs + (0.15 if not numeric else 0.0)
                ax.errorbar([shift], [o["value"]], yerr=err, marker="s", capsize=3, color="black",
                            label=f"selected, all {len(o['seeds'])} seeds")
        if log:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [format_value(v) for v in values])
        ax.set_xlabel(short_key(key))
        ax.set_ylabel(f"{summary.metric} ({'higher' if summary.higher_is_better else 'lower'} is better)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{spec.name}: {spec.env_id} ({spec.scale}), {spec.agent}\nmean over seeds, 95% Student-t interval",
                 fontsize=10)
    return save_figure(fig, out)


def json_key(v: Any) -> str:
    import json

    return json.dumps(v, sort_keys=True)
