"""Reader for the IDX format of the MNIST files (``train-images-idx3-ubyte`` and friends).

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the data in C order (big-endian for multi-byte types). Files may be
gzip-compressed (``.gz``). Every violation raises :class:`IdxFormatError` naming the file.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# IDX type byte -> numpy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """An IDX file is malformed: wrong magic number, dimensions or length."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as error:  # gzip raises these for corrupt or truncated archives
        raise IdxFormatError(f"{path}: cannot read the file: {error}") from error


def read_idx(
    path: str | Path,
    *,
    expected_type: int | None = None,
    expected_ndim: int | None = None,
) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a native-endian numpy array.

    ``expected_type`` (e.g. ``0x08`` for unsigned bytes) and ``expected_ndim`` make the magic
    number check strict: MNIST images are ``0x00000803``, labels ``0x00000801``.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header (4-byte magic)")
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{path}: magic number 0x{magic:08x} is not an IDX magic number "
            f"(expected 0x0000TTNN with a type TT in {[hex(t) for t in IDX_DTYPES]} and NN >= 1 "
            "dimensions, e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    if expected_type is not None and type_code != expected_type:
        raise IdxFormatError(
            f"{path}: data type 0x{type_code:02x} in magic number 0x{magic:08x}, "
            f"expected 0x{expected_type:02x}"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise IdxFormatError(
            f"{path}: {ndim} dimensions in magic number 0x{magic:08x}, expected {expected_ndim} "
            f"(magic 0x{(expected_type or type_code) << 8 | expected_ndim:08x})"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IdxFormatError(
            f"{path}: truncated header: {len(raw)} bytes, the {ndim} dimension sizes need {header_len}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[type_code]
    expected_len = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected_len:
        problem = "truncated" if len(raw) < expected_len else "has trailing bytes"
        raise IdxFormatError(
            f"{path}: {problem}: dimensions {tuple(shape)} of {dtype.itemsize}-byte values need "
            f"{expected_len} bytes in all, the file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (``.gz`` suffix → gzip). Used by tests and data tools."""
    path = Path(path)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(header + body)
    else:
        path.write_bytes(header + body)
