"""ClassIncCIFAR100-v0: increments, phases and sizes, seen classes, augmentation, data (SPEC §2)."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

import plasticity_gym  # noqa: F401  (registers the ids)
from plasticity_gym.data import DataNotFoundError
from plasticity_gym.data.augment import standardize_table, to_float

# 3 increments of 2 classes; per class 9 train, 4 val, 5 test; batches of 6.
SMALL = {"n_increments": 3, "classes_per_increment": 2, "epochs": 2, "train_per_class": 9,
         "val_per_class": 4, "test_per_class": 5, "batch_size": 6}


@pytest.fixture(autouse=True)
def isolated_search_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("PLASTICITY_GYM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def make(**kwargs):
    return gym.make("ClassIncCIFAR100-v0", scale="smoke", **{**SMALL, **kwargs})


def run(env, seed=0):
    obs, _ = env.reset(seed=seed)
    steps = []
    while True:
        next_obs, reward, _, truncated, info = env.step(np.zeros(env.unwrapped.batch_size, dtype=np.int64))
        steps.append((obs.copy(), info, reward))
        obs = next_obs
        if truncated:
            return steps


def expected_schedule(j: int) -> list[tuple[str, int, int, int]]:
    """(phase, epoch, batch examples, n_classes) of every step of increment j, from the protocol."""
    k = 2 * (j + 1)

    def batches(n):
        return [6] * (n // 6) + ([n % 6] if n % 6 else [])

    out = []
    for epoch in range(2):
        out += [("train", epoch, size, k) for size in batches(9 * k)]
        out += [("val", epoch, size, k) for size in batches(4 * k)]
    return out + [("test", 2, size, k) for size in batches(5 * k)]


def test_increments_phases_and_sizes():
    env = make()
    u = env.unwrapped
    steps = run(env)
    position = 0
    for j in range(3):
        expected = expected_schedule(j)
        chunk = steps[position:position + len(expected)]
        position += len(expected)
        got = [(i["phase"], i["epoch"], len(i["target"]), i["n_classes"]) for _, i, _ in chunk]
        assert got == expected
        assert all(i["task_id"] == j for _, i, _ in chunk)
        assert [i["step_in_task"] for _, i, _ in chunk] == list(range(len(expected)))
        assert all(i["next_n_classes"] == (2 * (j + 1) if n < len(chunk) - 1 else 2 * (j + 2) if j < 2 else
                                           i["next_n_classes"]) for n, (_, i, _) in enumerate(chunk)
                   if "next_n_classes" in i)
    assert position == len(steps) == u.n_steps_total
    assert u.examples_per_task is None
    counts = u.phase_counts(2)
    assert counts["train"] == {"examples": 2 * 54, "steps": 2 * 9}
    assert counts["val"] == {"examples": 2 * 24, "steps": 2 * 4}
    assert counts["test"] == {"examples": 30, "steps": 5}


def test_paper_scale_protocol():
    config = type(make().unwrapped).resolve_config("paper")
    assert config == {"data": "cifar100", "data_dir": None, "download": False, "n_increments": 20,
                      "classes_per_increment": 5, "epochs": 200, "batch_size": 90, "train_per_class": 450,
                      "val_per_class": 50, "test_per_class": 100, "augment": True}
    # The paper's sizes on the stand-in: increment 20 trains on 45,000 images, 500 steps an epoch.
    env = gym.make("ClassIncCIFAR100-v0", scale="cpu", train_per_class=450, val_per_class=50, test_per_class=100,
                   epochs=200)
    counts = env.unwrapped.phase_counts(19)
    assert counts["train"] == {"examples": 200 * 45_000, "steps": 200 * 500}
    assert counts["val"] == {"examples": 200 * 5_000, "steps": 200 * 56}
    assert counts["test"] == {"examples": 10_000, "steps": 112}


def test_cpu_scale_protocol():
    """The cpu scale as its docstring states it: 20 increments of 2 epochs, 840 training steps,
    and the reference agents' ResNet-18 at width 8 there."""
    from plasticity_gym_agents.defaults import default_config

    env = gym.make("ClassIncCIFAR100-v0", scale="cpu")
    u = env.unwrapped
    assert (u.n_tasks, u.epochs, u.train_per_class, u.val_per_class, u.test_per_class) == (20, 2, 36, 4, 20)
    steps = {phase: sum(u.phase_counts(t)[phase]["steps"] for t in range(u.n_tasks)) for phase in ("train", "val", "test")}
    assert steps["train"] == 840
    assert u.phase_counts(19)["train"] == {"examples": 2 * 3_600, "steps": 2 * 40}
    for name in ("backprop", "cbp", "adam", "l2", "shrink-perturb"):
        assert default_config(name, "ClassIncCIFAR100-v0", "cpu", {})["network"] == {"kind": "resnet18", "width": 8}
    # Units must be able to mature within the run, or CBP would be backprop exactly.
    cbp = default_config("cbp", "ClassIncCIFAR100-v0", "cpu", {})["cbp"]
    assert cbp["maturity"] < steps["train"] / 2 and cbp["replacement_rate"] * 304 * steps["train"] > 10


def standardized(u, rows):
    return to_float(rows, standardize_table(u.dataset.mean, u.dataset.std))


def test_val_and_test_hold_only_seen_classes_unaugmented_train_is_augmented():
    env = make()
    u = env.unwrapped
    steps = run(env, seed=4)
    position = 0
    for j in range(3):
        schedule = expected_schedule(j)
        chunk = steps[position:position + len(schedule)]
        position += len(schedule)
        seen = u.seen_classes(j)
        assert len(seen) == 2 * (j + 1)
        # validation: the first 4 of each class's train-split images (the authors' split); training the next 9
        for phase, per_class, offset, split in (("val", 4, 0, u.dataset.train), ("test", 5, 0, u.dataset.test)):
            for epoch in ((0, 1) if phase == "val" else (2,)):
                obs = np.concatenate([o[:len(i["target"])] for o, i, _ in chunk
                                      if i["phase"] == phase and i["epoch"] == epoch])
                labels = np.concatenate([i["target"] for _, i, _ in chunk if i["phase"] == phase and i["epoch"] == epoch])
                assert labels.max() < len(seen)
                expected = {}
                for lab in range(len(seen)):
                    for image in standardized(u, split.array[seen[lab], offset:offset + per_class]):
                        expected[image.tobytes()] = lab
                assert len(obs) == len(expected) == per_class * len(seen)
                assert {x.tobytes(): lab for x, lab in zip(obs, labels)} == expected  # exact, no augmentation
        train = [(o, i) for o, i, _ in chunk if i["phase"] == "train"]
        exact = {x.tobytes() for x in standardized(u, u.dataset.train.array[seen, 4:13].reshape(-1, 3072))}
        n_exact = sum(x.tobytes() in exact for o, _ in train for x in o)
        assert n_exact < 0.2 * sum(len(o) for o, _ in train)  # training images are augmented
        assert all(i["target"].max() < len(seen) for _, i in train)


def test_without_augmentation_training_shows_each_seen_image_once_per_epoch():
    env = make(augment=False)
    u = env.unwrapped
    steps = run(env, seed=1)
    seen = u.seen_classes(0)
    first = [(o, i) for o, i, _ in steps if i["task_id"] == 0 and i["phase"] == "train" and i["epoch"] == 0]
    images = {x.tobytes(): lab for lab in range(2)
              for x in standardized(u, u.dataset.train.array[seen[lab], 4:13])}
    got = {x.tobytes(): lab for o, i in first for x, lab in zip(o, i["target"])}
    assert got == images
    # Same order as with augmentation (the augmentation draws come after the order).
    augmented = run(make(), seed=1)
    assert all(np.array_equal(a[1]["target"], b[1]["target"]) for a, b in zip(steps, augmented))


def test_class_order_seeded_and_observations_standardized():
    u = make().unwrapped
    u.reset(seed=5)
    order = u.class_order.copy()
    assert sorted(order.tolist()) == list(range(100))
    v = make().unwrapped
    v.reset(seed=5)
    for _ in range(5):
        v.step(np.full(6, 3))
    np.testing.assert_array_equal(v.class_order, order)
    v.reset(seed=6)
    assert not np.array_equal(v.class_order, order)
    low, high = u.observation_space.low, u.observation_space.high
    assert low.shape == (6, 3, 32, 32) and (low < 0).all() and (high > 0).all()
    np.testing.assert_allclose(low[0, :, 0, 0], -u.dataset.mean / u.dataset.std, rtol=1e-6)
    obs, _ = u.reset(seed=0)
    assert u.observation_space.contains(obs)


def test_probe_holds_seen_classes_training_images():
    u = make().unwrapped
    u.reset(seed=0)
    x, y = u.probe_batch(40)
    assert y.max() < 2 and x.shape == (40, 3, 32, 32)
    seen = u.seen_classes()
    exact = {im.tobytes() for lab in range(2) for im in standardized(u, u.dataset.train.array[seen[lab], 4:13])}
    assert all(im.tobytes() in exact for im in x)


def write_cifar(root):
    rng = np.random.default_rng(0)
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    for name, n in (("train", 14), ("test", 5)):
        labels = rng.permutation(np.repeat(np.arange(100), n))
        batch = {b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(),
                 b"data": rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)}
        with open(directory / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


def test_real_cifar_files(tmp_path):
    write_cifar(tmp_path)
    env = gym.make("ClassIncCIFAR100-v0", scale="smoke", **{**SMALL, "data": "cifar100", "data_dir": str(tmp_path)})
    u = env.unwrapped
    assert u.data_id["name"] == "cifar100" and "synthetic" not in u.data_id
    assert u.dataset.train.array.shape == (100, 13, 3072)
    obs, _ = env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(u))
    np.testing.assert_array_equal(clone.reset()[0], obs)


def test_missing_real_data_and_bad_config(tmp_path):
    with pytest.raises(DataNotFoundError, match="(?s)never falls back.*Looked for.*download=True"):
        gym.make("ClassIncCIFAR100-v0", scale="paper", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="data_dir and download apply to data='cifar100' only"):
        make(download=True)
    with pytest.raises(ValueError, match="exceeds the 100 classes"):
        make(n_increments=51)
    with pytest.raises(ValueError, match="batch_size=4 must divide the 18 training examples"):
        make(batch_size=4)
    with pytest.raises(ValueError, match="augment must be a bool"):
        make(augment=1)
