"""`verify` re-runs an entry's seeds from its stored command and compares the runs."""

from __future__ import annotations

import json
from pathlib import Path

from plasticity_gym.harness.verify import compare_runs, invocation_of

REPO = Path(__file__).resolve().parents[2]
STORED = REPO / "leaderboards" / "SlowRegression-v0" / "smoke" / "cbp.json"  # lockstep, 3 seeds, ~2 s a seed


def test_invocation_is_read_from_the_stored_command():
    inv = invocation_of(json.loads(STORED.read_text()))
    assert (inv.env_id, inv.agent, inv.scale, inv.env_kwargs, inv.overrides) == ("SlowRegression-v0", "cbp", "smoke", {}, {})
    api = {"provenance": {"command": "plasticity_gym.harness.evaluate('X-v0', 'm:f', scale='cpu', seeds=[0], "
                                     "env_kwargs={'n': 3}, overrides={'lr': 0.1})"}}
    inv = invocation_of(api)
    assert (inv.env_id, inv.agent, inv.scale, inv.env_kwargs, inv.overrides) == ("X-v0", "m:f", "cpu", {"n": 3}, {"lr": 0.1})
    assert invocation_of({"provenance": {"command": "python my_script.py"}}) is None


def test_verify_reproduces_a_stored_smoke_entry(cli):
    # Stored on another machine or older code: reproduced within the stated tolerance; on the
    # machine, CPU, versions and source that wrote it: exactly.
    code, out, err = cli("verify", STORED, "--seeds", "1")
    assert code == 0, out + err
    assert "seed 0: reproduced" in out and "verified: every re-run seed reproduces the stored runs" in out


def test_verify_reproduces_an_entry_written_here_exactly(tmp_path, cli):
    out_file = tmp_path / "cbp.json"
    code, _, err = cli("run", "SlowRegression-v0", "--agent", "cbp", "--scale", "smoke", "--seeds", "2",
                       "--no-progress", "--out", out_file)
    assert code == 0, err
    code, out, err = cli("verify", out_file, "--seeds", "2")  # all seeds: the same lockstep batch
    assert code == 0, out + err
    assert "same device, CPU, versions and source as the entry" in out
    assert "seed 0: reproduced" in out and "seed 1: reproduced" in out and "exactly" in out


def test_verify_notes_fields_only_the_rerun_has():
    run = {"series": {"online": {"value": [1.0, 2.0]}}, "wall_time_s": 1.0}
    newer = {"series": {"online": {"value": [1.0, 2.0]}, "feature_norm": {"value": [3.0]}}, "wall_time_s": 2.0}
    added: list[str] = []
    assert compare_runs(run, newer, 0, 1e-9, 0.0, added) == (None, 0.0)
    assert added == ["runs[0].series.feature_norm"]
    # The other way round (the re-run lacks what the entry holds) is a mismatch.
    assert compare_runs(newer, run, 0, 1e-9, 0.0)[0].startswith("runs[0].series")


def test_verify_reports_a_mismatch_on_an_edited_run(tmp_path, cli):
    entry = json.loads(STORED.read_text())
    entry["runs"][0]["series"]["online"]["value"][4] += 1e-3
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(entry))
    code, out, _ = cli("verify", edited, "--seeds", "1")
    assert code == 1
    assert "seed 0: MISMATCH: runs[0].series.online.value[4]" in out and "NOT verified" in out


def test_compare_runs_tolerance():
    run = {"seed": 0, "wall_time_s": 1.0, "series": {"online": {"value": [1.0, 2.0]}}}
    close = {"seed": 0, "wall_time_s": 9.0, "series": {"online": {"value": [1.0, 2.0 * (1 + 1e-12)]}}}
    far = {"seed": 0, "wall_time_s": 1.0, "series": {"online": {"value": [1.0, 2.001]}}}
    assert compare_runs(run, run, 0, 1e-9, 0.0) == (None, 0.0)  # wall time is not compared
    assert compare_runs(run, close, 0, 1e-9, 0.0)[0] is None
    msg, rel = compare_runs(run, far, 0, 1e-4, 0.0)
    assert msg.startswith("runs[0].series.online.value[1]: stored 2.0, re-run 2.001") and rel > 1e-4
    shorter = {"seed": 0, "series": {"online": {"value": [1.0]}}}
    assert compare_runs(run, shorter, 0, 1e-4, 0.0)[0].startswith("runs[0].series.online.value (length)")


def test_submit_verify_files_a_reproduced_entry(tmp_path, cli):
    code, out, err = cli("submit", STORED, "--verify", "--dir", tmp_path, "--name", "cbp")
    assert code == 0, out + err
    assert "reproduced" in out and (tmp_path / "SlowRegression-v0" / "smoke" / "cbp.json").read_text() == STORED.read_text()


def test_a_method_added_since_the_entry_switched_off_is_not_a_config_mismatch():
    from plasticity_gym.harness.verify import _without_added_switches as strip  # noqa: PLC2701

    recorded = {"cbp": None, "network": {"kind": "mlp", "hidden": [5]}}
    rebuilt = {"cbp": None, "l2_init": None, "network": {"kind": "mlp", "hidden": [5], "layer_norm": False}}
    assert strip(rebuilt, recorded) == recorded
    # Switched on (the entry could not have run it), or a changed value: kept, so it is reported.
    on = {"cbp": None, "l2_init": {"strength": 0.01}, "network": {"kind": "mlp", "hidden": [5]}}
    assert strip(on, recorded) == on
    assert strip({"cbp": None, "network": {"kind": "mlp", "hidden": [7]}}, recorded)["network"]["hidden"] == [7]
    assert strip(recorded, recorded) is recorded
