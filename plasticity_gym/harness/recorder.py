"""Turns a stream of step outcomes into per-task and per-bin series (shared by harness and arena)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# info["phase"] -> series name in the result
_SERIES_OF_PHASE = {"train": "online", "val": "val", "test": "test"}

DEFAULT_BIN_EXAMPLES = 40_000  # the paper's bin for Slowly-Changing Regression
MIN_BINS = 10


def default_bin_examples(n_examples_total: int) -> int:
    """40,000 examples as in the paper, narrowed on short streams so there are >= 10 bins."""
    return max(1, min(DEFAULT_BIN_EXAMPLES, n_examples_total // MIN_BINS))


class VectorStreamRecorder:
    """Accumulates the metric of ``n_streams`` lockstep streams per (phase, task) and per bin.

    The streams share one configuration (same phases, tasks and batch size at every step), so one
    key and one bin position serve them all and a step costs one vector addition. ``finish``
    returns one series dict per stream. :class:`StreamRecorder` is the one-stream case.
    For classification the reward is the batch's mean correctness (accuracy); for regression it
    is minus the batch's mean squared error, recorded as a positive error.
    """

    def __init__(self, metric: str, bin_examples: int | None, n_streams: int):
        if metric not in ("accuracy", "squared_error"):
            raise ValueError(f"metric must be 'accuracy' or 'squared_error', got {metric!r}")
        if n_streams < 1:
            raise ValueError("n_streams must be >= 1")
        self.metric = metric
        self.n_streams = int(n_streams)
        self._sign = -1.0 if metric == "squared_error" else 1.0
        self.bin_examples = bin_examples
        self.all_series: list[dict[str, dict[str, list]]] = [{} for _ in range(n_streams)]
        self._key: tuple[str, int] | None = None
        self._sum = np.zeros(n_streams)
        self._n = 0
        self._train_seen = 0  # train examples so far, per stream (bin position)
        self._bin_sum = np.zeros(n_streams)
        self._bin_n = 0
        self._bin_index = 0

    def record_many(self, rewards: np.ndarray, phase: str, task_id: int, n: int) -> int:
        """Add one scored batch of ``n`` examples per stream (``rewards``: one per stream)."""
        key = (phase, task_id)
        if key != self._key:
            self._flush()
            self._key = key
        values = rewards * (self._sign * n)
        self._sum += values
        self._n += n
        if self.bin_examples is not None and phase == "train":
            # A batch belongs to the bin of its first example.
            b = self._train_seen // self.bin_examples
            if b != self._bin_index:
                self._flush_bin()
                self._bin_index = b
            self._bin_sum += values
            self._bin_n += n
            self._train_seen += n
        return n

    def _flush(self) -> None:
        if self._key is None or self._n == 0:
            return
        phase, task = self._key
        name = _SERIES_OF_PHASE.get(phase, phase)
        for series, total in zip(self.all_series, self._sum.tolist()):
            s = series.setdefault(name, {"index": [], "value": [], "n": []})
            mean = total / self._n
            if s["index"] and s["index"][-1] == task:
                # The same task's phase resumed after another phase (e.g. train/val/train):
                # merge into one value weighted by example counts.
                n0 = s["n"][-1]
                prev = s["value"][-1]
                prev = math.nan if prev is None else prev
                mean = (prev * n0 + total) / (n0 + self._n)
                s["value"][-1] = mean if math.isfinite(mean) else None
                s["n"][-1] = n0 + self._n
            else:
                s["index"].append(int(task))
                s["value"].append(mean if math.isfinite(mean) else None)
                s["n"].append(self._n)
        self._sum[:] = 0.0
        self._n = 0

    def _flush_bin(self) -> None:
        if self._bin_n == 0:
            return
        for series, total in zip(self.all_series, self._bin_sum.tolist()):
            s = series.setdefault("binned", {"index": [], "value": [], "n": []})
            mean = total / self._bin_n
            s["index"].append(self._bin_index)
            s["value"].append(mean if math.isfinite(mean) else None)
            s["n"].append(self._bin_n)
        self._bin_sum[:] = 0.0
        self._bin_n = 0

    def finish_all(self) -> list[dict[str, dict[str, list]]]:
        """Flush what is pending and return each stream's series (the recorder stays usable)."""
        self._flush()
        self._key = None
        self._flush_bin()
        return self.all_series


class StreamRecorder(VectorStreamRecorder):
    """One stream's recorder: ``record(reward, info)`` per step, ``finish()`` for the series."""

    def __init__(self, metric: str, bin_examples: int | None):
        super().__init__(metric, bin_examples, 1)
        self._one = np.zeros(1)

    @property
    def series(self) -> dict[str, dict[str, list]]:
        return self.all_series[0]

    def record(self, reward: float, info: dict[str, Any]) -> int:
        """Add one scored batch; returns its number of examples."""
        self._one[0] = reward
        return self.record_many(self._one, info["phase"], info["task_id"], len(info["target"]))

    def finish(self) -> dict[str, dict[str, list]]:
        return self.finish_all()[0]
