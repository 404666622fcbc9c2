"""Where a lockstep learner's step spends its time: torch.profiler over a few hundred steps.

A diagnostic, not a test. It builds the same learner as ``bench/throughput.py`` (env in the
loop, the stream mirrored on the device as ``plasticity-gym run`` does) and prints the operators
with the most self time on the host and on the device, and the host-device synchronisations
(``aten::item``/``_local_scalar_dense``, device-to-host copies), which stall a CUDA stream::

    python bench/profile_step.py --device cuda --agent cbp --hidden 2000 2000 2000 --seeds 2
    python bench/profile_step.py --agent cbp --hidden 100 100 100 --seeds 32 --steps 300
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch
from torch.profiler import ProfilerActivity, profile

import plasticity_gym  # noqa: F401  (registers the envs)
from plasticity_gym.harness.lanes import DeviceStream, mirror_on_device
from plasticity_gym_agents import resolve_config
from plasticity_gym_agents.lockstep import LockstepLearner

_SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize",
             "Memcpy DtoH")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="PermutedMNIST-v0")
    parser.add_argument("--agent", default="cbp")
    parser.add_argument("--hidden", type=int, nargs="+", default=[2000, 2000, 2000])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="profiled steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()

    venv = gym.make_vec(args.env, num_envs=args.seeds, vectorization_mode="vector_entry_point", scale="cpu")
    osp, asp = venv.single_observation_space, venv.single_action_space
    config = resolve_config(args.agent, osp, asp, env_id=args.env, scale="cpu",
                            overrides={"network": {"hidden": args.hidden}})
    learner = LockstepLearner(args.agent, config, osp, asp, seeds=range(args.seeds), device=args.device)
    state = dict(zip(("obs", "info"), venv.reset(seed=0)))
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

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    plain = time.perf_counter() - start
    print(f"{args.agent} {args.hidden} x {args.seeds} seeds on {args.device} (compiled: {learner.compiled}): "
          f"{args.steps / plain:,.0f} steps/s unprofiled, {args.steps * args.seeds / plain:,.0f} seed-ex/s")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.device == "cuda":
        print(table.table(sort_by="self_cuda_time_total", row_limit=args.rows))
    syncs = {e.key: e.count for e in table if any(s in e.key for s in _SYNC_OPS)}
    print(f"host-device synchronisations over {args.steps} steps: {syncs or 'none'}")


if __name__ == "__main__":
    main()
