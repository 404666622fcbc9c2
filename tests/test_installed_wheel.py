"""The package as a user installs it: the wheel, built from this checkout, installed into a fresh
virtual environment, and the commands run from a folder outside the checkout.

The venv sees the already-installed dependencies (torch, gymnasium, ...) through a ``.pth`` file
naming this interpreter's site-packages, and the wheel goes in with ``--no-deps``: installing
torch again would take minutes. A ``.pth`` path line adds the folder to ``sys.path`` without
running the ``.pth`` files in it, so an editable install of the checkout there stays invisible,
and the venv's own site-packages (with the wheel) comes first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE = ("pyproject.toml", "README.md", "LICENSE", "plasticity_gym", "agents")


def _sh(argv, cwd, env, timeout=300):
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, environment for its commands, a work folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in SOURCE:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    code, out, err = _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", tmp / "dist", src], tmp, env)
    assert code == 0, out + err
    (wheel,) = (tmp / "dist").glob("plasticity_gym-*.whl")
    venv = tmp / "venv"
    code, out, err = _sh([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    assert code == 0, out + err
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, env=env, check=True).stdout.strip()
    (Path(site) / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code, out, err = _sh([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                          wheel], tmp, env)
    assert code == 0, out + err
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp / "work"
    work.mkdir()
    return venv / "bin", env, work, wheel


@pytest.mark.slow
def test_the_wheel_ships_the_licence_and_the_data_scripts(installed):
    *_, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), names
    assert "plasticity_gym/data/embedded/convert_mnist_5k.py" in names  # the data README's conversion script
    assert "plasticity_gym/data/embedded/README.md" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: matplotlib" in meta  # the demo draws a figure


@pytest.mark.slow
def test_the_installed_package_runs_outside_the_checkout(installed):
    bindir, env, work, _ = installed
    gym = bindir / "plasticity-gym"
    py = bindir / "python"
    # It is the wheel that runs, not this checkout.
    code, out, err = _sh([py, "-c", "import plasticity_gym, plasticity_gym_agents; print(plasticity_gym.__file__); "
                          "print(plasticity_gym_agents.__file__)"], work, env)
    assert code == 0, err
    assert all(str(bindir.parent) in line for line in out.split()), out
    site_packages = Path(out.split()[0]).parents[1]

    # The same code hashes the same installed as in the checkout.
    from plasticity_gym.harness.result import code_identity

    code, out, err = _sh([py, "-c", "from plasticity_gym.harness.result import code_identity; "
                          "print(code_identity()['source_sha256'])"], work, env)
    assert code == 0, err
    assert out.strip() == code_identity()["source_sha256"]

    code, out, err = _sh([gym, "run", "SlowRegression-v0", "--agent", "cbp", "--scale", "smoke", "--seeds", "2",
                          "--env-set", "n_examples=2000", "--no-progress", "--out", "r.json"], work, env)
    assert code == 0, err
    assert json.loads((work / "r.json").read_text())["provenance"]["code"]["source_sha256"] == code_identity()[
        "source_sha256"]
    code, out, err = _sh([gym, "validate", "r.json"], work, env)
    assert code == 0 and "r.json: ok" in out, out + err

    # No board folder here: one line naming --dir, a failure, nothing written into the package.
    for argv in (["leaderboard", "SlowRegression-v0", "--scale", "smoke"], ["site", "--out", "site"],
                 ["submit", "r.json"]):
        code, out, err = _sh([gym, *argv], work, env)
        assert code != 0, (argv, out, err)
        assert len(err.strip().splitlines()) == 1 and "--dir" in err and "leaderboards" in err, (argv, err)
    assert not (site_packages / "leaderboards").exists()

    (work / "boards").mkdir()
    code, out, err = _sh([gym, "submit", "r.json", "--dir", "boards"], work, env)
    assert code == 0, out + err
    assert list((work / "boards" / "SlowRegression-v0" / "smoke").glob("*.json"))
    code, out, err = _sh([gym, "leaderboard", "SlowRegression-v0", "--scale", "smoke", "--dir", "boards"], work, env)
    assert code == 0 and "cbp" in out, out + err
    code, out, err = _sh([gym, "site", "--dir", "boards", "--out", "site"], work, env)
    assert code == 0, out + err
    assert (work / "site" / "index.html").is_file()

    code, out, err = _sh([gym, "demo", "--out", "demo", "--seeds", "2", "--env-set", "n_examples=20000",
                          "--no-progress"], work, env)
    assert code == 0, out + err
    assert "Backprop's error" in out and (work / "demo" / "demo.png").stat().st_size > 0, out
