"""The `dlink` CLI: one-line errors with a non-zero exit, and the data commands on real data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def dlink(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlink.cli", *args], capture_output=True,
                          text=True, timeout=300)


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_info_reports_1707_windows(eegmat_windows):  # fixture warms the cache
    proc = dlink("data", "info", "eegmat", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["n_windows"] == 1707
    assert info["windows_per_class"] == {"rest": 1275, "task": 432}


def test_missing_data_root_says_where_and_what_to_do(tmp_path):
    for args in (["data", "info", "eegmat"], ["pipeline"], ["data", "verify", "eegmat"]):
        line = _one_error_line(dlink(*args, "--data-dir", str(tmp_path)))
        assert str(tmp_path) in line and "dlink data fetch eegmat" in line
        assert "DLINK_DATA_DIR" in line


def test_bad_npz_is_one_line(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.zeros((4, 500), np.float32), y=np.zeros(4, int), sfreq=200.0,
             ch_names=np.array(["Cz"]))
    line = _one_error_line(dlink("data", "info", str(path)))
    assert "shape" in line and "bad.npz" in line


def test_verify_and_list(shared_data):
    proc = dlink("data", "verify", "eegmat")
    assert proc.returncode == 0 and "75 files ok" in proc.stdout, proc.stderr
    proc = dlink("data", "list")
    assert proc.returncode == 0 and "eegmmidb" in proc.stdout


def test_help_reflows_docstrings_and_keeps_brackets():
    """Help text is markdown: a docstring's line breaks reflow to the terminal's width, and
    a literal ``dlink[lsl]`` is not eaten as rich markup."""
    import os

    env = {**os.environ, "COLUMNS": "200"}
    run = lambda *cmd: subprocess.run([sys.executable, "-m", *cmd, "--help"],  # noqa: E731
                                      capture_output=True, text=True, timeout=300, env=env)
    pipeline = run("dlink.cli", "pipeline")
    assert pipeline.returncode == 0
    # in the docstring's second paragraph "dlink-export," ends a line, "dlink-edge" starts one
    assert "dlink-export, dlink-edge" in pipeline.stdout
    edge_run = run("edge_runtime.cli", "run")
    assert edge_run.returncode == 0 and "dlink[lsl]" in edge_run.stdout


def test_help_explains_every_command():
    for args in ([], ["data"], ["data", "fetch"], ["pipeline"]):
        proc = dlink(*args, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout
