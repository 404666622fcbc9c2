"""The vision problems' reference agents follow the authors' protocol: CIFAR's per-increment
step-size schedule and early stopping, the authors' initializations, Shrink and Perturb inside
SGD's momentum, and the ImageNet head zeroed before every task."""

from __future__ import annotations

import copy
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import plasticity_gym  # noqa: F401  (registers the ids)
from plasticity_gym_agents import LRScheduleConfig, make_agent
from plasticity_gym_agents.networks import ConvNet, ResNet18
from plasticity_gym_agents.units import get_init, reinit_units

from agent_helpers import train_info

CIFAR = "ClassIncCIFAR100-v0"
IMAGENET = "ContinualImageNet-v0"


def _cifar(epochs: int = 10):
    return gym.make(CIFAR, scale="smoke", epochs=epochs, n_increments=2).unwrapped


def _drive(env, agent, seed: int = 0, on_step=None) -> None:
    """The harness's loop, by hand: act, step, observe; ``on_step(obs, action, reward, info)``
    after each observe."""
    obs, info = env.reset(seed=seed)
    while True:
        action = agent.act(obs, info)
        next_obs, reward, terminated, truncated, next_info = env.step(action)
        agent.observe(obs, action, reward, next_info)
        if on_step is not None:
            on_step(obs, action, reward, next_info)
        obs, info = next_obs, next_info
        if terminated or truncated:
            return


# ------------------------------------------------------------------------------ step-size schedule


def _paper_lr(epoch: int, epochs: int) -> float:
    """The authors' set_lr, scaled to ``epochs``: 0.1, then ×0.2 at 30%, 60% and 80% of them."""
    return 0.1 * 0.2 ** sum(epoch >= math.ceil(f * epochs) for f in (0.3, 0.6, 0.8))


def test_schedule_of_the_paper_at_200_epochs():
    schedule = LRScheduleConfig()
    got = {e: schedule.lr(0.1, e, 200) for e in (0, 59, 60, 119, 120, 159, 160, 199)}
    want = {0: 0.1, 59: 0.1, 60: 0.02, 119: 0.02, 120: 0.004, 159: 0.004, 160: 0.0008, 199: 0.0008}
    assert got == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="milestones: must increase"):
        LRScheduleConfig(milestones=(0.6, 0.3))


@pytest.mark.slow
def test_cifar_base_agent_steps_by_the_schedule_and_restarts_each_increment():
    env = _cifar(epochs=10)
    agent = make_agent("backprop", env.observation_space, env.action_space, env_id=CIFAR, scale="smoke")
    assert agent.config.lr_schedule is not None and agent.config.early_stopping
    seen = []

    def on_step(obs, action, reward, info):
        if info["phase"] == "train":
            seen.append((info["task_id"], info["epoch"], agent.optimizer.param_groups[0]["lr"]))

    _drive(env, agent, on_step=on_step)
    assert {t for t, _, _ in seen} == {0, 1}
    for task, epoch, lr in seen:
        assert lr == pytest.approx(_paper_lr(epoch, 10), rel=1e-12), (task, epoch)
    # every step of every epoch, and the restart: increment 1's first step is back at 0.1
    assert sorted({(t, e) for t, e, _ in seen}) == [(t, e) for t in (0, 1) for e in range(10)]
    first_of_second = next(lr for t, _, lr in seen if t == 1)
    assert first_of_second == pytest.approx(0.1) and seen[0][2] == pytest.approx(0.1)
    assert {round(lr, 6) for _, _, lr in seen} == {0.1, 0.02, 0.004, 0.0008}


def test_schedule_refuses_a_stream_without_epochs():
    env = _cifar(epochs=2)
    agent = make_agent("backprop", env.observation_space, env.action_space, env_id=CIFAR, scale="smoke")
    obs, _ = env.reset(seed=0)
    info = train_info(np.zeros(env.batch_size, dtype=np.int64))
    del info["train_epochs"]
    with pytest.raises(ValueError, match="lr_schedule needs a stream whose info has 'epoch' and 'train_epochs'"):
        agent.observe(obs, agent.act(obs, info), 0.0, info)


def test_adam_and_upgd_replace_the_optimizer_and_keep_a_constant_step():
    env = _cifar(epochs=2)
    for name in ("adam", "upgd"):
        agent = make_agent(name, env.observation_space, env.action_space, env_id=CIFAR, scale="cpu")
        assert agent.config.lr_schedule is None and agent.config.early_stopping, name
    for name in ("backprop", "l2", "shrink-perturb", "cbp", "retrain", "head-reset", "l2-init", "crelu"):
        agent = make_agent(name, env.observation_space, env.action_space, env_id=CIFAR, scale="paper")
        assert agent.config.lr_schedule == LRScheduleConfig() and agent.config.early_stopping, name


# ------------------------------------------------------------------------------ early stopping


@pytest.mark.slow
def test_early_stopping_restores_the_best_validation_epoch_and_tests_it():
    env = _cifar(epochs=6)
    agent = make_agent("backprop", env.observation_space, env.action_space, env_id=CIFAR, scale="smoke",
                       overrides={"optimizer": {"lr": 0.05}})
    assert agent.selects_on_validation
    states: dict[tuple[int, int], dict] = {}  # (task, epoch) -> the network after its training
    val: dict[tuple[int, int], list[float]] = {}
    tested: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    at_test: dict[int, dict] = {}

    def on_step(obs, action, reward, info):
        key = (info["task_id"], info["epoch"])
        if info["phase"] == "train" and info["next_phase"] == "val":
            states[key] = copy.deepcopy(agent.network.state_dict())
        if info["phase"] == "val":
            val.setdefault(key, []).extend([reward * len(info["target"]), len(info["target"])])
        if info["phase"] == "test":
            tested.setdefault(info["task_id"], []).append((obs[:len(info["target"])], action[:len(info["target"])]))
        if info["next_phase"] == "test" and info["phase"] == "val":
            at_test[info["task_id"]] = copy.deepcopy(agent.network.state_dict())

    _drive(env, agent, on_step=on_step)
    record = agent.model_selection()
    assert record["task"] == [0, 1]
    for task in (0, 1):
        accuracy = {e: sum(val[(task, e)][0::2]) / sum(val[(task, e)][1::2]) for e in range(6)}
        best = max(range(6), key=lambda e: (accuracy[e], -e))  # the earliest of ties
        assert record["epoch"][task] == best
        assert record["val_accuracy"][task] == pytest.approx(accuracy[best], abs=1e-6)
        # the tested network is the best epoch's (weights and BatchNorm statistics) ...
        for k, v in states[(task, best)].items():
            torch.testing.assert_close(at_test[task][k], v, rtol=0, atol=0, msg=k)
        # ... and the test phase scored it: its predictions are that network's
        net = copy.deepcopy(agent.network)
        net.load_state_dict(states[(task, best)])
        net.eval()
        net.active_outputs = env.classes_per_increment * (task + 1)
        with torch.no_grad():
            for obs, action in tested[task]:
                np.testing.assert_array_equal(net(torch.as_tensor(obs)).argmax(1).numpy(), action)


def test_early_stopping_state_survives_a_checkpoint():
    """A pickled agent (the harness's checkpoint) in the middle of an increment's validation
    passes, with a best epoch kept, continues exactly as the original."""
    env = _cifar(epochs=3)
    agent = make_agent("cbp", env.observation_space, env.action_space, env_id=CIFAR, scale="smoke")
    obs, info = env.reset(seed=0)
    while not (info["next_phase"] == "val" and info["next_epoch"] == 1):  # best of epoch 0 kept
        action = agent.act(obs, info)
        obs_next, reward, _, _, info = env.step(action)
        agent.observe(obs, action, reward, info)
        obs = obs_next
    twin_env, twin = pickle.loads(pickle.dumps((env, agent)))
    runs = []
    for e, a, o, i in ((env, agent, obs, info), (twin_env, twin, obs, dict(info))):
        rewards = []

        def on_step(obs_, action_, reward_, info_, rewards=rewards):
            rewards.append(float(reward_))

        _continue(e, a, o, i, on_step)
        runs.append((rewards, a.model_selection()))
    assert runs[0] == runs[1] and len(runs[0][1]["task"]) == 2


def _continue(env, agent, obs, info, on_step) -> None:
    while True:
        action = agent.act(obs, info)
        next_obs, reward, terminated, truncated, next_info = env.step(action)
        agent.observe(obs, action, reward, next_info)
        on_step(obs, action, reward, next_info)
        obs, info = next_obs, next_info
        if terminated or truncated:
            return


def test_early_stopping_needs_validation_phases():
    env = gym.make(IMAGENET, scale="smoke").unwrapped
    agent = make_agent("backprop", env.observation_space, env.action_space, env_id=IMAGENET, scale="smoke",
                       overrides={"early_stopping": True})
    with pytest.raises(ValueError, match="early_stopping: task 0 reached its test phase without a validation"):
        _drive(env, agent)


# ------------------------------------------------------------------------------ initializations


def _uniform_ok(t: torch.Tensor, bound: float) -> None:
    t = t.detach().flatten()
    assert t.abs().max() <= bound
    if t.numel() >= 500:  # a uniform's spread: max near the bound, std bound/√3
        assert t.abs().max() > 0.95 * bound
        assert t.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_convnet_starts_as_pytorch_default_layers():
    net = ConvNet(2, generator=torch.Generator().manual_seed(0))
    for layer in (net.conv1, net.conv2, net.conv3, net.fc1, net.fc2, net.head):
        bound = 1.0 / math.sqrt(layer.weight[0].numel())
        _uniform_ok(layer.weight, bound)
        _uniform_ok(layer.bias, bound)
        assert layer.bias.abs().sum() > 0
    # the same bounds as torch's own layers
    torch_conv = torch.nn.Conv2d(32, 64, 3)
    assert 1.0 / math.sqrt(net.conv2.weight[0].numel()) == pytest.approx(
        float(torch_conv.weight.detach().abs().max()), rel=0.05)


def test_resnet_starts_as_the_authors_kaiming_init_resnet_module():
    net = ResNet18(100, width=16, generator=torch.Generator().manual_seed(0))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20  # stem, 16 block convs, 3 projection shortcuts
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert get_init(conv).kind == "normal"
        assert get_init(conv).bound == pytest.approx(math.sqrt(2.0 / fan_in))
        if conv.weight.numel() >= 2000:
            assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.1)
    assert net.stem.weight.std().item() == pytest.approx(math.sqrt(2.0 / 27), rel=0.15)
    assert net.head.weight.std().item() == pytest.approx(1.0 / math.sqrt(128), rel=0.1)
    assert (net.head.bias == 0).all()
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert (bn.weight == 1).all() and (bn.bias == 0).all()


def test_cbp_redraws_convnet_units_from_the_same_distribution():
    net = ConvNet(2, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    groups = {g.name: g for g in net.cbp_groups()}
    gen = torch.Generator().manual_seed(3)
    for name, layer in (("conv2", net.conv2), ("fc1", net.fc1)):
        with torch.no_grad():
            layer.weight.mul_(50.0)  # far outside the init: a redraw must come back inside it
        idx = torch.arange(layer.out_channels if name == "conv2" else layer.out_features)
        reinit_units(groups[name], idx, optimizer=opt, generator=gen)
        _uniform_ok(layer.weight, 1.0 / math.sqrt(layer.weight[0].numel()))
        assert (layer.bias == 0).all()  # a replaced unit's bias is zeroed, as CBP says


# ------------------------------------------------------------------------------ Shrink and Perturb


def test_shrink_perturb_with_momentum_is_the_authors_coupled_weight_decay():
    env = gym.make(IMAGENET, scale="smoke").unwrapped
    lam = 0.05  # large, so the coupled and after-step forms differ well beyond rounding
    agent = make_agent("shrink-perturb", env.observation_space, env.action_space, env_id=IMAGENET,
                       scale="smoke", overrides={"shrink_perturb": {"weight_decay": lam, "noise_std": 0.0}})
    ref = copy.deepcopy(agent.network)
    authors = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=lam)
    rng = np.random.default_rng(0)
    for step in range(4):
        x = rng.standard_normal((env.batch_size, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 2, env.batch_size)
        info = train_info(y)
        agent.observe(x, agent.act(x, info), 0.0, info)
        ref.train()
        authors.zero_grad()
        F.cross_entropy(ref(torch.as_tensor(x)), torch.as_tensor(y)).backward()
        authors.step()
    for (name, p), q in zip(agent.network.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


def test_shrink_perturb_without_momentum_shrinks_after_the_step():
    from plasticity_gym_agents.config import OptimizerConfig, ShrinkPerturbConfig
    from plasticity_gym_agents.optim import shrink_perturb_decays

    sp = ShrinkPerturbConfig(weight_decay=1e-4, noise_std=1e-5)
    assert shrink_perturb_decays(OptimizerConfig(lr=0.01, momentum=0.9, weight_decay=5e-4), sp) == \
        pytest.approx((6e-4, 0.0))
    assert shrink_perturb_decays(OptimizerConfig(lr=0.01), sp) == (0.0, 1e-4)
    assert shrink_perturb_decays(OptimizerConfig(name="adam", lr=1e-4), sp) == (0.0, 1e-4)


# ------------------------------------------------------------------------------ the ImageNet head


def test_imagenet_head_is_zero_before_the_first_task():
    env = gym.make(IMAGENET, scale="smoke").unwrapped
    agent = make_agent("backprop", env.observation_space, env.action_space, env_id=IMAGENET, scale="smoke")
    assert agent.network.head.weight.abs().sum() > 0  # drawn at construction ...
    obs, info = env.reset(seed=0)
    assert info["next_task_boundary"]
    agent.act(obs, info)
    head = agent.network.head
    assert (head.weight == 0).all() and (head.bias == 0).all()  # ... zeroed before task 0
