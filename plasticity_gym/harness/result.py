"""Result entries: summary metrics with Student-t intervals over seeds, provenance, and the
:class:`Result` type. A summary is a pure function of the runs (:func:`summarize`), so it can
be recomputed and checked (:func:`summary_errors`) or refreshed (:func:`resummarize`)."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from plasticity_gym.harness._io import atomic_write_json
from plasticity_gym.harness.schema import SCHEMA_VERSION, read_entry, validate_result

CI_LEVEL = 0.95
# The interval of every summary value: Student-t over seeds. A percentile bootstrap over 3
# seeds covers the mean only ~76% of the time (84% at 5, 90% at 10) where it claims 95%; the
# t interval holds its level at every seed count for roughly normal per-seed values
# (tests/harness/test_validate_numbers.py measures its coverage by simulation).
CI_METHOD = "student-t over seeds"
LEGACY_CI_METHODS = ("percentile bootstrap over seeds",)  # older entries: recompute with resummarize
CI_RESAMPLES = 10_000  # plot bands only (bootstrap_band)
CI_RNG_SEED = 0  # fixed, so that a figure is a pure function of its runs


# --------------------------------------------------------------------------- statistics
@functools.lru_cache(maxsize=None)
def t_quantile(level: float, df: int) -> float:
    """The ``t`` with P(|T| <= t) = ``level`` for Student's t with ``df`` (integer >= 1) degrees
    of freedom: the two-sided critical value (12.706 at df 1, 4.303 at df 2, for 0.95)."""
    if df < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"t_quantile needs df >= 1 and 0 < level < 1, got df={df}, level={level}")
    lo, hi = 0.0, 1.0
    while _t_central(hi, df) < level:
        hi *= 2.0
    for _ in range(200):  # bisection to float precision: the central probability is monotone in t
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if _t_central(mid, df) < level else (lo, mid)
    return hi


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for integer ``df``, by the closed form in theta = atan(t / sqrt(df))."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:  # (2/pi)(theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return (2.0 / math.pi) * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def mean_ci(values: Sequence[float] | np.ndarray, *, level: float = CI_LEVEL) -> tuple[Any, Any, Any]:
    """Mean of ``values`` over seeds and its Student-t interval: mean ± t·s/√n.

    ``values`` holds one number per seed (a 1-D sequence), or one row of seeds per experiment
    (a 2-D array: the interval of each row, vectorised). A row with a non-finite value has a
    NaN mean and interval; with a single seed the mean stands and the interval is NaN (one
    seed says nothing about spread).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"mean_ci takes one row of per-seed values or a 2-D array of rows, got shape {x.shape}")
    n = x.shape[-1]
    if n == 0:
        out = np.full(x.shape[:-1], np.nan)
        return (float("nan"),) * 3 if x.ndim == 1 else (out, out.copy(), out.copy())
    finite = np.all(np.isfinite(x), axis=-1)
    mean = np.where(finite, x.mean(axis=-1), np.nan)
    if n < 2:
        half = np.full(mean.shape, np.nan)
    else:
        half = t_quantile(level, n - 1) * x.std(axis=-1, ddof=1) / math.sqrt(n)
        half = np.where(finite, half, np.nan)
    lo, hi = mean - half, mean + half
    if x.ndim == 1:
        return float(mean), float(lo), float(hi)
    return mean, lo, hi


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = CI_LEVEL,
    n_resamples: int = CI_RESAMPLES,
    rng_seed: int = CI_RNG_SEED,
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap CI (resampling the values).

    Not used for summaries (see :func:`mean_ci`): with a handful of seeds its coverage is well
    below ``level``. With a single value the interval collapses to it.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(rng_seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi)


def bootstrap_band(matrix: np.ndarray, level: float = CI_LEVEL, n_resamples: int = 2000):
    """Per-column mean and percentile-bootstrap band of a (seeds × points) matrix (for plots)."""
    m = np.asarray(matrix, dtype=np.float64)
    mean = np.nanmean(m, axis=0)
    if m.shape[0] < 2:
        return mean, mean, mean
    rng = np.random.default_rng(CI_RNG_SEED)
    idx = rng.integers(0, m.shape[0], size=(n_resamples, m.shape[0]))
    means = np.nanmean(m[idx], axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(means, [alpha, 1.0 - alpha], axis=0)
    return mean, lo, hi


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _tail_mean(values: list, frac: float, head: bool = False) -> float:
    vals = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if vals.size == 0:
        return math.nan
    k = max(1, math.ceil(frac * vals.size))
    part = vals[:k] if head else vals[-k:]
    return float(part.mean())


def _mean(values: list) -> float:
    return _tail_mean(values, 1.0)


# The summary metrics, per kind of series. Each is (name, series, reducer, higher_is_better,
# description). "last10" follows the paper's habit of reporting the end of the stream; "auc"
# is the mean over the whole curve (the area under it, normalised by its length).
_ACCURACY_METRICS = [
    ("online_accuracy_last10", "online", lambda v: _tail_mean(v, 0.1), True,
     "mean online accuracy over the last 10% of tasks"),
    ("online_accuracy_first10", "online", lambda v: _tail_mean(v, 0.1, head=True), True,
     "mean online accuracy over the first 10% of tasks"),
    ("online_accuracy_auc", "online", _mean, True,
     "mean online accuracy over all tasks (normalised area under the curve)"),
    ("test_accuracy_last10", "test", lambda v: _tail_mean(v, 0.1), True,
     "mean test accuracy over the last 10% of tasks"),
    ("test_accuracy_auc", "test", _mean, True, "mean test accuracy over all tasks"),
    ("test_accuracy_final", "test", lambda v: _tail_mean(v, 0.0), True,
     "test accuracy of the last task"),
]
_ERROR_METRICS = [
    ("error_last10", "binned", lambda v: _tail_mean(v, 0.1), False,
     "mean squared error over the last 10% of bins"),
    ("error_first10", "binned", lambda v: _tail_mean(v, 0.1, head=True), False,
     "mean squared error over the first 10% of bins"),
    ("error_auc", "binned", _mean, False,
     "mean squared error over all bins (normalised area under the curve)"),
]
# Episodic RL (metric "episodic_return"): from each run's episodes (the lifetime step at which
# each ended, and its return) and its length in env steps.
def _episodes_in(run: dict[str, Any], lo: float, hi: float) -> list[float]:
    """Returns of the episodes of ``run`` that ended in (lo·steps, hi·steps]."""
    ep, total = run["episodes"], run["n_examples"]
    return [r for s, r in zip(ep["step"], ep["return"]) if lo * total < s <= hi * total]


def _return_mean(run: dict[str, Any], lo: float, hi: float, fallback: int | None) -> float:
    vals = _episodes_in(run, lo, hi)
    if not vals and fallback is not None and run["episodes"]["return"]:
        vals = [run["episodes"]["return"][fallback]]  # a window shorter than one episode
    vals = [math.nan if v is None else v for v in vals]
    return float(np.mean(vals)) if vals else math.nan


_RETURN_METRICS = [
    ("return_last10", lambda r: _return_mean(r, 0.9, 1.0, -1), True,
     "mean episodic return over the last 10% of steps (the episodes that ended there; if none, the last episode)"),
    ("return_first10", lambda r: _return_mean(r, 0.0, 0.1, 0), True,
     "mean episodic return over the first 10% of steps (if no episode ended there, the first episode)"),
    ("return_auc", lambda r: _return_mean(r, -1.0, math.inf, None), True,
     "mean return of every episode of the run"),
]
# Final plasticity diagnostics worth a column; whichever of these names metrics.measure reports.
_PLASTICITY_FINAL = {
    "dead_pct": ("final_dead_pct", False, "dead units (%) at the last probe"),
    "dormant_pct": ("final_dormant_pct", False, "dormant units (%) at the last probe"),
    "avg_weight_magnitude": ("final_avg_weight_magnitude", False, "average |w| at the last probe"),
    "effective_rank": ("final_effective_rank", True, "effective rank at the last probe"),
    "stable_rank": ("final_stable_rank", True, "stable rank at the last probe"),
}


def primary_metric(metric: str, has_test: bool) -> str:
    """The metric a board ranks by: test accuracy where the env has a test phase; the mean
    episodic return over the last 10% of steps for an episodic env."""
    if metric == "episodic_return":
        return "return_last10"
    if metric == "squared_error":
        return "error_last10"
    return "test_accuracy_last10" if has_test else "online_accuracy_last10"


def summarize(metric: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``summary`` block: each summary metric per seed, its mean over seeds and the
    Student-t interval over seeds (:func:`mean_ci`, clipped to :func:`metric_range`). A pure
    function of ``metric`` and ``runs``."""
    table = _ERROR_METRICS if metric == "squared_error" else _ACCURACY_METRICS
    out: dict[str, Any] = {}
    if metric == "episodic_return":
        table = []
        for name, reduce_run, higher, desc in _RETURN_METRICS:
            out[name] = _metric_entry(name, [reduce_run(r) for r in runs], higher, desc)
    for name, series, reduce, higher, desc in table:
        if not all(series in r["series"] and r["series"][series]["value"] for r in runs):
            continue
        per_seed = [reduce(r["series"][series]["value"]) for r in runs]
        out[name] = _metric_entry(name, per_seed, higher, desc)
    for key, (name, higher, desc) in _PLASTICITY_FINAL.items():
        if all(r["plasticity"]["metrics"].get(key) for r in runs):
            per_seed = [r["plasticity"]["metrics"][key][-1] for r in runs]
            per_seed = [math.nan if v is None else v for v in per_seed]
            out[name] = _metric_entry(name, per_seed, higher, desc)
    has_test = all("test" in r["series"] and r["series"]["test"]["value"] for r in runs)
    return {
        "primary": primary_metric(metric, has_test),
        "ci": {"method": CI_METHOD, "level": CI_LEVEL},
        "metrics": out,
    }


def metric_range(name: str) -> tuple[float, float]:
    """The values summary metric ``name`` can take: an accuracy is in [0, 1], a percentage in
    [0, 100], an error, weight magnitude or rank is >= 0; a return is unbounded."""
    if "accuracy" in name:
        return 0.0, 1.0
    if name.endswith("_pct"):
        return 0.0, 100.0
    if name.startswith(("error_", "final_")):
        return 0.0, math.inf
    return -math.inf, math.inf


def _metric_entry(name: str, per_seed: list[float], higher: bool, desc: str) -> dict[str, Any]:
    # The interval is clipped to the metric's range: the true mean lies in it, so clipping
    # keeps the coverage and spares a table "8% [-6%, 22%]" dead units at 3 seeds.
    mean, lo, hi = mean_ci(per_seed)
    floor, ceiling = metric_range(name)
    lo, hi = max(lo, floor), min(hi, ceiling)  # NaN bounds (one seed) stay NaN
    return {
        "value": _finite_or_none(mean),
        "ci_low": _finite_or_none(lo),
        "ci_high": _finite_or_none(hi),
        "per_seed": [_finite_or_none(v) for v in per_seed],
        "higher_is_better": higher,
        "description": desc,
    }


# Recomputed summaries must equal the stored ones; this relative tolerance only absorbs
# last-digit differences of another platform's float summation.
SUMMARY_RTOL = 1e-9


def _same(a: Any, b: Any) -> bool:
    """Whether a recomputed summary field ``a`` equals the stored ``b`` (floats to SUMMARY_RTOL)."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=SUMMARY_RTOL, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def _shown(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else json.dumps(v)


def summary_errors(entry: dict[str, Any]) -> list[str]:
    """Where ``entry``'s stored summary differs from the one its runs give (:func:`summarize`):
    one message per differing field, naming it (``summary.metrics.error_last10.value: ...``).
    An entry summarised with an older interval method is told to run ``resummarize``; its
    means and per-seed values are still checked."""
    want = summarize(entry["protocol"]["metric"], entry["runs"])
    have = entry["summary"]
    msgs: list[str] = []
    method = have.get("ci", {}).get("method")
    legacy = method in LEGACY_CI_METHODS
    if legacy:
        msgs.append(f"summary.ci.method: {method!r} is an older interval whose coverage at few seeds is below "
                    f"its level; recompute the summary from the runs with `plasticity-gym resummarize FILE`")
    elif have.get("ci") != want["ci"]:
        msgs.append(f"summary.ci: recorded {json.dumps(have.get('ci'))}, this version computes "
                    f"{json.dumps(want['ci'])}")
    if have["primary"] != want["primary"]:
        msgs.append(f"summary.primary: recorded {have['primary']!r}, but the board of an entry scored by "
                    f"{entry['protocol']['metric']} ranks by {want['primary']!r}")
    for name in sorted(set(have["metrics"]) - set(want["metrics"])):
        msgs.append(f"summary.metrics.{name}: not computed from these runs (unknown, or its series is missing)")
    for name in sorted(set(want["metrics"]) - set(have["metrics"])):
        msgs.append(f"summary.metrics.{name}: missing; the runs give it")
    fields = ("value", "per_seed", "higher_is_better", "description") + (() if legacy else ("ci_low", "ci_high"))
    for name in sorted(set(want["metrics"]) & set(have["metrics"])):
        w, h = want["metrics"][name], have["metrics"][name]
        for field in fields:
            if field == "per_seed":
                for i, (a, b) in enumerate(zip(w[field], h[field])):
                    if not _same(a, b):
                        msgs.append(f"summary.metrics.{name}.per_seed[{i}]: recorded {_shown(b)}, the runs "
                                    f"give {_shown(a)} (runs[{i}], seed {entry['seeds'][i]})")
                if len(w[field]) != len(h[field]):
                    msgs.append(f"summary.metrics.{name}.per_seed: {len(h[field])} values for {len(w[field])} runs")
            elif not _same(w[field], h[field]):
                msgs.append(f"summary.metrics.{name}.{field}: recorded {_shown(h[field])}, the runs give {_shown(w[field])}")
    return msgs


def resummarize(entry: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``entry`` with its ``summary`` recomputed from its runs by this version's
    :func:`summarize`; every other field (the runs, provenance) is kept as it is."""
    out = dict(entry)
    out["summary"] = summarize(entry["protocol"]["metric"], entry["runs"])
    return out


# --------------------------------------------------------------------------- provenance
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    import gymnasium

    import plasticity_gym

    try:
        import torch

        torch_v: str | None = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_v = None
    return {
        "python": platform.python_version(),
        "torch": torch_v,
        "gymnasium": gymnasium.__version__,
        "mujoco": _version("mujoco"),
        "numpy": np.__version__,
        "plasticity_gym": plasticity_gym.__version__,
    }


def _package_files(root: Path) -> list[Path]:
    """The ``.py`` files of the package at ``root`` and of its subpackages (folders with an
    ``__init__.py``): what an install of the package holds, and nothing else a checkout has."""
    out = sorted(root.glob("*.py"))
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        out += _package_files(sub)
    return out


def _source_sha256(roots: Sequence[tuple[str, Path]]) -> str:
    """sha256 over the package-relative paths (``<import name>/<path>``) and bytes of every
    ``.py`` file of the packages ``roots`` (import name, folder): the same for a checkout and for
    an install of the same code."""
    h = hashlib.sha256()
    for name, root in roots:
        for f in _package_files(root):
            h.update(f"{name}/{f.relative_to(root).as_posix()}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of one file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def code_identity() -> dict[str, Any]:
    """Which code produced an entry: the package version, the sha256 of the source of
    ``plasticity_gym`` and of the reference agents (what ran, edited or not), and, in a git
    checkout, the commit and whether tracked files differed from it."""
    import plasticity_gym

    pkg = Path(plasticity_gym.__file__).resolve().parent
    roots = [("plasticity_gym", pkg)]
    try:
        import plasticity_gym_agents

        if getattr(plasticity_gym_agents, "__file__", None):
            roots.append(("plasticity_gym_agents", Path(plasticity_gym_agents.__file__).resolve().parent))
    except ImportError:
        pass
    commit = _git(["rev-parse", "HEAD"], pkg)
    dirty = None
    if commit:
        status = _git(["status", "--porcelain", "--untracked-files=no", "--", *(str(r) for _, r in roots)], pkg)
        dirty = None if status is None else bool(status)
    return {
        "package_version": plasticity_gym.__version__,
        "source_sha256": _source_sha256(roots),
        "git_commit": commit or None,
        "git_dirty": dirty,
    }


# The SIMD extensions that change which kernels BLAS/LAPACK pick, and so the last bits of a result.
_SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
               "asimd", "sve")


def cpu_identity() -> str:
    """The CPU model and its SIMD extensions (``"<model> [avx avx2 ...]"``): two machines with the
    same versions can still round differently when these differ."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and model in (platform.processor(), platform.machine()):
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return f"{model} [{' '.join(f for f in _SIMD_FLAGS if f in flags)}]"


def hardware(device: str) -> dict[str, Any]:
    accel = None
    if device.startswith("cuda"):
        import torch

        accel = torch.cuda.get_device_name(torch.device(device))
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "accelerator": accel,
        "cpu": cpu_identity(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- Result
@dataclass
class Result:
    """One result entry (the JSON document). ``data`` follows the result schema."""

    data: dict[str, Any]

    # Convenient read-only views -------------------------------------------------------
    @property
    def env_id(self) -> str:
        return self.data["env"]["id"]

    @property
    def scale(self) -> str:
        return self.data["env"]["scale"]

    @property
    def agent_name(self) -> str:
        return self.data["agent"]["name"]

    @property
    def seeds(self) -> list[int]:
        return list(self.data["seeds"])

    @property
    def summary(self) -> dict[str, Any]:
        """Summary metrics by name: ``{"value", "ci_low", "ci_high", "per_seed", ...}``."""
        return self.data["summary"]["metrics"]

    @property
    def primary(self) -> str:
        return self.data["summary"]["primary"]

    def series(self, name: str = "online") -> np.ndarray:
        """A per-seed series as a (seeds × points) float array (NaN where missing/non-finite)."""
        rows = [r["series"].get(name, {"value": []})["value"] for r in self.data["runs"]]
        n = max((len(r) for r in rows), default=0)
        out = np.full((len(rows), n), np.nan)
        for i, r in enumerate(rows):
            out[i, : len(r)] = [np.nan if v is None else v for v in r]
        return out

    def board_key(self) -> tuple[str, str, str, str, str]:
        """Entries share a board only when all of these match."""
        env = self.data["env"]
        return (env["id"], env["scale"], env["kwargs_hash"], env["data"]["name"], env["data"]["sha256"])

    # I/O --------------------------------------------------------------------------------
    def validate(self, source: str | None = None) -> None:
        validate_result(self.data, source)

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Validate, then write atomically (a crash never leaves a torn file)."""
        self.validate(str(path))
        atomic_write_json(path, self.data)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, validate: bool = True) -> "Result":
        data = read_entry(str(path))  # size and nesting capped before parsing
        if validate:
            validate_result(data, str(path))
        return cls(data)

    def comparable(self) -> dict[str, Any]:
        """The entry without what legitimately differs between two identical runs
        (timings, dates, machine, command): what a resumed run must reproduce."""
        d = json.loads(json.dumps(self.data))
        d.pop("provenance", None)
        for r in d["runs"]:
            r.pop("wall_time_s", None)
        return d


__all__ = [
    "Result",
    "SCHEMA_VERSION",
    "bootstrap_band",
    "bootstrap_ci",
    "code_identity",
    "hardware",
    "mean_ci",
    "metric_range",
    "resummarize",
    "summary_errors",
    "t_quantile",
    "now_iso",
    "primary_metric",
    "summarize",
    "versions",
]
