"""The CUDA check: each reference learner path run on the GPU and on the CPU, compared.

A prepared script for a machine with a CUDA GPU (it prints, and exits non-zero if a check
fails). For every case it builds the same agent with the same seed on ``cpu`` and on ``cuda``,
drives both over the same stream and reports:

* ``early``: after the case's first few steps (before CBP can replace a unit: its fresh weights
  are drawn from the device's own generator, so the two runs legitimately part after the first
  replacement), the trained parameters agree: ``max |cuda - cpu|`` over every parameter is at
  most 1% of how far the CPU's parameters moved from their initial values (``max |cpu - init|``)
  (TF32 is switched off for the comparison). The window is short for the conv nets because
  rounding differences grow there by themselves: measured on an H100, ResNet-18 (BatchNorm, step
  size 0.1, momentum 0.9) went from 2.3e-5 after one step to 1.0e-1 after eight with the same
  rewards at first, the convnet from 3e-7 to 6e-5;
* ``run``: over the whole run, the mean per-step reward (batch accuracy, or minus the squared
  error) of the two devices agrees within the case's tolerance (``tol``, stated per case);
* steps per second on each device (``seed-steps/s`` for lockstep cases: steps × seeds).

Cases: the lockstep MLP core (SlowRegression 100 seeds, PermutedMNIST 3×100 with 32 seeds and
3×2000 with 2 seeds, CBP, through the harness's on-device stream), the single MLP learner with
Adam, the convnet with CBP on ContinualImageNet-v0 and ResNet-18 with CBP on
ClassIncCIFAR100-v0 (at the ``cpu`` scale's width and at the paper's), and PPO with CBP on
AntFriction-v0 (its action noise is drawn on the device, so only speed and finiteness are
compared). Usage::

    python bench/gpu_check.py                  # every case, cuda vs cpu
    python bench/gpu_check.py --only mnist     # cases whose name contains "mnist"
    python bench/gpu_check.py --device cpu     # dry run of the script itself without a GPU
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

import plasticity_gym  # noqa: F401  (registers the envs)
from plasticity_gym_agents import make_agent, resolve_config
from plasticity_gym_agents.lockstep import LockstepLearner
from plasticity_gym.harness.lanes import DeviceStream, mirror_on_device


@dataclass
class Case:
    name: str
    env_id: str
    agent: str
    steps: int
    tol: float  # allowed |mean reward cuda - mean reward cpu| over the run
    seeds: int = 1  # > 1 or lockstep=True: the lockstep learner on the native vector env
    lockstep: bool = False
    env_scale: str = "cpu"
    agent_scale: str = "cpu"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    compile: bool | str = "auto"  # the lockstep learner's torch.compile request (on both devices)
    early: int = 20  # steps before the parameter comparison


CASES = [
    Case("slowregression-cbp-lockstep100", "SlowRegression-v0", "cbp", 2000, 0.05, seeds=100, lockstep=True),
    Case("mnist-3x100-cbp-lockstep32", "PermutedMNIST-v0", "cbp", 2000, 0.03, seeds=32, lockstep=True),
    Case("mnist-3x100-cbp-lockstep32-eager", "PermutedMNIST-v0", "cbp", 2000, 0.03, seeds=32, lockstep=True,
         compile=False),
    Case("mnist-3x2000-cbp-lockstep2", "PermutedMNIST-v0", "cbp", 600, 0.08, seeds=2, lockstep=True,
         overrides={"network": {"hidden": [2000, 2000, 2000]}, "optimizer": {"lr": 0.003}}),
    Case("mnist-3x100-adam-single", "PermutedMNIST-v0", "adam", 1000, 0.1),
    Case("imagenet-convnet-cbp", "ContinualImageNet-v0", "cbp", 400, 0.05, env_kwargs={"n_tasks": 2}, early=5),
    Case("cifar-resnet18-cpu-width-cbp", "ClassIncCIFAR100-v0", "cbp", 120, 0.08, early=1),
    Case("cifar-resnet18-paper-width-cbp", "ClassIncCIFAR100-v0", "cbp", 40, 0.15, agent_scale="paper", early=1),
]


class Run:
    """One agent on one device over the case's stream, stepped on demand."""

    def __init__(self, case: Case, device: str) -> None:
        self.case, self.device = case, device
        self.rewards: list[np.ndarray] = []
        self.seconds = 0.0
        self.timed_steps = 0
        if case.lockstep:
            self.env = gym.make_vec(case.env_id, num_envs=case.seeds, vectorization_mode="vector_entry_point",
                                    scale=case.env_scale, **case.env_kwargs)
            osp, asp = self.env.single_observation_space, self.env.single_action_space
            config = resolve_config(case.agent, osp, asp, env_id=case.env_id, scale=case.agent_scale,
                                    overrides=case.overrides)
            self.agent = LockstepLearner(case.agent, config, osp, asp, seeds=range(case.seeds), device=device,
                                         compile=case.compile)
            self.obs, self.info = self.env.reset(seed=list(range(case.seeds)))
            self.stream = DeviceStream(self.env, self.agent.device) if mirror_on_device(self.agent, self.env) else None
        else:
            self.env = gym.make(case.env_id, scale=case.env_scale, disable_env_checker=True, **case.env_kwargs)
            self.agent = make_agent(case.agent, self.env.observation_space, self.env.action_space,
                                    env_id=case.env_id, scale=case.agent_scale, overrides=case.overrides,
                                    seed=0, device=device)
            self.obs, self.info = self.env.reset(seed=0)
            self.stream = None

    def step(self, n: int, timed: bool) -> None:
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(n):
            if self.case.lockstep:
                if self.stream is None:
                    x, extra = self.obs, {}
                else:
                    x, y = self.stream.current()
                    extra = {"target": y}
                action = self.agent.act(x, self.info)
                self.obs, reward, _, truncated, info = self.env.step(action)
                self.agent.observe(x, action, reward, dict(info, **extra))
            else:
                action = self.agent.act(self.obs, self.info)
                obs, reward, _, truncated, info = self.env.step(action)
                self.agent.observe(self.obs, action, reward, info)
                self.obs = obs
                if truncated:
                    self.obs, info = self.env.reset()
            self.info = info
            self.rewards.append(np.atleast_1d(np.asarray(reward, dtype=np.float64)))
        sync()
        if timed:
            self.seconds += time.perf_counter() - start
            self.timed_steps += n

    def params(self) -> list[np.ndarray]:
        """Every trained parameter (every replica's, for the lockstep learner), as host arrays."""
        return [p.detach().float().cpu().numpy().copy() for p in self.agent.params]

    def rate(self) -> float:
        seeds = self.case.seeds if self.case.lockstep else 1
        return self.timed_steps * seeds / self.seconds if self.seconds > 0 else math.nan


def check_case(case: Case, device: str) -> bool:
    early = case.early
    runs = {"cpu": Run(case, "cpu"), device: Run(case, device)} if device != "cpu" else {
        "cpu": Run(case, "cpu"), "cpu ": Run(case, "cpu")}  # --device cpu: the script against itself
    device = list(runs)[1]
    init = runs["cpu"].params()
    for r in runs.values():
        r.step(early, timed=False)
    a, b = runs["cpu"].params(), runs[device].params()
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    bound = 1e-2 * max(float(np.max(np.abs(x - x0))) for x, x0 in zip(a, init))
    early_ok = bool(all(np.isfinite(y).all() for y in b) and diff <= bound)
    for r in runs.values():
        r.step(case.steps - early, timed=True)
    means = {d: float(np.mean(np.concatenate(r.rewards))) for d, r in runs.items()}
    gap = abs(means[device] - means["cpu"])
    run_ok = bool(math.isfinite(means[device]) and gap <= case.tol)
    rates = {d: r.rate() for d, r in runs.items()}
    unit = "seed-steps/s" if case.lockstep else "steps/s"
    print(f"{case.name:<32} early max|d|={diff:.2e} (bound {bound:.1e}) {'ok' if early_ok else 'FAIL'}; "
          f"mean reward cpu {means['cpu']:+.4f} {device} {means[device]:+.4f} |d|={gap:.4f} "
          f"(tol {case.tol}) {'ok' if run_ok else 'FAIL'}; {unit}: cpu {rates['cpu']:,.1f} "
          f"{device} {rates[device]:,.1f} ({rates[device] / rates['cpu']:.1f}x)", flush=True)
    return early_ok and run_ok


def check_ppo(device: str, steps: int) -> bool:
    from plasticity_gym_agents.ppo import ppo_config, train

    rates, ok = {}, True
    for d in ("cpu", device):
        config = ppo_config("ppo-cbp", {"num_envs": 4})
        result = train("AntFriction-v0", config, steps, seed=0, name="ppo-cbp",
                       env_kwargs={"scale": "smoke"}, device=d)
        finite = all(math.isfinite(r) for _, r in result.episodes) and all(
            math.isfinite(float(v)) for u in result.updates for v in u.values()
            if isinstance(v, (int, float)))
        ok &= finite and len(result.updates) > 0
        rates[d] = result.steps_per_second
        print(f"{'ant-ppo-cbp ' + d:<32} {result.steps} env steps, {len(result.updates)} updates, "
              f"{len(result.episodes)} episodes, {result.steps_per_second:,.0f} steps/s "
              f"(updates {result.update_seconds:.1f} of {result.seconds:.1f} s); finite: {finite}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU (default cuda)")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="only cases whose name contains one of these")
    parser.add_argument("--early", type=int, help="steps before the parameter comparison (default: the case's)")
    parser.add_argument("--scale-steps", type=float, default=1.0, help="multiply every case's steps (default 1)")
    parser.add_argument("--ppo-steps", type=int, default=8192, help="PPO env steps per device (default 8192)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available here; --device cpu runs the script against itself")
    # The comparison is of the math, not of TF32's rounding (speed is reported with it off too).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}; cpu threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}; "
          + (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"), flush=True)
    failed: list[str] = []
    selected = [c for c in CASES if not args.only or any(t in c.name for t in args.only)]
    for case in selected:
        case.early = case.early if args.early is None else args.early
        case.steps = max(case.early + 10, int(case.steps * args.scale_steps))
        try:
            if not check_case(case, args.device):
                failed.append(case.name)
        except Exception:  # noqa: BLE001  (report every case, then fail)
            traceback.print_exc()
            failed.append(case.name)
    if not args.only or any(t in "ant-ppo-cbp" for t in args.only):
        try:
            if not check_ppo(args.device, args.ppo_steps):
                failed.append("ant-ppo-cbp")
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failed.append("ant-ppo-cbp")
    print("FAILED: " + ", ".join(failed) if failed else "all cases passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
