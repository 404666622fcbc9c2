"""Episodic RL through the one run loop (plasticity_gym.harness.episodic): resume equals an
uninterrupted run, the RL records are what the episodes say, the result is schema-valid and
boards, plots and compare take it, and bad agent/env combinations fail with a clear error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from plasticity_gym.harness import Result, result_errors
from plasticity_gym.harness.checkpoint import Checkpoint
from plasticity_gym.harness.episodic import evaluate_episodic, is_episodic_env

# A tiny PPO: several updates (and CBP replacements) in a few hundred steps.
TINY = {"hidden": [8, 8], "rollout_steps": 64, "epochs": 1, "minibatches": 2}
CBP = {**TINY, "cbp": {"replacement_rate": 0.05, "maturity": 10}}
# Several friction segments and episodes (some cut by the time limit) in a short run.
ANT = {"change_every": 150, "max_episode_steps": 100}
DIAG = ("dormant_pct", "stable_rank", "avg_weight_magnitude", "max_weight_change")


def _run(env_id: str = "AntFriction-v0", steps: int = 640, **kw) -> Result:
    kw.setdefault("env_kwargs", ANT if env_id == "AntFriction-v0" else None)
    return evaluate_episodic(env_id, "ppo-cbp", scale="smoke", seeds=(0, 1), overrides=CBP,
                             steps=steps, diagnose_every=128, probe_size=100, progress=False, **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """PPO's tiny mini-batches: a second torch thread only spin-waits (and these tests run 4x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ant(one_thread) -> Result:
    return _run()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("env_id", ["AntFriction-v0", "Hopper-v5"])
def test_resume_equals_uninterrupted(env_id, ant, tmp_path, monkeypatch):
    ckpt = tmp_path / "run.ckpt"
    save = Checkpoint.save
    calls = []

    def stop_after_two(self, state):  # the run dies right after its second mid-run checkpoint
        save(self, state)
        calls.append(1)
        if len(calls) == 2:
            raise _Stop

    monkeypatch.setattr(Checkpoint, "save", stop_after_two)
    with pytest.raises(_Stop):
        _run(env_id, checkpoint=ckpt, checkpoint_every=200, resume=True)
    monkeypatch.setattr(Checkpoint, "save", save)
    assert ckpt.exists()
    resumed = _run(env_id, checkpoint=ckpt, checkpoint_every=200, resume=True)
    assert not ckpt.exists()
    reference = ant if env_id == "AntFriction-v0" else _run(env_id)
    assert resumed.comparable() == reference.comparable()
    # Not vacuous: episodes ended and CBP replaced units before and after the interruption.
    run = resumed.data["runs"][1]
    assert len(run["episodes"]["return"]) >= 2
    replacements = [v for v in run["plasticity"]["metrics"]["replacements"] if v is not None]
    assert replacements[-1] > replacements[-2] > 0, replacements  # some before the stop at 400, some after


def test_the_native_vector_env_gives_the_sync_vector_envs_run(ant, monkeypatch):
    import gymnasium as gym

    from plasticity_gym.envs.ant_friction import AntFrictionVectorEnv
    from plasticity_gym.harness.episodic import EpisodicRun

    made = []
    real = EpisodicRun.make_vector_env
    monkeypatch.setattr(EpisodicRun, "make_vector_env", lambda self, n: made.append(real(self, n)) or made[-1])
    _run()
    assert isinstance(made[0], AntFrictionVectorEnv)  # the harness steps AntFriction-v0 natively

    def sync(self, n):
        return gym.vector.SyncVectorEnv([self.env_fn()] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    monkeypatch.setattr(EpisodicRun, "make_vector_env", sync)
    assert _run().comparable() == ant.comparable()


def test_seeds_split_across_processes_give_the_one_process_run(ant, tmp_path):
    # Two worker processes of one seed each, with checkpoints: the entry is the one-process run's
    # but for the processes it records, and no checkpoint is left behind.
    with pytest.raises(ValueError, match="workers=3 splits the seeds"):
        _run(workers=3)
    ckpt = tmp_path / "run.ckpt"
    split = _run(workers=2, checkpoint=ckpt, checkpoint_every=200)
    assert not ckpt.exists() and not list(tmp_path.glob("run.ckpt.part-*"))
    assert split.data["protocol"].pop("processes") == 2
    assert split.comparable() == ant.comparable()


def test_result_is_schema_valid_and_episodic(ant):
    d = ant.data
    assert result_errors(d) == []
    assert d["protocol"]["metric"] == "episodic_return" and d["protocol"]["execution"] == "vector"
    assert d["protocol"]["diagnose_every_steps"] == 128
    assert d["env"]["budget"]["n_examples_total"] == 640
    assert d["env"]["budget"]["examples_per_task"] == 150 and d["env"]["data"]["name"] == "mujoco:ant.xml"
    assert ant.primary == "return_last10"
    # The two seeds met different friction schedules and initial states.
    assert d["runs"][0]["episodes"] != d["runs"][1]["episodes"]


def test_rl_records_are_what_the_episodes_say(ant):
    for i, run in enumerate(ant.data["runs"]):
        ep = run["episodes"]
        steps, returns, segments = ep["step"], np.array(ep["return"], float), np.array(ep["segment"])
        assert run["n_examples"] == 640 and steps == sorted(steps) and steps[-1] <= 640
        assert len(set(segments)) >= 2 and list(segments) == sorted(segments)  # the friction changed
        online = run["series"]["online"]
        for k, value, n in zip(online["index"], online["value"], online["n"]):
            mine = returns[segments == k]
            assert n == len(mine) and (value is None if n == 0 else math.isclose(value, mine.mean()))
        width = ant.data["protocol"]["bin_examples"]
        binned = run["series"]["binned"]
        assert binned["index"] == list(range(math.ceil(640 / width)))
        assert sum(binned["n"]) == len(returns)
        last = returns[np.array(steps) > 0.9 * 640]
        want = last.mean() if len(last) else returns[-1]
        assert math.isclose(ant.summary["return_last10"]["per_seed"][i], want)
        # Every diagnose_every steps: the four diagnostics of the policy.
        plast = run["plasticity"]
        assert plast["step"] == list(range(128, 641, 128))
        assert set(DIAG) <= set(plast["metrics"])
        assert all(v is not None for v in plast["metrics"]["avg_weight_magnitude"])
        assert any(v is not None and v > 0 for v in plast["metrics"]["max_weight_change"])
        assert 0 <= min(plast["metrics"]["dormant_pct"]) and max(plast["metrics"]["dormant_pct"]) <= 100


def test_old_entries_and_bad_episodes_are_judged(ant):
    bad = json.loads(json.dumps(ant.data))
    del bad["runs"][0]["episodes"]
    assert any(e.startswith("runs[0].episodes: required") for e in result_errors(bad))
    bad = json.loads(json.dumps(ant.data))
    bad["runs"][1]["episodes"]["segment"].append(0)
    assert any(e.startswith("runs[1].episodes: step, return and segment differ") for e in result_errors(bad))
    bad = json.loads(json.dumps(ant.data))
    bad["runs"][0]["plasticity"]["step"].pop()
    assert any(e.startswith("runs[0].plasticity.step:") for e in result_errors(bad))


def test_cli_run_validate_leaderboard_plot(tmp_path, cli):
    out = tmp_path / "AntFriction-v0" / "smoke" / "ppo.json"
    args = ["run", "AntFriction-v0", "--agent", "ppo", "--scale", "smoke", "--seeds", "2", "--steps", "256",
            "--diagnose-every", "128", "--env-set", "max_episode_steps=50", "--no-progress", "--out", out]
    for key, value in TINY.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    code, stdout, stderr = cli(*args)
    assert code == 0, stderr
    assert "ppo on AntFriction-v0 (smoke), return_last10 =" in stdout
    code, stdout, _ = cli("validate", out)
    assert code == 0 and "ok" in stdout
    code, stdout, _ = cli("leaderboard", "--dir", tmp_path)
    assert code == 0 and "256 env steps per seed" in stdout and "return_last10" in stdout
    assert "final_dormant_pct" in stdout
    code, stdout, _ = cli("plot", out, "--out", tmp_path / "fig.png")
    assert code == 0 and (tmp_path / "fig.png").stat().st_size > 0


def test_compare_ranks_episodic_agents_on_the_same_seeds(tmp_path, cli):
    args = ["compare", "Hopper-v5", "--agents", "ppo", "ppo-l2", "--scale", "smoke", "--seeds", "2",
            "--steps", "128", "--no-progress", "--out-dir", tmp_path]
    for name in ("ppo", "ppo-l2"):
        args += [arg for key, value in TINY.items() for arg in ("--set", f"{name}.{key}={json.dumps(value)}")]
    code, stdout, stderr = cli(*args)
    assert code == 0, stderr
    assert "return_last10 (higher is better)" in stdout and "paired over 2 seeds" in stdout
    results = [Result.load(tmp_path / f"Hopper-v5-{n}-smoke.json") for n in ("ppo", "ppo-l2")]
    assert results[0].data["agent"]["config"]["optimizer"]["weight_decay"] == 0.0
    assert results[1].data["agent"]["config"]["optimizer"]["weight_decay"] == 1e-3


def test_hopper_runs_through_the_same_path():
    res = evaluate_episodic("Hopper-v5", "ppo", scale="smoke", seeds=1, overrides=TINY, steps=200,
                            diagnose_every=64, progress=False)
    d = res.data
    assert result_errors(d) == [] and d["env"]["data"]["name"] == "mujoco:hopper.xml"
    assert d["env"]["budget"]["n_tasks"] == 1 and d["env"]["budget"]["examples_per_task"] is None
    assert d["env"]["kwargs"]["max_episode_steps"] == 1000
    assert set(d["runs"][0]["episodes"]["segment"]) <= {0} and len(d["runs"][0]["episodes"]["step"]) >= 1


@pytest.mark.parametrize("env_id, agent, message", [
    ("AntFriction-v0", "cbp", "'cbp' is a supervised-stream learner, but AntFriction-v0 is an episodic RL env"),
    ("Hopper-v5", "backprop", "'backprop' is a supervised-stream learner, but Hopper-v5 is an episodic RL env"),
    ("SlowRegression-v0", "ppo-cbp", "'ppo-cbp' is a PPO agent for episodic continuous-control envs"),
    ("CartPole-v1", "ppo", "CartPole-v1 has a Discrete action space"),
    ("AntFriction-v0", "ppo-fancy", "unknown agent 'ppo-fancy' (did you mean 'ppo-cbp'?); reference agents for "
                                   "AntFriction-v0: ppo,"),
    ("AntFriction-v0", "tests.harness.test_episodic:not_an_agent", "does not follow the EpisodicAgent protocol"),
])
def test_bad_agent_env_combination_is_a_clear_error(cli, env_id, agent, message):
    code, _, stderr = cli("run", env_id, "--agent", agent, "--scale", "smoke", "--steps", "64", "--no-progress",
                          "--out", "/nonexistent/never-written.json") if env_id != "SlowRegression-v0" else \
        cli("run", env_id, "--agent", agent, "--scale", "smoke", "--no-progress",
            "--out", "/nonexistent/never-written.json")
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr


def test_stream_flags_are_refused_on_the_other_kind(cli):
    code, _, stderr = cli("run", "SlowRegression-v0", "--agent", "cbp", "--scale", "smoke", "--steps", "10")
    assert code != 0 and "--steps and --diagnose-every are for episodic envs" in stderr
    code, _, stderr = cli("run", "AntFriction-v0", "--agent", "ppo", "--scale", "smoke", "--probe-every", "2")
    assert code != 0 and "--diagnose-every" in stderr


def test_the_stream_path_refuses_an_episodic_env():
    from plasticity_gym.harness import evaluate

    with pytest.raises(ValueError, match="AntFriction-v0 is an episodic RL env: run it with `plasticity-gym run`"):
        evaluate("AntFriction-v0", "ppo", scale="smoke", progress=False)


def test_which_envs_are_episodic():
    assert is_episodic_env("AntFriction-v0") and is_episodic_env("Hopper-v5")
    assert not is_episodic_env("SlowRegression-v0") and not is_episodic_env("PermutedMNIST-v0")


def not_an_agent(observation_space, action_space, *, seed, device):
    """A factory whose object lacks the EpisodicAgent protocol's num_envs and observe."""
    return type("Half", (), {"act": lambda self, o, i=None: o, "uses_task_boundaries": False})()
