"""A leaderboard that strangers submit to: a result file is data, never code; its seeds are part of
its claim; its size and shape are bounded; writers of one file never collide; what a file says is
escaped where it is shown and never names a path outside its board."""

from __future__ import annotations

import copy
import fcntl
import json
import shlex
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from plasticity_gym.harness import boards, site
from plasticity_gym.harness.result import Result, resummarize
from plasticity_gym.harness.verify import check_entry, compare_runs

REPO = Path(__file__).resolve().parents[2]
STORED = REPO / "leaderboards" / "SlowRegression-v0" / "smoke" / "cbp.json"  # lockstep, seeds 0..2


@pytest.fixture
def entry() -> dict:
    return json.loads(STORED.read_text())


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _command(entry: dict, **changes: str) -> str:
    """The entry's stored command with some options' values changed (``agent="m:f"``)."""
    argv = shlex.split(entry["provenance"]["command"])
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        if key == "env_id":
            argv[2] = value
        else:
            argv[argv.index(flag) + 1] = value
    return shlex.join(argv)


# --------------------------------------------------------------------------- 1. no code from a file
@pytest.fixture
def planted(tmp_path, monkeypatch):
    """An importable module that leaves a mark when imported; its name is unique to the test."""
    name = f"planted_{uuid.uuid4().hex[:8]}"
    mark = tmp_path / "imported"
    code = (f"import pathlib\npathlib.Path({str(mark)!r}).write_text('imported')\n"
            "def make(*args, **kwargs):\n    raise RuntimeError('the planted factory ran')\n")
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name, mark
    sys.modules.pop(name, None)


def _never_imported(name: str, mark: Path) -> None:
    assert not mark.exists() and name not in sys.modules, f"{name} was imported"


def test_no_command_but_verify_imports_a_module_named_by_a_result(planted, entry, tmp_path, cli):
    name, mark = planted
    custom = copy.deepcopy(entry)  # a user's agent: its module is named by the file
    custom["agent"].update(source="custom", factory=f"{name}:make")
    custom["provenance"]["command"] = _command(entry, agent=f"{name}:make")
    env_form = copy.deepcopy(entry)  # Gymnasium's module:Id form of a registered env
    env_form["env"]["id"] = f"{name}:SlowRegression-v0"
    env_form["provenance"]["command"] = _command(entry, env_id=f"{name}:SlowRegression-v0")
    claimed = copy.deepcopy(custom)  # a module claimed to be a reference agent
    claimed["agent"]["source"] = "reference"
    files = {k: _write(tmp_path / "in" / f"{k}.json", v)
             for k, v in (("custom", custom), ("env_form", env_form), ("claimed", claimed))}

    code, out, _ = cli("validate", files["custom"], files["env_form"])
    assert code == 0, out
    assert "custom agent: not rebuilt" in out and "custom env: not rebuilt" in out
    code, out, _ = cli("validate", files["claimed"])
    assert code == 1 and "is not a reference agent" in out
    _never_imported(name, mark)

    for f in (files["custom"], files["env_form"]):
        code, _, err = cli("leaderboard", "--include", f)
        assert code == 0, err
    board = tmp_path / "boards"
    assert cli("submit", files["custom"], "--dir", board, "--name", "custom")[0] == 0
    assert cli("submit", files["env_form"], "--dir", board, "--name", "env-form")[0] == 0
    assert cli("site", "--dir", board, "--out", tmp_path / "site")[0] == 0
    assert cli("resummarize", files["custom"])[0] == 0
    _never_imported(name, mark)

    # verify runs code, and only what the reviewer names on the command line.
    code, _, err = cli("verify", files["custom"])
    assert code == 2 and f"--allow-import {name}" in err
    code, _, err = cli("verify", files["env_form"])
    assert code == 2 and f"--allow-import {name}" in err
    code, _, err = cli("submit", files["custom"], "--verify", "--dir", tmp_path / "b2")
    assert code == 2 and f"--allow-import {name}" in err
    _never_imported(name, mark)


# --------------------------------------------------------------------------- 3. seeds are the claim
def _seed_error(data: dict) -> list[str]:
    return [e for e in check_entry(data)[0] if e.startswith("seeds")]


def test_a_dropped_relabelled_or_repeated_seed_is_rejected(entry):
    assert check_entry(entry)[0] == []
    dropped = copy.deepcopy(entry)  # the worst seed left out, the summary recomputed
    worst = int(np.argmax(entry["summary"]["metrics"]["error_last10"]["per_seed"]))
    del dropped["seeds"][worst], dropped["runs"][worst]
    dropped = resummarize(dropped)
    assert _seed_error(dropped) and "missing [" in _seed_error(dropped)[0]
    relabelled = copy.deepcopy(entry)
    relabelled["seeds"][2] = relabelled["runs"][2]["seed"] = 7
    assert _seed_error(relabelled) and "not asked for [7]" in _seed_error(relabelled)[0]
    repeated = copy.deepcopy(entry)
    repeated["seeds"][2] = repeated["runs"][2]["seed"] = 1
    assert _seed_error(resummarize(repeated))  # the schema's uniqueItems
    # --seed-list names the seeds exactly.
    listed = copy.deepcopy(entry)
    listed["provenance"]["command"] = entry["provenance"]["command"].replace("--seeds 3", "--seed-list 0 1 2")
    assert _seed_error(listed) == []
    listed["provenance"]["command"] = entry["provenance"]["command"].replace("--seeds 3", "--seed-list 0 1 5")
    assert _seed_error(listed)


@pytest.fixture(scope="module")
def made_here(tmp_path_factory):
    """A 3-seed lockstep CBP entry written on this machine (the issue's s3.json)."""
    from plasticity_gym.harness.cli import main

    out = tmp_path_factory.mktemp("made") / "s3.json"
    assert main(["run", "SlowRegression-v0", "--agent", "cbp", "--scale", "smoke", "--seeds", "3", "--out",
                 str(out), "--checkpoint-every", "0", "--no-progress"]) == 0
    return out


def test_submit_verify_reruns_every_seed_and_catches_a_tampered_last_seed(made_here, tmp_path, cli):
    data = json.loads(made_here.read_text())
    data["runs"][2]["series"]["binned"]["value"][-1] *= 0.5  # the last seed made to look better
    tampered = _write(tmp_path / "tampered.json", resummarize(data))
    assert check_entry(json.loads(tampered.read_text()))[0] == []  # its numbers are consistent
    code, out, _ = cli("submit", tampered, "--verify", "--dir", tmp_path / "boards")
    assert code == 1 and "seed 2: MISMATCH" in out and "not filed" in out
    assert not (tmp_path / "boards").exists()
    code, out, _ = cli("submit", made_here, "--verify", "--verify-seeds", "1", "--dir", tmp_path / "boards")
    assert code == 0, out
    assert "re-running 1 of its 3 seeds, drawn at random: " in out and "reproduced" in out


# --------------------------------------------------------------------------- 2. honest entries verify
def test_an_honest_lockstep_entry_verifies_for_any_seed_subset(made_here, cli):
    code, out, err = cli("verify", made_here, "--seeds", "1")
    assert code == 0, out + err
    assert "seed 0: reproduced" in out and "exactly" in out
    assert "(re-run in the lockstep batch it ran in, beside seeds 1, 2)" in out


def test_tolerance_per_field_family():
    stored = {"seed": 0, "series": {"online": {"value": [0.5]}},
              "plasticity": {"task": [0], "metrics": {"grad_norm": [2.0]}}}
    probe_rounding = copy.deepcopy(stored)
    probe_rounding["plasticity"]["metrics"]["grad_norm"][0] *= 1 + 2.3e-7  # a batched SVD's last bits
    series_rounding = copy.deepcopy(stored)
    series_rounding["series"]["online"]["value"][0] *= 1 + 1e-12
    assert compare_runs(stored, probe_rounding, 0, same_setup=True)[0] is None
    assert compare_runs(stored, series_rounding, 0, same_setup=True)[0].startswith("runs[0].series.online")
    assert compare_runs(stored, series_rounding, 0, same_setup=False)[0] is None


# --------------------------------------------------------------------------- 4. bounded input
def test_a_series_longer_than_the_budget_is_rejected(entry):
    long = copy.deepcopy(entry)
    online = long["runs"][0]["series"]["online"]
    for key in ("index", "value", "n"):
        online[key] = online[key] * 70  # 700 points for a 10-task stream
    errors = check_entry(resummarize(long))[0]
    assert any(e.startswith("runs[0].series.online: 700 points") and "at most 10" in e for e in errors), errors


def test_deep_nesting_is_refused_in_one_line_everywhere(tmp_path, cli):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    code, out, _ = cli("validate", deep)
    assert code == 1 and "nested 200000 levels deep" in out and len(out.splitlines()) == 2
    code, _, err = cli("leaderboard", "--include", deep)
    assert code == 1 and "nested 200000 levels deep" in err
    code, _, err = cli("verify", deep)
    assert code == 2 and "nested 200000 levels deep" in err and "Traceback" not in err
    board = tmp_path / "boards" / "SlowRegression-v0" / "smoke"
    board.mkdir(parents=True)
    (board / "deep.json").write_text(deep.read_text())
    (board / "cbp.json").write_text(STORED.read_text())
    code, _, err = cli("site", "--dir", tmp_path / "boards", "--out", tmp_path / "site")
    assert code == 0 and "skipped" in err and "deep.json" in err


def test_a_huge_wrong_value_is_quoted_as_a_short_prefix(entry, tmp_path, cli):
    entry["env"]["budget"]["n_tasks"] = "x" * 5_000_000
    code, out, _ = cli("validate", _write(tmp_path / "huge.json", entry))
    assert code == 1 and "env.budget.n_tasks" in out and len(out) < 2_000


def test_leaderboard_and_site_skip_and_name_a_file_validate_rejects(entry, tmp_path, cli):
    board = tmp_path / "boards"
    good = _write(board / "SlowRegression-v0" / "smoke" / "cbp.json", entry)
    cherry = copy.deepcopy(entry)  # its summary is its runs' own: only validate's full check refuses it
    del cherry["seeds"][0], cherry["runs"][0]
    cherry = resummarize(cherry)
    cherry["agent"]["name"] = "cherry"
    bad = _write(board / "SlowRegression-v0" / "smoke" / "cherry.json", cherry)
    code, out, err = cli("leaderboard", "--dir", board)
    assert code == 0 and f"skipped {bad}" in err and "seeds:" in err
    assert "cherry" not in out and "cbp" in out
    code, _, err = cli("site", "--dir", board, "--out", tmp_path / "site")
    assert code == 0 and f"skipped {bad}" in err
    assert not list((tmp_path / "site").rglob("cherry*")) and list((tmp_path / "site").rglob("cbp.json"))
    assert good.exists()


# --------------------------------------------------------------------------- 5. writers
def test_submit_uses_a_unique_temp_name_and_refuses_an_existing_name(tmp_path, cli):
    board = tmp_path / "boards"
    dest_dir = board / "SlowRegression-v0" / "smoke"
    (dest_dir / ".cbp.json.tmp").mkdir(parents=True)  # where a fixed temp name would be written
    code, out, err = cli("submit", STORED, "--dir", board, "--name", "cbp")
    assert code == 0, out + err
    assert (dest_dir / "cbp.json").read_bytes() == STORED.read_bytes()
    code, _, err = cli("submit", STORED, "--dir", board, "--name", "cbp")
    assert code == 2 and "exists" in err and "--replace" in err
    assert cli("submit", STORED, "--dir", board, "--name", "cbp", "--replace")[0] == 0
    assert sorted(p.name for p in dest_dir.iterdir()) == [".cbp.json.tmp", "cbp.json"]


def test_a_second_run_with_the_same_out_refuses(tmp_path, cli):
    out = tmp_path / "r.json"
    with open(tmp_path / "r.json.lock", "w") as held:  # what a run in progress holds
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = cli("run", "SlowRegression-v0", "--agent", "backprop", "--scale", "smoke", "--out", out,
                           "--no-progress")
    assert code == 2 and "another run" in err and "is writing" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_run_removes_stale_temp_files_of_its_checkpoint(tmp_path, cli):
    out = tmp_path / "r.json"
    stale = [tmp_path / ".r.json.ckpt.k1ll3d.tmp", tmp_path / ".r.json.ckpt.part-0-of-2.x9.tmp"]
    for p in stale:
        p.write_bytes(b"half a pickle")
    other = tmp_path / ".other.json.ckpt.a1.tmp"
    other.write_bytes(b"not ours")
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "backprop", "--scale", "smoke", "--out", out,
                       "--no-progress", "--env-set", "n_examples=4000")
    assert code == 0, err
    assert not any(p.exists() for p in stale) and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.ckpt.a1.tmp", "r.json"]


def test_a_failed_site_build_leaves_the_last_site_and_the_next_build_works(tmp_path, monkeypatch, cli):
    board = tmp_path / "boards"
    _write(board / "SlowRegression-v0" / "smoke" / "cbp.json", json.loads(STORED.read_text()))
    out = tmp_path / "site"
    assert cli("site", "--dir", board, "--out", out)[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the build stops half-way

    with monkeypatch.context() as m:
        m.setattr(site, "_index_page", killed)
        assert cli("site", "--dir", board, "--out", out)[0] == 130
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boards", "site"]
    code, _, err = cli("site", "--dir", board, "--out", out)
    assert code == 0, err


# --------------------------------------------------------------------------- 6. escaping, containment
def test_markdown_tables_escape_what_the_file_says(entry, tmp_path):
    evil = copy.deepcopy(entry)
    evil["agent"]["name"] = "x | 1 | ![img](http://e/x.png) |\n| 0 | <b>injected</b>"
    text = boards.render_board([(tmp_path / "evil.json", Result(evil))], markdown=True)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 3  # header, separator, one entry
    cells = rows[2].replace("\\|", "").split("|")
    assert len(cells) == len(rows[0].split("|"))
    assert "![" not in text.replace("!\\[", "") and "<b>" not in text and "&lt;b&gt;" in text


def test_a_scale_of_dots_cannot_file_an_entry_outside_its_board(entry, tmp_path, cli):
    dotted = copy.deepcopy(entry)  # a user's env, so not rebuilt: only its shape and numbers are checked
    dotted["env"]["id"] = "mine:SlowRegression-v0"
    dotted["env"]["scale"] = ".."
    dotted["provenance"]["command"] = _command(entry, env_id="mine:SlowRegression-v0", scale="..")
    f = _write(tmp_path / "in" / "dotted.json", dotted)
    board = tmp_path / "deep" / "boards"
    code, _, err = cli("submit", f, "--dir", board, "--name", "x")
    assert code == 2 and "env.scale" in err
    assert not list((tmp_path / "deep").rglob("*.json"))
    code, _, err = cli("submit", STORED, "--dir", board, "--name", "..")
    assert code == 2 and not list((tmp_path / "deep").rglob("*.json"))


# --------------------------------------------------------------------------- 8. smaller things
def test_a_dead_worker_is_one_line(monkeypatch, tmp_path, cli):
    import importlib

    from plasticity_gym.harness.workers import WorkerError

    evaluate_module = importlib.import_module("plasticity_gym.harness.evaluate")

    def dies(*args, **kwargs):
        raise WorkerError("worker 1 (seeds [8, 9]) exited with code -9 without a result (killed, or out of "
                          "memory?); its checkpoint stays for --resume")

    monkeypatch.setattr(evaluate_module, "evaluate", dies)
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", "--scale", "smoke", "--out", tmp_path / "r.json")
    assert code == 1 and err.count("\n") == 1 and "worker 1" in err


def test_leaderboard_dir_that_is_a_file_is_an_error(cli):
    code, _, err = cli("leaderboard", "--dir", STORED)
    assert code == 2 and "is a file" in err


def test_a_huge_kwarg_is_refused_naming_it():
    import gymnasium as gym

    with pytest.raises(ValueError, match=r"n_hidden must be at most 100,000"):
        gym.make("SlowRegression-v0", scale="smoke", n_hidden=10**9, disable_env_checker=True).reset(seed=0)

