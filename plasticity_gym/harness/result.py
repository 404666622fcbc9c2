"""Result entries: summary metrics with bootstrap CIs, provenance, and the :class:`Result` type."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from plasticity_gym.harness._io import atomic_write_json
from plasticity_gym.harness.schema import SCHEMA_VERSION, validate_result

CI_LEVEL = 0.95
CI_RESAMPLES = 10_000
CI_RNG_SEED = 0  # fixed, so that a result is a pure function of its runs (resume equality)


# --------------------------------------------------------------------------- statistics
def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = CI_LEVEL,
    n_resamples: int = CI_RESAMPLES,
    rng_seed: int = CI_RNG_SEED,
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap CI (resampling the values).

    With a single value the interval collapses to it: one seed says nothing about spread.
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
# Final plasticity diagnostics worth a column; whichever of these names metrics.measure reports.
_PLASTICITY_FINAL = {
    "dead_pct": ("final_dead_pct", False, "dead units (%) at the last probe"),
    "dormant_pct": ("final_dormant_pct", False, "dormant units (%) at the last probe"),
    "avg_weight_magnitude": ("final_avg_weight_magnitude", False, "average |w| at the last probe"),
    "effective_rank": ("final_effective_rank", True, "effective rank at the last probe"),
    "stable_rank": ("final_stable_rank", True, "stable rank at the last probe"),
}


def primary_metric(metric: str, has_test: bool) -> str:
    """The metric a board ranks by: test accuracy where the env has a test phase."""
    if metric == "squared_error":
        return "error_last10"
    return "test_accuracy_last10" if has_test else "online_accuracy_last10"


def summarize(metric: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``summary`` block: each summary metric per seed, its mean and bootstrap CI."""
    table = _ERROR_METRICS if metric == "squared_error" else _ACCURACY_METRICS
    out: dict[str, Any] = {}
    for name, series, reduce, higher, desc in table:
        if not all(series in r["series"] and r["series"][series]["value"] for r in runs):
            continue
        per_seed = [reduce(r["series"][series]["value"]) for r in runs]
        out[name] = _metric_entry(per_seed, higher, desc)
    for key, (name, higher, desc) in _PLASTICITY_FINAL.items():
        if all(r["plasticity"]["metrics"].get(key) for r in runs):
            per_seed = [r["plasticity"]["metrics"][key][-1] for r in runs]
            per_seed = [math.nan if v is None else v for v in per_seed]
            out[name] = _metric_entry(per_seed, higher, desc)
    has_test = all("test" in r["series"] and r["series"]["test"]["value"] for r in runs)
    return {
        "primary": primary_metric(metric, has_test),
        "ci": {
            "method": "percentile bootstrap over seeds",
            "level": CI_LEVEL,
            "n_resamples": CI_RESAMPLES,
            "rng_seed": CI_RNG_SEED,
        },
        "metrics": out,
    }


def _metric_entry(per_seed: list[float], higher: bool, desc: str) -> dict[str, Any]:
    mean, lo, hi = bootstrap_ci(per_seed)
    return {
        "value": _finite_or_none(mean),
        "ci_low": _finite_or_none(lo),
        "ci_high": _finite_or_none(hi),
        "per_seed": [_finite_or_none(v) for v in per_seed],
        "higher_is_better": higher,
        "description": desc,
    }


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
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
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
    "hardware",
    "now_iso",
    "primary_metric",
    "summarize",
    "versions",
]
