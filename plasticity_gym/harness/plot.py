"""Figures of result entries: the per-task curves and the plasticity metrics, with a 95%
bootstrap band over seeds, several entries on one figure. Needs matplotlib (``.[plot]``).

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
from plasticity_gym.harness.result import Result, bootstrap_band

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
    panels = [("online", "online accuracy", "task")]
    if any("test" in r["series"] for res in results for r in res.data["runs"]):
        panels.append(("test", "test accuracy", "task"))
    return panels


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


def _steps_label(value: float, _pos: int) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if abs(value) >= 1e3 else f"{value:g}"


def _band(ax, x, m, label, color, marker: str | None = None) -> None:
    with warnings.catch_warnings():  # a point no seed has (an episodic bin without episodes) stays a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, lo, hi = bootstrap_band(m)
    ax.plot(x, mean, label=label, color=color, lw=1.4, marker=marker, ms=3)
    if m.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0)


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
    fig.savefig(buf, format=out.suffix.lstrip(".") or "png", dpi=110)
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
        if any(_plasticity_matrix(r, k) is not None for r in results)
    ][:len(_EPISODIC_PANELS) if episodic else _MAX_PLASTICITY_PANELS]
    panels = len(curves) + len(plast)
    ncols = min(panels, 3)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(results) > len(colors):  # a board of many agents: no two share a colour
        colors = [plt.get_cmap("tab20")(i) for i in range(20)]
    flat = list(axes.ravel())
    for j, res in enumerate(results):
        color = colors[j % len(colors)]
        label = f"{res.agent_name} ({len(res.seeds)} seed{'s' if len(res.seeds) > 1 else ''})"
        for ax, (series, _, _) in zip(flat, curves):
            m = res.series(series)
            if m.size:
                x = np.asarray(max((r["series"].get(series, {"index": []})["index"] for r in res.data["runs"]), key=len))
                if episodic and series == "binned":  # bin k ends at step (k+1)·width
                    x = (x + 1) * res.data["protocol"]["bin_examples"]
                _band(ax, x, m, label, color, "o" if episodic else None)
        for ax, (key, _) in zip(flat[len(curves):], plast):
            got = _plasticity_matrix(res, key, keep_gaps=episodic)
            if got is not None:
                # Episodic points may stand alone between gaps (no episode in a bin, no update
                # between two diagnoses): markers keep them visible.
                _band(ax, got[0], got[1], label, color, "o" if episodic else None)
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
    for ax in flat[panels:]:
        ax.set_visible(False)
    flat[0].legend(fontsize=8)
    first = results[0].data["env"]
    fig.suptitle(title or f"{first['id']} (scale {first['scale']}) — mean over seeds, 95% bootstrap band")
    return save_figure(fig, out)
