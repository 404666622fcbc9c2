"""The one run loop's parts: the probe schedule, batched probes, threads, and the result's record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plasticity_gym.harness import compare, evaluate
from plasticity_gym.harness.probes import MAX_DEFAULT_PROBES, ProbeSchedule, ReplicaProber
from plasticity_gym.harness.threads import set_threads, thread_env
from tests.harness import fakes  # noqa: F401  (registers the fake ids)


@pytest.mark.parametrize("n_tasks,every", [(8, 1), (100, 1), (101, 2), (200, 2), (300, 3), (1000, 10)])
def test_default_schedule_probes_at_most_100_tasks_evenly(n_tasks, every):
    s = ProbeSchedule.for_stream(None, n_tasks, 2000)
    assert s.every == every
    tasks = s.tasks(n_tasks)
    assert tasks[0] == 0 and len(tasks) <= MAX_DEFAULT_PROBES
    assert set(np.diff(tasks)) <= {every}
    assert ProbeSchedule.for_stream(1, n_tasks, 2000).every == 1  # an explicit interval wins
    assert ProbeSchedule.for_stream(0, n_tasks, 2000).tasks(n_tasks) == []


def test_result_records_the_probed_tasks(monkeypatch):
    from plasticity_gym.harness import probes

    monkeypatch.setattr(probes, "MAX_DEFAULT_PROBES", 5)  # the cap, on a short stream
    kw = dict(scale="smoke", env_kwargs={"n_tasks": 12, "examples_per_task": 10}, progress=False, probe_size=50)
    res = evaluate("FakeClassify-v0", fakes.make_agent, seeds=(0, 1), **kw)
    protocol = res.data["protocol"]
    assert protocol["probe_every_tasks"] == 3
    assert protocol["probe_tasks"] == [0, 3, 6, 9]
    for run in res.data["runs"]:
        assert run["plasticity"]["task"] == protocol["probe_tasks"]
    explicit = evaluate("FakeClassify-v0", fakes.make_agent, seeds=(0,), probe_every=5, **kw)
    assert explicit.data["runs"][0]["plasticity"]["task"] == [0, 5, 10]
    # The metric series do not depend on the probes.
    assert explicit.data["runs"][0]["series"] == res.data["runs"][0]["series"]


def test_compare_runs_through_the_same_loop_and_matches_evaluate():
    kw = dict(scale="smoke", seeds=(0, 1), env_kwargs={"n_tasks": 3, "examples_per_task": 100},
              progress=False, probe_size=50)
    comp = compare("FakeRegress-v0", [fakes.make_agent, "tests.harness.fakes:interruptible_agent"], **kw)
    alone = evaluate("FakeRegress-v0", fakes.make_agent, lockstep="off", **kw)
    ours = comp.results["make_agent"]
    assert ours.comparable() == alone.comparable()


@pytest.mark.parametrize("env_id,env_kwargs,hidden", [
    ("PermutedMNIST-v0", {"n_tasks": 2, "examples_per_task": 200}, [24, 16]),
    ("SlowRegression-v0", {"n_examples": 2000, "flip_interval": 1000}, [5]),
])
def test_batched_probe_of_all_seeds_equals_probing_each_seed(env_id, env_kwargs, hidden):
    from plasticity_gym.harness.lanes import LockstepLanes
    from plasticity_gym.harness.resolve import resolve_agent

    spec = resolve_agent("backprop", env_id=env_id, scale="smoke", overrides={"network": {"hidden": hidden}})
    lanes = LockstepLanes.open(spec, env_id, "smoke", env_kwargs, [0, 3, 7], "cpu")
    for _ in range(50):
        lanes.step()
    x, _ = lanes.venv.probe_batch(300)
    batched = ReplicaProber(lanes.learner)
    if not batched.batched:
        pytest.skip("this lockstep learner has no probe_features")
    one_by_one = ReplicaProber(lanes.learner)
    one_by_one.batched = False
    for a, b in zip(batched(x), one_by_one(x)):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in b], [b[k] for k in b], rtol=1e-4, atol=1e-5)
    lanes.close()


@pytest.fixture
def restore_threads(monkeypatch):
    """Put the torch threads and the thread variables back after the test."""
    import os

    from plasticity_gym.harness.threads import THREAD_ENV_VARS

    for name in (*THREAD_ENV_VARS, "OMP_WAIT_POLICY"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads(restore_threads):
    assert thread_env(1)["OMP_NUM_THREADS"] == "1" and thread_env(1)["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in thread_env(2)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        thread_env(0)
    evaluate("FakeClassify-v0", fakes.make_agent, scale="smoke", progress=False, threads=1)
    assert torch.get_num_threads() == 1
    set_threads(2)
    assert torch.get_num_threads() == 2


def test_a_run_flushes_denormal_floats_to_zero(restore_threads):
    """Decaying running averages (CBP's utilities, Adam's moments) reach denormal floats, where
    the CPU is about a hundred times slower; every run flushes them to zero."""
    flushing = torch.tensor([1e-39], dtype=torch.float32).item() == 0.0  # the setting before the test
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal float32
    try:
        assert (tiny * 1.0).item() != 0.0
        evaluate("FakeClassify-v0", fakes.make_agent, scale="smoke", progress=False)
        assert (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(flushing)


def test_cli_threads_option(cli, tmp_path, restore_threads):
    import os

    code, out, err = cli("run", "tests.harness.fakes:FakeClassify-v0", "--agent", "tests.harness.fakes:make_agent",
                         "--scale", "smoke", "--threads", "1", "--out", tmp_path / "r.json", "--no-progress")
    assert code == 0, err
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert cli("run", "FakeClassify-v0", "--agent", "x:y", "--threads", "0")[0] == 2
