"""Backends on real files: ONNX Runtime and the LiteRT interpreter, and missing backends."""

from __future__ import annotations

import numpy as np
import pytest
from edge_fixtures import EEG_FILE, model_dir, run_cli, run_python  # noqa: F401  (pytest fixture)

from edge_runtime import open_model
from edge_runtime.preprocessing import StreamStage, apply_window_ops, split_ops


@pytest.fixture(scope="module")
def windows(model_dir, eeg):  # noqa: F811
    spec = open_model(model_dir, backend="onnx", precision="fp32").manifest.input
    stream_ops, window_ops = split_ops(spec.preprocessing)
    y = StreamStage(stream_ops, spec.n_chans).process(eeg[:, :20000])
    return apply_window_ops(window_ops, np.stack([y[:, i:i + 1000]
                                                  for i in range(0, 19000, 1000)]))


@pytest.fixture(scope="module")
def eeg():
    from edge_fixtures import read_eeg

    return read_eeg(100)


@pytest.mark.parametrize("backend,precision", [("onnx", "fp32"), ("onnx", "int8"),
                                               ("tflite", "fp32"), ("tflite", "int8")])
def test_each_backend_scores_batches(model_dir, windows, backend, precision):  # noqa: F811
    model = open_model(model_dir, backend=backend, precision=precision, threads=2)
    assert model.backend_name == backend and model.load_s > 0
    assert model.model_bytes == (model_dir / model.artifact.path).stat().st_size
    y = model.predict(windows[:5])  # (5, 2); TFLite (batch 1) is looped
    assert y.shape == (5, 2) and y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(np.concatenate([model.predict(w[None]) for w in windows[:5]]),
                               y, atol=1e-5)


def test_int8_tflite_io_is_quantised_from_the_interpreter(model_dir, windows):  # noqa: F811
    model = open_model(model_dir, backend="tflite", precision="int8")
    assert model.backend.input_dtype == np.int8 and model.backend.output_dtype == np.int8
    scale, zero = model.backend._in["quantization"]
    q = model.backend._quantize(windows[:1])
    assert q.dtype == np.int8
    np.testing.assert_allclose((q.astype(np.float32) - zero) * scale, windows[:1],
                               atol=scale / 2 + 1e-7)
    fp32 = open_model(model_dir, backend="tflite", precision="fp32").predict(windows)
    int8 = model.predict(windows)
    assert np.corrcoef(np.diff(fp32, axis=1)[:, 0], np.diff(int8, axis=1)[:, 0])[0, 1] > 0.95


def test_fp32_onnx_and_tflite_agree(model_dir, windows):  # noqa: F811
    a = open_model(model_dir, backend="onnx", precision="fp32").predict(windows)
    b = open_model(model_dir, backend="tflite", precision="fp32").predict(windows)
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)
    assert (a.argmax(1) == b.argmax(1)).all()


def test_missing_backend_is_a_clear_error(model_dir):  # noqa: F811
    code = f"""
import sys
from edge_runtime import open_model, BackendUnavailableError
try:
    open_model({str(model_dir)!r}, backend="onnx")
except BackendUnavailableError as exc:
    print("ONNX:", exc)
m = open_model({str(model_dir)!r}, backend="auto")  # falls back to the installed one
print("AUTO:", m.backend_name, m.artifact.path)
print("LOADED:", "onnxruntime" in sys.modules)
"""
    from edge_fixtures import block_imports_snippet

    out = run_python(block_imports_snippet("onnxruntime") + code)
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert "ONNX: backend 'onnx' needs ONNX Runtime" in text
    assert "pip install onnxruntime" in text
    assert "AUTO: tflite model.int8.tflite" in text and "LOADED: False" in text


def test_missing_backend_via_cli_is_one_line_and_exit_1(model_dir):  # noqa: F811
    out = run_cli("run", model_dir, "--edf", EEG_FILE,
                  "--backend", "tflite", block=("ai_edge_litert", "tflite_runtime"))
    err = out.stderr.decode().strip()
    assert out.returncode == 1, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("dlink-edge: error: backend 'tflite' needs the LiteRT interpreter")
    assert "pip install ai-edge-litert" in err and out.stdout == b""


def test_no_backend_at_all_names_both_packages(model_dir):  # noqa: F811
    out = run_cli("info", model_dir, block=("onnxruntime", "ai_edge_litert", "tflite_runtime"))
    assert out.returncode == 0 and "backends installed here: none" in out.stdout.decode()
    out = run_cli("profile", model_dir, block=("onnxruntime", "ai_edge_litert",
                                                "tflite_runtime"))
    assert out.returncode == 1
    err = out.stderr.decode().strip()
    assert err == ("dlink-edge: error: no inference backend is installed: pip install "
                   "onnxruntime, or pip install ai-edge-litert (tflite-runtime on older boards).")
