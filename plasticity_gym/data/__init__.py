"""Data sets for the environments: real-format readers, search paths, embedded data."""

from plasticity_gym.data.idx import IdxFormatError, read_idx, write_idx
from plasticity_gym.data.mnist import (
    DataNotFoundError,
    ImageDataset,
    arrays_sha256,
    load_embedded_mnist,
    load_mnist,
    load_mnist_idx,
)
from plasticity_gym.data.paths import DATA_ENV_VAR, cache_dir, search_roots

__all__ = [
    "DATA_ENV_VAR",
    "DataNotFoundError",
    "IdxFormatError",
    "ImageDataset",
    "arrays_sha256",
    "cache_dir",
    "load_embedded_mnist",
    "load_mnist",
    "load_mnist_idx",
    "read_idx",
    "search_roots",
    "write_idx",
]
