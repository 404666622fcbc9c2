"""Which data sets are on this machine, where, and how to get the missing ones.

:func:`find_datasets` looks (cheaply: file names and array headers, nothing is loaded) for every
data set an environment can use and returns one :class:`DatasetStatus` each;
:func:`format_datasets` renders them as the text of ``plasticity-gym data list``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from plasticity_gym.data.cifar100 import HOW_TO_GET as CIFAR_HOW_TO_GET
from plasticity_gym.data.cifar100 import find_cifar100
from plasticity_gym.data.imagenet32 import HOW_TO_GET as IMAGENET_HOW_TO_GET
from plasticity_gym.data.imagenet32 import find_imagenet32, find_imagenet32_batches
from plasticity_gym.data.mnist import EMBEDDED_FILE, find_mnist_files
from plasticity_gym.data.paths import DATA_ENV_VAR, cache_dir, search_roots


@dataclass(frozen=True)
class DatasetStatus:
    """One data set: ``found`` with its ``location``, or missing with ``how_to_get``."""

    name: str  # the value of the env's ``data`` argument
    env_id: str
    found: bool
    location: str | None
    note: str
    how_to_get: str


def find_datasets(data_dir: str | os.PathLike | None = None) -> list[DatasetStatus]:
    """The status of every data set, searching ``data_dir``, ``$PLASTICITY_GYM_DATA`` and the cache."""
    statuses = [
        DatasetStatus("embedded", "PermutedMNIST-v0", True, str(EMBEDDED_FILE),
                      "5,000 real MNIST training digits shipped with the package", "(always present)"),
    ]
    found = find_mnist_files(data_dir)
    statuses.append(DatasetStatus(
        "mnist", "PermutedMNIST-v0", isinstance(found, tuple),
        str(found[0].parent) if isinstance(found, tuple) else None,
        "MNIST training IDX files (the paper scale)",
        "put train-images-idx3-ubyte and train-labels-idx1-ubyte (or .gz) in a data directory, or "
        "pass download=True to PermutedMNIST-v0 to fetch them with torchvision",
    ))
    found = find_cifar100(data_dir)
    statuses.append(DatasetStatus(
        "cifar100", "ClassIncCIFAR100-v0", isinstance(found, tuple),
        str(found[0].parent) if isinstance(found, tuple) else None,
        "official cifar-100-python pickles (the paper scale)", CIFAR_HOW_TO_GET,
    ))
    found = find_imagenet32(data_dir)
    if isinstance(found, tuple):
        kind, path = found
        note = ("prepared array " if kind == "array" else "per-class classes/{0..999}.npy layout ") + \
            "(the paper scale)"
        statuses.append(DatasetStatus("imagenet32", "ContinualImageNet-v0", True, str(path), note,
                                      IMAGENET_HOW_TO_GET))
    else:
        raw = [root for root in found if find_imagenet32_batches(root)]
        note = "Downsampled ImageNet 32x32, prepared once (the paper scale)"
        if raw:
            note += f"; official batches found in {raw[0]}: run `plasticity-gym data imagenet32 --from {raw[0]}`"
        statuses.append(DatasetStatus("imagenet32", "ContinualImageNet-v0", False, None, note,
                                      IMAGENET_HOW_TO_GET))
    for env_id, name in (("ContinualImageNet-v0", "imagenet32"), ("ClassIncCIFAR100-v0", "cifar100")):
        statuses.append(DatasetStatus(
            "synthetic", env_id, True, "generated on first use (in memory)",
            f"procedural stand-in for {name} (data_id name synthetic-{name}; the smoke and cpu scales)",
            "(always available)",
        ))
    return statuses


def format_datasets(statuses: list[DatasetStatus], data_dir: str | os.PathLike | None = None) -> str:
    """Human-readable report of :func:`find_datasets` (the output of ``plasticity-gym data list``)."""
    roots = ", ".join(str(root) for root in search_roots(data_dir))
    lines = [f"Searched: {roots}",
             f"(pass --data-dir DIR or set ${DATA_ENV_VAR}; the cache directory is {cache_dir()})", ""]
    for status in statuses:
        mark = "found  " if status.found else "MISSING"
        lines.append(f"{mark} {status.env_id:<21} data={status.name!r}: {status.note}")
        if status.found:
            lines.append(f"        where: {status.location}")
        else:
            lines.append(f"        to get it: {status.how_to_get}")
    return "\n".join(lines)

