"""``evaluate`` runs several seeds of a reference MLP agent in lockstep: same result, one pass."""

from __future__ import annotations

import numpy as np
import pytest

from plasticity_gym.harness import evaluate


def _close(a, b, tol):
    for ra, rb in zip(a.data["runs"], b.data["runs"]):
        assert ra["seed"] == rb["seed"]
        assert ra["series"].keys() == rb["series"].keys()
        for name, sa in ra["series"].items():
            sb = rb["series"][name]
            assert sa["index"] == sb["index"] and sa["n"] == sb["n"]
            np.testing.assert_allclose(sa["value"], sb["value"], rtol=tol, atol=tol)
        pa, pb = ra["plasticity"], rb["plasticity"]
        assert pa["task"] == pb["task"] and pa["task"]
        for k in pa["metrics"]:
            np.testing.assert_allclose(np.array(pa["metrics"][k], dtype=float),
                                       np.array(pb["metrics"][k], dtype=float), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("env_id,agent,env_kwargs,overrides", [
    ("SlowRegression-v0", "cbp", {"n_examples": 8000, "flip_interval": 1000},
     {"cbp": {"replacement_rate": 0.01, "maturity": 20}}),
    ("PermutedMNIST-v0", "backprop", {"n_tasks": 2, "examples_per_task": 500},
     {"network": {"hidden": [32, 32]}}),
])
def test_lockstep_result_equals_sequential(env_id, agent, env_kwargs, overrides):
    kw = dict(scale="smoke", seeds=(0, 5), env_kwargs=env_kwargs, overrides=overrides,
              progress=False, probe_size=200)
    fast = evaluate(env_id, agent, lockstep="auto", **kw)
    slow = evaluate(env_id, agent, lockstep="off", **kw)
    assert fast.data["protocol"]["execution"] == "lockstep"
    assert slow.data["protocol"]["execution"] == "sequential"
    assert fast.data["agent"] == slow.data["agent"]
    assert fast.data["env"] == slow.data["env"]
    _close(fast, slow, 1e-4)


def test_lockstep_on_explains_why_not():
    with pytest.raises(ValueError, match="lockstep execution is not available: .*dropout"):
        evaluate("SlowRegression-v0", "dropout", scale="smoke", seeds=(0, 1), lockstep="on",
                 env_kwargs={"n_examples": 2000, "flip_interval": 1000}, progress=False)
    with pytest.raises(ValueError, match="lockstep must be"):
        evaluate("SlowRegression-v0", "cbp", scale="smoke", lockstep="yes")


def test_single_seed_and_unsupported_agents_run_sequentially():
    kw = dict(scale="smoke", env_kwargs={"n_examples": 2000, "flip_interval": 1000}, progress=False)
    assert evaluate("SlowRegression-v0", "cbp", seeds=(0,), **kw).data["protocol"]["execution"] == "sequential"
    res = evaluate("SlowRegression-v0", "dropout", seeds=(0, 1), **kw)
    assert res.data["protocol"]["execution"] == "sequential"


@pytest.mark.parametrize("env_id,env_kwargs", [
    ("SlowRegression-v0", {"n_examples": 6000, "flip_interval": 1000}),
    ("PermutedMNIST-v0", {"n_tasks": 2, "examples_per_task": 700}),
])
def test_stream_kept_in_learner_memory_gives_the_same_result(env_id, env_kwargs, monkeypatch):
    """On an accelerator the lockstep loop hands the learner device views of a stream block
    copied once per block; forced on here (CPU tensors), it must change nothing."""
    import torch

    import plasticity_gym_agents.lockstep as lockstep
    from plasticity_gym.harness import lanes

    monkeypatch.setattr(lockstep, "_NUMPY_MAX_ELEMENTS", 0)  # the torch path, as on a GPU
    kw = dict(scale="smoke", seeds=(1, 4), env_kwargs=env_kwargs, progress=False, probe_size=100,
              overrides={"network": {"hidden": [16]}})
    plain = evaluate(env_id, "backprop", lockstep="on", **kw)
    seen = []
    real_act = lockstep.LockstepLearner.act

    def spy(self, observations, infos):
        seen.append(type(observations))
        return real_act(self, observations, infos)

    monkeypatch.setattr(lanes, "mirror_on_device", lambda learner, venv: True)
    monkeypatch.setattr(lockstep.LockstepLearner, "act", spy)
    mirrored = evaluate(env_id, "backprop", lockstep="on", **kw)
    assert seen and all(t is torch.Tensor for t in seen)
    _close(mirrored, plain, 1e-6)
