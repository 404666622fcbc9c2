"""Board figures: the paper's agents on one, every other entry in panels of its own beside
backprop and CBP; the boards' Student-t interval as the band; accuracies in percent; far
outliers clipped or put on a symlog axis, with a note; a submitted entry drawn at once."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from plasticity_gym.harness import plot
from plasticity_gym.harness.result import Result, mean_ci

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "leaderboards" / "PermutedMNIST-v0" / "smoke"


def _entry(name: str) -> Result:
    return Result(json.loads((SMOKE / f"{name}.json").read_text()))


def _as(res: Result, factory: str, source: str = "reference") -> Result:
    data = copy.deepcopy(res.data)
    data["agent"].update(name=factory, factory=factory, source=source)
    return Result(data)


def test_the_band_is_the_boards_student_t_interval():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 7))
    m[1, 4] = np.nan  # a probe one seed lacks: the interval of the two that have it
    mean, lo, hi = plot.t_band(m)
    for j in range(m.shape[1]):
        col = m[:, j][np.isfinite(m[:, j])]
        want = mean_ci(col)
        assert np.allclose([mean[j], lo[j], hi[j]], want)


def test_paper_agents_and_the_rest_are_split_and_keep_their_colours():
    bp, cbp, adam = _entry("backprop"), _entry("cbp"), _entry("adam")
    others = [_as(bp, "upgd"), _as(bp, "crelu"), _as(bp, "mine:make", source="custom")]
    paper, rest = plot.split_board([others[0], cbp, adam, others[1], bp, others[2]], "PermutedMNIST-v0")
    assert [r.agent_name for r in paper] == ["backprop", "adam", "cbp"]  # the paper's order
    assert [r.agent_name for r in rest] == ["upgd", "crelu", "mine:make"]
    cifar = [_as(bp, "retrain"), _as(bp, "head-reset")]
    assert plot.split_board(cifar, "ClassIncCIFAR100-v0")[1] == []  # the paper's on CIFAR's board
    colors = {plot.agent_color(n) for n in ("backprop", "cbp", "adam", "l2", "shrink-perturb")}
    assert len(colors) == 5 and plot.agent_color("backprop") == "#111111" and plot.agent_color("cbp") == "#d62728"


def test_accuracies_are_percentages():
    x, m = plot._curve(_entry("cbp"), "online", episodic=False)
    raw = _entry("cbp").series("online")
    assert np.allclose(m, 100 * raw) and m.max() > 1.5


@pytest.mark.parametrize("points, outlier, scale", [
    (slice(40, 50), -700_000.0, "symlog"),  # a diverged seed: orders of magnitude, many points
    (slice(40, 41), -700_000.0, "linear"),  # one point: clipped off the axis
    (slice(40, 41), -3.0, "linear"),
])
def test_a_far_outlier_does_not_flatten_the_panel(points, outlier, scale):
    plt = plot.pyplot()
    fig, ax = plt.subplots()
    x = np.arange(60)
    for k in range(3):
        y = 0.1 + 0.02 * np.sin(x / 5 + k)
        if k == 0:
            y[points] = outlier
        ax.plot(x, y)
    plot._clip_outliers(ax)
    assert ax.get_yscale() == scale
    if scale == "linear":  # an isolated point: clipped off the axis
        assert ax.get_ylim()[0] > -1
    assert any("axis" in t.get_text() for t in ax.texts)  # said on the panel
    plt.close(fig)


def test_a_submitted_entry_is_drawn_on_its_boards_figures(tmp_path, cli, monkeypatch):
    board = tmp_path / "boards"
    (board / "PermutedMNIST-v0" / "smoke").mkdir(parents=True)
    for name in ("backprop", "cbp"):
        shutil.copy(SMOKE / f"{name}.json", board / "PermutedMNIST-v0" / "smoke")
    out = tmp_path / "upgd.json"
    code, _, err = cli("run", "PermutedMNIST-v0", "--agent", "upgd", "--scale", "smoke", "--out", out,
                       "--no-progress", "--env-set", "n_tasks=2")
    assert code == 0, err
    drawn: dict[str, list[str]] = {}
    real = plot.plot_methods

    def spy(results, references, path, **kw):
        drawn[Path(path).name] = [r.agent_name for r in results] + [f"ref:{r.agent_name}" for r in references]
        return real(results, references, path, **kw)

    monkeypatch.setattr(plot, "plot_methods", spy)
    code, stdout, err = cli("submit", out, "--dir", board)
    assert code == 0, err
    assert drawn == {"PermutedMNIST-v0-smoke-methods.png": ["upgd", "ref:backprop", "ref:cbp"]}
    assert (board / "figures" / "PermutedMNIST-v0-smoke.png").is_file()
    assert "redrew" in stdout
