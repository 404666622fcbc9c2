"""A one-line progress display (examples/s and ETA) for terminals; silent in CI logs."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO


def progress_wanted(stream: TextIO | None = None) -> bool:
    """True on an interactive terminal, False when not a TTY or when ``CI`` is set truthy."""
    stream = stream or sys.stderr
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def _fmt_time(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Redraws ``label  done/total examples  rate ex/s  ETA`` at most every ``interval`` s.

    ``update`` is cheap enough to call every step: it only looks at the clock every
    ``check_every`` calls. ``sink``, when given, is also handed the count every ``check_every``
    calls and at ``close``, shown or not (a worker process reports its progress this way).
    """

    def __init__(
        self,
        total: int,
        *,
        enabled: bool,
        label: str = "",
        done: int = 0,
        stream: TextIO | None = None,
        interval: float = 0.5,
        check_every: int = 256,
        sink: Callable[[int], None] | None = None,
    ):
        self.total = total
        self.enabled = enabled
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = interval
        self.check_every = check_every
        self.sink = sink
        self._calls = 0
        self._start_done = done
        self._t0 = time.perf_counter()
        self._last = 0.0

    def update(self, done: int) -> None:
        if not self.enabled and self.sink is None:
            return
        self._calls += 1
        if self._calls % self.check_every:
            return
        if self.sink is not None:
            self.sink(done)
            if not self.enabled:
                return
        now = time.perf_counter()
        if now - self._last < self.interval:
            return
        self._last = now
        self._draw(done, now)

    def _draw(self, done: int, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = (done - self._start_done) / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        pct = 100.0 * done / self.total if self.total else 100.0
        line = (
            f"{self.label}{done:,}/{self.total:,} examples ({pct:5.1f}%)  "
            f"{rate:,.0f} ex/s  ETA {_fmt_time(eta)}"
        )
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def close(self, done: int) -> None:
        if self.sink is not None:
            self.sink(done)
        if self.enabled:
            self._draw(done, time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
