"""The MNIST data layer: IDX reader, search paths, missing-data errors, embedded digits."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from plasticity_gym.data import (
    DataNotFoundError,
    IdxFormatError,
    arrays_sha256,
    load_embedded_mnist,
    load_mnist,
    read_idx,
    write_idx,
)


def idx_bytes(magic: int, shape: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape) + body


def write_pair(directory, n_images: int = 6, n_labels: int | None = None, gz: bool = False):
    """MNIST-layout files written byte by byte (not through write_idx)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_images if n_labels is None else n_labels, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    with opener(directory / f"train-images-idx3-ubyte{suffix}", "wb") as handle:
        handle.write(idx_bytes(0x00000803, images.shape, images.tobytes()))
    with opener(directory / f"train-labels-idx1-ubyte{suffix}", "wb") as handle:
        handle.write(idx_bytes(0x00000801, labels.shape, labels.tobytes()))
    return images, labels


@pytest.fixture(autouse=True)
def isolated_search_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("PLASTICITY_GYM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_raw_and_gzip(tmp_path, gz):
    images, labels = write_pair(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    read_images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", expected_type=8, expected_ndim=3)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}"), labels)


def test_write_idx_round_trip_multibyte(tmp_path):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    write_idx(tmp_path / "a.idx", array)
    raw = (tmp_path / "a.idx").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 3]) and raw[4:8] == (2).to_bytes(4, "big")
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), array)


def test_truncated_file_rejected(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(0x00000803, (3, 28, 28), bytes(3 * 784 - 10)))
    with pytest.raises(IdxFormatError, match=f"{path}.*truncated.*2368 bytes.*2358"):
        read_idx(path)
    short_header = tmp_path / "short"
    short_header.write_bytes(struct.pack(">I", 0x00000803) + b"\x00\x00")
    with pytest.raises(IdxFormatError, match="truncated header"):
        read_idx(short_header)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(idx_bytes(0x00000801, (10,), bytes(10)))[:-12])
    with pytest.raises(IdxFormatError, match="cut.gz"):
        read_idx(gz)


def test_trailing_bytes_rejected(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(0x00000801, (4,), bytes(6)))
    with pytest.raises(IdxFormatError, match="trailing bytes"):
        read_idx(path)


def test_wrong_magic_rejected(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(idx_bytes(0x12340803, (1, 28, 28), bytes(784)))
    with pytest.raises(IdxFormatError, match=f"{path}.*magic number 0x12340803"):
        read_idx(path)
    labels_as_images = tmp_path / "train-images-idx3-ubyte"
    labels_as_images.write_bytes(idx_bytes(0x00000801, (3,), bytes(3)))
    with pytest.raises(IdxFormatError, match="1 dimensions.*expected 3.*0x00000803"):
        read_idx(labels_as_images, expected_type=8, expected_ndim=3)
    floats = tmp_path / "floats"
    floats.write_bytes(idx_bytes(0x00000D01, (1,), bytes(4)))
    with pytest.raises(IdxFormatError, match="data type 0x0d.*expected 0x08"):
        read_idx(floats, expected_type=8)


def test_mismatched_counts_rejected(tmp_path):
    write_pair(tmp_path, n_images=6, n_labels=5)
    with pytest.raises(IdxFormatError, match="6 images.*5 labels"):
        load_mnist("mnist", data_dir=tmp_path)


def test_wrong_image_size_rejected(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(0x00000803, (2, 4, 4), bytes(32)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(0x00000801, (2,), bytes(2)))
    with pytest.raises(IdxFormatError, match="28x28"):
        load_mnist("mnist", data_dir=tmp_path)


def test_search_order_and_layouts(tmp_path, monkeypatch):
    images_env, _ = write_pair(tmp_path / "from-env" / "MNIST" / "raw", n_images=3, gz=True)
    monkeypatch.setenv("PLASTICITY_GYM_DATA", str(tmp_path / "from-env"))
    found = load_mnist("mnist")
    assert found.n_examples == 3 and found.data_id["name"] == "mnist"
    np.testing.assert_array_equal(found.images, images_env.reshape(3, -1))

    images_arg, labels_arg = write_pair(tmp_path / "from-arg", n_images=4)
    found = load_mnist("mnist", data_dir=tmp_path / "from-arg")  # the argument comes first
    assert found.n_examples == 4
    assert found.data_id["sha256"] == arrays_sha256(images_arg.reshape(4, -1), labels_arg)

    monkeypatch.delenv("PLASTICITY_GYM_DATA")
    write_pair(tmp_path / "xdg-cache" / "plasticity_gym", n_images=5)
    assert load_mnist("mnist").n_examples == 5


def test_missing_data_lists_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_GYM_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError) as caught:
        load_mnist("mnist", data_dir=tmp_path / "arg")
    message = str(caught.value)
    expected_dirs = [tmp_path / "arg", tmp_path / "arg" / "MNIST" / "raw", tmp_path / "env",
                     tmp_path / "env" / "MNIST" / "raw", tmp_path / "xdg-cache" / "plasticity_gym",
                     tmp_path / "xdg-cache" / "plasticity_gym" / "MNIST" / "raw"]
    for directory in expected_dirs:
        assert f"{directory}/" in message
    assert "train-images-idx3-ubyte" in message and "download=True" in message
    assert "never falls back" in message


def test_unknown_source_rejected():
    with pytest.raises(ValueError, match="'cifar'.*embedded.*mnist"):
        load_mnist("cifar")


def test_embedded_digits():
    data = load_embedded_mnist()
    assert data.images.shape == (5000, 784) and data.images.dtype == np.uint8
    assert data.labels.shape == (5000,) and np.bincount(data.labels).tolist() == [500] * 10
    assert data.data_id["name"] == "mnist-embedded-5k" and data.data_id["split"] == "train"
    assert data.data_id["sha256"] == arrays_sha256(data.images, data.labels)
    assert not data.images.flags.writeable
    # Real digits: mostly background, a stroke in the middle.
    assert (data.images == 0).mean() > 0.7 and data.images.reshape(-1, 28, 28)[:, 10:18, 10:18].mean() > 60
