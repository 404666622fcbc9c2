"""Learner throughput with the env in the loop: a plain PyTorch loop vs plasticity-gym's learners.

A benchmark, not a test: it measures, in one run, on the same machine and torch threads,

* ``baseline``: a plain per-example PyTorch training loop the way the paper's code trains
  (``nn.Sequential``, autograd, ``torch.optim.SGD``, one seed at a time, backprop only), as one
  process (with the run's torch threads) and as the whole machine: as many one-thread processes
  as there are cores, run at once, their rates summed (``machine``: the fair yardstick for a
  learner that uses every core);
* ``single``: this project's :class:`agents.SupervisedLearner` (one seed);
* ``lockstep``: :class:`plasticity_gym_agents.lockstep.LockstepLearner` running N seeds as one computation on
  the native vector env, as one process with the run's threads and (``N processes x 1 thread``) as
  ``plasticity-gym run`` splits many seeds on the CPU: one one-thread process per core, each with its
  share of the seeds, their rates summed,

and prints seed-examples per second and the ratios to the one-process baseline and to the
whole-machine one. Usage::

    python bench/throughput.py                 # every case (about three minutes), all cores
    python bench/throughput.py --quick         # shorter timings
    python bench/throughput.py --threads 1     # one torch thread for every case
    python bench/throughput.py --markdown      # also print the table as Markdown (README)
    python bench/throughput.py --problems mnist-3x100   # only some problems

Every case, the baseline included, runs with the same torch threads (default: every core).

Targets (issues 5 and 10, 2-core machine): SlowRegression 5 units × 100 seeds ≥ 1,000,000
seed-ex/s with backprop and ≥ 500,000 with CBP; PermutedMNIST 3×100 CBP with 32 seeds ≥ 10× the
whole-machine baseline; PermutedMNIST 3×2000 CBP ≥ 2× the whole-machine baseline per seed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import plasticity_gym  # noqa: F401  (registers the envs)
from plasticity_gym_agents import make_agent, resolve_config
from plasticity_gym_agents.lockstep import LockstepLearner
from plasticity_gym.harness.lanes import DeviceStream, mirror_on_device
from plasticity_gym.harness.threads import configure_cpu
from plasticity_gym.harness.workers import split_seeds


class Rate(NamedTuple):
    """Steps (or seed-examples) per second: the median of the timing windows, and their range."""

    median: float
    low: float
    high: float
    note: str = ""  # how the learner ran, shown in the table (e.g. "compiled")

    def __mul__(self, k: float) -> Rate:  # type: ignore[override]
        return Rate(self.median * k, self.low * k, self.high * k, self.note)


WINDOWS = 5  # timing windows per case (main() sets it from --windows)


def _timed(step, seconds: float, warmup: int = 50) -> Rate:
    """Steps per second over ``WINDOWS`` consecutive windows of ``seconds / WINDOWS`` each.

    The median is what the tables report: on a shared VM one window can be slowed by a
    neighbour, and every case (the baseline too) is measured the same way."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(WINDOWS):
        _sync()
        n, start = 0, time.perf_counter()
        while True:
            for _ in range(10):
                step()
            n += 10
            _sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / WINDOWS:
                break
        rates.append(n / elapsed)
    return Rate(float(np.median(rates)), min(rates), max(rates))


def baseline_loop(env_id: str, hidden: list[int], lr: float, seconds: float) -> Rate:
    """Seed-examples/s of the plain loop: forward, loss, backward, SGD step, per example."""
    env = gym.make(env_id, scale="cpu")
    obs, info = env.reset(seed=0)
    n_in = int(np.prod(env.observation_space.shape[1:]))
    classification = isinstance(env.action_space, gym.spaces.MultiDiscrete)
    n_out = int(env.action_space.nvec[0]) if classification else 1
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, n_out))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    state = {"obs": obs}

    def step() -> None:
        x = torch.tensor(state["obs"])
        out = net(x)
        action = out.argmax(1).numpy() if classification else out[:, 0].detach().numpy()
        state["obs"], _, _, truncated, info = env.step(action)
        y = torch.tensor(info["target"])
        loss = loss_fn(out, y) if classification else loss_fn(out[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if truncated:
            state["obs"], _ = env.reset(seed=1)

    return _timed(step, seconds)


def _baseline_process(args: tuple) -> Rate:
    configure_cpu(1)
    return baseline_loop(*args)


def machine_baseline(env_id: str, hidden: list[int], lr: float, seconds: float) -> Rate:
    """The plain loop as ``os.cpu_count()`` one-thread processes at once: their rates summed."""
    n = os.cpu_count() or 1
    return _at_once(_baseline_process, [(env_id, hidden, lr, seconds)] * n)


def _at_once(target: Callable[[tuple], Rate], jobs: list[tuple]) -> Rate:
    """``target(job)`` for every job, each in its own one-thread process, all at once: their rates
    summed (the note names the processes, and "compiled" when any of them was)."""
    with multiprocessing.get_context("spawn").Pool(len(jobs), initializer=_set_windows, initargs=(WINDOWS,)) as pool:
        rates = pool.map(target, jobs)
    compiled = ", compiled" if any(r.note == "compiled" for r in rates) else ""
    return Rate(sum(r.median for r in rates), sum(r.low for r in rates), sum(r.high for r in rates),
                f"{len(jobs)} processes x 1 thread{compiled}")


def _set_windows(windows: int) -> None:
    global WINDOWS
    WINDOWS = windows


DEVICE = "cpu"  # the learners' torch device (main() sets it from --device); baselines stay on the CPU


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def single_learner(env_id: str, agent: str, overrides: dict, seconds: float) -> Rate:
    env = gym.make(env_id, scale="cpu")
    learner = make_agent(agent, env.observation_space, env.action_space, env_id=env_id,
                         scale="cpu", overrides=overrides, device=DEVICE)
    state = dict(zip(("obs", "info"), env.reset(seed=0)))

    def step() -> None:
        obs = state["obs"]
        action = learner.act(obs, state["info"])
        state["obs"], reward, _, truncated, state["info"] = env.step(action)
        learner.observe(obs, action, reward, state["info"])
        if truncated:
            state["obs"], state["info"] = env.reset(seed=1)

    return _timed(step, seconds)


def lockstep_step(env_id: str, agent: str, overrides: dict, n_seeds: int,
                  device: str, compile: bool | str = "auto") -> tuple[LockstepLearner, Callable[[], None]]:
    """A lockstep learner of ``n_seeds`` on the native vector env, and one step of the two, as
    ``plasticity-gym run`` drives them (also used by ``bench/profile_step.py``)."""
    venv = gym.make_vec(env_id, num_envs=n_seeds, vectorization_mode="vector_entry_point", scale="cpu")
    osp, asp = venv.single_observation_space, venv.single_action_space
    config = resolve_config(agent, osp, asp, env_id=env_id, scale="cpu", overrides=overrides)
    learner = LockstepLearner(agent, config, osp, asp, seeds=range(n_seeds), device=device, compile=compile)
    state = dict(zip(("obs", "info"), venv.reset(seed=0)))
    # On an accelerator the stream is mirrored there a block at a time, as `plasticity-gym run` does.
    stream = DeviceStream(venv, learner.device) if mirror_on_device(learner, venv) else None

    def step() -> None:
        if stream is None:
            obs, extra = state["obs"], {}
        else:
            obs, target = stream.current()
            extra = {"target": target}
        actions = learner.act(obs, state["info"])
        state["obs"], rewards, _, _, state["info"] = venv.step(actions)
        learner.observe(obs, actions, rewards, dict(state["info"], **extra))

    return learner, step


def lockstep_learner(env_id: str, agent: str, overrides: dict, n_seeds: int, seconds: float) -> Rate:
    learner, step = lockstep_step(env_id, agent, overrides, n_seeds, DEVICE)
    rate = _timed(step, seconds, warmup=20) * n_seeds  # the warm-up includes any compiling
    return rate._replace(note="compiled" if learner.compiled else "")


def _lockstep_process(args: tuple) -> Rate:
    configure_cpu(1)
    return lockstep_learner(*args)


def machine_lockstep(env_id: str, agent: str, overrides: dict, n_seeds: int, seconds: float) -> Rate:
    """``n_seeds`` in lockstep as ``plasticity-gym run`` splits them on the CPU: one one-thread
    process per core, each with its share of the seeds, at once; their rates summed."""
    parts = split_seeds(range(n_seeds), min(os.cpu_count() or 1, n_seeds))
    return _at_once(_lockstep_process, [(env_id, agent, overrides, len(part), seconds) for part in parts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for every case (default: every core)")
    parser.add_argument("--quick", action="store_true", help="shorter timings")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS),
                        help="which problems to measure (default: all)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="the learners' device (default cpu); the plain-loop baselines stay on the CPU")
    parser.add_argument("--windows", type=int, default=5,
                        help="timing windows per case; the median window is reported (default 5)")
    args = parser.parse_args()
    if args.windows < 1:
        parser.error("--windows must be at least 1")
    global WINDOWS, DEVICE
    WINDOWS = args.windows
    DEVICE = args.device
    configure_cpu(args.threads)  # as plasticity-gym runs: denormals flushed to zero
    sec = 1.5 if args.quick else 5.0

    rows: list[tuple[str, str, str, Rate, Rate, Rate, str]] = []
    machine: dict[str, Rate] = {}

    def add(problem: str, what: str, learner: str, rate: Rate, base: Rate, target: str) -> None:
        what = f"{what}, {rate.note}" if rate.note else what
        whole = machine[problem]
        rows.append((problem, what, learner, rate, base, whole, target))
        ratio = f"{rate.median / base.median:6.1f}x {rate.median / whole.median:6.1f}x"
        spread = f"{rate.low:,.0f}-{rate.high:,.0f}"
        print(f"{problem:<28} {what:<36} {learner:<14} {rate.median:>13,.0f} {spread:>21} {ratio}  {target}",
              flush=True)

    print(f"torch {torch.__version__}, {args.threads} thread(s), learners on {DEVICE}; seed-examples per second, env in the loop; "
          f"median of {WINDOWS} windows of {sec / WINDOWS:.2f} s (and their range) per case")
    print(f"{'problem':<28} {'learner':<36} {'agent':<14} {'seed-ex/s':>13} {'windows min-max':>21} "
          f"{'vs base':>7} {'vs machine':>7}  target")

    for key, problem, env_id, hidden, lr, rows_of in (
            ("slow-regression", "SlowRegression 5 units", "SlowRegression-v0", [5], 0.01, slow_regression_rows),
            ("mnist-3x100", "PermutedMNIST 3x100", "PermutedMNIST-v0", [100] * 3, 0.01, mnist_small_rows),
            ("mnist-3x2000", "PermutedMNIST 3x2000", "PermutedMNIST-v0", [2000] * 3, 0.003, mnist_paper_rows)):
        if key in args.problems:
            machine[problem] = machine_baseline(env_id, hidden, lr, sec)
            add(problem, "baseline loop, whole machine", "backprop", machine[problem],
                baseline_loop(env_id, hidden, lr, sec), "")
            rows_of(add, sec)

    if args.markdown:
        print(f"\nMeasured with `python bench/throughput.py --markdown` (torch {torch.__version__}, "
              f"{args.threads} thread(s), {platform.machine()}, {os.cpu_count()} cores); seed-examples/s "
              f"with the env in the loop (median of {WINDOWS} timing windows, and the slowest and fastest "
              "window), ratio of the medians to the plain PyTorch loop of the same problem:\n")
        print("| problem | learner | agent | seed-examples/s | windows | vs plain loop | vs whole machine | target |")
        print("|---|---|---|---:|---:|---:|---:|---|")
        for problem, what, learner, rate, base, whole, target in rows:
            print(f"| {problem} | {what} | {learner} | {rate.median:,.0f} | {rate.low:,.0f}–{rate.high:,.0f} "
                  f"| {rate.median / base.median:.1f}x | {rate.median / whole.median:.1f}x "
                  f"| {target.replace('>=', '≥')} |")


PROBLEMS = ("slow-regression", "mnist-3x100", "mnist-3x2000")


def slow_regression_rows(add, sec: float) -> None:
    sr = "SlowRegression 5 units"
    base = baseline_loop("SlowRegression-v0", [5], 0.01, sec)
    add(sr, "baseline loop (1 seed)", "backprop", base, base, "")
    add(sr, "single learner", "backprop", single_learner("SlowRegression-v0", "backprop", {}, sec), base, "")
    add(sr, "lockstep 100 seeds", "backprop",
        lockstep_learner("SlowRegression-v0", "backprop", {}, 100, sec), base, ">= 1,000,000")
    add(sr, "lockstep 100 seeds", "cbp",
        lockstep_learner("SlowRegression-v0", "cbp", {}, 100, sec), base, ">= 500,000")



def mnist_small_rows(add, sec: float) -> None:
    pm = "PermutedMNIST 3x100"
    base = baseline_loop("PermutedMNIST-v0", [100, 100, 100], 0.01, sec)
    add(pm, "baseline loop (1 seed)", "backprop", base, base, "")
    add(pm, "single learner", "cbp", single_learner("PermutedMNIST-v0", "cbp", {}, sec), base, "")
    add(pm, "lockstep 8 seeds", "backprop",
        lockstep_learner("PermutedMNIST-v0", "backprop", {}, 8, sec), base, "")
    add(pm, "lockstep 8 seeds", "cbp",
        lockstep_learner("PermutedMNIST-v0", "cbp", {}, 8, sec), base, "")
    add(pm, "lockstep 32 seeds", "backprop",
        lockstep_learner("PermutedMNIST-v0", "backprop", {}, 32, sec), base, "")
    add(pm, "lockstep 32 seeds", "cbp", lockstep_learner("PermutedMNIST-v0", "cbp", {}, 32, sec), base, "")
    add(pm, "lockstep 32 seeds", "cbp",
        machine_lockstep("PermutedMNIST-v0", "cbp", {}, 32, sec), base, ">= 10x the whole machine")
    for agent in ("adam", "shrink-perturb"):
        for n in (3, 32):
            add(pm, f"lockstep {n} seeds", agent, lockstep_learner("PermutedMNIST-v0", agent, {}, n, sec), base, "")
        add(pm, "lockstep 32 seeds", agent, machine_lockstep("PermutedMNIST-v0", agent, {}, 32, sec), base, "")



def mnist_paper_rows(add, sec: float) -> None:
    big = {"network": {"hidden": [2000, 2000, 2000]}}
    pb = "PermutedMNIST 3x2000"
    base = baseline_loop("PermutedMNIST-v0", [2000, 2000, 2000], 0.003, sec)
    add(pb, "baseline loop (1 seed)", "backprop", base, base, "")
    add(pb, "single learner", "backprop", single_learner("PermutedMNIST-v0", "backprop", big, sec), base, "")
    add(pb, "single learner", "cbp", single_learner("PermutedMNIST-v0", "cbp", big, sec), base, "")
    add(pb, "lockstep 1 seed", "cbp",
        lockstep_learner("PermutedMNIST-v0", "cbp", big, 1, sec), base, "")
    add(pb, "lockstep 2 seeds", "backprop",
        lockstep_learner("PermutedMNIST-v0", "backprop", big, 2, sec), base, ">= 2x per seed")
    add(pb, "lockstep 2 seeds", "cbp", lockstep_learner("PermutedMNIST-v0", "cbp", big, 2, sec), base,
        ">= 2x the whole machine per seed")
    add(pb, "lockstep 2 seeds", "cbp", machine_lockstep("PermutedMNIST-v0", "cbp", big, 2, sec), base, "")


if __name__ == "__main__":
    main()
