"""Are the stand-ins learnable but not trivial? (a measurement: it prints, it asserts nothing)

Trains the paper's convnet (``plasticity_gym_agents.networks.ConvNet``) with a plain torch loop — SGD, step size
0.01, momentum 0.9, one thread — on the first tasks of a vision stream at its ``cpu`` scale
(synthetic data by default) and prints the test accuracy of every task.

* ``ContinualImageNet-v0`` (default): batches of 100, the output layer reset to zero at each task
  as the paper's agents do; prints each task's test accuracy (its 200 test images) and the
  training accuracy of its last epoch. The aim (issue 11): clearly above chance and clearly
  below 100% (e.g. 65–95%).
* ``ClassIncCIFAR100-v0`` (``--env``): batches of 90, 100 outputs of which the first
  ``n_classes`` are used; prints each increment's test accuracy over its seen classes beside
  chance. (The paper's network here is a ResNet-18, far too slow for this check on a CPU.)

    python bench/standin_calibration.py [--env ContinualImageNet-v0] [--tasks 4] [--epochs 25]
                                        [--train-per-class 600] [--data synthetic] [--fresh]

``--fresh`` trains a new network for every task instead of one network through the tasks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import plasticity_gym  # noqa: E402,F401
from plasticity_gym_agents.networks import ConvNet  # noqa: E402

N_OUTPUTS = {"ContinualImageNet-v0": 2, "ClassIncCIFAR100-v0": 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", choices=sorted(N_OUTPUTS), default="ContinualImageNet-v0")
    parser.add_argument("--tasks", type=int, default=4, help="tasks (increments for CIFAR)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per task (default: the cpu scale's)")
    parser.add_argument("--train-per-class", type=int, default=None,
                        help="training images per class (default: the cpu scale's)")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--fresh", action="store_true", help="a new network for every task")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    imagenet = args.env == "ContinualImageNet-v0"
    length = {"n_tasks": args.tasks} if imagenet else {"n_increments": args.tasks}
    if args.epochs is not None:
        length["epochs"] = args.epochs
    if args.train_per_class is not None:
        length["train_per_class"] = args.train_per_class
    env = gym.make(args.env, scale="cpu", data=args.data, **length).unwrapped
    print(f"{args.env}, data {env.data_id['name']} ({env.data_id['sha256'][:12]}), {args.tasks} tasks x "
          f"{env.epochs} epochs, lr {args.lr}, "
          f"{'fresh network per task' if args.fresh else 'one network' + (', head reset per task' if imagenet else '')}")

    def new_network():
        network = ConvNet(N_OUTPUTS[args.env])
        return network, torch.optim.SGD(network.parameters(), lr=args.lr, momentum=0.9)

    network, optimizer = new_network()
    obs, info = env.reset(seed=args.seed)
    start = time.perf_counter()
    train = [0.0, 0]
    test = [0.0, 0]
    results = []
    while True:
        if info["next_task_boundary"]:
            if args.fresh:
                network, optimizer = new_network()
            elif imagenet:
                with torch.no_grad():
                    network.head.weight.zero_()
                    network.head.bias.zero_()
                optimizer.state.clear()  # a fresh head: no momentum carried into the new task
        k = info.get("next_n_classes", N_OUTPUTS[args.env])
        x = torch.from_numpy(obs)
        if info["next_phase"] == "train":
            logits = network(x)[:, :k]
        else:
            with torch.no_grad():
                logits = network(x)[:, :k]
        obs, reward, _, truncated, info = env.step(logits.argmax(dim=1).numpy())
        target = torch.from_numpy(info["target"])
        n = len(target)
        if info["phase"] == "train":
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if info["epoch"] == env.epochs - 1:
                train[0] += reward * n
                train[1] += n
        elif info["phase"] == "test":
            test[0] += reward * n
            test[1] += n
        if info["next_task_boundary"] or truncated:
            task = info["task_id"]
            accuracy = test[0] / test[1]
            results.append(accuracy)
            what = (f"classes {env.task_classes(task)}" if imagenet
                    else f"{info['n_classes']} classes (chance {1 / info['n_classes']:.3f})")
            print(f"task {task}: {what}  test accuracy {accuracy:.3f}  last-epoch train accuracy "
                  f"{train[0] / train[1]:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
            train = [0.0, 0]
            test = [0.0, 0]
        if truncated:
            break
    print(f"mean test accuracy over {len(results)} tasks: {np.mean(results):.3f} (min {min(results):.3f}, "
          f"max {max(results):.3f})")


if __name__ == "__main__":
    main()
