"""A lockstep run's seeds split across worker processes: the parts, the defaults, and a split run
equal to the one-process run."""

from __future__ import annotations

import numpy as np
import pytest

from plasticity_gym.harness import evaluate
from plasticity_gym.harness.workers import MIN_SEEDS_PER_WORKER, default_workers, split_seeds


def test_split_seeds_gives_contiguous_parts_of_near_equal_size():
    assert split_seeds([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert split_seeds(list(range(32)), 2) == [list(range(16)), list(range(16, 32))]
    assert split_seeds([7, 3, 9], 3) == [[7], [3], [9]]
    with pytest.raises(ValueError, match="between 1 and the number of seeds"):
        split_seeds([0, 1], 3)
    with pytest.raises(ValueError, match="between 1 and the number of seeds"):
        split_seeds([0, 1], 0)


def test_default_workers_split_only_many_lockstep_seeds_on_the_cpu(monkeypatch):
    from plasticity_gym.harness import workers

    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    many = 2 * MIN_SEEDS_PER_WORKER
    assert default_workers(execution="lockstep", device="cpu", n_seeds=many, threads=None) == 2
    assert default_workers(execution="lockstep", device="cpu", n_seeds=100, threads=None) == 2  # one per core
    assert default_workers(execution="lockstep", device="cpu", n_seeds=many - 1, threads=None) == 1
    assert default_workers(execution="lockstep", device="cpu", n_seeds=many, threads=1) == 1  # one of several runs
    assert default_workers(execution="lockstep", device="cuda", n_seeds=many, threads=None) == 1
    assert default_workers(execution="sequential", device="cpu", n_seeds=many, threads=None) == 1


def test_a_run_split_across_workers_equals_the_one_process_run(capsys):
    kw = dict(scale="smoke", seeds=(0, 1, 2), lockstep="on", threads=1)
    one = evaluate("PermutedMNIST-v0", "cbp", workers=1, progress=False, **kw)
    capsys.readouterr()
    split = evaluate("PermutedMNIST-v0", "cbp", workers=2, progress=True, **kw)
    shown = capsys.readouterr().err
    assert shown.count("(100.0%)") == 1 and shown.endswith("\n")  # the full line once, not redrawn
    assert "processes" not in one.data["protocol"]
    assert split.data["protocol"]["processes"] == 2
    assert [r["seed"] for r in split.data["runs"]] == [0, 1, 2]
    assert split.data["summary"] == one.data["summary"]
    for a, b in zip(one.data["runs"], split.data["runs"]):
        assert a["series"] == b["series"] and a["n_examples"] == b["n_examples"]
        assert a["plasticity"]["task"] == b["plasticity"]["task"]
        metrics = a["plasticity"]["metrics"]
        assert metrics["dead_pct"] and set(metrics) == set(b["plasticity"]["metrics"])
        for name, values in metrics.items():  # batched products of other sizes round differently
            x, y = (np.array([np.nan if v is None else v for v in vs], float)
                    for vs in (values, b["plasticity"]["metrics"][name]))
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-9, equal_nan=True, err_msg=name)


def test_bad_worker_counts_are_clear_errors():
    kw = dict(scale="smoke", progress=False)
    for bad in (0, 1.5, "2", True):
        with pytest.raises(ValueError, match="workers must be an integer >= 1"):
            evaluate("PermutedMNIST-v0", "cbp", seeds=2, workers=bad, **kw)
    with pytest.raises(ValueError, match="workers=3 splits the seeds .* 2 seed"):
        evaluate("PermutedMNIST-v0", "cbp", seeds=2, workers=3, **kw)
    with pytest.raises(ValueError, match="this run is sequential"):
        evaluate("PermutedMNIST-v0", "cbp", seeds=2, workers=2, lockstep="off", **kw)


def test_a_failing_worker_raises_its_error_in_the_run(tmp_path):
    """A worker that fails (here: its part checkpoint belongs to another run) stops the run with
    the worker's own error."""
    from plasticity_gym.harness.checkpoint import Checkpoint, part_checkpoint

    ckpt = tmp_path / "run.ckpt"
    Checkpoint(part_checkpoint(ckpt, 1, 2), {"another": "run"}).save({})
    with pytest.raises(ValueError, match="belongs to a different run"):
        evaluate("PermutedMNIST-v0", "cbp", scale="smoke", seeds=2, workers=2, progress=False,
                 checkpoint=ckpt, checkpoint_every=100, resume=True)
