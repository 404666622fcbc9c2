"""Data sets for the environments: real-format readers, search paths, embedded and synthetic data."""

from plasticity_gym.data.catalog import DatasetStatus, find_datasets, format_datasets
from plasticity_gym.data.cifar100 import CifarSplits, load_cifar100, read_cifar100_file
from plasticity_gym.data.idx import IdxFormatError, read_idx, write_idx
from plasticity_gym.data.imagenet32 import convert_imagenet32, load_imagenet32, read_imagenet32_batch
from plasticity_gym.data.images import ClassImages, DataFormatError
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
    "ClassImages",
    "CifarSplits",
    "DataFormatError",
    "DataNotFoundError",
    "DatasetStatus",
    "IdxFormatError",
    "ImageDataset",
    "arrays_sha256",
    "cache_dir",
    "convert_imagenet32",
    "find_datasets",
    "format_datasets",
    "load_cifar100",
    "load_embedded_mnist",
    "load_imagenet32",
    "load_mnist",
    "load_mnist_idx",
    "read_cifar100_file",
    "read_idx",
    "read_imagenet32_batch",
    "search_roots",
    "write_idx",
]
