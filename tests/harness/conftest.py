"""Shared helpers for the harness tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from plasticity_gym.harness.cli import main

# The fakes are imported as ``tests.harness.fakes`` everywhere (tests, the CLI's module:factory
# and Gymnasium's module:EnvId), so that there is one copy of them: the repository root must be
# importable. Appended, so that it never shadows an installed package.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))


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

