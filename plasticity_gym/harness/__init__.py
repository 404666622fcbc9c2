"""The evaluation harness: run agents on the benchmark streams and produce result entries.

Python API (what the ``plasticity-gym`` command does)::

    from plasticity_gym.harness import evaluate, compare, Result
    result = evaluate("SlowRegression-v0", "cbp", scale="smoke", seeds=(0, 1, 2))
    result.summary["error_last10"]          # {"value", "ci_low", "ci_high", "per_seed", ...}
    result.save("runs/cbp.json")            # validated against the schema, written atomically

``agent_factory`` is a reference name, ``"module:factory"`` or a callable
``factory(observation_space, action_space, *, seed, device) -> Agent``.
"""

from __future__ import annotations

from typing import Any

from plasticity_gym.harness.evaluate import evaluate
from plasticity_gym.harness.resolve import AgentProtocolError
from plasticity_gym.harness.result import Result, bootstrap_ci
from plasticity_gym.harness.schema import (
    SCHEMA_VERSION,
    ResultValidationError,
    load_schema,
    result_errors,
    validate_result,
)


def __getattr__(name: str) -> Any:
    # compare pulls in the arena (pettingzoo); plot pulls in matplotlib: load on first use.
    if name in ("compare", "Comparison"):
        from plasticity_gym.harness import headtohead

        return getattr(headtohead, name)
    if name == "plot_results":
        from plasticity_gym.harness.plot import plot_results

        return plot_results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCHEMA_VERSION",
    "AgentProtocolError",
    "Comparison",
    "Result",
    "ResultValidationError",
    "bootstrap_ci",
    "compare",
    "evaluate",
    "load_schema",
    "plot_results",
    "result_errors",
    "validate_result",
]
