"""CIFAR-100 data: the official pickle format, grouping, statistics, errors; the augmentation."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from plasticity_gym.data import DataFormatError, DataNotFoundError, load_cifar100, read_cifar100_file
from plasticity_gym.data.augment import (
    Augmentation,
    augmentation_map,
    channel_stats,
    draw_augmentation,
    scale_table,
    standardize_table,
    to_float,
)

PER_CLASS_TRAIN, PER_CLASS_TEST = 6, 3


@pytest.fixture(autouse=True)
def isolated_search_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("PLASTICITY_GYM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def official_batch(n_per_class: int, seed: int) -> dict:
    """A batch dict as the official (Python 2) pickles load under encoding='bytes'."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(100), n_per_class))
    return {
        b"filenames": [f"img_{i}.png".encode() for i in range(labels.size)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": labels.tolist(),
        b"coarse_labels": (labels // 5).tolist(),
        b"data": rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8),
    }


def write_cifar(root, train=None, test=None, folder: bool = True):
    directory = root / "cifar-100-python" if folder else root
    directory.mkdir(parents=True, exist_ok=True)
    train = official_batch(PER_CLASS_TRAIN, 1) if train is None else train
    test = official_batch(PER_CLASS_TEST, 2) if test is None else test
    for name, batch in (("train", train), ("test", test)):
        with open(directory / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return train, test


def first_per_class(batch: dict, n: int) -> np.ndarray:
    """The first n images of each class in file order, by a plain loop."""
    labels = np.asarray(batch[b"fine_labels"])
    return np.stack([batch[b"data"][np.flatnonzero(labels == c)[:n]] for c in range(100)])


@pytest.mark.parametrize("folder", [True, False])
def test_official_files_grouped_per_class_in_file_order(tmp_path, folder):
    train, test = write_cifar(tmp_path, folder=folder)
    splits = load_cifar100("cifar100", data_dir=tmp_path, train_per_class=5, test_per_class=2)
    np.testing.assert_array_equal(splits.train.array, first_per_class(train, 5))
    np.testing.assert_array_equal(splits.test.array, first_per_class(test, 2))
    mean, std = channel_stats(splits.train.array)
    planes = first_per_class(train, 5).reshape(-1, 3, 1024).transpose(1, 0, 2).reshape(3, -1) / 255.0
    np.testing.assert_allclose(mean, planes.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, planes.std(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(splits.mean, mean)
    digest = hashlib.sha256(splits.train.array.tobytes() + splits.test.array.tobytes()).hexdigest()
    assert splits.data_id["name"] == "cifar100" and splits.data_id["sha256"] == digest
    assert splits.data_id["n_examples"] == 100 * 7
    images, labels = read_cifar100_file(tmp_path / ("cifar-100-python" if folder else "") / "train")
    np.testing.assert_array_equal(images, train[b"data"])
    np.testing.assert_array_equal(labels, train[b"fine_labels"])


def test_pickle_of_splits_reloads_the_same_files(tmp_path):
    write_cifar(tmp_path)
    splits = load_cifar100("cifar100", data_dir=tmp_path, train_per_class=5, test_per_class=2)
    blob = pickle.dumps(splits)
    assert len(blob) < 10_000  # the arrays are not in it
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.train.array, splits.train.array)
    assert again.data_id == splits.data_id


@pytest.mark.parametrize("change, problem", [
    (lambda b: b.pop(b"fine_labels"), "no 'fine_labels' entry"),
    (lambda b: b.update({b"data": b[b"data"][:, :3000]}), r"shape \(600, 3000\).*expected \(N, 3072\)"),
    (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "dtype float32; expected uint8"),
    (lambda b: b.update({b"fine_labels": b[b"fine_labels"][:-1]}), r"shape \(599,\); expected \(600,\)"),
    (lambda b: b[b"fine_labels"].__setitem__(0, 100), "label 100, outside 0..99"),
])
def test_malformed_official_file_is_rejected_naming_it(tmp_path, change, problem):
    train = official_batch(PER_CLASS_TRAIN, 1)
    change(train)
    write_cifar(tmp_path, train=train)
    path = tmp_path / "cifar-100-python" / "train"
    with pytest.raises(DataFormatError, match=f"{path}.*{problem}"):
        load_cifar100("cifar100", data_dir=tmp_path, train_per_class=5, test_per_class=2)


def test_not_a_pickle_short_class_and_code_objects_are_rejected(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    with pytest.raises(DataFormatError, match=f"{path}: class 0 has 6 images, 7 are needed"):
        load_cifar100("cifar100", data_dir=tmp_path, train_per_class=7, test_per_class=2)
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(DataFormatError, match=f"{path}: not a readable data pickle"):
        read_cifar100_file(path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataFormatError, match=f"{path}.*refusing to load builtins.print"):
        read_cifar100_file(path)


def test_missing_cifar_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_GYM_DATA", str(tmp_path / "env-root"))
    with pytest.raises(DataNotFoundError) as raised:
        load_cifar100("cifar100", data_dir=tmp_path / "mine")
    message = str(raised.value)
    for place in ("mine/cifar-100-python", "env-root/cifar-100-python", "xdg-cache/plasticity_gym"):
        assert place in message
    assert "never falls back" in message and "download=True" in message and "cifar-100-python.tar.gz" in message


def test_synthetic_stand_in_is_named_and_deterministic():
    a = load_cifar100("synthetic", train_per_class=4, test_per_class=2)
    b = load_cifar100("synthetic", train_per_class=4, test_per_class=2)
    assert a.data_id["name"] == "synthetic-cifar100" and a.data_id["synthetic"] is True
    assert a.train.array.shape == (100, 4, 3072) and a.test.array.shape == (100, 2, 3072)
    np.testing.assert_array_equal(a.train.array, b.train.array)
    with pytest.raises(ValueError, match="data_dir and download apply to data='cifar100' only"):
        load_cifar100("synthetic", data_dir="/somewhere")
    with pytest.raises(ValueError, match="not a known CIFAR-100 source"):
        load_cifar100("cifar10")


# ------------------------------------------------------------------ augmentation and tables


def one_image_map(flip: bool, offset: tuple[int, int], angle: int):
    return augmentation_map(Augmentation(np.array([flip]), np.array([offset]), np.array([angle])))


def test_augmentation_flip_crop_and_rotation_move_pixels_as_stated():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, size=(1, 3072), dtype=np.uint8)
    table = scale_table()
    plain = to_float(rows, table)[0]
    np.testing.assert_array_equal(plain, rows.reshape(3, 32, 32) / np.float32(255))
    np.testing.assert_array_equal(to_float(rows, table, one_image_map(False, (4, 4), 0))[0], plain)
    np.testing.assert_array_equal(to_float(rows, table, one_image_map(True, (4, 4), 0))[0], plain[:, :, ::-1])
    shifted = to_float(rows, table, one_image_map(False, (0, 2), 0))[0]  # content moves 4 down, 2 right
    np.testing.assert_array_equal(shifted[:, 4:, 2:], plain[:, :-4, :-2])
    # The padding reflects the image about its edge pixels (torch's padding_mode="reflect").
    np.testing.assert_array_equal(shifted[:, :4, 2:], plain[:, 4:0:-1, :-2])
    np.testing.assert_array_equal(shifted[:, 4:, :2], plain[:, :-4, 2:0:-1])
    np.testing.assert_array_equal(shifted[:, :4, :2], plain[:, 4:0:-1, 2:0:-1])
    np.testing.assert_array_equal(to_float(rows, table, one_image_map(False, (8, 8), 0))[0][:, 28:, 28:],
                                  plain[:, 30:26:-1, 30:26:-1])
    rotated = to_float(rows, table, one_image_map(False, (4, 4), 1500))[0]
    np.testing.assert_array_equal(rotated[:, 15:17, 15:17], plain[:, 15:17, 15:17])  # the centre stays
    assert (rotated[:, 0, 0] == 0).all() and (rotated[:, 0, 31] == 0).all()  # corners leave the image
    assert not np.array_equal(rotated, plain)
    # Counter-clockwise: the top row of the output comes from the right of the original's top rows.
    index, valid = one_image_map(False, (4, 4), 1500)
    top = index.reshape(32, 32)[1][valid.reshape(32, 32)[1]]
    assert (top // 32).max() > 1 and (top[-1] // 32) > (top[0] // 32)


def test_augmentation_draws_cover_the_stated_ranges():
    aug = draw_augmentation(np.random.default_rng(3), 20_000)
    assert 0.48 < aug.flip.mean() < 0.52
    assert aug.offset.min() == 0 and aug.offset.max() == 8
    assert aug.angle.min() == 0 and aug.angle.max() == 1500 and abs(aug.angle.mean() - 750) < 15


def test_standardize_table_matches_the_formula():
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    table = standardize_table(mean, std)
    for c in range(3):
        np.testing.assert_allclose(table[c], (np.arange(256) / 255 - mean[c]) / std[c], rtol=1e-6)
    rows = np.random.default_rng(1).integers(0, 256, size=(5, 3072), dtype=np.uint8)
    out = np.empty((5, 3, 32, 32), dtype=np.float32)
    to_float(rows, table, out=out)
    np.testing.assert_allclose(out, ((rows.reshape(5, 3, 32, 32) / 255 - mean[:, None, None])
                                     / std[:, None, None]), rtol=1e-5, atol=1e-6)
