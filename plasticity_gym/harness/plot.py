"""Figures of result entries: the per-task curves and the plasticity metrics, with the boards'
own 95% Student-t interval over seeds as a band, several entries on one figure. Accuracies are
drawn as percentages; a panel whose values include far outliers (a diverged seed's plasticity
score) is clipped to the bulk of its values, with a note on the panel saying how many points and
how far. Each agent keeps one colour on every figure (backprop black, CBP red).

A board gets two figures (:func:`board_figures`): the paper's agents on one, and every other
entry (the methods proposed since, a user's agents) in panels of their own beside backprop and
CBP, so that every entry of a board is on one of its figures.

An episodic (RL) entry gets the mean return per friction segment, the return over env steps, and
the policy's four diagnostics over env steps (dormant units, stable rank, average |w|, the
largest weight change in one update)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from plasticity_gym.harness._io import atomic_write_bytes
from plasticity_gym.harness.result import CI_LEVEL, Result, t_quantile

# The paper's agents (Dohare et al. 2024) on a supervised board; ClassIncCIFAR100's also has the
# paper's retrain and head reset. On an episodic board every PPO variant is the paper's setting.
PAPER_AGENTS = ("backprop", "adam", "l2", "shrink-perturb", "cbp")
PAPER_AGENTS_BY_ENV = {"ClassIncCIFAR100-v0": PAPER_AGENTS + ("retrain", "head-reset")}
# One colour per agent on every figure; backprop and CBP, the comparison the paper is about, in
# black and red, which nothing else comes near.
AGENT_COLORS = {
    "backprop": "#111111", "cbp": "#d62728", "adam": "#1f77b4", "l2": "#2ca02c", "shrink-perturb": "#9467bd",
    "retrain": "#8c8c8c", "head-reset": "#ff7f0e", "ppo": "#111111", "ppo-cbp": "#d62728", "ppo-tuned": "#1f77b4",
    "ppo-l2": "#2ca02c", "ppo-redo": "#9467bd", "l2-init": "#17becf", "weight-clip": "#8c564b", "upgd": "#e377c2",
    "crelu": "#bcbd22", "layernorm": "#1f77b4", "snr": "#ff7f0e", "dropout": "#2ca02c", "redo": "#9467bd",
    "linear": "#7f7f7f",
}
_OTHER_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
REFERENCE_AGENTS = ("backprop", "cbp")  # drawn beside every other method in its own panel

# Plasticity panels, in order of preference, when the probes recorded them (every metric is
# in the result files; the figure shows the first few).
_PLASTICITY_PANELS = (
    ("dead_pct", "dead units (%)"),
    ("avg_weight_magnitude", "average |w|"),
    ("effective_rank", "effective rank"),
    ("feature_norm", "feature norm, last hidden layer"),
    ("plasticity_score", "plasticity score (1 − L_after/L_before)"),
    ("weight_change", "weight change since the last probe"),
    ("dormant_pct", "dormant units (%)"),
    ("stable_rank", "stable rank"),
)
_MAX_PLASTICITY_PANELS = 6
_EPISODIC_PANELS = (
    ("dormant_pct", "policy dormant units (%)"),
    ("stable_rank", "stable rank, last hidden layer"),
    ("avg_weight_magnitude", "policy average |w|"),
    ("max_weight_change", "largest weight change in one update"),
)


def _curve_panels(results: Sequence[Result]) -> list[tuple[str, str, str]]:
    """(series, y label, x label) for the stream curves the entries have."""
    metric = results[0].data["protocol"]["metric"]
    if metric == "episodic_return":
        return [("online", "mean return per friction segment", "friction segment"),
                ("binned", "episodic return (binned)", "env steps")]
    if metric == "squared_error":
        return [("binned", "squared error (binned)", "bin")]
    panels = [("online", "online accuracy (%)", "task")]
    if any("test" in r["series"] for res in results for r in res.data["runs"]):
        panels.append(("test", "test accuracy (%)", "task"))
    return panels


def _curve(res: Result, series: str, episodic: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, seeds × points) of a stream series, accuracies in percent."""
    m = res.series(series)
    if not m.size:
        return None
    x = np.asarray(max((r["series"].get(series, {"index": []})["index"] for r in res.data["runs"]), key=len))
    if episodic and series == "binned":  # bin k ends at step (k+1)·width
        x = (x + 1) * res.data["protocol"]["bin_examples"]
    if res.data["protocol"]["metric"] == "accuracy":
        m = 100.0 * np.asarray(m, dtype=float)
    return x, m


def _plasticity_matrix(res: Result, key: str, *, keep_gaps: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, seeds × probes) of probe metric ``key``; without ``keep_gaps`` the probes where no seed
    has a value are left out (metrics measured on every few probes draw as one line)."""
    runs = res.data["runs"]
    if not all(key in r["plasticity"]["metrics"] for r in runs):
        return None
    n = max(len(r["plasticity"]["task"]) for r in runs)
    m = np.full((len(runs), n), np.nan)
    for i, r in enumerate(runs):
        vals = r["plasticity"]["metrics"][key]
        m[i, : len(vals)] = [np.nan if v is None else v for v in vals]
    longest = max(runs, key=lambda r: len(r["plasticity"]["task"]))
    x = np.asarray(longest["plasticity"].get("step", longest["plasticity"]["task"]))  # episodic: env steps
    if not keep_gaps:
        some = ~np.isnan(m).all(axis=0)
        x, m = x[some], m[:, some]
    return (x, m) if m.size else None


def _has_values(got: tuple[np.ndarray, np.ndarray] | None) -> bool:
    return got is not None and bool(np.isfinite(got[1]).any())


def _steps_label(value: float, _pos: int) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if abs(value) >= 1e3 else f"{value:g}"


def t_band(matrix: np.ndarray, level: float = CI_LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a (seeds × points) matrix: the mean over the seeds that have a value and the
    Student-t interval mean ± t·s/√n of the boards' summaries (NaN where fewer than 2 seeds)."""
    m = np.asarray(matrix, dtype=np.float64)
    ok = np.isfinite(m)
    n = ok.sum(axis=0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a point no seed has stays a gap
        mean = np.nanmean(m, axis=0)
        sd = np.nanstd(m, axis=0, ddof=1)
    t = np.array([t_quantile(level, int(k) - 1) if k >= 2 else np.nan for k in n])
    half = t * sd / np.sqrt(np.maximum(n, 1))
    return mean, mean - half, mean + half


def _bounds(label: str) -> tuple[float, float] | None:
    """The range a panel's quantity lives in, where its interval stops: percentages in [0, 100],
    errors, norms, ranks and weight magnitudes at 0; a plasticity score or a return unbounded."""
    if "%" in label:
        return 0.0, 100.0
    if "plasticity score" in label or "return" in label:
        return None
    return 0.0, np.inf


def _band(ax, x, m, label, color, marker: str | None = None, *, lw: float = 1.4, alpha: float = 0.2,
          bounds: tuple[float, float] | None = None) -> None:
    mean, lo, hi = t_band(m)
    if marker is None and np.isfinite(mean).sum() <= 3:  # a line of one or two points would not show
        marker = "o"
    if bounds is not None:  # a percentage's interval stops at 0 and 100, a norm's at 0
        lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
    ax.plot(x, mean, label=label, color=color, lw=lw, marker=marker, ms=3)
    if m.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=alpha, lw=0)


def _clip_outliers(ax, floor: float = 0.0) -> None:
    """Keep a panel readable when some values lie far from the rest, and say so on the panel:
    a few isolated points beyond 4 interquartile ranges of the quartiles (at most 2% of the
    points drawn) are clipped off the axis; values orders of magnitude beyond the bulk (a
    diverged seed's plasticity score) put the axis on a symlog scale, linear over the bulk.
    ``floor``: the smallest spread that counts (a percentage panel: 1 point, so a curve at 0%
    with one step of 0.5% is not an outlier)."""
    lines = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
    pts = np.concatenate([y[np.isfinite(y)] for y in lines]) if lines else np.array([])
    if pts.size < 10:
        return
    q25, q50, q75 = np.percentile(pts, [25, 50, 75])
    iqr = max(q75 - q25, floor, 1e-9 * max(1.0, abs(q75)))
    low, high = q25 - 4 * iqr, q75 + 4 * iqr
    off = (pts < low) | (pts > high)
    if not off.any():
        return
    worst = pts[off][np.argmax(np.abs(pts[off] - q50))]
    bulk = max(iqr, abs(q50), 1e-12)
    if off.mean() <= 0.02:
        bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections if c.get_paths()]
        allv = np.concatenate([pts, *bands]) if bands else pts
        inside = allv[np.isfinite(allv) & (allv >= low) & (allv <= high)]
        pad = 0.08 * max(inside.max() - inside.min(), iqr)
        ax.set_ylim(inside.min() - pad, inside.max() + pad)
        note = f"axis clipped: {int(off.sum())} point(s) off it, {'down' if worst < low else 'up'} to {worst:.3g}"
    elif abs(worst - q50) > 1000 * bulk:
        from matplotlib.ticker import SymmetricalLogLocator

        linthresh = float(f"{bulk:.1g}")
        decades = max(1.0, np.log10(abs(worst) / linthresh))
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=linthresh, base=10 ** int(np.ceil(decades / 3))))
        note = f"symlog axis: linear within ±{linthresh:g}, {'down' if worst < 0 else 'up'} to {worst:.3g}"
    else:
        return
    ax.text(0.02, 0.03, note, transform=ax.transAxes, ha="left", va="bottom", fontsize=7, color="#a00000",
            bbox={"facecolor": "white", "edgecolor": "#a00000", "alpha": 0.85, "pad": 2})


def agent_color(name: str, index: int = 0) -> str:
    """The agent's colour on every figure (an agent the table does not name: by its position)."""
    return AGENT_COLORS.get(name, _OTHER_COLORS[index % len(_OTHER_COLORS)])


def _agent_key(res: Result) -> str:
    """The name a colour and the paper-agent test go by: a reference agent's name."""
    agent = res.data["agent"]
    return str(agent["factory"]) if agent.get("source") == "reference" else str(agent["name"])


def is_paper_agent(res: Result) -> bool:
    """Whether the entry is one of the paper's agents on its board (:data:`PAPER_AGENTS`)."""
    if res.data["agent"].get("source") != "reference":
        return False
    name = _agent_key(res)
    if res.data["protocol"]["metric"] == "episodic_return":
        return name.startswith("ppo")
    return name in PAPER_AGENTS_BY_ENV.get(res.env_id, PAPER_AGENTS)


class PlotDependencyError(ImportError):
    """matplotlib is not installed (it is the ``plot`` extra)."""


def pyplot():  # noqa: ANN201  (matplotlib.pyplot)
    """matplotlib.pyplot on the Agg backend, or :class:`PlotDependencyError` naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise PlotDependencyError("plotting needs matplotlib: pip install 'plasticity-gym[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path) -> Path:  # noqa: ANN001  (a matplotlib Figure)
    """Lay out ``fig``, write it atomically to ``out`` (format from the suffix, default PNG) and
    close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    out = Path(out)
    fig.savefig(buf, format=out.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def figure_key(res: Result) -> tuple[str, str]:
    """Entries drawn on one figure share this: (env id, scale)."""
    return res.env_id, res.scale


def plot_figures(results: Sequence[Result], out: str | Path, *, title: str | None = None) -> list[Path]:
    """One figure per (env id, scale) among ``results``: ``out`` itself when there is one,
    else ``<stem>-<env id>-<scale><suffix>`` beside it for each. Returns the files written."""
    if not results:
        raise ValueError("nothing to plot")
    groups: dict[tuple[str, str], list[Result]] = {}
    for res in results:
        groups.setdefault(figure_key(res), []).append(res)
    out = Path(out)
    if len(groups) == 1:
        return [plot_results(results, out, title=title)]
    return [
        plot_results(group, out.with_name(f"{out.stem}-{env_id.split(':')[-1]}-{scale}{out.suffix}"),
                     title=f"{title} — {env_id} ({scale})" if title else None)
        for (env_id, scale), group in sorted(groups.items())
    ]


def plot_results(results: Sequence[Result], out: str | Path, *, title: str | None = None) -> Path:
    """Draw ``results`` of one env and scale to ``out`` (PNG/PDF/SVG by extension), written
    atomically (several envs or scales: :func:`plot_figures`)."""
    if not results:
        raise ValueError("nothing to plot")
    keys = sorted({figure_key(r) for r in results})
    if len(keys) > 1:
        raise ValueError(f"results of {len(keys)} (env, scale) pairs ({', '.join(f'{e} {s}' for e, s in keys)}): "
                         "one figure per (env, scale); use plot_figures, which writes one file each")
    plt = pyplot()
    metrics = {r.data["protocol"]["metric"] for r in results}
    if len(metrics) > 1:
        raise ValueError("cannot put classification and regression entries on one figure")
    curves = _curve_panels(results)
    episodic = metrics == {"episodic_return"}
    plast = [
        (k, lab) for k, lab in (_EPISODIC_PANELS if episodic else _PLASTICITY_PANELS)
        if any(_has_values(_plasticity_matrix(r, k)) for r in results)  # an all-null metric gets no empty panel
    ][:len(_EPISODIC_PANELS) if episodic else _MAX_PLASTICITY_PANELS]
    panels = len(curves) + len(plast)
    ncols = min(panels, 3)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    flat = list(axes.ravel())
    for j, res in enumerate(results):
        color = agent_color(_agent_key(res), j)
        label = f"{res.agent_name} ({len(res.seeds)} seed{'s' if len(res.seeds) > 1 else ''})"
        for ax, (series, ylab, _) in zip(flat, curves):
            got = _curve(res, series, episodic)
            if got is not None:
                _band(ax, got[0], got[1], label, color, "o" if episodic else None,
                      bounds=_bounds(ylab))
        for ax, (key, ylab) in zip(flat[len(curves):], plast):
            got = _plasticity_matrix(res, key, keep_gaps=episodic)
            if got is not None:
                # Episodic points may stand alone between gaps (no episode in a bin, no update
                # between two diagnoses): markers keep them visible.
                _band(ax, got[0], got[1], label, color, "o" if episodic else None,
                      bounds=_bounds(ylab))
    for ax, (_, ylab, xlab) in zip(flat, curves):
        ax.set_xlabel(xlab)
        ax.set_ylabel(ylab)
    for ax, (_, ylab) in zip(flat[len(curves):], plast):
        ax.set_xlabel("env steps" if episodic else "task")
        ax.set_ylabel(ylab)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for i, ax in enumerate(flat[:panels]):
        if episodic and i > 0:  # env steps: few ticks, in thousands (or millions)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tasks and bins are whole numbers
    for ax, (_, ylab) in zip(flat[:panels], [(c[0], c[1]) for c in curves] + list(plast)):
        _clip_outliers(ax, 1.0 if "%" in ylab else 0.0)
    for ax in flat[panels:]:
        ax.set_visible(False)
    _legend_outside(fig, flat[0])
    first = results[0].data["env"]
    fig.suptitle(title or f"{first['id']} (scale {first['scale']}) — mean over seeds, 95% Student-t band")
    return save_figure(fig, out)


def _legend_outside(fig, ax) -> None:  # noqa: ANN001
    """One legend for the figure, to the right of every panel (never over a curve)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)


def plot_methods(results: Sequence[Result], references: Sequence[Result], out: str | Path, *,
                 title: str | None = None) -> Path:
    """Each of ``results`` in a panel of its own on the board's main curve (online accuracy,
    the binned error, the return), beside ``references`` (backprop and CBP) drawn thin; written
    atomically to ``out``."""
    if not results:
        raise ValueError("nothing to plot")
    plt = pyplot()
    episodic = results[0].data["protocol"]["metric"] == "episodic_return"
    series, ylab, xlab = _curve_panels(list(results) + list(references))[-1 if episodic else 0]
    ncols = min(len(results), 4)
    nrows = -(-len(results) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols, 3.0 * nrows), squeeze=False, sharey=True)
    flat = list(axes.ravel())
    from matplotlib.ticker import MaxNLocator

    for j, (ax, res) in enumerate(zip(flat, results)):
        for ref in references:
            got = _curve(ref, series, episodic)
            if got is not None:
                _band(ax, got[0], got[1], ref.agent_name, agent_color(_agent_key(ref)), lw=0.9, alpha=0.08,
                      bounds=_bounds(ylab))
        got = _curve(res, series, episodic)
        color = agent_color(_agent_key(res), j)
        if color in {agent_color(_agent_key(r)) for r in references}:
            color = _OTHER_COLORS[j % len(_OTHER_COLORS)]
        if got is not None:
            _band(ax, got[0], got[1], res.agent_name, color, lw=1.8, alpha=0.25, bounds=_bounds(ylab))
        ax.set_title(f"{res.agent_name} ({len(res.seeds)} seed{'s' if len(res.seeds) > 1 else ''})", fontsize=10,
                     color=color)
        ax.set_xlabel(xlab)
        if j % ncols == 0:
            ax.set_ylabel(ylab)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        _clip_outliers(ax, 1.0 if "%" in ylab else 0.0)
    for ax in flat[len(results):]:
        ax.set_visible(False)
    if references:
        handles, labels = flat[0].get_legend_handles_labels()
        keep = [(h, lab) for h, lab in zip(handles, labels) if lab in {r.agent_name for r in references}]
        fig.legend([h for h, _ in keep], [f"{lab} (reference)" for _, lab in keep], loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=len(keep), fontsize=9, frameon=False)
    first = results[0].data["env"]
    fig.suptitle(title or f"{first['id']} (scale {first['scale']}): each method against backprop and CBP — "
                 "mean over seeds, 95% Student-t band")
    return save_figure(fig, out)


def split_board(results: Sequence[Result], env_id: str) -> tuple[list[Result], list[Result]]:
    """A board's entries as (the paper's agents, in the paper's order; every other entry): the
    main figure's and the methods figure's. Every entry is in one of them (all in the first when
    the board has none of the paper's agents)."""
    order = {name: i for i, name in enumerate(PAPER_AGENTS_BY_ENV.get(env_id, PAPER_AGENTS))}
    paper = sorted((r for r in results if is_paper_agent(r)), key=lambda r: (order.get(_agent_key(r), 99), _agent_key(r)))
    others = [r for r in results if not is_paper_agent(r)]
    return (paper, others) if paper else (list(results), [])


def board_figures(results: Sequence[Result], figures_dir: str | Path, env_id: str, scale: str) -> list[Path]:
    """The figures of one board: ``<env>-<scale>.png`` with the paper's agents (every entry when
    the board has none of them), and ``<env>-<scale>-methods.png`` with each other entry in a
    panel of its own beside backprop and CBP (removed when there is none). Returns the files."""
    figures_dir = Path(figures_dir)
    stem = f"{env_id.split(':')[-1]}-{scale}"
    paper, others = split_board(results, env_id)
    written = [plot_results(paper, figures_dir / f"{stem}.png", title=f"{env_id}, scale {scale}: the paper's agents")]
    methods = figures_dir / f"{stem}-methods.png"
    if others:
        refs = [r for r in paper if _agent_key(r) in REFERENCE_AGENTS
                or (r.data["protocol"]["metric"] == "episodic_return" and _agent_key(r) in ("ppo", "ppo-cbp"))]
        written.append(plot_methods(others, refs, methods))
    elif methods.exists():
        methods.unlink()
    return written
