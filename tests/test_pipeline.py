"""`dlink pipeline` end to end on a generic .npz data set (slow: about 2 minutes; .ci/run runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SMOKE_SUBJECTS = ["00", "01", "02", "03", "31", "35"]


@pytest.mark.slow
def test_custom_npz_goes_through_the_whole_pipeline_and_reruns_nothing(eegmat_windows, tmp_path):
    # A data set unlike EEGMAT's default: 10 channels, 4-s windows, own class names.
    w = eegmat_windows.of_subjects(SMOKE_SUBJECTS)
    keep = [0, 1, 2, 3, 8, 9, 14, 15, 17, 18]
    names = [w.ch_names[i] for i in keep]
    data = tmp_path / "custom.npz"
    np.savez(data, X=w.X[:, keep, :800], y=w.y, sfreq=200.0, ch_names=np.array(names),
             subject=w.subject, class_names=np.array(["relaxed", "counting"]))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dlink.cli", "pipeline", "--preset", "smoke", "--data", str(data),
           "--out", str(out)]
    env = {**os.environ, "DLINK_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["input"]["ch_names"] == names and manifest["input"]["n_times"] == 800
    assert manifest["output"]["class_names"] == ["relaxed", "counting"]
    stream = json.loads((out / "stream.json").read_text())
    assert stream["decisions"] > 0 and stream["accepted"] == stream["decisions"]
    assert (out / "report.html").stat().st_size > 0 and (out / "metrics.json").is_file()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    for stage in ("teacher", "student", "export", "profile", "stream", "report"):
        assert f"{stage}: unchanged, skipped" in second.stderr
