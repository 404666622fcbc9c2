"""Where a lockstep learner's step spends its time: torch.profiler over a few hundred steps.

A diagnostic, not a test. It builds the same learner as ``bench/throughput.py`` (env in the
loop, the stream mirrored on the device as ``plasticity-gym run`` does) and prints the operators
with the most self time on the host and on the device, and the host-device synchronisations
(``aten::item``/``_local_scalar_dense``, device-to-host copies), which stall a CUDA stream::

    python bench/profile_step.py --device cuda --agent cbp --hidden 2000 2000 2000 --seeds 2
    python bench/profile_step.py --agent cbp --hidden 100 100 100 --seeds 32 --steps 300
    python bench/profile_step.py --agent shrink-perturb --hidden 100 100 100 --seeds 3 --compile on
    python bench/profile_step.py --env SlowRegression-v0 --agent l2 --hidden 5 --seeds 5 --torch-path
"""

from __future__ import annotations

import argparse
import time

import torch
from throughput import lockstep_step  # bench/ is the script's directory, so on sys.path
from torch.profiler import ProfilerActivity, profile

import plasticity_gym_agents.lockstep as lockstep
from plasticity_gym.harness.threads import configure_cpu

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
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="the learner's update step through torch.compile (default: its own choice)")
    parser.add_argument("--torch-path", action="store_true",
                        help="a tiny CPU network takes the torch path, not numpy's passes (to compare the two)")
    args = parser.parse_args()
    configure_cpu()  # as plasticity-gym runs: denormals flushed to zero
    if args.torch_path:  # (a diagnostic may reach into the learner core's size rule)
        lockstep._NUMPY_MAX_ELEMENTS = 0

    learner, step = lockstep_step(args.env, args.agent, {"network": {"hidden": args.hidden}}, args.seeds,
                                  args.device, compile={"on": True, "off": False}.get(args.compile, "auto"))

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
    print(f"{args.agent} {args.hidden} x {args.seeds} seeds on {args.device} (compiled: {learner.compiled}, "
          f"numpy passes: {learner._numpy}): "
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
