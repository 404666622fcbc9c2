"""Env-only throughput of the environments (a benchmark: it prints, it asserts nothing).

For each supervised stream at its default (``cpu``) scale: examples per second with a constant
valid action, unwrapped and through ``gym.make`` (Gymnasium's default wrappers), at batch size 1
and larger, and through the native vector env. Targets on a 2-core machine (issue 2):
PermutedMNIST >= 100,000 examples/s unwrapped at batch 1, SlowRegression >= 200,000.

Then AntFriction-v0 beside plain Ant-v5 in the same run, all through ``gym.make`` with the same
fixed sequence of random actions, measured in alternating rounds so that machine noise hits
them alike: at μ = 1.0 (Ant's own friction, hence Ant-v5's physics: the env's own cost; target
(issue 12) at least 95% of Ant-v5's steps per second) and on the ``smoke`` schedule (friction
changes during the measurement; MuJoCo's cost per step itself depends on μ).

Then the vision streams (issue 11): the cost of producing one batch — a ``step`` of the
unwrapped env at the ``cpu`` scale, training batches with augmentation for CIFAR, chunk generation
included — beside the cost of one SGD step of the paper's network on a batch of that size
(ContinualImageNet: the convnet at batch 100; ClassIncCIFAR100: ResNet-18 at batch 90, at the
paper's width 64 and at the width 8 that the reference agents use at the ``cpu`` scale), both in
this process. Target: a batch costs under a tenth of an SGD step.

    python bench/envs.py [--seconds 2] [--only supervised|ant|vision]
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
ANT_TARGET_RATIO = 0.95  # AntFriction-v0 steps/s over Ant-v5 steps/s
ANT_ROUNDS = 6


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


class EpisodicRunner:
    """Steps an episodic env with a fixed action sequence, resetting at every episode end."""

    def __init__(self, env: gym.Env, actions: np.ndarray):
        self.env, self.actions = env, actions
        env.reset(seed=0)
        self.i = 0
        self.steps, self.elapsed = 0, 0.0
        self.run(2000)  # warm up
        self.steps, self.elapsed = 0, 0.0

    def run(self, n_steps: int) -> None:
        step, reset, actions, n = self.env.step, self.env.reset, self.actions, len(self.actions)
        i = self.i
        start = time.perf_counter()
        for _ in range(n_steps):
            _, _, terminated, truncated, _ = step(actions[i])
            i = i + 1 if i + 1 < n else 0
            if terminated or truncated:
                reset()
        self.elapsed += time.perf_counter() - start
        self.steps += n_steps
        self.i = i

    @property
    def rate(self) -> float:
        return self.steps / self.elapsed


def bench_ant(seconds: float) -> None:
    """AntFriction-v0 and Ant-v5 in alternating rounds; prints steps/s and the ratios.

    The target compares AntFriction-v0 at μ = 1.0 (Ant's own friction: the very same physics,
    trajectory and episode ends as Ant-v5) with Ant-v5, so that it measures the env's own cost.
    The scheduled row is informative: MuJoCo's cost per step depends on μ (sliding contacts
    solve differently) and the episodes end elsewhere, so it differs from Ant-v5 either way.
    """
    actions = np.random.default_rng(0).uniform(-1, 1, size=(4096, 8)).astype(np.float32)
    runners = {
        ("Ant-v5", "gym.make"): EpisodicRunner(gym.make("Ant-v5"), actions),
        ("AntFriction-v0", "gym.make, friction=1.0"): EpisodicRunner(
            gym.make("AntFriction-v0", friction=1.0), actions),
        ("AntFriction-v0", "gym.make, smoke schedule"): EpisodicRunner(
            gym.make("AntFriction-v0", scale="smoke"), actions),
    }
    reference = runners["Ant-v5", "gym.make"]
    reference.run(500)
    per_round = max(500, int(500 * seconds / ANT_ROUNDS / reference.elapsed))
    reference.steps, reference.elapsed = 0, 0.0
    rounds: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for _ in range(ANT_ROUNDS):
        for key, runner in runners.items():
            before_steps, before_elapsed = runner.steps, runner.elapsed
            runner.run(per_round)
            rounds[key].append((runner.steps - before_steps) / (runner.elapsed - before_elapsed))
    print(f"\n{'env':<19} {'how':<26} {'steps/s':>10} {'of Ant-v5':>10} {'median round':>13}  target")
    for key, runner in runners.items():
        ratio = runner.rate / reference.rate
        median_ratio = float(np.median(np.array(rounds[key]) / np.array(rounds["Ant-v5", "gym.make"])))
        mark = ""
        if key[1].endswith("friction=1.0"):
            met = "met" if ratio >= ANT_TARGET_RATIO else "NOT met"
            mark = f">= {ANT_TARGET_RATIO:.0%} of Ant-v5: {met}"
        print(f"{key[0]:<19} {key[1]:<26} {runner.rate:>10,.0f} {ratio:>10.1%} {median_ratio:>13.1%}  {mark}")
        runner.env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row")
    parser.add_argument("--only", choices=["supervised", "ant", "vision"], default=None,
                        help="run one part only (default: both)")
    args = parser.parse_args()

    print(f"python {platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    if args.only in (None, "supervised"):
        bench_supervised(args.seconds)
    if args.only in (None, "ant"):
        bench_ant(args.seconds)
    if args.only in (None, "vision"):
        bench_vision(args.seconds)


def bench_supervised(seconds: float) -> None:
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
            rate = examples_per_second(env, batch * n_envs, seconds)
            mark = ""
            if how == "unwrapped" and batch == 1:
                mark = f">= {target:,}: {'met' if rate >= target else 'NOT met'}"
            print(f"{env_id:<19} {how:<26} {batch:>5} {rate:>12,.0f} {rate / batch / n_envs:>10,.0f}  {mark}")
            env.close()


VISION_TARGET_RATIO = 0.1  # one batch over one SGD step of the reference network


def seconds_per_call(call, seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 5:
            return elapsed / calls


def sgd_step_seconds(network, batch: int, n_classes: int, seconds: float) -> float:
    """Seconds per forward + backward + SGD-with-momentum step of ``network`` on one batch."""
    import torch

    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, n_classes, (batch,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(network(x), y).backward()
        optimizer.step()

    return seconds_per_call(step, seconds)


def env_step_seconds(env, phase: str, seconds: float) -> float:
    """Seconds per ``step`` of the unwrapped env, counting only steps whose scored batch is in ``phase``."""
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, dtype=np.int64)
    step = env.step
    for _ in range(20):
        step(action)
    elapsed, steps, start = 0.0, 0, time.perf_counter()
    while elapsed < seconds or steps < 20:
        t0 = time.perf_counter()
        _, _, _, truncated, info = step(action)
        t1 = time.perf_counter()
        if info["phase"] == phase:
            elapsed += t1 - t0
            steps += 1
        if truncated:
            env.reset()
        if t1 - start > 20 * seconds:
            break
    return elapsed / max(steps, 1)


def bench_vision(seconds: float) -> None:
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from plasticity_gym_agents.networks import ConvNet, ResNet18

    rows = [
        ("ContinualImageNet-v0", {}, "convnet, batch 100", lambda: ConvNet(2), 2),
        ("ClassIncCIFAR100-v0", {}, "ResNet-18, batch 90", lambda: ResNet18(100, active_outputs=100), 100),
        ("ClassIncCIFAR100-v0", {"augment": False}, "ResNet-18, batch 90", lambda: ResNet18(100, active_outputs=100),
         100),
        # The network the reference agents use at the cpu scale (agents/defaults.py): width 8.
        ("ClassIncCIFAR100-v0", {}, "ResNet-18 width 8, batch 90",
         lambda: ResNet18(100, active_outputs=100, width=8), 100),
    ]
    threads_label = f"sgd {torch.get_num_threads()} thr ms"
    print(f"\n{'env (cpu scale)':<40} {'batch ms':>9} {'sgd 1 thr ms':>13} {threads_label:>12} {'ratio':>7}  target")
    for env_id, kwargs, net_name, build, n_classes in rows:
        env = gym.make(env_id, **kwargs).unwrapped
        batch = env_step_seconds(env, "train", seconds)
        threads = torch.get_num_threads()
        network = build()
        sgd_default = sgd_step_seconds(network, env.batch_size, n_classes, seconds)
        torch.set_num_threads(1)
        sgd_one = sgd_step_seconds(network, env.batch_size, n_classes, seconds)
        torch.set_num_threads(threads)
        ratio = batch / min(sgd_one, sgd_default)
        name = env_id + (" (no augment)" if kwargs else " (train, augmented)" if "CIFAR" in env_id else " (train)")
        name += " w8" if "width 8" in net_name else ""
        met = "met" if ratio < VISION_TARGET_RATIO else "NOT met"
        print(f"{name:<40} {batch * 1e3:>9.2f} {sgd_one * 1e3:>13.1f} {sgd_default * 1e3:>12.1f} {ratio:>7.3f}  "
              f"< {VISION_TARGET_RATIO} of the faster SGD step ({net_name}): {met}")


if __name__ == "__main__":
    main()
