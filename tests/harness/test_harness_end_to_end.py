"""End to end, per landed env: `run` → `validate` → `leaderboard` → `plot`, with reference agents."""

from __future__ import annotations

import json

import pytest

from plasticity_gym.harness import Result
from plasticity_gym.harness.boards import README_END, README_START

# Small streams so that the suite stays fast; the kwargs are recorded and hashed in the entry.
CASES = {
    "SlowRegression-v0": ("cbp", ["--env-set", "n_examples=6000", "--env-set", "flip_interval=1000"]),
    "PermutedMNIST-v0": ("backprop", ["--env-set", "examples_per_task=200"]),
}


@pytest.mark.parametrize("env_id", sorted(CASES))
def test_run_validate_leaderboard_plot(env_id, tmp_path, cli, monkeypatch):
    agent, env_args = CASES[env_id]
    out = tmp_path / f"{agent}.json"
    code, stdout, stderr = cli("run", env_id, "--agent", agent, "--scale", "smoke", "--seeds", "2",
                               *env_args, "--out", out, "--no-progress")
    assert code == 0, stderr
    assert f"wrote {out}" in stdout
    assert not (tmp_path / f"{agent}.json.ckpt").exists()  # removed once the result is written

    res = Result.load(out)
    assert res.env_id == env_id and res.scale == "smoke" and res.seeds == [0, 1]
    assert res.data["agent"]["source"] == "reference" and res.agent_name == agent
    # The config hash is the agents package's own (same canonical JSON).
    import plasticity_gym_agents

    assert res.data["agent"]["config_hash"] == plasticity_gym_agents.config_hash(res.data["agent"]["config"])
    assert res.data["provenance"]["command"].startswith(f"plasticity-gym run {env_id} --agent {agent}")
    run0 = res.data["runs"][0]
    assert run0["n_examples"] == res.data["env"]["budget"]["n_examples_total"]
    assert len(run0["plasticity"]["task"]) == res.data["env"]["budget"]["n_tasks"]
    assert run0["plasticity"]["metrics"], "no plasticity metrics were recorded"
    if res.data["protocol"]["metric"] == "squared_error":
        assert len(run0["series"]["binned"]["value"]) == 10
    assert res.primary in res.summary

    code, stdout, _ = cli("validate", out)
    assert code == 0 and stdout.strip().endswith("ok")

    code, stdout, _ = cli("leaderboard", env_id, "--scale", "smoke", "--dir", tmp_path,
                          "--include", out)
    assert code == 0 and env_id in stdout and agent in stdout and res.primary in stdout

    readme = tmp_path / "README.md"
    readme.write_text(f"# Boards\n\n{README_START}\nold\n{README_END}\n\nfooter\n")
    code, _, _ = cli("leaderboard", "--dir", tmp_path, "--include", out, "--update-readme", readme)
    text = readme.read_text()
    assert code == 0 and "old" not in text and text.endswith("footer\n") and f"| 1 | {agent} |" in text

    png = tmp_path / "fig.png"
    code, _, _ = cli("plot", out, out, "--out", png)
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_boards_never_mix_kwargs_or_scales(tmp_path, cli):
    from tests.harness import fakes  # noqa: F401  (registers the fake ids)

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    common = ["tests.harness.fakes:FakeClassify-v0", "--agent", "tests.harness.fakes:make_agent", "--scale", "smoke",
              "--probe-every", "0", "--no-progress"]
    assert cli("run", *common, "--out", a)[0] == 0
    assert cli("run", *common, "--env-set", "examples_per_task=100", "--out", b)[0] == 0
    code, stdout, _ = cli("leaderboard", "--dir", tmp_path)
    assert code == 0
    assert stdout.count("FakeClassify-v0  (scale smoke)") == 2  # two boards, one entry each
    ka, kb = (json.loads(p.read_text())["env"]["kwargs_hash"] for p in (a, b))
    assert ka != kb and ka[:12] in stdout and kb[:12] in stdout


def test_run_reports_bad_input_clearly(cli, tmp_path):
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "no-such-agent", "--scale", "smoke",
                       "--out", tmp_path / "x.json")
    assert code == 2 and "unknown agent 'no-such-agent'" in err and "cbp" in err
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", "--scale", "smoke",
                       "--set", "no_such_key=1", "--out", tmp_path / "x.json")
    assert code == 2 and "no_such_key" in err
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "nosuchmodule:make", "--out", tmp_path / "x.json")
    assert code == 2 and "nosuchmodule" in err


def test_an_agent_that_selects_on_validation_says_so_and_records_its_choices(tmp_path, cli):
    """CIFAR's base system selects its tested network on validation data (early stopping): the
    entry's agent block declares it and every run lists the epoch restored per increment."""
    out = tmp_path / "backprop.json"
    code, _, stderr = cli("run", "ClassIncCIFAR100-v0", "--agent", "backprop", "--scale", "smoke", "--seeds", "1",
                          "--env-set", "epochs=3", "--out", out, "--no-progress")
    assert code == 0, stderr
    data = json.loads(out.read_text())
    assert data["agent"]["selects_on_validation"] is True
    assert data["agent"]["config"]["early_stopping"] is True
    assert data["agent"]["config"]["lr_schedule"] == {"milestones": [0.3, 0.6, 0.8], "factor": 0.2}
    selection = data["runs"][0]["model_selection"]
    assert selection["task"] == [0, 1] and all(0 <= e < 3 for e in selection["epoch"])
    assert cli("validate", out)[0] == 0
    data["runs"][0]["model_selection"]["epoch"] = [-1, 0]  # the schema bounds it
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert cli("validate", bad)[0] != 0
