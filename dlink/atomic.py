"""Atomic writes: a reader (a later stage, a resumed run, CI) sees the old file or the new
one, never half of one. Each helper writes a temporary file beside the target and renames
it over the target (`os.replace` is atomic on one file system)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dlink.errors import ConfigError


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def savez_atomic(path: str | Path, **arrays: np.ndarray) -> None:
    """`numpy.savez` to ``path`` (ending in .npz) atomically."""
    path = Path(path)
    tmp = _tmp(path)  # keeps the .npz suffix, so numpy does not append one
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def check_writable(folder: str | Path, what: str = "--out") -> None:
    """Create ``folder`` and write a probe file in it, or raise a one-line `ConfigError`
    (before any long work, not after it)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to {what} {folder} ({exc.strerror or exc}); give a "
                          "folder you can write to.") from exc
