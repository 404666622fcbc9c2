"""Env-only throughput of the supervised streams (a benchmark: it prints, it asserts nothing).

For each env at its default (``cpu``) scale: examples per second with a constant valid action,
unwrapped and through ``gym.make`` (Gymnasium's default wrappers), at batch size 1 and larger,
and through the native vector env. Targets on a 2-core machine (issue 2): PermutedMNIST
>= 100,000 examples/s unwrapped at batch 1, SlowRegression >= 200,000.

    python bench/envs.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import gymnasium as gym
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import plasticity_gym  # noqa: E402,F401

TARGETS = {"PermutedMNIST-v0": 100_000, "SlowRegression-v0": 200_000}


def constant_action(env) -> np.ndarray:
    kind = getattr(env, "single_action_space", env.action_space)  # vector envs batch the space
    dtype = np.int64 if isinstance(kind, gym.spaces.MultiDiscrete) else np.float32
    return np.zeros(env.action_space.shape, dtype=dtype)


def examples_per_second(env, examples_per_step: int, seconds: float) -> float:
    env.reset(seed=0)
    action = constant_action(env)
    step, reset = env.step, env.reset
    for _ in range(2000):  # warm up: first chunks, first passive checks
        step(action)
    steps, start = 0, time.perf_counter()
    while True:
        for _ in range(1000):
            # A single env's stream may end within the measurement: start a new one (a vector
            # env's truncated is an array, and it resets itself on the next step).
            if step(action)[3] is True:
                reset()
        steps += 1000
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * examples_per_step / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row")
    args = parser.parse_args()

    print(f"python {platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"{'env':<19} {'how':<26} {'batch':>5} {'examples/s':>12} {'steps/s':>10}  target")
    for env_id, target in TARGETS.items():
        rows = [
            ("unwrapped", 1, lambda b: gym.make(env_id, batch_size=b).unwrapped, 1),
            ("gym.make (wrappers)", 1, lambda b: gym.make(env_id, batch_size=b), 1),
            ("unwrapped", 100, lambda b: gym.make(env_id, batch_size=b).unwrapped, 1),
            ("vector_entry_point, N=5", 1,
             lambda b: gym.make_vec(env_id, num_envs=5, vectorization_mode="vector_entry_point",
                                    batch_size=b), 5),
            ("vector_entry_point, N=5", 100,
             lambda b: gym.make_vec(env_id, num_envs=5, vectorization_mode="vector_entry_point",
                                    batch_size=b), 5),
        ]
        for how, batch, factory, n_envs in rows:
            env = factory(batch)
            rate = examples_per_second(env, batch * n_envs, args.seconds)
            mark = ""
            if how == "unwrapped" and batch == 1:
                mark = f">= {target:,}: {'met' if rate >= target else 'NOT met'}"
            print(f"{env_id:<19} {how:<26} {batch:>5} {rate:>12,.0f} {rate / batch / n_envs:>10,.0f}  {mark}")
            env.close()


if __name__ == "__main__":
    main()
