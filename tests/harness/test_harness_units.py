"""Units: the recorder's series, intervals over seeds, --set parsing, progress quietness, submit."""

from __future__ import annotations

import io

import numpy as np
import pytest

from plasticity_gym.harness.cli import parse_sets
from plasticity_gym.harness.progress import Progress, progress_wanted
from plasticity_gym.harness.recorder import StreamRecorder, default_bin_examples
from plasticity_gym.harness.result import mean_ci


def _info(task, phase="train", n=1):
    return {"target": np.zeros(n), "task_id": task, "phase": phase}


def test_recorder_accuracy_per_task_and_phase():
    rec = StreamRecorder("accuracy", None)
    for r in (1, 0, 1, 1):
        rec.record(r, _info(0))
    rec.record(0.5, _info(0, "test", n=2))
    for r in (0, 0):
        rec.record(r, _info(1))
    s = rec.finish()
    assert s["online"] == {"index": [0, 1], "value": [0.75, 0.0], "n": [4, 2]}
    assert s["test"] == {"index": [0], "value": [0.5], "n": [2]}
    assert "binned" not in s


def test_recorder_error_bins_and_non_finite():
    rec = StreamRecorder("squared_error", 3)
    for i in range(7):
        rec.record(-float(i), _info(i // 4))
    s = rec.finish()
    assert s["binned"] == {"index": [0, 1, 2], "value": [1.0, 4.0, 6.0], "n": [3, 3, 1]}
    assert s["online"]["value"] == [1.5, 5.0]
    rec = StreamRecorder("squared_error", 10)
    rec.record(-np.inf, _info(0))
    assert rec.finish()["online"]["value"] == [None]  # JSON has no inf: stored as null
    assert default_bin_examples(3_000_000) == 40_000 and default_bin_examples(20_000) == 2_000


def test_mean_ci_rows_are_vectorised():
    # Per-seed values 1..4: mean 2.5, s = sqrt(5/3), t(0.975, 3) = 3.1824463 from the printed table.
    half = 3.1824463 * (5.0 / 3.0) ** 0.5 / 2.0
    assert mean_ci([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 2.5 - half, 2.5 + half), rel=1e-7)
    rows = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0], [1.0, np.nan, 3.0, 4.0]])
    mean, lo, hi = mean_ci(rows)
    assert mean[:2].tolist() == [2.5, 2.0] and lo[1] == hi[1] == 2.0 and np.isnan([mean[2], lo[2], hi[2]]).all()
    assert (lo[0], hi[0]) == mean_ci(rows[0])[1:]


def test_parse_sets():
    assert parse_sets(["optimizer.lr=3e-3", "cbp.maturity=100", "name=relu", "flag=true", "xs=[1,2]"]) == {
        "optimizer": {"lr": 0.003}, "cbp": {"maturity": 100}, "name": "relu", "flag": True, "xs": [1, 2]}
    assert parse_sets(["a.b=1"], nest=False) == {"a.b": 1}
    with pytest.raises(ValueError, match="key=value"):  # a usage error: one line, exit status 2
        parse_sets(["novalue"])


def test_progress_quiet_off_tty_and_in_ci(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    assert progress_wanted(Tty()) and not progress_wanted(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not progress_wanted(Tty())
    out = Tty()
    bar = Progress(1000, enabled=True, stream=out, interval=0.0, check_every=1)
    bar.update(500)
    bar.close(1000)
    text = out.getvalue()
    assert "500/1,000 examples" in text and "ex/s" in text and "ETA" in text
    silent = io.StringIO()
    Progress(10, enabled=False, stream=silent).close(10)
    assert silent.getvalue() == ""


def test_submit_files_entry_under_its_board(tmp_path, cli):
    out = tmp_path / "r.json"
    assert cli("run", "tests.harness.fakes:FakeClassify-v0", "--agent", "tests.harness.fakes:make_agent",
               "--scale", "smoke", "--probe-every", "0", "--out", out, "--no-progress")[0] == 0
    code, stdout, _ = cli("submit", out, "--dir", tmp_path / "boards")
    assert code == 0
    filed = list((tmp_path / "boards" / "FakeClassify-v0" / "smoke").glob("fake-mlp-*.json"))
    assert len(filed) == 1 and filed[0].read_bytes() == out.read_bytes()


def test_seeds_may_be_given_as_a_count_as_on_the_command_line():
    from plasticity_gym.harness.resolve import seed_list

    assert seed_list(3) == [0, 1, 2]
    assert seed_list((4, 7)) == [4, 7]
    for bad in (0, -2, True, [], [1, 1]):
        with pytest.raises(ValueError, match="seeds"):
            seed_list(bad)


def test_evaluate_accepts_a_seed_count():
    from plasticity_gym.harness import evaluate

    result = evaluate("SlowRegression-v0", "backprop", scale="smoke", seeds=2,
                      env_kwargs={"n_examples": 4000})
    assert result.seeds == [0, 1]


def test_cli_version(capsys):
    import plasticity_gym
    from plasticity_gym.harness.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"plasticity-gym {plasticity_gym.__version__}"


def test_a_board_with_retrain_shows_every_final_accuracy_relative_to_it():
    """The CIFAR board, as the paper's Fig. 2b: each entry's final test accuracy on all classes
    next to the reference `retrain` entry's, in points."""
    from pathlib import Path

    from plasticity_gym.harness.boards import load_entries, render_board

    board = Path(__file__).resolve().parents[2] / "leaderboards" / "ClassIncCIFAR100-v0" / "smoke"
    entries = load_entries([board])
    names = {res.agent_name: res for _, res in entries}
    assert {"retrain", "backprop", "head-reset"} <= set(names)
    table = render_board(entries)
    header = next(line for line in table.splitlines() if line.startswith("| #"))
    assert "final vs retrain" in header and "test_accuracy_final" in header
    base = names["retrain"].summary["test_accuracy_final"]["value"]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[1] in names:
            want = 100 * (names[cells[1]].summary["test_accuracy_final"]["value"] - base)
            assert f"{want:+.1f} pts" in cells, line
    without = [(p, r) for p, r in entries if r.agent_name != "retrain"]
    assert "final vs retrain" not in render_board(without)
