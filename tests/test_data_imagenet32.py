"""ImageNet32 data: official batches (npz and pickle), the conversion, the prepared layouts,
errors, discovery; and the procedural stand-ins."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from plasticity_gym.data import (
    DataFormatError,
    DataNotFoundError,
    convert_imagenet32,
    find_datasets,
    format_datasets,
    load_imagenet32,
    read_imagenet32_batch,
)
from plasticity_gym.data.synthetic import SyntheticClassImages, generate_class, standin_digest

PER_CLASS = 3


@pytest.fixture(autouse=True)
def isolated_search_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("PLASTICITY_GYM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def official_batches(n_batches: int = 2, per_class_per_batch: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        labels = rng.permutation(np.repeat(np.arange(1, 1001), per_class_per_batch))
        data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        batches.append({"data": data, "labels": labels.tolist(), "mean": np.zeros(3072)})
    return batches


def write_batches(directory, batches, kind: str = "npz"):
    folder = directory / ("Imagenet32_train_npz" if kind == "npz" else "Imagenet32_train")
    folder.mkdir(parents=True, exist_ok=True)
    for i, batch in enumerate(batches, start=1):
        if kind == "npz":
            np.savez(folder / f"train_data_batch_{i}.npz", data=batch["data"], labels=np.array(batch["labels"]),
                     mean=batch["mean"])
        else:
            with open(folder / f"train_data_batch_{i}", "wb") as handle:
                pickle.dump(batch, handle)
    return folder


def first_per_class(batches, n: int) -> np.ndarray:
    """The first n images of every class over the batches in order, by a plain loop."""
    out = np.zeros((1000, n, 3072), dtype=np.uint8)
    counts = np.zeros(1000, dtype=int)
    for batch in batches:
        for row, label in zip(batch["data"], batch["labels"]):
            c = label - 1
            if counts[c] < n:
                out[c, counts[c]] = row
                counts[c] += 1
    return out


@pytest.mark.parametrize("kind", ["npz", "pickle"])
def test_conversion_keeps_the_first_images_of_each_class_in_file_order(tmp_path, kind):
    batches = official_batches()
    write_batches(tmp_path / "raw", batches, kind)
    lines = []
    path = convert_imagenet32(tmp_path / "raw", tmp_path / "prepared", per_class=PER_CLASS, progress=lines.append)
    expected = first_per_class(batches, PER_CLASS)
    array = np.load(path)
    np.testing.assert_array_equal(array, expected)
    meta = json.loads((tmp_path / "prepared" / "imagenet32_700.json").read_text())
    assert meta["sha256"] == hashlib.sha256(expected.tobytes()).hexdigest()
    assert [s["file"] for s in meta["sources"]] == [f"train_data_batch_{i}{'.npz' if kind == 'npz' else ''}"
                                                   for i in (1, 2)]
    assert len(lines) == 2 and "1000 of 1000 classes complete" in lines[-1]
    images = load_imagenet32("imagenet32", data_dir=tmp_path / "prepared", per_class=PER_CLASS)
    assert isinstance(images.array, np.memmap) or isinstance(images.array.base, np.memmap)
    assert images.data_id["name"] == "imagenet32" and images.data_id["sha256"] == meta["sha256"]
    np.testing.assert_array_equal(images.images(7), expected[7])
    # A smaller per_class uses a prefix and hashes what it uses.
    fewer = load_imagenet32("imagenet32", data_dir=tmp_path / "prepared", per_class=2)
    assert fewer.data_id["sha256"] == hashlib.sha256(expected[:, :2].tobytes()).hexdigest()
    assert len(pickle.dumps(images)) < 10_000  # pickles as a reload, not the array


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_read_batch_returns_zero_based_classes(tmp_path, protocol):
    batches = official_batches(n_batches=1)
    folder = write_batches(tmp_path, batches, "pickle")
    path = folder / "train_data_batch_1"
    path.write_bytes(pickle.dumps(batches[0], protocol=protocol))
    images, classes = read_imagenet32_batch(path)
    np.testing.assert_array_equal(images, batches[0]["data"])
    np.testing.assert_array_equal(classes, np.array(batches[0]["labels"]) - 1)


def bad_labels(batch):
    batch["labels"][5] = 0


def short_rows(batch):
    batch["data"] = batch["data"][:, :1024]


@pytest.mark.parametrize("change, problem", [
    (bad_labels, "'labels' holds label 0, outside 1..1000"),
    (short_rows, r"'data' has shape \(2000, 1024\); expected \(N, 3072\)"),
    (lambda b: b.pop("labels"), "no 'labels' entry"),
])
@pytest.mark.parametrize("kind", ["npz", "pickle"])
def test_malformed_batches_are_rejected_naming_the_file(tmp_path, kind, change, problem):
    batches = official_batches()
    if kind == "npz" and change is not bad_labels and change is not short_rows:
        folder = tmp_path / "raw" / "Imagenet32_train_npz"
        folder.mkdir(parents=True)
        np.savez(folder / "train_data_batch_1.npz", data=batches[0]["data"])
    else:
        change(batches[0])
        folder = write_batches(tmp_path / "raw", batches, kind)
    name = "train_data_batch_1" + (".npz" if kind == "npz" else "")
    with pytest.raises(DataFormatError, match=f"{folder / name}: .*{problem}"):
        convert_imagenet32(tmp_path / "raw", tmp_path / "out", per_class=PER_CLASS)
    assert not (tmp_path / "out" / "imagenet32_700.npy").exists()
    assert not list((tmp_path / "out").glob("*.partial"))


def test_too_few_images_and_garbage_files_are_rejected(tmp_path):
    write_batches(tmp_path / "raw", official_batches(n_batches=1), "npz")
    with pytest.raises(DataFormatError, match=r"class 0 \(label 1\) has 2 images in train_data_batch_1.npz; "
                                              r"3 are needed \(1000 classes are short\)"):
        convert_imagenet32(tmp_path / "raw", tmp_path / "out", per_class=PER_CLASS)
    garbage = tmp_path / "raw" / "Imagenet32_train_npz" / "train_data_batch_1.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match=f"{garbage}: not a readable .npz archive"):
        read_imagenet32_batch(garbage)
    with pytest.raises(DataNotFoundError, match="no ImageNet32 training batches"):
        convert_imagenet32(tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize("layout", ["rows", "chw", "hwc"])
def test_per_class_files_layout_is_accepted(tmp_path, layout):
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 256, size=(1000, 4, 3072), dtype=np.uint8)
    classes = tmp_path / "imagenet32" / "classes"
    classes.mkdir(parents=True)
    for c in range(1000):
        array = rows[c]
        if layout == "chw":
            array = array.reshape(4, 3, 32, 32)
        elif layout == "hwc":
            array = array.reshape(4, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        np.save(classes / f"{c}.npy", array)
    images = load_imagenet32("imagenet32", data_dir=tmp_path, per_class=PER_CLASS)
    np.testing.assert_array_equal(images.images(999), rows[999, :PER_CLASS])
    assert images.data_id["sha256"] == hashlib.sha256(rows[:, :PER_CLASS].tobytes()).hexdigest()
    np.save(classes / "3.npy", rows[3, :2])
    with pytest.raises(DataFormatError, match=r"3.npy: shape \(2, 3072\); expected at least 3 images"):
        load_imagenet32("imagenet32", data_dir=tmp_path, per_class=PER_CLASS)


def test_missing_imagenet_error_and_discovery(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_GYM_DATA", str(tmp_path / "env-root"))
    with pytest.raises(DataNotFoundError) as raised:
        load_imagenet32("imagenet32", data_dir=tmp_path / "mine")
    message = str(raised.value)
    for place in ("mine/imagenet32", "env-root/imagenet32", "xdg-cache/plasticity_gym"):
        assert place in message
    assert "never falls back" in message and "plasticity-gym data imagenet32 --from" in message
    # Official batches lying where the prepared array is looked for: the error and the report say so.
    write_batches(tmp_path / "mine", official_batches(n_batches=1, per_class_per_batch=1), "npz")
    with pytest.raises(DataNotFoundError, match=f"Official batches were found in {tmp_path / 'mine'}"):
        load_imagenet32("imagenet32", data_dir=tmp_path / "mine")
    report = format_datasets(find_datasets(tmp_path / "mine"), tmp_path / "mine")
    assert "MISSING ContinualImageNet-v0  data='imagenet32'" in report
    assert f"run `plasticity-gym data imagenet32 --from {tmp_path / 'mine'}`" in report
    assert "found   PermutedMNIST-v0      data='embedded'" in report
    assert "MISSING ClassIncCIFAR100-v0   data='cifar100'" in report
    # After the conversion (default output: $PLASTICITY_GYM_DATA/imagenet32) it is found.
    write_batches(tmp_path / "raw", official_batches(n_batches=2, per_class_per_batch=2), "npz")
    path = convert_imagenet32(tmp_path / "raw", per_class=PER_CLASS)
    assert path == tmp_path / "env-root" / "imagenet32" / "imagenet32_700.npy"
    status = {(s.env_id, s.name): s for s in find_datasets()}
    assert status["ContinualImageNet-v0", "imagenet32"].found
    assert status["ContinualImageNet-v0", "imagenet32"].location == str(path)


# ------------------------------------------------------------------ stand-ins


def test_stand_in_is_deterministic_a_prefix_and_varied():
    full = generate_class(1, 17, 40)
    np.testing.assert_array_equal(generate_class(1, 17, 40), full)
    np.testing.assert_array_equal(generate_class(1, 17, 5), full[:5])  # image i does not depend on n
    assert full.dtype == np.uint8 and full.shape == (40, 3072)
    assert 20 < full.std() < 100 and len(np.unique(full)) > 200
    other = generate_class(1, 18, 40)
    assert not np.array_equal(full, other)
    assert not np.array_equal(generate_class(2, 17, 5), full[:5])  # the two sets differ


def test_stand_in_store_caches_and_names_itself():
    store = SyntheticClassImages("imagenet32", per_class=6, cache_classes=2)
    first = store.images(3)
    assert store.images(3) is first  # cached
    store.images(4)
    store.images(5)
    assert store.images(3) is not first  # evicted, regenerated identically
    np.testing.assert_array_equal(store.images(3), first)
    assert store.data_id["name"] == "synthetic-imagenet32" and store.data_id["synthetic"] is True
    assert store.data_id["sha256"] == standin_digest("imagenet32", 6) != standin_digest("imagenet32", 7)
    with pytest.raises(IndexError):
        store.images(1000)
    assert load_imagenet32("synthetic", per_class=6).data_id == store.data_id
    with pytest.raises(ValueError, match="data_dir applies to data='imagenet32' only"):
        load_imagenet32("synthetic", data_dir="/x")


def test_cli_prepares_imagenet32_and_lists_it(tmp_path, capsys):
    """`plasticity-gym data imagenet32 --from DIR --to OUT`, then `data list --data-dir OUT`."""
    from plasticity_gym.harness.cli import main

    batches = official_batches(n_batches=2, per_class_per_batch=2)
    source = write_batches(tmp_path / "raw", batches)
    out = tmp_path / "prepared"
    assert main(["data", "imagenet32", "--from", str(source), "--to", str(out), "--per-class", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    prepared = np.load(next(out.glob("*.npy")), mmap_mode="r")
    assert prepared.shape == (1000, 3, 3072)
    np.testing.assert_array_equal(prepared, first_per_class(batches, 3))
    assert main(["data", "list", "--data-dir", str(out)]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("found") and "data='imagenet32'" in line for line in listing.splitlines())


def test_cli_reports_a_missing_source_in_one_line(tmp_path, capsys):
    from plasticity_gym.harness.cli import main

    assert main(["data", "imagenet32", "--from", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plasticity-gym: error:") and "nowhere" in err


def test_a_sidecar_lends_its_sha256_only_to_the_array_it_was_made_for(tmp_path):
    import os

    batches = official_batches()
    write_batches(tmp_path / "raw", batches, "npz")
    path = convert_imagenet32(tmp_path / "raw", tmp_path / "prepared", per_class=PER_CLASS)
    meta_path = tmp_path / "prepared" / "imagenet32_700.json"
    recorded = json.loads(meta_path.read_text())["sha256"]
    assert load_imagenet32("imagenet32", data_dir=tmp_path / "prepared", per_class=PER_CLASS).data_id["sha256"] == recorded
    # Another array of the same shape under the same sidecar: its own identity, not the sidecar's.
    other = np.load(path)[::-1].copy()
    stat = path.stat()
    np.save(path, other)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    images = load_imagenet32("imagenet32", data_dir=tmp_path / "prepared", per_class=PER_CLASS)
    assert images.data_id["sha256"] == hashlib.sha256(other.tobytes()).hexdigest() != recorded
    assert json.loads(meta_path.read_text())["sha256"] == images.data_id["sha256"]  # cached for next time
