"""sha256 of files, and verifying a folder against a registry of expected sums."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (memoised on path, size and mtime)."""
    p = Path(path)
    st = p.stat()
    return _sha256(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_registry(path: Path) -> dict[str, str]:
    """``{file name: sha256}`` from lines ``NAME SHA256``."""
    rows = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {name: digest for name, digest in rows}


def verify_files(expected: dict[Path, str]) -> dict[str, list[str]]:
    """Compare files with their expected sha256: ``{"ok": [...], "missing": [...], "bad": [...]}``."""
    report: dict[str, list[str]] = {"ok": [], "missing": [], "bad": []}
    for path, digest in sorted(expected.items()):
        if not path.is_file():
            report["missing"].append(path.name)
        elif sha256_file(path) != digest:
            report["bad"].append(path.name)
        else:
            report["ok"].append(path.name)
    return report
