"""Checkpoint/resume: a run SIGKILLed part-way and resumed equals an uninterrupted run."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticity_gym.harness import Result, evaluate

REPO = Path(__file__).resolve().parents[2]
ENV = "SlowRegression-v0"
# Long enough that the run cannot finish between two polls of its checkpoint.
ENV_KW = {"n_examples": 20000, "flip_interval": 1000}
ARGS = ["run", ENV, "--agent", "cbp", "--scale", "smoke", "--seed-list", "3", "4",
        "--env-set", "n_examples=20000", "--env-set", "flip_interval=1000",
        "--set", "cbp.replacement_rate=0.01", "--checkpoint-every", "500", "--no-progress", "--threads", "1"]


def _cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "plasticity_gym.harness.cli", *map(str, args)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _wait_for_mid_seed_checkpoint(ckpt: Path, proc: subprocess.Popen, seed_index: int, lockstep: bool,
                                  timeout=120.0):
    """Poll until the checkpoint shows the run inside seed ``seed_index``, past its start
    (a lockstep run has every seed inside: it only needs to be past the start)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        try:
            payload = pickle.loads(ckpt.read_bytes())
        except (FileNotFoundError, EOFError, pickle.UnpicklingError):
            time.sleep(0.01)
            continue
        cur = payload["current"]
        if len(payload["finished"]) == seed_index * (not lockstep) and cur is not None and cur[0].examples >= 1000:
            return payload
        time.sleep(0.01)
    raise AssertionError("no mid-seed checkpoint appeared")


@pytest.mark.parametrize("lockstep", ["off", "on"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, lockstep):
    out = tmp_path / "resumed.json"
    ckpt = Path(f"{out}.ckpt")
    args = [*ARGS, "--lockstep", lockstep]
    proc = _cli(*args, "--out", out)
    # Kill part-way (sequential: inside the second seed, so the first seed's finished run
    # must be carried over too; lockstep: every seed is part-way).
    payload = _wait_for_mid_seed_checkpoint(ckpt, proc, seed_index=1, lockstep=lockstep == "on")
    # The segment in progress holds every seed in lockstep, one seed otherwise.
    assert len(payload["current"][0].logs) == (2 if lockstep == "on" else 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and ckpt.exists()

    resumed = _cli(*args, "--out", out, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    assert not ckpt.exists()

    # The same torch threads as the CLI runs (float sums may round differently with another
    # count, and earlier tests may have changed this process's).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = evaluate(ENV, "cbp", scale="smoke", seeds=(3, 4), env_kwargs=ENV_KW,
                             overrides={"cbp": {"replacement_rate": 0.01}}, progress=False,
                             lockstep=lockstep)
    finally:
        torch.set_num_threads(threads)
    got = Result.load(out)
    assert got.data["protocol"]["execution"] == ("lockstep" if lockstep == "on" else "sequential")
    assert got.comparable() == reference.comparable()
    # The comparison is not vacuous: CBP replaced units, and the probes saw it.
    assert got.data["runs"][1]["plasticity"]["metrics"]["dead_pct"]
    assert len(got.data["runs"][1]["series"]["online"]["value"]) > 1


def test_sigkill_of_a_run_split_across_workers_then_resume_equals_uninterrupted(tmp_path):
    """Each worker process checkpoints its part of the seeds; killing the run kills its workers,
    and the resumed run (the same --workers) equals an uninterrupted one-process run."""
    out = tmp_path / "resumed.json"
    ckpt = Path(f"{out}.ckpt")
    args = [a for a in ARGS if a not in ("--threads", "1")] + ["--lockstep", "on", "--workers", "2"]
    proc = _cli(*args, "--out", out)
    parts = [Path(f"{ckpt}.part-{i}-of-2") for i in range(2)]
    for part in parts:
        _wait_for_mid_seed_checkpoint(part, proc, seed_index=0, lockstep=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the workers die with their parent
    assert subprocess.run(["pgrep", "-f", f"worker_main.* {proc.pid}$"], capture_output=True).returncode == 1
    assert not out.exists() and ckpt.exists() and all(p.exists() for p in parts)

    wrong = _cli(*[a if a != "2" else "1" for a in args], "--out", out, "--resume")
    _, stderr = wrong.communicate(timeout=300)
    assert wrong.returncode != 0 and b"differs in: workers" in stderr, stderr.decode()

    resumed = _cli(*args, "--out", out, "--resume")
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    assert b"resuming from" in stderr
    assert not ckpt.exists() and not any(p.exists() for p in parts)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = evaluate(ENV, "cbp", scale="smoke", seeds=(3, 4), env_kwargs=ENV_KW,
                             overrides={"cbp": {"replacement_rate": 0.01}}, progress=False, lockstep="on")
    finally:
        torch.set_num_threads(threads)
    got = Result.load(out)
    assert got.data["protocol"].pop("processes") == 2
    got_data, ref_data = got.comparable(), reference.comparable()
    # Probes of one seed and of two batched seeds round float32 products differently.
    for a, b in zip(got_data["runs"], ref_data["runs"]):
        for name, values in a["plasticity"].pop("metrics").items():
            np.testing.assert_allclose(np.array(values, float), np.array(b["plasticity"]["metrics"][name], float),
                                       rtol=1e-5, atol=1e-9, err_msg=name)
        b["plasticity"].pop("metrics")
    # ... and so do the summary values read from the probes (the last probe's diagnostics).
    got_summary, ref_summary = got_data["summary"]["metrics"], ref_data["summary"]["metrics"]
    for name in [n for n in ref_summary if n.startswith("final_")]:
        a, b = got_summary.pop(name), ref_summary.pop(name)
        np.testing.assert_allclose(np.array(a["per_seed"], float), np.array(b["per_seed"], float),
                                   rtol=1e-5, atol=1e-9, err_msg=name)
    assert got_data == ref_data  # the series exactly, every probe's task, the other summary values
    assert got.data["runs"][1]["plasticity"]["metrics"]["dead_pct"]


def test_resume_refuses_another_runs_checkpoint(tmp_path):
    from tests.harness import fakes

    ckpt = tmp_path / "c.ckpt"
    kw = dict(scale="smoke", checkpoint=ckpt, checkpoint_every=100, progress=False, probe_every=0)
    evaluate("FakeClassify-v0", fakes.make_agent, seeds=(0,), **kw)
    assert not ckpt.exists()  # a finished run leaves no checkpoint
    fakes.reset_counter(stop_at=350)
    with pytest.raises(fakes.Interrupt):
        evaluate("FakeClassify-v0", fakes.interruptible_agent, seeds=(0,), **kw)
    assert ckpt.exists()
    with pytest.raises(ValueError, match="different run .*seeds"):
        evaluate("FakeClassify-v0", fakes.interruptible_agent, seeds=(1,), resume=True, **kw)


def test_resume_in_process_equals_uninterrupted(tmp_path):
    """The same property without a subprocess, for an agent without state_dict (pickled whole)."""
    from tests.harness import fakes

    ckpt = tmp_path / "c.ckpt"
    kw = dict(scale="smoke", seeds=(0, 1), progress=False, checkpoint=ckpt, checkpoint_every=150)
    fakes.reset_counter(stop_at=None)
    full = evaluate("FakeRegress-v0", fakes.interruptible_agent, **kw)
    fakes.reset_counter(stop_at=1100)  # inside the second seed (800 steps per seed)
    with pytest.raises(fakes.Interrupt):
        evaluate("FakeRegress-v0", fakes.interruptible_agent, **kw)
    fakes.reset_counter(stop_at=None)
    resumed = evaluate("FakeRegress-v0", fakes.interruptible_agent, resume=True, **kw)
    assert resumed.comparable() == full.comparable()
    assert not ckpt.exists()
