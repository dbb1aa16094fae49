"""On-disk cache of preprocessed windows, keyed by parameters and source checksums.

A changed preprocessing parameter or a changed source file gives a new key, so a stale
cache is never read. Files are written to a temporary name and renamed (atomic).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlink.data.checksums import sha256_file
from dlink.data.paths import cache_dir
from dlink.data.windows import Windows


def cache_key(name: str, params: dict, sources: list[Path]) -> str:
    """Hex key over the data set name, its parameters and every source file's sha256."""
    blob = json.dumps(
        {"name": name, "params": params, "sources": {p.name: sha256_file(p) for p in sources}},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_cached(key: str) -> Windows | None:
    path = cache_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return Windows(X=z["X"], y=z["y"], subject=z["subject"], **meta)
    except Exception:  # an unreadable cache entry is rebuilt, never trusted
        return None


def save_cached(key: str, windows: Windows) -> None:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "sfreq": windows.sfreq,
        "ch_names": windows.ch_names,
        "class_names": windows.class_names,
        "name": windows.name,
        "info": windows.info,
    }
    tmp = folder / f".{key}.{os.getpid()}.tmp.npz"
    np.savez(tmp, X=windows.X, y=windows.y, subject=windows.subject, meta=json.dumps(meta))
    os.replace(tmp, folder / f"{key}.npz")


def cached(name: str, params: dict, sources: list[Path], build: Callable[[], Windows],
           use_cache: bool = True) -> Windows:
    """``build()``, unless windows for (name, params, the sources' sha256) are cached."""
    if not use_cache:
        return build()
    key = cache_key(name, params, sources)
    hit = load_cached(key)
    if hit is None:
        hit = build()
        save_cached(key, hit)
    return hit
