"""The rough edges a new user hits (issue 14, item 5): each reproduced here, each answered by a
one-line error that names the problem and the fix, or by a fix."""

from __future__ import annotations

import argparse
import importlib
import pickle
import re
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from plasticity_gym.harness import Result, evaluate
from plasticity_gym.harness.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
TINY = ["--scale", "smoke", "--env-set", "n_examples=4000", "--no-progress"]


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """Small result files: SlowRegression at two scales, PermutedMNIST at smoke."""
    d = tmp_path_factory.mktemp("results")
    files = {
        "slow-smoke": evaluate("SlowRegression-v0", "backprop", scale="smoke", seeds=2,
                               env_kwargs={"n_examples": 4000}, progress=False),
        "slow-cpu": evaluate("SlowRegression-v0", "backprop", scale="cpu", seeds=2,
                             env_kwargs={"n_examples": 20000}, progress=False),
        "mnist-smoke": evaluate("PermutedMNIST-v0", "backprop", scale="smoke", seeds=2,
                                env_kwargs={"n_tasks": 2, "examples_per_task": 100}, progress=False),
    }
    return {k: r.save(d / f"{k}.json") for k, r in files.items()}


@pytest.fixture
def no_run(monkeypatch):
    """Make any run fail loudly: the checks under test must come before any work."""
    ev = importlib.import_module("plasticity_gym.harness.evaluate")  # the module, not the function

    def refuse(*_a, **_k):
        raise AssertionError("the run started before its arguments were checked")

    monkeypatch.setattr(ev, "evaluate", refuse)


# --------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("env_id, named, fix", [("Nope-v0", "Nope-v0", "plasticity-gym list"),
                                                 ("nosuchmodule:Env-v0", "nosuchmodule", "PYTHONPATH")])
def test_unknown_env_is_one_line_naming_the_fix(cli, no_run, env_id, named, fix):
    code, _, err = cli("run", env_id, "--agent", "cbp", *TINY)
    line = _one_line(err)
    assert code == 2 and named in line and fix in line


def test_missing_agent_module_is_one_line(cli, no_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "nosuchmodule:make", *TINY)
    line = _one_line(err)
    assert code == 2 and "nosuchmodule" in line and "PYTHONPATH" in line


@pytest.mark.parametrize("body, shown", [
    ("raise RuntimeError('my own bug in my agent module')\n", "my own bug in my agent module"),
    ("import nosuchdependency_xyz\n", "nosuchdependency_xyz"),
    ("def make(:\n", "SyntaxError"),
])
def test_a_users_module_that_fails_to_import_shows_its_own_error(cli, no_run, tmp_path, monkeypatch, body, shown):
    name = f"myagent_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text("x = 1\n" + body)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("run", "SlowRegression-v0", "--agent", f"{name}:make", *TINY)
    assert code == 2
    assert shown in err and f"{name}.py" in err  # their own message, at their own file and line
    assert "plasticity_gym" not in err.split("\n", 1)[1]  # none of our frames after the first line


# --------------------------------------------------------------------------- paths and numbers first
def test_bad_out_paths_are_refused_before_any_work(cli, no_run, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.json").mkdir()
    for out, problem in ((tmp_path / "afile" / "a.json", "not a directory"),
                         (tmp_path / "adir.json", "is a directory"),
                         (Path("/proc/nope/a.json"), "/proc")):
        code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", *TINY, "--out", out)
        line = _one_line(err)
        assert code == 2 and "--out" in line and problem in line, line
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", *TINY, "--out", tmp_path / "ok.json",
                       "--checkpoint", tmp_path / "afile" / "c.ckpt")
    assert code == 2 and "--checkpoint" in _one_line(err)


@pytest.fixture
def no_loop(monkeypatch):
    """evaluate() must refuse before its run loop starts."""
    ev = importlib.import_module("plasticity_gym.harness.evaluate")

    def refuse(*_a, **_k):
        raise AssertionError("the run loop started before the arguments were checked")

    monkeypatch.setattr(ev, "run_segments", refuse)


def test_evaluate_checks_its_paths_before_any_work(tmp_path, no_loop):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="out.*not a directory"):
        evaluate("SlowRegression-v0", "cbp", scale="smoke", out=tmp_path / "afile" / "r.json")


@pytest.mark.parametrize("args, named", [
    (["--bin-examples", "-7"], "--bin-examples"),
    (["--bin-examples", "0"], "--bin-examples"),
    (["--checkpoint-every", "-5"], "--checkpoint-every"),
    (["--probe-every", "-1"], "--probe-every"),
    (["--probe-size", "0"], "--probe-size"),
])
def test_bad_numbers_are_refused_before_any_work(cli, no_run, tmp_path, args, named):
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", *TINY, "--out", tmp_path / "r.json", *args)
    line = _one_line(err)
    assert code == 2 and named in line


def test_evaluate_refuses_bad_numbers(no_loop):
    for kw in ({"bin_examples": 0}, {"bin_examples": -7}, {"checkpoint_every": -5}, {"checkpoint_every": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            evaluate("SlowRegression-v0", "cbp", scale="smoke", **kw)


# --------------------------------------------------------------------------- plot
def test_plot_without_matplotlib_says_what_to_install(cli, results, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, err = cli("plot", results["slow-smoke"], "--out", tmp_path / "f.png")
    line = _one_line(err)
    assert code == 2 and "pip install 'plasticity-gym[plot]'" in line


def test_plot_draws_one_figure_per_env_and_scale(cli, results, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = cli("plot", *results.values(), "--out", tmp_path / "f.png")
    assert code == 0, err
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["f-PermutedMNIST-v0-smoke.png", "f-SlowRegression-v0-cpu.png", "f-SlowRegression-v0-smoke.png"]
    for name in written:
        assert name in out
    # One (env, scale): the file asked for.
    code, out, _ = cli("plot", results["slow-smoke"], "--out", tmp_path / "one.png")
    assert code == 0 and (tmp_path / "one.png").exists()


def test_plot_results_never_mixes_scales_under_one_title(results, tmp_path):
    pytest.importorskip("matplotlib")
    from plasticity_gym.harness.plot import plot_results

    with pytest.raises(ValueError, match="one figure per .*plot_figures"):
        plot_results([Result.load(results["slow-smoke"]), Result.load(results["slow-cpu"])], tmp_path / "x.png")


# --------------------------------------------------------------------------- README, help, compare
def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start: nxt if nxt >= 0 else None]


def test_readme_quick_start_blocks_run_in_sequence(tmp_path, monkeypatch):
    quick = _section((REPO / "README.md").read_text(encoding="utf-8"), "## Quick start")
    blocks = re.findall(r"```python\n(.*?)```", quick, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert (tmp_path / "runs" / "cbp.json").exists()


def test_compare_help_set_example_is_a_valid_override():
    from plasticity_gym.harness.cli import compare_overrides

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    help_text = next(a.help for a in sub.choices["compare"]._actions if "--set" in a.option_strings)
    example = re.search(r"e\.g\. (\S+)", help_text).group(1)
    overrides = compare_overrides([example], ["backprop", "cbp"])
    import plasticity_gym_agents as agents

    env = gym.make("SlowRegression-v0", scale="smoke")
    agents.resolve_config("cbp", env.observation_space, env.action_space, env_id="SlowRegression-v0",
                          scale="smoke", overrides=overrides["cbp"])


def test_compare_with_one_seed_says_it_cannot_decide(cli):
    code, out, err = cli("compare", "SlowRegression-v0", "--agents", "backprop", "cbp", *TINY, "--seeds", "1")
    assert code == 0, err
    assert "cannot be told apart on 1 seed" in out and " is ahead of " not in out


def test_leaderboard_include_says_when_it_drops_a_file(cli, results):
    code, out, err = cli("leaderboard", "PermutedMNIST-v0", "--scale", "smoke", "--include",
                         results["slow-smoke"], results["mnist-smoke"])
    assert code == 0
    assert str(results["slow-smoke"]) in err and "not shown" in err
    assert str(results["mnist-smoke"]) not in err


# --------------------------------------------------------------------------- checkpoints
def test_existing_checkpoint_without_resume_or_fresh_is_refused(cli, tmp_path):
    out = tmp_path / "r.json"
    ckpt = Path(f"{out}.ckpt")
    ckpt.write_bytes(b"an earlier run's checkpoint")
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", *TINY, "--out", out)
    line = _one_line(err)
    assert code == 2 and "--resume" in line and "--fresh" in line and str(ckpt) in line
    assert ckpt.read_bytes() == b"an earlier run's checkpoint" and not out.exists()
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", *TINY, "--out", out, "--fresh")
    assert code == 0, err
    assert out.exists() and not ckpt.exists()


def test_evaluate_refuses_to_overwrite_a_checkpoint(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ValueError, match="resume=True"):
        evaluate("SlowRegression-v0", "cbp", scale="smoke", checkpoint=ckpt, env_kwargs={"n_examples": 4000})
    assert ckpt.read_bytes() == b"x"


def test_truncated_checkpoint_is_a_clear_error(cli, tmp_path):
    from plasticity_gym.harness.checkpoint import Checkpoint

    out = tmp_path / "r.json"
    ckpt = Checkpoint(f"{out}.ckpt", {"a": 1})
    ckpt.save({"finished": [], "records": None, "current": None, "pad": list(range(1000))})
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ckpt.load()
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", *TINY, "--out", out, "--resume")
    line = _one_line(err)
    assert code == 2 and "truncated or corrupt" in line and "--fresh" in line
    with pytest.raises(pickle.UnpicklingError):  # the file really is broken
        pickle.loads(ckpt.path.read_bytes())


def test_a_resume_says_so_without_progress(cli, tmp_path):
    from tests.harness import fakes

    out = tmp_path / "r.json"
    args = ["run", "FakeRegress-v0", "--agent", "tests.harness.fakes:interruptible_agent", "--scale", "smoke",
            "--seeds", "2", "--checkpoint-every", "150", "--no-progress", "--out", out]
    fakes.reset_counter(stop_at=1100)  # inside the second seed (800 steps per seed)
    with pytest.raises(fakes.Interrupt):
        cli(*args)
    fakes.reset_counter(stop_at=None)
    code, _, err = cli(*args, "--resume")
    assert code == 0, err
    assert re.search(r"resuming from .*r\.json\.ckpt: 1 of 2 parts of the run finished; continuing .*seed 1 \(2/2\) at example", err), err


# --------------------------------------------------------------------------- envs and data
def test_slow_regression_clips_predictions_to_its_action_space():
    env = gym.make("SlowRegression-v0", scale="smoke")
    _, info = env.reset(seed=0)
    _, reward, *_, info = env.step(np.array([1e30], dtype=np.float64))
    assert reward == -((101.0 - float(info["target"][0])) ** 2)
    _, reward, *_, info = env.step(np.array([-1e30], dtype=np.float32))
    assert reward == -((-101.0 - float(info["target"][0])) ** 2)
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.inf]))
    venv = gym.make_vec("SlowRegression-v0", num_envs=2, vectorization_mode="vector_entry_point", scale="smoke")
    venv.reset(seed=0)
    _, rewards, _, _, vinfo = venv.step(np.array([[1e30], [-5e3]]))
    t = vinfo["target"][:, 0].astype(np.float64)
    np.testing.assert_array_equal(rewards, [-(101.0 - t[0]) ** 2, -(-101.0 - t[1]) ** 2])


def test_permuted_mnist_paper_scale_refuses_an_idx_pair_that_is_not_the_training_set(tmp_path):
    from plasticity_gym.data import write_idx

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (100, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 100, dtype=np.uint8))
    with pytest.raises(ValueError, match="60,000.*holds 100.*require_full_set=False"):
        gym.make("PermutedMNIST-v0", scale="paper", data_dir=str(tmp_path))
    env = gym.make("PermutedMNIST-v0", scale="paper", data_dir=str(tmp_path), require_full_set=False)
    assert env.unwrapped.data_id["n_examples"] == 100  # what a result records of the data
    assert "require_full_set" not in env.unwrapped.config  # a guard: the stream is the same either way
    # Other scales take what data='mnist' finds, as before.
    env = gym.make("PermutedMNIST-v0", scale="cpu", data="mnist", data_dir=str(tmp_path), n_tasks=2)
    assert env.unwrapped.n_images == 100


# --------------------------------------------------------------------------- discoverability
def test_list_shows_envs_with_scales_and_agents(cli):
    import plasticity_gym_agents as agents
    from plasticity_gym.registration import BUILT_ENV_IDS

    code, out, err = cli("list")
    assert code == 0, err
    for env_id in BUILT_ENV_IDS:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(env_id))
        assert "smoke" in line and "cpu" in line and "paper" in line
    for name in (*agents.AGENT_NAMES, *agents.RL_AGENT_NAMES):
        assert re.search(rf"(^|[ ,]){re.escape(name)}(,|$)", out, re.M), name


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_readme_cli_section_shows_every_subcommand():
    section = _section((REPO / "README.md").read_text(encoding="utf-8"), "## The command line")
    missing = [c for c in _subcommands() if f"plasticity-gym {c}" not in section]
    assert not missing, f"README's command-line section lacks: {missing}"


def test_every_positional_argument_has_help():
    def positionals(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, p in action.choices.items():
                    yield from positionals(p, f"{prefix} {name}")
            elif not action.option_strings:
                yield f"{prefix} {action.dest}", action.help

    bare = [where for where, text in positionals(build_parser(), "plasticity-gym") if not text]
    assert not bare, f"positional arguments without help: {bare}"


def test_readme_and_docs_never_cite_the_internal_spec():
    files = [REPO / "README.md", REPO / "leaderboards" / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "plasticity_gym").rglob("*.py"))]
    cited = [f"{f.relative_to(REPO)}:{i}" for f in files
             for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\bSPEC\b|SPEC\.md", line)]
    assert not cited, f"users do not have SPEC.md: {cited}"
