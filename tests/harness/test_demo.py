"""``plasticity-gym demo`` at a tiny size: both results, the figure, and a sentence whose numbers
are the results' own."""

from __future__ import annotations

import re

import numpy as np
import pytest

from plasticity_gym.harness import Result
from plasticity_gym.harness.demo import AGENTS, ENV_ID, ENV_KWARGS, SCALE


def test_demo_runs_writes_and_reports_its_own_numbers(cli, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    # 2 tasks of the cpu scale's 10,000 examples instead of 50: the same code path, in seconds.
    code, stdout, err = cli("demo", "--out", out, "--seeds", "3", "--env-set", "n_examples=20000", "--no-progress")
    assert code == 0, err
    results = {a: Result.load(out / f"{ENV_ID}-{a}.json") for a in AGENTS}
    figure = out / "demo.png"
    assert figure.stat().st_size > 1000
    assert f"figure: {figure}" in stdout
    for a, res in results.items():
        assert (res.env_id, res.scale, res.agent_name, res.seeds) == (ENV_ID, SCALE, a, [0, 1, 2])
        assert res.data["env"]["kwargs"]["n_examples"] == 20000
        assert res.data["protocol"]["execution"] == "lockstep"
        assert res.data["provenance"]["command"].startswith(f"plasticity-gym run {ENV_ID} --agent {a} --scale cpu")
    sentence = stdout.strip().splitlines()[-2]
    best = np.nanmin(np.nanmean(results["backprop"].series("binned"), axis=0))
    numbers = [f"{best:.2f}", f"{results['backprop'].summary['error_last10']['value']:.2f}",
               f"{results['cbp'].summary['error_last10']['value']:.2f}",
               f"{results['backprop'].summary['final_dead_pct']['value']:.0f}%"]
    for n in numbers:
        assert n in sentence, (n, sentence)
    assert re.search(r"(CBP|backprop) is ahead by \d+\.\d\d", sentence)
    assert "95% CI" in sentence or "includes 0" in sentence


def test_demo_default_is_the_cpu_scale_shortened_only_in_length():
    assert ENV_KWARGS == {"n_examples": 500_000}  # 50 tasks of the cpu scale's 10,000 examples


def test_demo_refuses_an_unwritable_out_before_any_work(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = cli("demo", "--out", tmp_path / "afile" / "d", "--env-set", "n_examples=10000000")
    assert code == 2 and "--out" in err and "not a directory" in err
