"""Shared fixtures: the real recordings in ../shared/data and an isolated window cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DLINK_DATA_DIR", REPO.parent / "shared" / "data"))
# The data root of every test (and of the tools they start): the project's rule reads
# $DLINK_DATA_DIR, so set it before any test module computes a path from it.
os.environ["DLINK_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Point the data root at the shared recordings and the cache at a fresh folder."""
    os.environ["DLINK_DATA_DIR"] = str(SHARED_DATA)
    os.environ["DLINK_CACHE_DIR"] = str(tmp_path_factory.mktemp("window-cache"))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "eegmat").is_dir():
        pytest.skip(f"real recordings not found in {SHARED_DATA} (set DLINK_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def eegmat_windows(shared_data):
    """All 1,707 EEGMAT windows (read once per test session)."""
    from dlink.data import load_windows

    return load_windows("eegmat")
