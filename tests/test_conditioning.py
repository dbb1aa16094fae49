"""Conditioning filters: the same causal filters in training and on the board, and a real
recording with a DC offset and 50 Hz mains hum decided like the clean recording.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import CH_NAMES, cached_model_dir

from dlink.data.conditioning import apply_conditioning, conditioning_ops
from dlink.errors import ConfigError

DATA = Path(os.environ["DLINK_DATA_DIR"])
REST = DATA / "eegmat" / "Subject00_1.edf"  # 182 s -> 36 windows of 5 s


def test_presets_are_sosfilt_steps_the_runtime_accepts():
    from edge_runtime.preprocessing import validate_ops

    ops = conditioning_ops("mains50", 200.0)
    assert [op["design"] for op in ops] == ["Butterworth highpass 0.5 Hz, order 2",
                                            "Butterworth lowpass 45 Hz, order 4",
                                            "notch 50 Hz, Q 30"]
    validate_ops([*ops, {"op": "clip", "uV": 50.0}, {"op": "scale", "factor": 0.01}], 19)
    assert conditioning_ops("none", 200.0) == []
    with pytest.raises(ConfigError, match="unknown conditioning"):
        conditioning_ops("mains55", 200.0)


def test_training_filters_equal_the_board_stream_stage(shared_data):
    from edge_runtime.preprocessing import StreamStage
    from edge_runtime.sources import read_edf

    x = read_edf(REST, CH_NAMES, 200.0).data[:, :6000]  # (19, 6000) µV, the board's resampling
    ops = conditioning_ops("mains50", 200.0)
    stage = StreamStage(ops, 19)
    board = np.concatenate([stage.process(x[:, i:i + 333]) for i in range(0, 6000, 333)], 1)
    np.testing.assert_allclose(apply_conditioning(x, ops), board, atol=1e-9)


def test_conditioned_loading_is_explicit_and_recorded(shared_data):
    from dlink.data import load_windows

    plain = load_windows("eegmat", subjects=["00"])
    cond = load_windows("eegmat", subjects=["00"], conditioning="mains50")
    assert plain.signal.preprocessing == ()  # the default windows are untouched
    assert [op["op"] for op in cond.signal.preprocessing] == ["sosfilt"] * 3
    assert plain.X.shape == cond.X.shape and not np.allclose(plain.X, cond.X)
    assert abs(float(cond.X.mean())) < abs(float(plain.X.mean())) + 1.0


def _conditioned_model(tmp_path, ops) -> Path:
    """The fixture model with a manifest stating ``ops``, then the ±50 µV clamp and µV/100."""
    dest = tmp_path / f"model-{len(ops)}"
    shutil.copytree(cached_model_dir(), dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["input"]["preprocessing"] = [*ops, {"op": "clip", "uV": 50.0},
                                   {"op": "scale", "factor": 0.01}]
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def _labels(model: Path, x: np.ndarray) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "run", str(model), "--stdin", "--jsonl",
         "--backend", "onnx", "--precision", "fp32"],
        input=np.ascontiguousarray(x.T, dtype="<f4").tobytes(), capture_output=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return [json.loads(ln)["label"] for ln in proc.stdout.decode().splitlines()]


def test_dc_offset_and_mains_hum_get_the_clean_recordings_decisions(shared_data, tmp_path):
    from edge_runtime.sources import read_edf

    clean = read_edf(REST, CH_NAMES, 200.0).data  # (19, 36400) µV at 200 Hz
    rng = np.random.default_rng(0)
    t = np.arange(clean.shape[1]) / 200.0
    offset = rng.uniform(-2000, 2000, (19, 1))  # electrode DC offsets, µV
    hum = 30.0 * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 2 * np.pi, (19, 1)))
    dirty = clean + offset + hum

    model = _conditioned_model(tmp_path, conditioning_ops("mains50", 200.0))
    want, got = _labels(model, clean), _labels(model, dirty)
    assert len(want) == len(got) == 36
    agreement = np.mean([a == b for a, b in zip(want, got)])
    assert agreement >= 0.95, (agreement, want, got)

    bare = _conditioned_model(tmp_path, [])  # the same model without the conditioning
    bare_agreement = np.mean([a == b for a, b in zip(_labels(bare, clean), _labels(bare, dirty))])
    assert bare_agreement < agreement, bare_agreement
