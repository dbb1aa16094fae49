"""`dlink data fetch` against a local HTTP mirror of ../shared/data on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from dlink.data import load_windows
from dlink.data.checksums import sha256_file
from dlink.data.fetch import fetch
from dlink.errors import ChecksumError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    served: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        _Quiet.served.append(self.path)
        super().do_GET()


@pytest.fixture()
def mirror(tmp_path, shared_data):
    """A PhysioNet-like tree: files/eegmat/1.0.0 (subject 01's task file corrupted) and
    files/eegmmidb/1.0.0, served on an ephemeral loopback port."""
    site = tmp_path / "site"
    eegmat = site / "files" / "eegmat" / "1.0.0"
    eegmat.mkdir(parents=True)
    for name in ("Subject00_1.edf", "Subject00_2.edf", "Subject01_1.edf"):
        (eegmat / name).symlink_to(shared_data / "eegmat" / name)
    good = (shared_data / "eegmat" / "Subject01_2.edf").read_bytes()
    (eegmat / "Subject01_2.edf").write_bytes(good[:5000] + bytes([good[5000] ^ 0xFF]) + good[5001:])
    mmi = site / "files" / "eegmmidb" / "1.0.0"
    mmi.mkdir(parents=True)
    (mmi / "S001").symlink_to(shared_data / "MNE-eegbci-data/files/eegmmidb/1.0.0/S001")
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Quiet.served.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/files"
    server.shutdown()
    server.server_close()


def test_fetch_verifies_and_resumes(tmp_path, mirror, shared_data):
    root = tmp_path / "data"
    paths = fetch("eegmat", root, base_url=f"{mirror}/eegmat/1.0.0/", subjects=["00"])
    assert sorted(p.name for p in paths) == ["Subject00_1.edf", "Subject00_2.edf"]
    for p in paths:
        assert sha256_file(p) == sha256_file(shared_data / "eegmat" / p.name)
    assert len(load_windows("eegmat", data_dir=root, subjects=["00"])) == 48
    n_requests = len(_Quiet.served)
    fetch("eegmat", root, base_url=f"{mirror}/eegmat/1.0.0/", subjects=["00"])
    assert len(_Quiet.served) == n_requests  # intact files are not downloaded again


def test_corrupted_download_is_rejected_and_not_kept(tmp_path, mirror):
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match="Subject01_2.edf"):
        fetch("eegmat", root, base_url=f"{mirror}/eegmat/1.0.0/", subjects=["01"])
    left = sorted(p.name for p in (root / "eegmat").iterdir())
    assert left == ["Subject01_1.edf"]  # the bad file and any temporary file are gone


def test_fetch_eegmmidb_through_mne(tmp_path, mirror):
    root = tmp_path / "data"
    paths = fetch("eegmmidb", root, base_url=f"{mirror}/eegmmidb/1.0.0/")
    assert len(paths) == 6
    w = load_windows("eegmmidb", data_dir=root)
    assert len(w) == 90


def test_unreachable_mirror_is_a_clear_error(tmp_path):
    from dlink.errors import DLinkError

    with pytest.raises(DLinkError, match="could not download"):
        fetch("eegmat", tmp_path, base_url="http://127.0.0.1:9/files/eegmat/1.0.0/",
              subjects=["00"])
    assert not list((tmp_path / "eegmat").glob("*.edf"))
