"""ContinualImageNet-v0: task pairs, phases and their sizes, data sources (SPEC §2)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

import plasticity_gym  # noqa: F401  (registers the ids)
from plasticity_gym.data import DataNotFoundError, convert_imagenet32

SMALL = {"train_per_class": 20, "test_per_class": 15, "epochs": 3, "n_tasks": 4, "batch_size": 10}


@pytest.fixture(autouse=True)
def isolated_search_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("PLASTICITY_GYM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def make(**kwargs):
    return gym.make("ContinualImageNet-v0", scale="smoke", **{**SMALL, **kwargs})


def run(env, seed=0):
    """Every step of the stream: (obs shown, info of the step that scored it, reward)."""
    obs, _ = env.reset(seed=seed)
    steps = []
    while True:
        action = np.ones(env.unwrapped.batch_size, dtype=np.int64)
        next_obs, reward, _, truncated, info = env.step(action)
        steps.append((obs.copy(), info, reward))
        obs = next_obs
        if truncated:
            return steps


def test_phases_steps_and_sizes_per_task():
    env = make()
    u = env.unwrapped
    steps = run(env)
    # 3 epochs of 40 training images in batches of 10, then 30 test images: 3 batches.
    per_task = [("train", e, 10) for e in range(3) for _ in range(4)] + [("test", 3, 10)] * 3
    assert len(steps) == 4 * len(per_task) == u.n_steps_total
    for t in range(4):
        chunk = steps[t * len(per_task):(t + 1) * len(per_task)]
        assert [(i["phase"], i["epoch"], len(i["target"])) for _, i, _ in chunk] == per_task
        assert [i["task_id"] for _, i, _ in chunk] == [t] * len(per_task)
        assert [i["step_in_task"] for _, i, _ in chunk] == list(range(len(per_task)))
        assert [i["task_boundary"] for _, i, _ in chunk] == [True] + [False] * (len(per_task) - 1)
    assert u.phase_counts(0) == {"train": {"examples": 120, "steps": 12}, "test": {"examples": 30, "steps": 3}}
    assert u.n_examples_total == 4 * 150 and u.examples_per_task == 150


def test_paper_scale_protocol():
    config = type(make().unwrapped).resolve_config("paper")
    assert config == {"data": "imagenet32", "data_dir": None, "n_tasks": 5000, "epochs": 250, "batch_size": 100,
                      "train_per_class": 600, "test_per_class": 100}
    # The paper's task on the stand-in.
    env = gym.make("ContinualImageNet-v0", scale="cpu", n_tasks=2, epochs=250, train_per_class=600)
    counts = env.unwrapped.phase_counts(1)
    assert counts == {"train": {"examples": 300_000, "steps": 3000}, "test": {"examples": 200, "steps": 2}}


def test_cpu_scale_protocol():
    """The cpu scale as its docstring states it: 30 tasks of 50 train + 2 test steps."""
    env = gym.make("ContinualImageNet-v0", scale="cpu")
    u = env.unwrapped
    assert (u.n_tasks, u.epochs, u.train_per_class, u.test_per_class, u.batch_size) == (30, 25, 100, 100, 100)
    assert u.phase_counts(29) == {"train": {"examples": 5_000, "steps": 50}, "test": {"examples": 200, "steps": 2}}
    assert u.n_steps_total == 1_560


def test_images_come_from_the_pair_train_then_test_each_epoch_a_permutation():
    env = make()
    u = env.unwrapped
    steps = run(env, seed=3)
    per_task = 15
    for t in range(u.n_tasks):
        a, b = u.task_classes(t)
        pair = np.stack([u.dataset.images(a), u.dataset.images(b)]).reshape(2, -1, 3, 32, 32) / np.float32(255)
        chunk = steps[t * per_task:(t + 1) * per_task]
        for epoch in range(3):
            obs = np.concatenate([o for o, i, _ in chunk if i["phase"] == "train" and i["epoch"] == epoch])
            labels = np.concatenate([i["target"] for _, i, _ in chunk if i["phase"] == "train" and i["epoch"] == epoch])
            seen = sorted(int(np.flatnonzero((pair[lab, :20] == x).all(axis=(1, 2, 3)))[0]) + 20 * lab
                          for x, lab in zip(obs, labels))
            assert seen == list(range(40))  # every training image once per epoch, label = class in pair
        test_obs = np.concatenate([o for o, i, _ in chunk if i["phase"] == "test"])
        test_labels = np.concatenate([i["target"] for _, i, _ in chunk if i["phase"] == "test"])
        seen = sorted(int(np.flatnonzero((pair[lab, 20:35] == x).all(axis=(1, 2, 3)))[0]) + 15 * lab
                      for x, lab in zip(test_obs, test_labels))
        assert seen == list(range(30))
    # Epoch orders differ.
    first = [i["target"] for _, i, _ in steps[:4]]
    second = [i["target"] for _, i, _ in steps[4:8]]
    assert not all(np.array_equal(x, y) for x, y in zip(first, second))


def test_pairs_seeded_identical_for_any_agent_and_permutation_rounds():
    env = gym.make("ContinualImageNet-v0", scale="smoke", n_tasks=600)
    u = env.unwrapped
    env.reset(seed=11)
    pairs = u.pairs.copy()
    assert sorted(pairs[:500].reshape(-1).tolist()) == list(range(1000))  # each class once per 500 tasks
    assert len(set(pairs[500:].reshape(-1).tolist())) == 200
    other = make(n_tasks=600).unwrapped
    other.reset(seed=11)
    for _ in range(7):  # a different "agent": other actions
        other.step(np.zeros(other.batch_size, dtype=np.int64))
    np.testing.assert_array_equal(other.pairs, pairs)
    other.reset(seed=12)
    assert not np.array_equal(other.pairs, pairs)


def test_partial_test_batch_is_padded_and_scored_on_its_examples():
    env = make(batch_size=40, test_per_class=15)  # 30 test images in a batch of 40
    u = env.unwrapped
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, _, _, _, info = env.step(np.zeros(40, dtype=np.int64))
    assert info["next_phase"] == "test"
    assert (obs[30:] == 0).all() and (obs[:30].reshape(30, -1).max(axis=1) > 0).all()
    action = np.zeros(40, dtype=np.int64)
    action[:3] = 1
    _, reward, _, _, info = env.step(action)
    assert info["phase"] == "test" and info["target"].shape == (30,)
    assert reward == pytest.approx(np.mean(action[:30] == info["target"]))
    assert info["next_task_boundary"] and info["next_task_id"] == 1
    with pytest.raises(ValueError, match="out of range"):
        u.reset(seed=0)
        for _ in range(3):
            u.step(np.zeros(40, dtype=np.int64))
        u.step(np.full(40, 2))


def test_probe_is_the_current_pairs_training_images():
    u = make().unwrapped
    u.reset(seed=2)
    for _ in range(20):
        u.step(np.zeros(u.batch_size, dtype=np.int64))
    x, y = u.probe_batch(50)
    assert u.current_task == 1 and set(np.unique(y)) <= {0, 1}
    a, b = u.task_classes()
    pair = np.stack([u.dataset.images(a), u.dataset.images(b)])[:, :20].reshape(2, 20, 3, 32, 32) / np.float32(255)
    for image, label in zip(x, y):
        assert (pair[label] == image).all(axis=(1, 2, 3)).any()


def test_real_data_through_the_prepared_array(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "raw" / "Imagenet32_train_npz"
    folder.mkdir(parents=True)
    labels = rng.permutation(np.repeat(np.arange(1, 1001), 3))
    np.savez(folder / "train_data_batch_1.npz", data=rng.integers(0, 256, (3000, 3072), dtype=np.uint8),
             labels=labels)
    convert_imagenet32(tmp_path / "raw", tmp_path / "data" / "imagenet32", per_class=3)
    env = gym.make("ContinualImageNet-v0", scale="smoke", data="imagenet32", data_dir=str(tmp_path / "data"),
                   train_per_class=2, test_per_class=1, batch_size=4)
    u = env.unwrapped
    assert u.data_id["name"] == "imagenet32" and "synthetic" not in u.data_id
    obs, _ = env.reset(seed=0)
    a, _ = u.task_classes(0)
    first = u.dataset.images(a)[:2].reshape(2, 3, 32, 32) / np.float32(255)
    assert any((first == o).all(axis=(1, 2, 3)).any() for o in obs)
    clone = pickle.loads(pickle.dumps(u))
    np.testing.assert_array_equal(clone.reset()[0], u.reset()[0])


def test_real_data_missing_never_falls_back(tmp_path):
    with pytest.raises(DataNotFoundError, match="(?s)never falls back.*Looked for"):
        gym.make("ContinualImageNet-v0", scale="paper", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data_dir applies to data='imagenet32' only"):
        make(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="batch_size=7 must divide the 40 training examples"):
        make(batch_size=7)
    with pytest.raises(ValueError, match="expected one of"):
        make(data="imagenet")
