"""Shared helpers for the harness tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plasticity_gym.harness.cli import main


@pytest.fixture
def cli(capsys):
    """Run ``plasticity-gym ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# Until plasticity_gym.metrics lands, probes use a minimal stand-in (removed once it exists).
try:
    import plasticity_gym.metrics  # noqa: F401
except ModuleNotFoundError:
    import sys
    import types

    import torch

    def _measure(module, probe_x, *, dormant_threshold=0.01):
        x = torch.as_tensor(probe_x)
        with torch.no_grad():
            h = module[1](module[0](x))
        w = torch.cat([p.abs().flatten() for p in module.parameters()])
        return {"dead_pct": float(100 * (h.amax(0) <= 0).float().mean()),
                "avg_weight_magnitude": float(w.detach().mean()), "layers": {"0": {"dead_pct": 0.0}}}

    _m = types.ModuleType("plasticity_gym.metrics")
    _m.measure = _measure
    sys.modules["plasticity_gym.metrics"] = _m
