"""A user's own agent, written here outside the package, runs through `run` and the Python API.

It is plain numpy (no torch, no `agents` import): the harness only needs the Agent protocol.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from plasticity_gym.harness import Result, compare, evaluate


class LinearSGD:
    """Online linear model: least squares for values, softmax regression for labels."""

    uses_task_boundaries = False

    def __init__(self, observation_space, action_space, *, seed: int, device: str, lr: float = 0.01):
        self.regression = isinstance(action_space, spaces.Box)
        n_in = int(np.prod(observation_space.shape[1:]))
        n_out = 1 if self.regression else int(action_space.nvec[0])
        self.w = np.random.default_rng(seed).normal(0, 0.01, (n_in, n_out))
        self.lr = lr
        self.name = "linear-sgd"
        self.config = {"lr": lr, "kind": "linear"}

    def act(self, observation, info):
        self._x = observation.reshape(len(observation), -1)
        self._z = self._x @ self.w
        return self._z[:, 0].astype(np.float32) if self.regression else self._z.argmax(1)

    def observe(self, observation, action, reward, info):
        if info["phase"] != "train":
            return
        if self.regression:
            grad = self._z - info["target"][:, None]
        else:
            p = np.exp(self._z - self._z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(p)), info["target"]] -= 1
            grad = p
        self.w -= self.lr * self._x.T @ grad / len(grad)


def make_linear(observation_space, action_space, *, seed, device, lr=0.01):
    return LinearSGD(observation_space, action_space, seed=seed, device=device, lr=lr)


SR = {"n_examples": 4000, "flip_interval": 1000}


def test_user_agent_through_the_cli(tmp_path, cli):
    out = tmp_path / "mine.json"
    code, stdout, err = cli("run", "SlowRegression-v0", "--agent", "tests.harness.test_harness_user_agent:make_linear",
                            "--set", "lr=0.005", "--scale", "smoke", "--seeds", "2", "--env-set", "n_examples=4000",
                            "--env-set", "flip_interval=1000", "--out", out, "--no-progress")
    assert code == 0, err
    res = Result.load(out)
    agent = res.data["agent"]
    assert agent["source"] == "custom" and agent["name"] == "linear-sgd"
    assert agent["factory"] == "tests.harness.test_harness_user_agent:make_linear"
    assert agent["config"] == {"lr": 0.005, "kind": "linear"}
    assert res.data["runs"][0]["plasticity"] == {"task": [], "metrics": {}}  # no probe_model: no probes
    assert res.summary["error_last10"]["value"] > 0
    code, stdout, _ = cli("leaderboard", "--dir", tmp_path, "--include", out)
    assert "linear-sgd (custom)" in stdout


def test_user_agent_through_the_python_api():
    res = evaluate("PermutedMNIST-v0", make_linear, scale="smoke", seeds=(0,),
                   env_kwargs={"examples_per_task": 300}, progress=False)
    assert res.data["agent"]["factory"].endswith(":make_linear")
    acc = res.summary["online_accuracy_auc"]["value"]
    assert 0.2 < acc <= 1.0  # it learned something (chance is 0.1)
    assert "evaluate('PermutedMNIST-v0'" in res.data["provenance"]["command"]


def test_compare_user_agent_against_itself_with_a_worse_setting(cli):
    comp = compare("SlowRegression-v0", [make_linear, make_linear], scale="smoke", seeds=(0, 1, 2, 3, 4),
                   env_kwargs=SR, overrides={"make_linear#2": {"lr": 1e-5}}, progress=False)
    assert comp.ranking == ["make_linear", "make_linear#2"]
    gap, lo, hi = comp.gaps["make_linear#2"]
    assert gap > 0 and lo <= gap <= hi
    report = comp.report()
    assert "make_linear is ahead of make_linear#2" in report and "95% CI" in report
    # Both saw the identical stream: the per-example targets are the same, so only the agent differs.
    a, b = (comp.results[n] for n in comp.ranking)
    assert a.board_key() == b.board_key() and a.seeds == b.seeds


def test_compare_cli_reference_agents(cli, tmp_path):
    code, stdout, err = cli("compare", "SlowRegression-v0", "--agents", "backprop", "cbp", "--scale", "smoke",
                            "--seeds", "2", "--env-set", "n_examples=3000", "--env-set", "flip_interval=1000",
                            "--set", "cbp.cbp.replacement_rate=0.001", "--out-dir", tmp_path, "--no-progress")
    assert code == 0, err
    assert "error_last10 (lower is better)" in stdout and "1. " in stdout and "2. " in stdout
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["SlowRegression-v0-backprop-smoke.json", "SlowRegression-v0-cbp-smoke.json"]
    cbp = Result.load(tmp_path / "SlowRegression-v0-cbp-smoke.json")
    assert cbp.data["agent"]["config"]["cbp"]["replacement_rate"] == 0.001
    assert cbp.data["runs"][0]["plasticity"]["metrics"]["dead_pct"]
