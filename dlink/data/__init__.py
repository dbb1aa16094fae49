"""The data layer: recorded EEG in, labelled windows (µV) with their metadata out.

``load_windows("eegmat")`` reads the data root (``data_dir`` > ``$DLINK_DATA_DIR`` >
``~/.cache/dlink/data``); a path ending in ``.npz`` reads a generic data set instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from dlink.data import eegmat, eegmmidb, npz
from dlink.data.paths import data_root
from dlink.data.splits import Split, kfold_subjects, split_subjects
from dlink.data.windows import Windows
from dlink.errors import ConfigError

DATASETS = {
    "eegmat": eegmat,
    "eegmmidb": eegmmidb,
}

__all__ = [
    "DATASETS",
    "Split",
    "Windows",
    "data_root",
    "kfold_subjects",
    "load_windows",
    "split_subjects",
]


def load_windows(
    name_or_npz: str | os.PathLike, data_dir: str | os.PathLike | None = None, **params
) -> Windows:
    """Labelled windows of a named data set or of a generic ``.npz`` file.

    Parameters
    ----------
    name_or_npz : a name in `DATASETS` or a path to an ``.npz`` (see `dlink.data.npz`).
    data_dir : the data root; default ``$DLINK_DATA_DIR`` or the per-user cache.
    **params : data-set options, e.g. ``sfreq=200.0``, ``window_s=5.0``, ``subjects=[...]``.

    Returns
    -------
    Windows with X (n, C, T) float32 µV, y, subject, sfreq, ch_names, class_names.
    """
    key = str(name_or_npz)
    if key in DATASETS:
        return DATASETS[key].load(data_root(data_dir), **params)
    if key.endswith(".npz") or Path(key).is_file():
        return npz.load(Path(key), **params)
    raise ConfigError(
        f"unknown data set '{key}': use one of {', '.join(DATASETS)} or a path to an .npz file"
    )
