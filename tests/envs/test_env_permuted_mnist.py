"""PermutedMNIST-v0 (SPEC §2): tasks are pixel permutations of the same images."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import plasticity_gym  # noqa: F401
from plasticity_gym.data import DataNotFoundError, load_embedded_mnist, write_idx
from plasticity_gym.envs.permuted_mnist import PermutedMNISTEnv

EMBEDDED = load_embedded_mnist()


def stream(env: PermutedMNISTEnv, seed: int, n_steps: int):
    obs, _ = env.reset(seed=seed)
    xs, ys, tasks = [], [], []
    for _ in range(n_steps):
        x = obs
        obs, _, _, _, info = env.step(np.zeros(env.batch_size, dtype=np.int64))
        xs.append(x)
        ys.append(info["target"])
        tasks.append(np.full(env.batch_size, info["task_id"]))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(tasks)


def unpermute(x: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """The original images: obs[:, j] = image[permutation[j]]."""
    images = np.empty_like(x)
    images[:, permutation] = x
    return images


def as_uint8(x: np.ndarray) -> np.ndarray:
    pixels = np.rint(x * 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels.astype(np.float32) / np.float32(255), x)
    return pixels


@pytest.fixture(scope="module")
def once_per_task():
    """Two tasks of the 5,000 embedded digits, each image once per task, batches of 50."""
    env = PermutedMNISTEnv(scale="cpu", n_tasks=2, batch_size=50)
    x, y, tasks = stream(env, 0, 2 * 5000 // 50)
    return env, x, y, tasks


def test_every_image_exactly_once_per_task(once_per_task):
    env, x, y, tasks = once_per_task
    assert not env.with_replacement and env.examples_per_task == EMBEDDED.n_examples
    reference = np.lexsort(EMBEDDED.images.T[::-1])
    for task_id in (0, 1):
        rows = tasks == task_id
        images = as_uint8(unpermute(x[rows], env.task_permutation(task_id)))
        order = np.lexsort(images.T[::-1])  # sort rows: same multiset as the data set
        np.testing.assert_array_equal(images[order], EMBEDDED.images[reference])
        np.testing.assert_array_equal(y[rows][order], EMBEDDED.labels[reference])


def test_order_is_fresh_each_task(once_per_task):
    env, x, _, tasks = once_per_task
    first = as_uint8(unpermute(x[tasks == 0], env.task_permutation(0)))
    second = as_uint8(unpermute(x[tasks == 1], env.task_permutation(1)))
    assert not np.array_equal(first, second)


def test_permutation_constant_within_task_and_changes_between(once_per_task):
    env, x, _, tasks = once_per_task
    p0, p1 = env.task_permutation(0), env.task_permutation(1)
    assert sorted(p0) == list(range(784)) and not np.array_equal(p0, p1)
    # Every example of a task, un-permuted with that task's permutation, is a data set image.
    known = {row.tobytes() for row in EMBEDDED.images}
    for task_id, permutation in ((0, p0), (1, p1)):
        images = as_uint8(unpermute(x[tasks == task_id], permutation))
        assert all(row.tobytes() in known for row in images)


def test_pixels_in_unit_interval(once_per_task):
    _, x, _, _ = once_per_task
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0


def test_with_replacement_when_task_size_differs():
    env = PermutedMNISTEnv(scale="smoke", n_tasks=1, examples_per_task=6000)
    assert env.with_replacement
    x, _, _ = stream(env, 1, 6000)
    images = as_uint8(unpermute(x, env.task_permutation(0)))
    distinct = np.unique(images, axis=0).shape[0]
    assert distinct < 5000  # 6,000 draws with replacement from 5,000 repeat some and miss some


def test_smoke_and_cpu_and_paper_scales():
    smoke = gym.make("PermutedMNIST-v0", scale="smoke").unwrapped
    assert (smoke.n_tasks, smoke.examples_per_task, smoke.data_id["name"]) == (3, 1000, "mnist-embedded-5k")
    cpu = gym.make("PermutedMNIST-v0").unwrapped
    assert (cpu.n_tasks, cpu.examples_per_task, cpu.n_examples_total) == (200, 5000, 1_000_000)
    assert cpu.config == {"data": "embedded", "data_dir": None, "download": False, "n_tasks": 200,
                          "examples_per_task": 5000, "batch_size": 1}
    paper = PermutedMNISTEnv.resolve_config("paper")
    assert paper["data"] == "mnist" and paper["n_tasks"] == 800 and paper["examples_per_task"] is None


def test_data_id_of_embedded_digits():
    env = gym.make("PermutedMNIST-v0", scale="smoke").unwrapped
    assert env.data_id == {
        "name": "mnist-embedded-5k",
        "split": "train",
        "n_examples": 5000,
        "sha256": "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d",
    }


def test_full_mnist_missing_lists_paths_and_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_GYM_DATA", str(tmp_path / "env-var-dir"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError) as caught:
        gym.make("PermutedMNIST-v0", scale="paper", data_dir=str(tmp_path / "given"))
    message = str(caught.value)
    for directory in (tmp_path / "given", tmp_path / "given" / "MNIST" / "raw",
                      tmp_path / "env-var-dir", tmp_path / "cache" / "plasticity_gym"):
        assert str(directory) in message
    assert "download=True" in message and "PLASTICITY_GYM_DATA" in message and "data_dir" in message


def test_full_mnist_from_idx_files(tmp_path):
    # A small stand-in in the exact IDX layout of the real files, in torchvision's layout.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40, dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte.gz", images)
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    # 40 images, not the 60,000-image training set: the paper scale needs the opt-in.
    env = gym.make("PermutedMNIST-v0", scale="paper", data_dir=str(tmp_path), n_tasks=2, batch_size=4,
                   require_full_set=False)
    unwrapped = env.unwrapped
    assert unwrapped.data_id["name"] == "mnist" and unwrapped.data_id["n_examples"] == 40
    assert unwrapped.examples_per_task == 40 and unwrapped.config["data_dir"] == str(tmp_path)
    x, y, tasks = stream(unwrapped, 3, 10)
    restored = as_uint8(unpermute(x, unwrapped.task_permutation(0)))
    order = np.lexsort(restored.T[::-1])
    flat = images.reshape(40, -1)
    reference = np.lexsort(flat.T[::-1])
    np.testing.assert_array_equal(restored[order], flat[reference])
    np.testing.assert_array_equal(y[order], labels[reference])


def test_bad_data_kwargs():
    with pytest.raises(ValueError, match="data='fashion'.*embedded.*mnist"):
        PermutedMNISTEnv(data="fashion")
    with pytest.raises(ValueError, match="download must be a bool"):
        PermutedMNISTEnv(download="yes")
    with pytest.raises(ValueError, match="n_tasks"):
        PermutedMNISTEnv(n_tasks=0)
    with pytest.raises(ValueError, match="data_dir and download apply to data='mnist' only"):
        PermutedMNISTEnv(data_dir="/somewhere")
    with pytest.raises(ValueError, match="batch_size=3 must divide"):
        PermutedMNISTEnv(batch_size=3)


def test_probe_batch_uses_current_task_permutation():
    env = PermutedMNISTEnv(scale="smoke")
    env.reset(seed=4)
    for _ in range(1000):
        env.step(np.zeros(1, dtype=np.int64))
    assert env.current_task == 1
    x, y = env.probe_batch(300)
    images = as_uint8(unpermute(x, env.task_permutation(1)))
    known = {row.tobytes(): label for row, label in zip(EMBEDDED.images, EMBEDDED.labels)}
    assert all(known[row.tobytes()] == label for row, label in zip(images, y))
