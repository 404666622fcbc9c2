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
