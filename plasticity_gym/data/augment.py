"""Batch image preprocessing for the vision streams: uint8 rows in, float32 NCHW batches out.

Whole batches at once, as array operations (no per-image Python loop, no PIL):

* :func:`to_float`: gather ``(n, 3072)`` uint8 rows (R, G, B planes of 32×32), optionally move
  each image's pixels by an augmentation's index map, and convert through a per-channel lookup
  table (``/255`` or ``/255`` then per-channel standardization): one gather, one table lookup.
* :func:`draw_augmentation` / :func:`augmentation_map`: the training augmentation of the
  class-incremental CIFAR-100 protocol, composed into one source-pixel map per image: a
  horizontal flip with probability 0.5, then a random 32×32 crop of the image padded by 4
  pixels by reflection (``padding_mode="reflect"``: the padding mirrors the image about its edge
  pixels, which are not repeated), then a rotation by an angle uniform in [0°, 15°]
  (counter-clockwise, about the image centre, nearest pixel). Pixels from outside the rotated
  image get the fill value 0 *after* standardization (the channel mean), as in the reference
  pipeline, which standardized before augmenting.

The map is computed in integer fixed point (angles in hundredths of a degree, a rounded
cosine table), so the same draws give the same pixels on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plasticity_gym.data.images import IMAGE_BYTES, IMAGE_SIDE

PAD = 4  # crop padding, pixels
MAX_ANGLE_CENTIDEG = 1500  # 15 degrees
_FIX = 16  # fixed-point fraction bits of the rotation
_ANGLES = np.arange(MAX_ANGLE_CENTIDEG + 1) * (np.pi / 180 / 100)
_COS_Q = np.round(np.cos(_ANGLES) * (1 << _FIX)).astype(np.int64)
_SIN_Q = np.round(np.sin(_ANGLES) * (1 << _FIX)).astype(np.int64)
# Doubled pixel-centre coordinates relative to the image centre (15.5): odd integers -31..31.
_C2 = (2 * np.arange(IMAGE_SIDE, dtype=np.int64) - (IMAGE_SIDE - 1))
_PIXELS = IMAGE_SIDE * IMAGE_SIDE


@dataclass(frozen=True)
class Augmentation:
    """Per-image draws: ``flip`` (n,) bool, ``offset`` (n, 2) crop (row, col) in 0..8 of the
    padded image, ``angle`` (n,) in hundredths of a degree, 0..1500."""

    flip: np.ndarray
    offset: np.ndarray
    angle: np.ndarray


def draw_augmentation(rng: np.random.Generator, n: int) -> Augmentation:
    """``n`` independent augmentation draws (flip, crop offset, rotation angle)."""
    return Augmentation(
        flip=rng.integers(0, 2, size=n).astype(bool),
        offset=rng.integers(0, 2 * PAD + 1, size=(n, 2)),
        angle=rng.integers(0, MAX_ANGLE_CENTIDEG + 1, size=n),
    )


def augmentation_map(aug: Augmentation) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel of every output pixel: ``(index (n, 1024) int64, valid (n, 1024) bool)``.

    Output pixel ``p`` of image ``i`` takes pixel ``index[i, p]`` (row-major in its plane) of the
    original image where ``valid[i, p]``, and the fill value elsewhere.
    """
    cos = _COS_Q[aug.angle][:, None, None]
    sin = _SIN_Q[aug.angle][:, None, None]
    x2 = _C2[None, None, :]
    y2 = _C2[None, :, None]
    # Inverse rotation of the output pixel centre, then the nearest pixel of the cropped image:
    # round(v / 2 + 15.5) with v in fixed point is (v + 32·2^FIX) >> (FIX + 1).
    half = (IMAGE_SIDE * (1 << _FIX))
    col = (cos * x2 - sin * y2 + half) >> (_FIX + 1)
    row = (sin * x2 + cos * y2 + half) >> (_FIX + 1)
    valid = (col >= 0) & (col < IMAGE_SIDE) & (row >= 0) & (row < IMAGE_SIDE)
    # The crop: cropped (row, col) is padded (row + dr, col + dc), i.e. original minus PAD; a
    # padding pixel mirrors the image about its edge (-k → k, 31 + k → 31 - k).
    row = _reflect(row + (aug.offset[:, 0, None, None] - PAD))
    col = _reflect(col + (aug.offset[:, 1, None, None] - PAD))
    # The flip came first: the cropped image's column c is the original's 31 - c.
    col = np.where(aug.flip[:, None, None], IMAGE_SIDE - 1 - col, col)
    index = np.where(valid, row * IMAGE_SIDE + col, 0)
    n = aug.angle.shape[0]
    return index.reshape(n, _PIXELS), valid.reshape(n, _PIXELS)


def _reflect(v: np.ndarray) -> np.ndarray:
    """Coordinates of a reflection-padded axis (within ``PAD`` of the image) in the image."""
    last = IMAGE_SIDE - 1
    return np.where(v < 0, -v, np.where(v > last, 2 * last - v, v))


def scale_table() -> np.ndarray:
    """Lookup table ``(3, 256)`` float32 of ``v / 255`` (the same for each channel)."""
    return np.tile(np.arange(256, dtype=np.float32) / np.float32(255), (3, 1))


def standardize_table(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Lookup table ``(3, 256)`` float32 of ``(v / 255 - mean[c]) / std[c]``."""
    values = np.arange(256, dtype=np.float64)[None, :] / 255.0
    return ((values - np.asarray(mean, np.float64)[:, None]) / np.asarray(std, np.float64)[:, None]
            ).astype(np.float32)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of ``images`` ``(..., 3072)`` uint8 on the 0..1 scale."""
    planes = images.reshape(-1, 3, _PIXELS)
    mean, std = np.empty(3), np.empty(3)
    levels = np.arange(256, dtype=np.float64) / 255.0
    for c in range(3):
        counts = np.bincount(planes[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = counts.sum()
        mean[c] = counts @ levels / total
        std[c] = np.sqrt(counts @ (levels - mean[c]) ** 2 / total)
    return mean, std


def to_float(
    rows: np.ndarray,
    table: np.ndarray,
    mapping: tuple[np.ndarray, np.ndarray] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``rows`` ``(n, 3072)`` uint8 → ``(n, 3, 32, 32)`` float32 through ``table`` ``(3, 256)``.

    With ``mapping`` (from :func:`augmentation_map`), pixels are first moved by it and pixels
    without a source get 0.
    """
    n = rows.shape[0]
    planes = rows.reshape(n, 3, _PIXELS)
    if mapping is not None:
        index, valid = mapping
        planes = np.take_along_axis(planes, index[:, None, :], axis=2)
    # One lookup for all channels: channel c's values live at c·256 + v of the flat table.
    codes = planes.astype(np.int32)
    codes += (np.arange(3, dtype=np.int32) * 256)[None, :, None]
    result = table.reshape(-1).take(codes)
    if mapping is not None:
        result *= valid[:, None, :]  # fill: 0 in the table's output units
    if out is None:
        return result.reshape(n, 3, IMAGE_SIDE, IMAGE_SIDE)
    out.reshape(n, IMAGE_BYTES)[...] = result.reshape(n, IMAGE_BYTES)
    return out
