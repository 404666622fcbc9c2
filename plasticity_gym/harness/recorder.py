"""Turns a stream of step outcomes into per-task and per-bin series (shared by harness and arena)."""

from __future__ import annotations

import math
from typing import Any

# info["phase"] -> series name in the result
_SERIES_OF_PHASE = {"train": "online", "val": "val", "test": "test"}

DEFAULT_BIN_EXAMPLES = 40_000  # the paper's bin for Slowly-Changing Regression
MIN_BINS = 10


def default_bin_examples(n_examples_total: int) -> int:
    """40,000 examples as in the paper, narrowed on short streams so there are >= 10 bins."""
    return max(1, min(DEFAULT_BIN_EXAMPLES, n_examples_total // MIN_BINS))


class StreamRecorder:
    """Accumulates one seed's metric per (phase, task), and per bin of train examples.

    ``record`` is called once per step, so it does the least work it can: sums and counts of
    the current (phase, task) are kept in plain attributes and flushed when the key changes.
    For classification the reward is the batch's mean correctness (accuracy); for regression it
    is minus the batch's mean squared error, recorded as a positive error.
    """

    def __init__(self, metric: str, bin_examples: int | None):
        if metric not in ("accuracy", "squared_error"):
            raise ValueError(f"metric must be 'accuracy' or 'squared_error', got {metric!r}")
        self.metric = metric
        self._sign = -1.0 if metric == "squared_error" else 1.0
        self.bin_examples = bin_examples
        self.series: dict[str, dict[str, list]] = {}
        self._key: tuple[str, int] | None = None
        self._sum = 0.0
        self._n = 0
        self._train_seen = 0  # train examples so far (bin position)
        self._bin_sum = 0.0
        self._bin_n = 0
        self._bin_index = 0

    def record(self, reward: float, info: dict[str, Any]) -> int:
        """Add one scored batch; returns its number of examples."""
        n = len(info["target"])
        key = (info["phase"], info["task_id"])
        if key != self._key:
            self._flush()
            self._key = key
        value = self._sign * float(reward) * n
        self._sum += value
        self._n += n
        if self.bin_examples is not None and key[0] == "train":
            # A batch belongs to the bin of its first example.
            b = self._train_seen // self.bin_examples
            if b != self._bin_index:
                self._flush_bin()
                self._bin_index = b
            self._bin_sum += value
            self._bin_n += n
            self._train_seen += n
        return n

    def _flush(self) -> None:
        if self._key is None or self._n == 0:
            return
        phase, task = self._key
        name = _SERIES_OF_PHASE.get(phase, phase)
        s = self.series.setdefault(name, {"index": [], "value": [], "n": []})
        mean = self._sum / self._n
        if s["index"] and s["index"][-1] == task:
            # The same task's phase resumed after another phase (e.g. train/val/train):
            # merge into one value weighted by example counts.
            n0 = s["n"][-1]
            prev = s["value"][-1]
            prev = math.nan if prev is None else prev
            mean = (prev * n0 + self._sum) / (n0 + self._n)
            s["value"][-1] = mean if math.isfinite(mean) else None
            s["n"][-1] = n0 + self._n
        else:
            s["index"].append(int(task))
            s["value"].append(mean if math.isfinite(mean) else None)
            s["n"].append(self._n)
        self._sum, self._n = 0.0, 0

    def _flush_bin(self) -> None:
        if self._bin_n == 0:
            return
        s = self.series.setdefault("binned", {"index": [], "value": [], "n": []})
        mean = self._bin_sum / self._bin_n
        s["index"].append(self._bin_index)
        s["value"].append(mean if math.isfinite(mean) else None)
        s["n"].append(self._bin_n)
        self._bin_sum, self._bin_n = 0.0, 0

    def finish(self) -> dict[str, dict[str, list]]:
        """Flush what is pending and return the series (the recorder stays usable)."""
        self._flush()
        self._key = None
        self._flush_bin()
        return self.series
