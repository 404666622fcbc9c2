"""PPO throughput and learning (a benchmark: it prints, it asserts nothing).

Two parts, on the same machine and torch threads (default: one thread, as the issue's SB3 figure):

* ``speed``: environment steps per second of the env alone (random actions through the same
  in-process vector env), of this project's PPO (``plasticity_gym_agents.ppo.train``: collection and updates
  together, and the update share), and of Stable-Baselines3's PPO with the same networks
  (separate 2×256 ReLU policy and value), rollout (2,048), epochs (10), mini-batch size (128),
  step size, γ, λ and clip, when ``stable_baselines3`` is installed (a bench extra, not a
  dependency). Default env: Ant-v5 (the paper's problem; AntFriction-v0 has Ant's cost per step).
  Target (issue 13): at least SB3's steps per second.
* ``machine``: seed-steps per second of the whole machine, all in one run: the raw simulator
  (``mj_step`` over Ant-v5's frame skip and ``mj_rnePostConstraint`` on Ant-v5's model, one
  process per core, rates summed), this project's PPO as a user meets it (``plasticity-gym run
  AntFriction-v0`` with ``--seeds N``, wall time from the command's start, start-up included) in
  one process (the default) and split into one one-thread process per core (``--workers``), one
  seed on one thread, and Stable-Baselines3's PPO with the same networks and rollout settings,
  one one-thread process per core, rates summed (when installed).
* ``learn``: the paper's standard PPO on InvertedPendulum-v5 (return 1,000 = balanced for the
  whole episode): the mean episodic return per bin of steps, and the wall time.

Usage::

    python bench/ppo.py                       # both parts
    python bench/ppo.py --only speed --env Ant-v5 --steps 16384 --num-envs 1 4
    python bench/ppo.py --only learn --learn-steps 61440 --seeds 0 1 2
    python bench/ppo.py --variant ppo-cbp     # time another variant
    python bench/ppo.py --only machine --variant ppo-cbp --run-seeds 4 --run-steps 50000

Timings on a shared machine are noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from plasticity_gym_agents.ppo import make_vector_env, ppo_config, train


def env_rate(env_id: str, num_envs: int, steps: int, seed: int = 0) -> float:
    """Env steps per second (all copies) with uniformly random actions, vector env included."""
    venv = make_vector_env(env_id, num_envs)
    rng = np.random.default_rng(seed)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    actions = rng.uniform(low, high, size=(64, num_envs, len(low))).astype(np.float32)
    venv.reset(seed=seed)
    start = time.perf_counter()
    n = 0
    while n < steps:
        venv.step(actions[(n // num_envs) % 64])
        n += num_envs
    rate = n / (time.perf_counter() - start)
    venv.close()
    return rate


def ppo_rate(env_id: str, variant: str, num_envs: int, steps: int) -> tuple[float, float]:
    """(env steps per second of PPO, collection and updates together; share of time in updates)."""
    result = train(env_id, ppo_config(variant, {"num_envs": num_envs}), steps, seed=0, name=variant)
    return result.steps_per_second, result.update_seconds / result.seconds


def sb3_rate(env_id: str, num_envs: int, steps: int) -> float | None:
    """Stable-Baselines3's PPO with the paper's networks and rollout settings, or None."""
    if importlib.util.find_spec("stable_baselines3") is None:
        return None
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(env_id, n_envs=num_envs, seed=0)
    model = PPO("MlpPolicy", env, n_steps=2048 // num_envs, batch_size=128, n_epochs=10, learning_rate=1e-4,
                gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=1.0, max_grad_norm=1e9,
                policy_kwargs={"net_arch": {"pi": [256, 256], "vf": [256, 256]},
                               "activation_fn": torch.nn.ReLU}, device="cpu", seed=0, verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    return model.num_timesteps / (time.perf_counter() - start)


def speed(args: argparse.Namespace) -> None:
    print(f"\n## speed: {args.env}, {args.steps} env steps per case, PPO variant {args.variant!r}\n")
    print(f"{'envs':>4}  {'env alone':>10}  {'PPO':>8}  {'update %':>8}  {'SB3 PPO':>8}  {'PPO/SB3':>7}")
    for n in args.num_envs:
        env = env_rate(args.env, n, args.steps)
        ppo, share = ppo_rate(args.env, args.variant, n, args.steps)
        sb3 = sb3_rate(args.env, n, args.steps)
        sb3_text = "n/a" if sb3 is None else f"{sb3:8.0f}"
        ratio = "n/a" if sb3 is None else f"{ppo / sb3:7.2f}"
        print(f"{n:>4}  {env:>10.0f}  {ppo:>8.0f}  {100 * share:>7.0f}%  {sb3_text:>8}  {ratio:>7}")
    if importlib.util.find_spec("stable_baselines3") is None:
        print("\n(SB3 not installed: `pip install stable-baselines3` to add its column)")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")])}


def _processes(code: str, n: int) -> list[float]:
    """Run ``code`` (a Python program printing one number) in ``n`` one-thread processes at once."""
    procs = [subprocess.Popen([sys.executable, "-c", code], env=_child_env(), stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


_SIMULATOR = """
import time, gymnasium as gym, mujoco, numpy as np
env = gym.make("Ant-v5"); env.reset(seed=0); u = env.unwrapped
model, data, frames = u.model, u.data, u.frame_skip
rng = np.random.default_rng(0); actions = rng.uniform(-1, 1, size=(64, model.nu))
steps = {steps}; start = time.perf_counter()
for k in range(steps):
    data.ctrl[:] = actions[k % 64]
    mujoco.mj_step(model, data, nstep=frames); mujoco.mj_rnePostConstraint(model, data)
    if k % 1000 == 999: env.reset()
print(steps / (time.perf_counter() - start))
"""

_SB3 = """
import time, torch
torch.set_num_threads(1)
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
env = make_vec_env({env!r}, n_envs=1, seed=0)
model = PPO("MlpPolicy", env, n_steps=2048, batch_size=128, n_epochs=10, learning_rate=1e-4, gamma=0.99,
            gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=1.0, max_grad_norm=1e9,
            policy_kwargs={{"net_arch": {{"pi": [256, 256], "vf": [256, 256]}}, "activation_fn": torch.nn.ReLU}},
            device="cpu", seed=0, verbose=0)
start = time.perf_counter(); model.learn(total_timesteps={steps})
print(model.num_timesteps / (time.perf_counter() - start))
"""


def _harness_run(variant: str, seeds: list[int], steps: int, extra: list[str]) -> float:
    """Seed-steps per second of ``plasticity-gym run AntFriction-v0`` (cpu scale), from the
    command's start to its end (start-up, checkpoints and the result included)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        argv = [sys.executable, "-m", "plasticity_gym.harness.cli", "run", "AntFriction-v0", "--agent", variant,
                "--scale", "cpu", "--seed-list", *map(str, seeds), "--steps", str(steps), "--out", str(out),
                "--no-progress", *extra]
        start = time.perf_counter()
        subprocess.run(argv, env=_child_env(), check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        json.loads(out.read_text())  # the run wrote its result
    return len(seeds) * steps / seconds


def machine(args: argparse.Namespace) -> None:
    cores = _cores()
    seeds, steps = list(range(args.run_seeds)), args.run_steps
    print(f"\n## machine: {cores} cores, PPO variant {args.variant!r}, {len(seeds)} seeds x {steps:,} env steps "
          "(AntFriction-v0, cpu scale), seed-steps per second\n")
    sim = sum(_processes(_SIMULATOR.format(steps=args.steps), cores))
    one = _harness_run(args.variant, seeds, steps, [])
    split = _harness_run(args.variant, seeds, steps, ["--workers", str(min(cores, len(seeds)))])
    single = _harness_run(args.variant, seeds[:1], steps, ["--threads", "1"])
    sb3 = None
    if importlib.util.find_spec("stable_baselines3") is not None:
        sb3 = sum(_processes(_SB3.format(env="Ant-v5", steps=steps), cores))
    rows = [("raw simulator (mj_step, one process per core)", sim),
            ("plasticity-gym run (default: one process)", one),
            (f"plasticity-gym run --workers {min(cores, len(seeds))} (one process per core)", split),
            ("plasticity-gym run, one seed, --threads 1", single),
            ("Stable-Baselines3 PPO, one process per core", sb3)]
    for name, rate in rows:
        print(f"{name:<58} {'n/a (not installed)' if rate is None else f'{rate:9,.0f}'}")
    best = max(one, split)
    print(f"\nthis PPO (the faster run) / simulator: {best / sim:.0%}"
          + ("" if sb3 is None else f";  this PPO / SB3: {best / sb3:.2f}x"))


def learn(args: argparse.Namespace) -> None:
    env_id, steps = "InvertedPendulum-v5", args.learn_steps
    bins = 10
    width = steps // bins
    print(f"\n## learn: PPO variant {args.variant!r} (paper defaults) on {env_id}, {steps} steps, "
          f"mean episodic return per {width}-step bin\n")
    rows = []
    for seed in args.seeds:
        result = train(env_id, ppo_config(args.variant), steps, seed=seed, name=args.variant)
        means = []
        for b in range(bins):
            r = [ret for s, ret in result.episodes if b * width < s <= (b + 1) * width]
            means.append(np.mean(r) if r else float("nan"))
        first_1000 = next((s for s, ret in result.episodes if ret >= 1000), None)
        rows.append((seed, means, first_1000, result.seconds, result.steps_per_second))
    print("seed  " + "  ".join(f"{(b + 1) * width // 1000:>5}k" for b in range(bins))
          + "  first 1000 at   seconds  steps/s")
    for seed, means, first, secs, rate in rows:
        print(f"{seed:>4}  " + "  ".join(f"{m:6.0f}" for m in means)
              + f"  {first if first is not None else 'never':>13}  {secs:>8.1f}  {rate:>7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("speed", "machine", "learn"), default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--env", default="Ant-v5", help="env id for the speed part")
    parser.add_argument("--steps", type=int, default=8192, help="env steps per speed case")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 4], help="env copies per case")
    parser.add_argument("--variant", default="ppo", help="PPO variant (ppo, ppo-tuned, ppo-l2, ppo-cbp, ppo-redo)")
    parser.add_argument("--learn-steps", type=int, default=61_440)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--run-seeds", type=int, default=4, help="seeds of the machine part's runs (0..N-1)")
    parser.add_argument("--run-steps", type=int, default=20_000, help="env steps per seed of the machine part's runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# bench/ppo.py — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({args.threads} thread(s)), gymnasium {gym.__version__}")
    if args.only in (None, "speed"):
        speed(args)
    if args.only in (None, "machine"):
        machine(args)
    if args.only in (None, "learn"):
        learn(args)


if __name__ == "__main__":
    main()
