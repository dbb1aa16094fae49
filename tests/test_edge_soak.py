"""bench/edge_soak.py works end to end on a small fixture (the long run is for the lead)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_fixtures import model_dir  # noqa: F401  (pytest fixture)

REPO = Path(__file__).resolve().parents[1]


def test_soak_runs_and_accounts_for_every_sample(model_dir, tmp_path):  # noqa: F811
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "edge_soak.py"), str(model_dir),
         "--hours", "0.03", "--out", str(tmp_path), "--chunk-max", "3000"],
        capture_output=True, timeout=300, cwd=REPO)
    # exit 1 = a goal missed; RSS growth is only meaningful after a long run (warm-up)
    assert out.returncode in (0, 1), out.stdout.decode() + out.stderr.decode()
    rep = json.loads((tmp_path / "edge_soak.json").read_text())
    assert out.returncode == (0 if all(rep["goals"].values()) else 1)
    assert rep["files"] == 1 and rep["samples_fed"] == 36400
    assert rep["dropped_samples"] == 0 and rep["missing_windows"] == 0
    assert rep["windows_decided"] == rep["windows_expected"] == 36
    assert rep["goals"]["accounting_ok"] and rep["windows_per_s"] > 0
    assert rep["rss_after_warmup_mb"] > 0 and "rss_growth_mb" in rep
    md = (tmp_path / "edge_soak.md").read_text()
    assert "Written by `python" in md and "RSS growth" in md
