"""The command line at its edges: errors about files name the file, unknown ids, scales and agents
are usage errors (exit 2, before any work) with a suggestion, every usage error exits 2, a user's
factory rejecting an option is one line, and Ctrl-C says how to resume."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

evaluate_module = importlib.import_module("plasticity_gym.harness.evaluate")  # the package re-exports the function

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "leaderboards" / "SlowRegression-v0" / "smoke" / "cbp.json"


def strict_factory(observation_space, action_space, *, seed, device, lr=0.01):
    raise AssertionError("never built: the option is refused before any work")


def open_factory(observation_space, action_space, *, seed, device, **options):
    def reject(lr=0.01):
        return lr
    return reject(**options)  # rejects an option it was given: Python's own TypeError


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv", [["plot", "{f}", "--out", "{d}/x.png"], ["verify", "{f}"],
                                  ["leaderboard", "--dir", "{d}", "--include", "{f}"], ["validate", "{f}"]])
def test_a_truncated_result_file_is_named(tmp_path, cli, argv):
    """Each command that reads a result file names it when it is not JSON."""
    bad = tmp_path / "cut.json"
    bad.write_text(ENTRY.read_text()[:300])
    code, out, err = cli(*(a.format(f=bad, d=tmp_path) for a in argv))
    assert code != 0
    assert str(bad) in out + err and "is not JSON" in out + err


def test_an_unknown_board_env_is_an_error_before_any_work(cli):
    t0 = time.perf_counter()
    code, out, err = cli("leaderboard", "NoSuchEnv-v0")
    assert code == 2 and out == ""
    assert time.perf_counter() - t0 < 5  # no board file read
    assert "NoSuchEnv-v0" in _one_line(err)
    code, _, err = cli("leaderboard", "PermutedMNST-v0")
    assert code == 2 and "did you mean 'PermutedMNIST-v0'?" in err
    code, _, err = cli("leaderboard", "--scale", "cpuu")
    assert code == 2 and "did you mean 'cpu'?" in err


@pytest.mark.parametrize("argv, hint", [
    (["run", "SlowRegression-v0", "--agent", "cbp", "--scale", "papr"], "did you mean 'paper'?"),
    (["run", "SlowRegression-v0", "--agent", "cbq", "--scale", "smoke"], "did you mean 'cbp'?"),
    (["run", "SlowRegresion-v0", "--agent", "cbp", "--scale", "smoke"], "did you mean 'SlowRegression-v0'?"),
    (["compare", "SlowRegression-v0", "--agents", "backprop", "cbp", "--scale", "smok"], "did you mean 'smoke'?"),
])
def test_unknown_ids_scales_and_agents_suggest_the_closest(tmp_path, cli, argv, hint):
    code, _, err = cli(*argv, "--out" if argv[0] == "run" else "--out-dir", tmp_path / "r.json")
    assert code == 2
    assert hint in _one_line(err)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv", [
    ["run", "SlowRegression-v0", "--agent", "cbp", "--set", "novalue"],
    ["run", "SlowRegression-v0", "--agent", "cbp", "--env-set", "novalue"],
    ["run", "SlowRegression-v0", "--agent", "cbp", "--threads", "0"],
    ["reference", "cpu", "--jobs", "0"],
    ["reference", "cpu", "--seeds", "0"],
    ["sweep", "examples/tiny_sweep.toml", "--jobs", "0"],
])
def test_every_usage_error_exits_2(tmp_path, cli, argv):
    code, _, err = cli(*argv)  # as argparse's own usage errors
    assert code == 2
    assert _one_line(err).startswith("plasticity-gym: error: ")


def test_a_factory_rejecting_an_option_is_one_line_naming_both(tmp_path, cli):
    for factory in ("strict_factory", "open_factory"):
        spec = f"{__name__}:{factory}"
        code, out, err = cli("run", "SlowRegression-v0", "--agent", spec, "--scale", "smoke", "--set", "lrr=0.1",
                             "--env-set", "n_examples=2000", "--env-set", "flip_interval=1000",
                             "--out", tmp_path / f"{factory}.json", "--no-progress")
        line = _one_line(err)
        assert code == 2 and "'lrr'" in line and spec in line, err
        assert "Traceback" not in err
    assert "did you mean 'lr'?" in cli("run", "SlowRegression-v0", "--agent", f"{__name__}:strict_factory",
                                       "--set", "lrr=0.1", "--out", tmp_path / "x.json")[2]


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path, cli, monkeypatch):
    out = tmp_path / "r.json"

    def interrupted(*args, checkpoint, **kwargs):
        Path(checkpoint).write_bytes(b"saved")  # a checkpoint written before the interruption
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "evaluate", interrupted)
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", "--scale", "smoke", "--out", out, "--fresh")
    assert code == 130
    assert f"the checkpoint {out}.ckpt" in err
    assert f"plasticity-gym run SlowRegression-v0 --agent cbp --scale smoke --out {out} --resume" in err

    def early(*args, checkpoint, **kwargs):
        Path(checkpoint).unlink(missing_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "evaluate", early)
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", "--scale", "smoke", "--out", out, "--fresh")
    assert code == 130 and "before its first checkpoint" in err
