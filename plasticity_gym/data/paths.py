"""Where plasticity-gym looks for data sets on disk."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "PLASTICITY_GYM_DATA"


def cache_dir() -> Path:
    """The user cache directory: ``$XDG_CACHE_HOME/plasticity_gym`` or ``~/.cache/plasticity_gym``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "plasticity_gym"


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories searched for data files, in order: ``data_dir``, ``$PLASTICITY_GYM_DATA``, the cache."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get(DATA_ENV_VAR):
        roots.append(Path(os.environ[DATA_ENV_VAR]).expanduser())
    roots.append(cache_dir())
    return roots
