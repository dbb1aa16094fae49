"""Where data lives: the data root (`--data-dir` > `DLINK_DATA_DIR` > per-user cache)."""

from __future__ import annotations

import os
from pathlib import Path

from dlink.errors import DataNotFoundError

ENV_DATA_DIR = "DLINK_DATA_DIR"
ENV_CACHE_DIR = "DLINK_CACHE_DIR"


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dlink"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds one sub-folder per data set.

    Order: the explicit ``data_dir``, then ``$DLINK_DATA_DIR``, then ``~/.cache/dlink/data``.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    return _user_cache() / "data"


def cache_dir() -> Path:
    """Where preprocessed windows are cached (``$DLINK_CACHE_DIR`` or ``~/.cache/dlink``).

    Never inside the data root, which may be read-only (CI mounts ``../shared`` so).
    """
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    return _user_cache() / "windows"


def require_dataset_dir(root: Path, folder: str, name: str) -> Path:
    """``root/folder`` if it exists, else a one-line error saying where we looked and what to do."""
    path = root / folder
    if not path.is_dir():
        raise DataNotFoundError(
            f"no {name} data in {path}: run `dlink data fetch {name}` "
            f"or set {ENV_DATA_DIR} (or --data-dir) to the folder that holds '{folder}/'"
        )
    return path
