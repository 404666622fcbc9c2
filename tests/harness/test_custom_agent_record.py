"""A user's agent is recorded and reproducible: the harness seeds the global generators before
its factory, records its options as its config, records its module's sha256 (and verify compares
it), and says once which plasticity metrics its network will not give."""

from __future__ import annotations

import hashlib
import random
import sys
import textwrap

import numpy as np
import torch
from torch import nn

from plasticity_gym.harness import evaluate

SR = {"n_examples": 2000, "flip_interval": 1000}


class GlobalTorchAgent:
    """Draws its initial weights and its exploration from the global torch, numpy and random
    generators: reproducible only when the harness seeds them."""

    uses_task_boundaries = False

    def __init__(self, observation_space, lr: float = 0.05, hidden: int = 8, *, activation: str = "module"):
        n_in = int(np.prod(observation_space.shape[1:]))
        act = nn.ReLU() if activation == "module" else nn.Identity()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), act, nn.Linear(hidden, 1))
        self.functional = activation != "module"
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.draws = (random.random(), float(np.random.rand()))

    def _forward(self, x):
        if self.functional:  # F.relu between the layers: no activation module to hook
            return self.net[2](torch.nn.functional.relu(self.net[0](x)))
        return self.net(x)

    def act(self, observation, info):
        self._x = torch.as_tensor(observation, dtype=torch.float32)
        self._y = self._forward(self._x)[:, 0]
        return (self._y + 0.01 * torch.randn(len(self._y))).detach().numpy()

    def observe(self, observation, action, reward, info):
        if info["phase"] != "train":
            return
        loss = ((self._y - torch.as_tensor(info["target"], dtype=torch.float32)) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def probe_model(self):
        return self.net


def make_global(observation_space, action_space, *, seed, device, lr=0.05, hidden=8):
    return GlobalTorchAgent(observation_space, lr, hidden)


def make_wider(observation_space, action_space, *, seed, device, lr=0.05, hidden=16):
    return GlobalTorchAgent(observation_space, lr, hidden)


def make_functional(observation_space, action_space, *, seed, device):
    return GlobalTorchAgent(observation_space, activation="functional")


def make_unprobed(observation_space, action_space, *, seed, device):
    agent = GlobalTorchAgent(observation_space)
    agent.probe_model = None  # no network to probe
    return agent


def _run(factory, seeds=(0,), **kw):
    return evaluate("SlowRegression-v0", factory, scale="smoke", seeds=list(seeds), env_kwargs=SR, progress=False,
                    **kw)


def test_the_global_generators_are_seeded_from_the_runs_seed_before_the_factory():
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    first = _run(make_global, seeds=(0, 1))
    torch.manual_seed(999), np.random.seed(999), random.seed(999)  # other global state before the same run
    second = _run(make_global, seeds=(0, 1))
    assert first.comparable() == second.comparable()
    a, b = first.data["runs"]  # seeds 0 and 1 start from different draws
    assert a["series"] != b["series"]


def test_a_factorys_keyword_options_are_its_recorded_config():
    plain = _run(make_global).data["agent"]
    assert plain["config"] == {"lr": 0.05, "hidden": 8}
    wider = _run(make_wider).data["agent"]
    assert wider["config"] == {"lr": 0.05, "hidden": 16} and wider["config_hash"] != plain["config_hash"]
    given = _run(make_global, overrides={"lr": 0.01}).data["agent"]
    assert given["config"] == {"lr": 0.01, "hidden": 8} and given["config_hash"] != plain["config_hash"]


def test_the_agents_module_is_hashed_and_verify_sees_an_edit(tmp_path, cli, monkeypatch):
    name = "my_recorded_agent_mod"
    src = tmp_path / f"{name}.py"
    src.write_text(textwrap.dedent(f"""
        from {__name__} import make_global as make
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "mine.json"
    code, _, err = cli("run", "SlowRegression-v0", "--agent", f"{name}:make", "--scale", "smoke",
                       "--env-set", "n_examples=2000", "--env-set", "flip_interval=1000", "--out", out,
                       "--no-progress", "--checkpoint-every", "0")
    assert code == 0, err
    from plasticity_gym.harness.result import Result

    recorded = Result.load(out).data["provenance"]["code"]["agent_source"]
    assert recorded == {"module": name, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    code, stdout, err = cli("verify", out, "--allow-import", name)
    assert code == 0 and "same device, CPU, versions and source" in stdout, stdout + err
    src.write_text(src.read_text() + "# edited after the run\n")
    code, stdout, err = cli("verify", out, "--allow-import", name)
    assert "another setup" in stdout and f"the agent's module '{name}'" in stdout, stdout + err
    sys.modules.pop(name, None)


def test_a_network_without_activation_modules_or_probe_model_is_said_once(capsys):
    _run(make_functional, seeds=(0, 1))
    err = capsys.readouterr().err
    assert err.count("no activation modules to hook") == 1, err
    assert "F.relu" in err and "dead, dormant and active units" in err
    _run(make_unprobed, seeds=(0, 1))
    err = capsys.readouterr().err
    assert err.count("has no probe_model()") == 1, err
    _run(make_global)  # activation modules: nothing to say
    assert "note:" not in capsys.readouterr().err
