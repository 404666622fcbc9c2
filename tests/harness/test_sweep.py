"""Sweeps: the sweep file's checks, lockstep grids against separate runs, the local and Ray
backends, failures and retries, and a sweep killed part-way and run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plasticity_gym.harness import Result, evaluate
from plasticity_gym.harness.sweep import run_sweep
from plasticity_gym.harness.sweep_cli import main as sweep_main
from plasticity_gym.harness.sweep_plan import plan_stage, plan_sweep
from plasticity_gym.harness.sweep_spec import SweepError, line_of, parse_sweep
from plasticity_gym.harness.sweep_task import checkpoint_file, progress_file, run_file

ROOT = Path(__file__).resolve().parents[2]

# 3 CBP replacement rates x 2 seeds of SlowRegression's 5-unit network: one lockstep task.
TINY = """\
name = "tiny"
env = "SlowRegression-v0"
scale = "smoke"
agent = "cbp"

[grid]
agent.cbp.replacement_rate = [1e-4, 1e-3, 1e-2]

[set]
agent.cbp.maturity = 20
env.n_examples = 4000
env.flip_interval = 1000

[seeds]
search = 2
{final}
[run]
probe_every = 2
{run}
"""


def tiny(final: str = "", run: str = "") -> str:
    return TINY.format(final=final, run=run)


def write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def quiet(_line: str) -> None:
    pass


def run_files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted((folder / "runs").glob("*/seed-*.json"))}


# --------------------------------------------------------------------------- the file's checks
@pytest.mark.parametrize("text, line, words", [
    (tiny().replace('agent = "cbp"', 'agent = "cbp"\nbudget = 3'), 5, ["budget", "unknown key"]),
    (tiny().replace("[1e-4, 1e-3, 1e-2]", "1e-3"), 7, ["grid.agent.cbp.replacement_rate", "non-empty list"]),
    (tiny().replace("replacement_rate = [", "replacment_rate = ["), 7, ["replacment_rate", "unknown key"]),
    (tiny().replace("1e-2]", "-1.0]"), 7, ["replacement_rate", ">= 0"]),
    (tiny().replace("env.flip_interval = 1000", "env.flip_intervall = 1000"), 12, ["flip_intervall"]),
    (tiny().replace("search = 2", "search = 2\nfinal = [1, 5]"), 16, ["seeds.final", "repeats search seeds [1]"]),
    (tiny().replace("probe_every = 2", "probe_every = -1"), 18, ["run.probe_every", "integer >= 0"]),
    (tiny().replace("agent.cbp.maturity = 20", "agent.cbp.replacement_rate = 0.1"), 10, ["also swept in [grid]"]),
    (tiny().replace("[seeds]", "[seeds]\nsearh = 3"), 15, ["searh", "search"]),
    (tiny().replace("agent.cbp", "cbp"), 7, ["keys must start with agent."]),
])
def test_bad_sweep_files_are_rejected_naming_the_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(SweepError) as err:
        plan_sweep(parse_sweep(text, path))
    msg = str(err.value)
    assert f"[{path} line {line}]" in msg, msg
    for w in words:
        assert w in msg, msg


def test_line_of_finds_dotted_quoted_and_table_keys():
    text = '[grid]\nagent.cbp.rate = [1]\n[grid.env]\n"n.x" = [2]\n[select]\ntop = 1\n'
    assert line_of(text, ["grid", "agent", "cbp", "rate"]) == 2
    assert line_of(text, ["grid", "env", "n", "x"]) == 4
    assert line_of(text, ["select", "top"]) == 6
    assert line_of(text, ["select"]) == 5
    assert line_of(text, ["seeds"]) is None


@pytest.fixture
def thread_env_restored(monkeypatch):
    """The sweep command sets the OpenMP/BLAS thread variables of its process: undo that after."""
    from plasticity_gym.harness.threads import THREAD_ENV_VARS

    for name in (*THREAD_ENV_VARS, "OMP_WAIT_POLICY"):
        monkeypatch.setenv(name, "1")  # records the original value (or its absence) for teardown
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("thread_env_restored")
def test_cli_reports_a_bad_file_with_exit_code_2_and_plans_a_dry_run(tmp_path, capsys):
    bad = write(tmp_path, tiny().replace("search = 2", "search = 0"), "bad.toml")
    assert sweep_main([str(bad), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert "line 15" in capsys.readouterr().err
    good = write(tmp_path, tiny(final="final = 2"))
    assert sweep_main([str(good), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 runs in 1 task(s)" in out and "(lockstep)" in out
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


# --------------------------------------------------------------------------- lockstep grid
def test_a_lockstep_grid_equals_separate_runs_of_each_setting(tmp_path):
    spec = parse_sweep(tiny(), write(tmp_path, tiny()))
    plan = plan_sweep(spec)
    tasks = plan_stage(plan, "search", range(3), spec.search_seeds)
    assert len(tasks) == 1 and tasks[0].lockstep and len(tasks[0].runs) == 6  # 3 settings x 2 seeds, one computation
    report = run_sweep(spec, tmp_path / "out", jobs=1, progress=False, echo=quiet)
    assert report.ok and len(report.computed) == 6
    for ps in plan.settings:
        alone = evaluate("SlowRegression-v0", "cbp", scale="smoke", seeds=[0, 1], env_kwargs=dict(ps.setting.env_kwargs),
                         overrides=dict(ps.setting.overrides), probe_every=2, lockstep="on", progress=False)
        for i, seed in enumerate((0, 1)):
            got = Result.load(run_file(tmp_path / "out", ps.dir, seed)).data
            want = alone.data["runs"][i]
            assert got["agent"] == alone.data["agent"]
            assert got["env"] == alone.data["env"]
            for series in ("online", "binned"):
                np.testing.assert_allclose(got["runs"][0]["series"][series]["value"], want["series"][series]["value"],
                                           rtol=1e-5, atol=1e-7)
            for k, v in want["plasticity"]["metrics"].items():
                if isinstance(v, list):
                    a = np.array(got["runs"][0]["plasticity"]["metrics"][k], dtype=float)
                    np.testing.assert_allclose(a, np.array(v, dtype=float), rtol=1e-4, atol=1e-6, err_msg=k)
    # The merged entry of a setting is a valid result whose command reproduces both seeds.
    merged = Result.load(tmp_path / "out" / "settings" / f"{plan.settings[0].dir}.json")
    assert merged.seeds == [0, 1] and "--seed-list 0 1" in merged.data["provenance"]["command"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metric"] == "error_last10" and len(summary["selected"]) == 1
    assert (tmp_path / "out" / "summary.png").stat().st_size > 1000
    assert "| cbp.replacement_rate |" in (tmp_path / "out" / "summary.md").read_text()


# --------------------------------------------------------------------------- failures
class FlakyLinear:
    """A linear least-squares learner that raises when PG_SWEEP_FAIL names its (lr, seed)."""

    uses_task_boundaries = False

    def __init__(self, observation_space, action_space, *, seed, device, lr=0.01):
        self.w = np.random.default_rng(seed).normal(0, 0.01, (observation_space.shape[-1], 1))
        self.lr, self.seed, self.name, self.config = lr, seed, "flaky-linear", {"lr": lr}

    def act(self, observation, info):
        if os.environ.get("PG_SWEEP_FAIL") == f"{self.lr}:{self.seed}":
            raise RuntimeError(f"flaky failure at lr={self.lr} seed={self.seed}")
        self._x = observation
        self._z = observation @ self.w
        return self._z[:, 0].astype(np.float32)

    def observe(self, observation, action, reward, info):
        self.w -= self.lr * self._x.T @ (self._z - info["target"][:, None]) / len(self._z)


def make_flaky(observation_space, action_space, *, seed, device, lr=0.01):
    return FlakyLinear(observation_space, action_space, seed=seed, device=device, lr=lr)


FLAKY = """\
env = "SlowRegression-v0"
scale = "smoke"
agent = "tests.harness.test_sweep:make_flaky"
[grid]
agent.lr = [0.01, 0.02]
[set]
env.n_examples = 2000
env.flip_interval = 500
[seeds]
search = 2
[run]
probe_every = 0
"""


def test_a_failing_run_is_reported_the_others_finish_and_a_rerun_retries_only_it(tmp_path, monkeypatch):
    sweep, out = write(tmp_path, FLAKY), tmp_path / "out"
    monkeypatch.setenv("PG_SWEEP_FAIL", "0.02:1")
    first = run_sweep(sweep, out, jobs=1, progress=False, echo=quiet)
    assert not first.ok and [(label, seed) for label, seed, _ in first.failed] == [("lr=0.02", 1)]
    assert "flaky failure at lr=0.02 seed=1" in first.failed[0][2]
    assert len(first.computed) == 3 and len(run_files(out)) == 3
    errors = list((out / "runs").glob("*/seed-1.error.txt"))
    assert len(errors) == 1 and "Traceback" in errors[0].read_text()
    md = (out / "summary.md").read_text()
    assert "Failed runs" in md and "flaky failure" in md and "Nothing selected yet" in md
    before = {k: p.stat().st_mtime_ns for k, p in run_files(out).items()}

    monkeypatch.delenv("PG_SWEEP_FAIL")
    second = run_sweep(sweep, out, jobs=1, progress=False, echo=quiet)
    assert second.ok and second.skipped == 3 and len(second.computed) == 1
    assert second.computed[0][1] == 1 and second.computed[0][0].startswith("lr=0.02")
    after = run_files(out)
    assert len(after) == 4 and all(after[k].stat().st_mtime_ns == t for k, t in before.items())
    assert not list((out / "runs").glob("*/*.error.txt"))
    assert second.summary is not None and len(second.summary.selected) == 1


# --------------------------------------------------------------------------- interrupted sweeps
def test_a_rerun_removes_what_a_kill_after_a_tasks_results_left_behind(tmp_path):
    """Killed after a task wrote its results but before it removed its checkpoint: the rerun
    skips the task (its runs are done) and removes the leftovers."""
    spec = parse_sweep(tiny(), write(tmp_path, tiny()))
    out = tmp_path / "out"
    assert run_sweep(spec, out, jobs=1, progress=False, echo=quiet).ok
    (task,) = plan_stage(plan_sweep(spec), "search", range(3), spec.search_seeds)
    leftovers = [checkpoint_file(out, task.id), progress_file(out, task.id)]
    for path in leftovers:
        path.write_text("left by a kill")
    again = run_sweep(spec, out, jobs=1, progress=False, echo=quiet)
    assert again.ok and not again.computed
    assert not any(path.exists() for path in leftovers)


def test_a_killed_sweep_resumes_without_recomputing_and_equals_an_uninterrupted_one(tmp_path):
    # 2 rates x 4 seeds, one seed per task (4 lockstep tasks of 2 replicas), checkpoints every 500
    # examples, 2 worker processes.
    text = tiny(final="final = 2", run="seeds_per_task = 1\ncheckpoint_every = 500").replace(
        "[1e-4, 1e-3, 1e-2]", "[1e-3, 1e-2]").replace("search = 2", "search = 4").replace(
        "env.n_examples = 4000", "env.n_examples = 6000")
    sweep = write(tmp_path, text)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "plasticity_gym.harness.sweep_cli", str(sweep), "--out", str(killed),
                             "--jobs", "2"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not run_files(killed):
        time.sleep(0.02)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = {k: p.stat().st_mtime_ns for k, p in run_files(killed).items()}
    assert 1 <= len(done) < 8, done  # killed part-way through the search stage
    time.sleep(1.0)  # the sweep's worker processes died with it: nothing more gets written
    assert {k: p.stat().st_mtime_ns for k, p in run_files(killed).items()} == done

    resumed = run_sweep(sweep, killed, jobs=1, progress=False, echo=quiet)
    assert resumed.ok and resumed.skipped == len(done)
    assert len(resumed.computed) == 8 - len(done) + 2  # the rest of the search, then the final seeds
    now = run_files(killed)
    assert all(now[k].stat().st_mtime_ns == t for k, t in done.items())  # finished runs were not recomputed
    assert not list((killed / "tasks").glob("*"))  # no checkpoint left behind

    uninterrupted = run_sweep(sweep, clean, jobs=1, progress=False, echo=quiet)
    assert uninterrupted.ok and len(uninterrupted.computed) == 10
    assert json.loads((killed / "summary.json").read_text()) == json.loads((clean / "summary.json").read_text())
    for rel, path in run_files(clean).items():
        assert Result.load(now[rel]).comparable() == Result.load(path).comparable(), rel


# --------------------------------------------------------------------------- Ray
def test_the_ray_backend_gives_the_results_of_the_local_one(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'plasticity-gym[ray]')")
    sweep = write(tmp_path, tiny(run="seeds_per_task = 1").replace("n_examples = 4000", "n_examples = 2000"))  # 2 tasks
    local = run_sweep(sweep, tmp_path / "local", jobs=1, progress=False, echo=quiet)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(sweep, tmp_path / "ray", backend="ray", progress=False, echo=quiet)
    finally:
        ray.shutdown()
    assert local.ok and remote.ok and len(local.computed) == len(remote.computed) == 6
    a, b = run_files(tmp_path / "local"), run_files(tmp_path / "ray")
    assert sorted(a) == sorted(b) and len(a) == 6
    for rel in a:
        assert Result.load(a[rel]).comparable() == Result.load(b[rel]).comparable(), rel
    assert (json.loads((tmp_path / "local" / "summary.json").read_text())
            == json.loads((tmp_path / "ray" / "summary.json").read_text()))


# --------------------------------------------------------------------------- progress
def test_the_progress_line_counts_runs_and_estimates_the_time_left(tmp_path):
    import io
    from dataclasses import replace

    from plasticity_gym.harness._io import atomic_write_json
    from plasticity_gym.harness.sweep import SweepProgress
    from plasticity_gym.harness.sweep_task import progress_file

    spec = parse_sweep(tiny(run="seeds_per_task = 1"), write(tmp_path, tiny()))
    a, b = plan_stage(plan_sweep(spec), "search", range(3), spec.search_seeds)  # 3 runs each, 4,000 examples per run
    bar = SweepProgress("tiny [search]", tmp_path, [a, b], skipped=0, enabled=False, stream=io.StringIO())
    assert "runs 0/6 done, 0 running, 0 failed" in bar.line() and "ETA --:--" in bar.line()
    atomic_write_json(progress_file(tmp_path, a.id), {"examples": 1000, "runs": 3})  # a quarter of task a
    bar.t0 -= 10.0  # 10 s ago: 3,000 of 24,000 example-runs in 10 s, so 70 s to go
    line = bar.line()
    assert "0/6 done, 3 running" in line and " 12.5% of examples" in line and "ETA 01:10" in line, line
    bar.task_done(a, True)
    bar.task_done(replace(b), False)
    assert "runs 3/6 done, 0 running, 3 failed" in bar.line()


@pytest.mark.usefixtures("thread_env_restored")
def test_add_sweep_parser_gives_plasticity_gym_a_sweep_command(tmp_path, capsys):
    import argparse

    from plasticity_gym.harness.sweep_cli import add_sweep_parser, run_sweep_cli

    parser = argparse.ArgumentParser(prog="plasticity-gym")
    add_sweep_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", str(write(tmp_path, tiny())), "--dry-run", "--jobs", "2", "--threads", "1"])
    assert args.func is run_sweep_cli and args.jobs == 2 and args.backend == "local"
    assert args.func(args) == 0
    assert "6 runs in 1 task(s)" in capsys.readouterr().out
