"""Procedurally generated 32×32×3 image sets: offline stand-ins for ImageNet32 and CIFAR-100.

A fresh machine has neither downsampled ImageNet (it needs a login) nor, offline, CIFAR-100. These
stand-ins let ``ContinualImageNet-v0`` and ``ClassIncCIFAR100-v0`` run anyway. They are named as
synthetic in ``data_id`` and a run asking for real data never gets them.

How an image is made. Every class owns two colored sinusoidal gratings (an integer frequency
of up to 3 cycles per image in x and y, a phase, a color) and two colored Gaussian blobs (a
position, a width, a color). An image of the class draws its own translation of the whole
pattern (±8 pixels) and of each part (±2 more), the strength (faint in the 1,000-class set:
1/16 to 7/16; 6/16 to 16/16 in the 100-class set) and color variation of each part, four distractor parts (stronger) from a bank shared by all classes, a
brightness shift and pixel noise. So a class is a recognisable pattern, but faint, moving and
cluttered: the paper's convnet learns a pair of classes well above chance and clearly below 100%
(``bench/standin_calibration.py`` measures it).

Determinism. Everything is integer arithmetic on integers drawn from numpy's PCG64 (stable across
platforms and numpy versions), with two lookup tables (cosine, Gaussian) rounded to integers, so
an image is a pure function of (set, class, index) — bit for bit on any machine. Image ``i`` of a
class does not depend on how many images are generated (every per-image quantity has its own
random stream), so a small set is a prefix of the full one.

Classes are generated when first asked for and kept in memory (a small least-recently-used
cache for the 1,000-class set; the 100-class set is generated whole, a few seconds, once per
process). Generation is faster than reading a disk cache would be, so nothing is written to disk.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

from plasticity_gym.data.images import IMAGE_BYTES, IMAGE_SIDE, ArrayClassImages, ClassImages

GENERATOR_VERSION = "plasticity-gym-standin-v1"
# Set ids: keep the two stand-ins' classes independent of each other.
# part_strength: a class part's strength in 16ths, uniform in [low, high). Faint for the
# 1,000-class set (a binary task of two classes should end near 85%, not 100%); stronger for the
# 100-class set, whose increments discriminate up to 100 classes from fewer images.
SETS: dict[str, dict[str, Any]] = {
    "imagenet32": {"set_id": 1, "n_classes": 1000, "per_class": 700, "part_strength": (1, 8)},
    "cifar100": {"set_id": 2, "n_classes": 100, "per_class": 600, "part_strength": (6, 17)},
}
_STRENGTH_OF_SET = {spec["set_id"]: spec["part_strength"] for spec in SETS.values()}
_ROOT_SEED = 20240821  # fixed: the stand-ins are data, not a random draw per run

# Difficulty: every value below changes the images (bump GENERATOR_VERSION when changing them).
SHIFT = 8  # translation of the class pattern, pixels (±)
PART_JITTER = 2  # each class part moves by a further ±PART_JITTER pixels on its own
COLOR_JITTER = 40  # each class part's color varies per image by ±COLOR_JITTER per channel
NOISE = 52  # pixel noise, uniform in ±NOISE (grey levels)
BRIGHTNESS = 24  # brightness shift per image, uniform in ±BRIGHTNESS
DISTRACTOR_STRENGTH = (8, 17)  # strength of each distractor part, in 16ths
N_DISTRACTORS = 4
BANK_SIZE = 512  # distractor parts shared by all classes

_COS_STEPS = 1024
_COS = np.round(np.cos(np.arange(_COS_STEPS) * (2 * np.pi / _COS_STEPS)) * 256).astype(np.int32)
_BLOB_WIDTHS = (2.0, 3.0, 4.5, 6.5)
_R2_MAX = 2 * (IMAGE_SIDE + 2 * 24) ** 2
_BLOB = np.stack([np.round(np.exp(-np.arange(_R2_MAX) / (2 * w * w)) * 256) for w in _BLOB_WIDTHS]
                 ).astype(np.int32).reshape(-1)
_GRID = np.arange(IMAGE_SIDE, dtype=np.int32)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([_ROOT_SEED, *key])))


def _parts(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """``n`` pattern parts: each a grating or a blob (``kind``), with its parameters and color."""
    freq = rng.integers(-3, 4, size=(n, 2))
    freq[(freq == 0).all(axis=1), 0] = 1  # no constant "grating"
    parts = {
        "kind": rng.integers(0, 2, size=n),  # 0 grating, 1 blob
        "freq": freq,
        "phase": rng.integers(0, _COS_STEPS, size=n),
        "center": rng.integers(4, IMAGE_SIDE - 4, size=(n, 2)),
        "width": rng.integers(0, len(_BLOB_WIDTHS), size=n),
        "color": rng.integers(-96, 97, size=(n, 3)),
    }
    return {key: value.astype(np.int32) for key, value in parts.items()}


def _render(parts: dict[str, np.ndarray], shift: np.ndarray, kind: int | None = None) -> np.ndarray:
    """Shape values (×256) of one part per image: ``(n, 32, 32)`` int32; ``shift`` ``(n, 2)``.

    ``kind`` (0 grating, 1 blob) when every image's part is of that kind; None: per image.
    """
    if kind is None:
        out = np.empty((shift.shape[0], IMAGE_SIDE, IMAGE_SIDE), dtype=np.int32)
        for k in (0, 1):
            rows = np.flatnonzero(parts["kind"] == k)
            out[rows] = _render({key: value[rows] for key, value in parts.items()}, shift[rows], k)
        return out
    y = _GRID[None, :, None]
    x = _GRID[None, None, :]
    dx = shift[:, 0, None, None]
    dy = shift[:, 1, None, None]
    if kind == 0:
        fx = parts["freq"][:, 0, None, None]
        fy = parts["freq"][:, 1, None, None]
        # cos(2π (fx (x - dx) + fy (y - dy)) / 32 + phase): the grating moved by (dx, dy).
        index = parts["phase"][:, None, None] + (fx * (x - dx) + fy * (y - dy)) * (_COS_STEPS // IMAGE_SIDE)
        return _COS[index & (_COS_STEPS - 1)]
    cx = parts["center"][:, 0, None, None] + dx
    cy = parts["center"][:, 1, None, None] + dy
    return _BLOB[parts["width"][:, None, None] * _R2_MAX + (x - cx) ** 2 + (y - cy) ** 2]


@functools.cache
def _bank() -> dict[str, np.ndarray]:
    return _parts(_rng(0, 0), BANK_SIZE)


def class_parameters(set_id: int, c: int) -> dict[str, np.ndarray]:
    """The parts of class ``c``: two gratings and two blobs (no class tint: that alone gave the
    class away)."""
    rng = _rng(set_id, c, 0)
    parts = _parts(rng, 4)
    parts["kind"] = np.array([0, 0, 1, 1], dtype=np.int32)
    return parts


def generate_class(set_id: int, c: int, n: int) -> np.ndarray:
    """Images ``0..n-1`` of class ``c`` of set ``set_id``: ``(n, 3072)`` uint8 (R, G, B planes)."""
    params = class_parameters(set_id, c)

    def draw(stream: int, low: int, high: int, shape: tuple[int, ...]) -> np.ndarray:
        # One stream per quantity, drawn first: image i's values do not depend on n.
        return _rng(set_id, c, stream).integers(low, high, size=(n, *shape)).astype(np.int32)

    shift = draw(1, -SHIFT, SHIFT + 1, (2,))
    strength = draw(2, *_STRENGTH_OF_SET[set_id], (4,))
    pick = draw(3, 0, BANK_SIZE, (N_DISTRACTORS,))
    distractor_shift = draw(4, -IMAGE_SIDE // 2, IMAGE_SIDE // 2 + 1, (N_DISTRACTORS, 2))
    distractor_strength = draw(5, *DISTRACTOR_STRENGTH, (N_DISTRACTORS,))
    brightness = draw(6, -BRIGHTNESS, BRIGHTNESS + 1, ())
    noise = _rng(set_id, c, 7).integers(-NOISE, NOISE + 1, size=(n, IMAGE_BYTES), dtype=np.int16)
    jitter = draw(8, -PART_JITTER, PART_JITTER + 1, (4, 2))
    color_jitter = draw(9, -COLOR_JITTER, COLOR_JITTER + 1, (4, 3))

    # Every part's shape × strength (≤ 256·16) times its color (≤ 96 + COLOR_JITTER): products and
    # their sums over the parts stay integers below 2**24, so float32 holds them exactly and the
    # matmul's order of summation does not matter.
    n_parts = 4 + N_DISTRACTORS
    shapes = np.empty((n, n_parts, IMAGE_SIDE * IMAGE_SIDE), dtype=np.float32)
    colors = np.empty((n, 3, n_parts), dtype=np.float32)
    for k in range(4):
        part = {key: np.broadcast_to(params[key][k], (n, *params[key].shape[1:]))
                for key in ("freq", "phase", "center", "width")}
        kind = int(params["kind"][k])
        shapes[:, k] = (_render(part, shift + jitter[:, k], kind) * strength[:, k, None, None]).reshape(n, -1)
        colors[:, :, k] = params["color"][k] + color_jitter[:, k]
    bank = _bank()
    for k in range(N_DISTRACTORS):
        part = {key: value[pick[:, k]] for key, value in bank.items()}
        j = 4 + k
        shapes[:, j] = (_render(part, distractor_shift[:, k]) * distractor_strength[:, k, None, None]).reshape(n, -1)
        colors[:, :, j] = part["color"]
    acc = np.matmul(colors, shapes)  # (n, 3, 1024), in 1/(256·16) grey levels
    acc *= np.float32(1.0 / 4096.0)
    np.floor(acc, out=acc)
    acc += (128 + brightness[:, None, None]).astype(np.float32)
    acc += noise.reshape(n, 3, -1)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8).reshape(n, IMAGE_BYTES)


class SyntheticClassImages(ClassImages):
    """A stand-in set, generated class by class on demand (recently used classes are kept)."""

    def __init__(self, name: str, per_class: int | None = None, cache_classes: int = 16):
        if name not in SETS:
            raise ValueError(f"unknown stand-in {name!r}; expected one of {sorted(SETS)}")
        spec = SETS[name]
        self.name = name
        self.set_id = spec["set_id"]
        self.n_classes = spec["n_classes"]
        full = spec["per_class"]
        self.per_class = full if per_class is None else int(per_class)
        if not 1 <= self.per_class <= full:
            raise ValueError(f"per_class must be in 1..{full} for the {name} stand-in, got {per_class}")
        self.cache_classes = int(cache_classes)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.data_id = {
            "name": f"synthetic-{name}",
            "split": "generated",
            "n_examples": self.n_classes * self.per_class,
            "sha256": standin_digest(name, self.per_class),
            "synthetic": True,
            "generator": GENERATOR_VERSION,
            "sha256_of": "the generator version, every class's parameters, the distractor bank "
                         "and all images of classes 0 and 1 (the images are a pure function of these)",
        }

    def images(self, c: int) -> np.ndarray:
        c = self.check_class(c)
        images = self._cache.get(c)
        if images is None:
            images = generate_class(self.set_id, c, self.per_class)
            images.flags.writeable = False
            self._cache[c] = images
            if len(self._cache) > self.cache_classes:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(c)
        return images

    def __reduce__(self) -> tuple[Any, ...]:
        return (SyntheticClassImages, (self.name, self.per_class, self.cache_classes))


@functools.cache
def standin_digest(name: str, per_class: int) -> str:
    """Identity of a stand-in: sha256 of what determines every image (see ``data_id['sha256_of']``).

    Hashing all images of the 1,000-class set would mean generating 2 GB; the images are a pure
    function of the hashed parameters, and two full classes guard against a change of the code.
    """
    spec = SETS[name]
    constants = (SHIFT, PART_JITTER, COLOR_JITTER, NOISE, BRIGHTNESS, DISTRACTOR_STRENGTH, N_DISTRACTORS,
                 BANK_SIZE, spec["part_strength"])
    digest = hashlib.sha256(f"{GENERATOR_VERSION}/{name}/{spec['n_classes']}x{per_class}/{constants}".encode())
    for c in range(spec["n_classes"]):
        for value in class_parameters(spec["set_id"], c).values():
            digest.update(np.ascontiguousarray(value, dtype=np.int64).tobytes())
    for value in _bank().values():
        digest.update(np.ascontiguousarray(value, dtype=np.int64).tobytes())
    for c in (0, 1):
        digest.update(generate_class(spec["set_id"], c, per_class).tobytes())
    return digest.hexdigest()


@functools.cache
def standin_cifar100(per_class: int | None = None) -> ArrayClassImages:
    """The whole 100-class stand-in as one ``(100, per_class, 3072)`` array (generated once)."""
    source = SyntheticClassImages("cifar100", per_class, cache_classes=0)
    array = np.stack([generate_class(source.set_id, c, source.per_class) for c in range(source.n_classes)])
    array.flags.writeable = False
    return ArrayClassImages(array, source.data_id, reload=(standin_cifar100, (per_class,)))
