"""The summary statistics against hand-computed values, the interval's coverage by simulation,
and the board's ranking direction."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from plasticity_gym.harness.boards import is_preliminary, rank_board, render_board
from plasticity_gym.harness.headtohead import paired_gap
from plasticity_gym.harness.result import Result, mean_ci, summarize, t_quantile

T95 = {1: 12.7062047, 2: 4.3026527, 4: 2.7764451, 9: 2.2621572, 29: 2.0452296}  # printed t tables


def _run(seed: int, binned=None, online=None, test=None, dead=None) -> dict:
    series = {}
    for name, values in (("binned", binned), ("online", online), ("test", test)):
        if values is not None:
            series[name] = {"index": list(range(len(values))), "value": list(values), "n": [1] * len(values)}
    plast = {"task": [0, 1], "metrics": {"dead_pct": dead}} if dead else {"task": [], "metrics": {}}
    return {"seed": seed, "n_examples": 100, "wall_time_s": 0.0, "series": series, "plasticity": plast}


@pytest.mark.parametrize("df", sorted(T95))
def test_t_quantile_matches_the_printed_table(df):
    assert t_quantile(0.95, df) == pytest.approx(T95[df], abs=1e-6)


def test_mean_ci_is_mean_plus_minus_t_s_over_root_n():
    mean, lo, hi = mean_ci([1.0, 2.0, 6.0])  # mean 3, s = sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7)
    half = T95[2] * math.sqrt(7.0) / math.sqrt(3.0)
    assert (mean, lo, hi) == pytest.approx((3.0, 3.0 - half, 3.0 + half), rel=1e-7)
    one = mean_ci([0.7])
    assert one[0] == 0.7 and math.isnan(one[1]) and math.isnan(one[2])  # one seed: no interval
    assert all(math.isnan(v) for v in mean_ci([1.0, float("nan")]))


def test_error_summary_windows_mean_over_seeds_and_interval_over_seeds():
    # 20 bins per seed: the last 10% is the last 2 bins, the first 10% the first 2.
    seeds = []
    for k in (1.0, 2.0, 6.0):
        bins = [10.0 * k] * 20
        bins[:2] = [k, 3 * k]  # first10 = 2k
        bins[-2:] = [0.5 * k, 1.5 * k]  # last10 = k
        seeds.append(bins)
    s = summarize("squared_error", [_run(i, binned=b) for i, b in enumerate(seeds)])
    assert s["primary"] == "error_last10" and s["ci"] == {"method": "student-t over seeds", "level": 0.95}
    m = s["metrics"]
    assert m["error_last10"]["per_seed"] == [1.0, 2.0, 6.0]
    assert m["error_first10"]["per_seed"] == [2.0, 4.0, 12.0]
    assert m["error_auc"]["per_seed"] == pytest.approx([(1 + 3 + 0.5 + 1.5 + 160) / 20 * k for k in (1, 2, 6)])
    # The mean over all three seeds (not two), and the t interval of the three per-seed values:
    # an interval over the 60 pooled bins would be far narrower.
    half = T95[2] * math.sqrt(7.0) / math.sqrt(3.0)
    assert m["error_last10"]["value"] == pytest.approx(3.0)
    assert m["error_last10"]["ci_low"] == pytest.approx(max(0.0, 3.0 - half))  # an error is >= 0
    assert m["error_last10"]["ci_high"] == pytest.approx(3.0 + half)
    assert m["error_last10"]["higher_is_better"] is False


def test_accuracy_summary_windows_round_up_and_final_is_the_last_task():
    online = [[0.1 * i + 0.01 * s for i in range(25)] for s in range(3)]  # 25 tasks: last 10% = 3 tasks
    test = [[0.5 + 0.01 * i + 0.001 * s for i in range(25)] for s in range(3)]
    runs = [_run(s, online=online[s], test=test[s], dead=[0.0, 10.0 * (s + 1)]) for s in range(3)]
    m = summarize("accuracy", runs)
    assert m["primary"] == "test_accuracy_last10"
    m = m["metrics"]
    assert m["online_accuracy_last10"]["per_seed"] == pytest.approx([np.mean(o[-3:]) for o in online])
    assert m["online_accuracy_first10"]["per_seed"] == pytest.approx([np.mean(o[:3]) for o in online])
    assert m["test_accuracy_final"]["per_seed"] == pytest.approx([t[-1] for t in test])
    assert m["final_dead_pct"]["per_seed"] == [10.0, 20.0, 30.0]  # the last probe's value
    assert m["final_dead_pct"]["higher_is_better"] is False and m["online_accuracy_last10"]["higher_is_better"]
    assert m["online_accuracy_last10"]["ci_high"] <= 1.0  # clipped to an accuracy's range


def test_episodic_summary_windows_by_env_step():
    def run(seed, steps, returns):
        r = _run(seed)
        r["n_examples"] = 1000
        r["episodes"] = {"step": steps, "return": returns, "segment": [0] * len(steps)}
        return r

    runs = [run(0, [100, 500, 950, 1000], [1.0, 2.0, 3.0, 5.0]),  # last 10%: (900, 1000] -> 3, 5
            run(1, [300, 600], [7.0, 9.0])]  # no episode ended in either window: first / last episode
    m = summarize("episodic_return", runs)["metrics"]
    assert m["return_last10"]["per_seed"] == [4.0, 9.0]
    assert m["return_first10"]["per_seed"] == [1.0, 7.0]
    assert m["return_auc"]["per_seed"] == [2.75, 8.0]
    assert summarize("episodic_return", runs)["primary"] == "return_last10"


# ----------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("n", [3, 5, 10])
def test_interval_covers_the_true_mean_95_percent_of_the_time(n):
    rng = np.random.default_rng(1234 + n)
    mu, sigma = 0.7, 0.2
    x = rng.normal(mu, sigma, size=(2000, n))  # 2,000 simulated experiments of n seeds
    _, lo, hi = mean_ci(x)
    coverage = float(np.mean((lo <= mu) & (mu <= hi)))
    assert 0.93 <= coverage <= 0.97, coverage


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("higher", [True, False])
def test_compare_paired_interval_covers_the_true_gap(n, higher):
    rng = np.random.default_rng(99 + n + 10 * higher)
    seed_effect = rng.normal(0.0, 5.0, size=(2000, n))  # shared by both agents on a seed's stream
    lead = seed_effect + rng.normal(1.0, 0.3, size=(2000, n))
    other = seed_effect + rng.normal(0.8, 0.3, size=(2000, n))
    true_gap = 0.2 if higher else -0.2
    gap, lo, hi = paired_gap(lead, other, higher)
    coverage = float(np.mean((lo <= true_gap) & (true_gap <= hi)))
    assert 0.93 <= coverage <= 0.97, coverage
    # Pairing removes the seed effect: the interval is far narrower than the agents' own.
    _, lead_lo, lead_hi = mean_ci(lead)
    assert float(np.median(hi - lo)) < 0.2 * float(np.median(lead_hi - lead_lo))


# ----------------------------------------------------------------------------- ranking
def _entry(agent: str, value: float, higher: bool, n_seeds: int = 3) -> tuple[Path, Result]:
    metric = "online_accuracy_last10" if higher else "error_last10"
    data = {
        "env": {"id": "X-v0", "scale": "smoke", "kwargs_hash": "0" * 64, "data": {"name": "d", "sha256": "0" * 64},
                "budget": {"n_examples_total": 10, "n_tasks": 1, "examples_per_task": 10, "batch_size": 1}},
        "agent": {"name": agent, "source": "reference", "config_hash": "0" * 64, "uses_task_boundaries": False},
        "protocol": {"metric": "accuracy" if higher else "squared_error"},
        "seeds": list(range(n_seeds)),
        "summary": {"primary": metric, "ci": {"method": "student-t over seeds", "level": 0.95}, "metrics": {
            metric: {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1,
                     "per_seed": [value] * n_seeds, "higher_is_better": higher, "description": ""}}},
    }
    return Path(f"{agent}.json"), Result(data)


@pytest.mark.parametrize("higher", [True, False])
def test_rank_board_orders_by_the_metrics_direction(higher):
    board = [_entry(a, v, higher) for a, v in (("b", 0.5), ("a", 0.9), ("c", 0.1), ("d", 0.7))]
    names = [r.agent_name for _, r in rank_board(board)]
    assert names == (["a", "d", "b", "c"] if higher else ["c", "b", "d", "a"])


def test_entries_under_five_seeds_are_marked_preliminary():
    board = [_entry("few", 0.5, True, n_seeds=3), _entry("enough", 0.4, True, n_seeds=5)]
    assert is_preliminary(board[0][1]) and not is_preliminary(board[1][1])
    table = render_board(board)
    assert "| 3 (preliminary) |" in table and "| 5 |" in table
    assert "Student-t over seeds" in table
