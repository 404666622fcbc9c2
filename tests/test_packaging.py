"""The reference agents install as ``plasticity_gym_agents``: a user's own ``agents`` package
(a research project's folder, or a PyPI package of that name) cannot shadow them."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_installation():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapping = tool["package-dir"]
    found = set()
    for folder, pkg in (("plasticity_gym", "plasticity_gym"), ("agents", "plasticity_gym_agents")):
        for init in (REPO / folder).rglob("__init__.py"):
            found.add(".".join((pkg, *init.parent.relative_to(REPO / folder).parts)))
    assert found == listed, f"pyproject.toml [tool.setuptools] packages must list exactly {sorted(found)}"
    assert mapping == {"plasticity_gym_agents": "agents"}


def test_cli_finds_the_reference_agents_beside_a_users_own_agents_package(tmp_path):
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "__init__.py").write_text("MINE = True\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))  # the user's package is importable as `agents`
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "plasticity_gym.harness.cli", "run", "SlowRegression-v0", "--agent", "cbp",
         "--scale", "smoke", "--seeds", "1", "--no-progress", "--env-set", "n_examples=2000",
         "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    check = subprocess.run([sys.executable, "-c", "import agents, plasticity_gym_agents as a; "
                            "print(agents.MINE, 'cbp' in a.AGENT_NAMES)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.split() == ["True", "True"], check.stderr
