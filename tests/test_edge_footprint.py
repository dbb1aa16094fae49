"""Footprint (issue 16): a manifest without a filter streams through the one-copy path
without scipy, exactly as offline; `profile` measures in a fresh process and times a cold
`run`; bench/edge_footprint.py writes its tables. Real sessions and real EEG; no absolute
time or memory is asserted (those are reported by the benchmark, not tested)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import copy_model_dir, eeg, model_dir, run_cli, run_python  # noqa: F401

from edge_runtime import NonFiniteError, StreamingClassifier, classify_offline, open_model

REPO = Path(__file__).resolve().parents[1]
CLIP_SCALE = [{"op": "clip", "uV": 50.0}, {"op": "scale", "factor": 0.01}]


@pytest.fixture(scope="module")
def clip_dir(model_dir, tmp_path_factory):  # noqa: F811
    """The fixture model with the default export's preprocessing: clip ±50 µV, µV/100."""
    return copy_model_dir(model_dir, tmp_path_factory.mktemp("clip") / "m",
                          preprocessing=CLIP_SCALE)


def _chunks(x, rng):
    pos = 0
    while pos < x.shape[1]:
        k = [0, 1, int(rng.integers(2, 300)), 1000, int(rng.integers(300, 4000))][
            rng.integers(0, 5)]
        yield x[:, pos:pos + k]
        pos += k


def _assert_identical(stream, offline):
    assert len(stream) == len(offline) > 0
    for s, o in zip(stream, offline):
        assert (s.index, s.stop, s.accepted, s.n_bad, s.label) == \
               (o.index, o.stop, o.accepted, o.n_bad, o.label)
        if s.accepted:
            np.testing.assert_array_equal(s.logits, o.logits)  # bit for bit
            np.testing.assert_array_equal(s.probabilities, o.probabilities)


@pytest.mark.parametrize("backend", ["onnx", "tflite"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_manifest_streams_exactly_as_offline(clip_dir, eeg, backend, dtype):  # noqa: F811
    model = open_model(clip_dir, backend=backend)
    x = eeg[:, :16000].astype(dtype)
    x[5, 4000:4100] *= 40  # an artifact far beyond ±50 µV: clipped, not rejected
    x[2, 9000:9030] = np.nan  # a burst: its windows are rejected
    offline = classify_offline(model, x, hop=500)
    for seed in range(2):
        clf = StreamingClassifier(model, hop=500)
        got = [r for c in _chunks(x, np.random.default_rng(seed)) for r in clf.push(c)]
        _assert_identical(got, offline)
    assert sum(not r.accepted for r in offline) == 2
    assert clf.stats.samples_nonfinite == 30


def test_hop_sized_pushes_skip_the_buffer_and_equal_offline(clip_dir, eeg):  # noqa: F811
    model = open_model(clip_dir, backend="onnx")
    x = eeg[:, :12000].copy()
    x[4, 6100] = np.nan
    offline = classify_offline(model, x)
    clf = StreamingClassifier(model)  # hop = n_times: a push of whole hops skips the buffer
    edges = [0, 1000, 2000, 4500, 5000, 6000, 7000, 9000, 12000]
    got = [r for a, b in zip(edges, edges[1:]) for r in clf.push(x[:, a:b])]
    _assert_identical(got, offline)
    assert [r.accepted for r in got].count(False) == 1 and len(got) == 12
    st = clf.stats
    assert st.samples_stream == st.samples_decided + st.samples_pending == 12000


def test_clip_is_applied_before_the_model(clip_dir, eeg):  # noqa: F811
    import onnxruntime as ort

    model = open_model(clip_dir, backend="onnx", precision="fp32")
    x = eeg[:, :3000] * 5  # many samples beyond ±50 µV
    w = np.stack([x[:, e - 1000:e] for e in (1000, 2000, 3000)])
    ref = ort.InferenceSession(str(clip_dir / "model.fp32.onnx")).run(
        None, {"eeg": (np.clip(w, -50, 50) * 0.01).astype(np.float32)})[0]
    got = np.stack([r.logits for r in classify_offline(model, x)])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_raise_policy_consumes_nothing_on_the_one_copy_path(clip_dir, eeg):  # noqa: F811
    clf = StreamingClassifier(open_model(clip_dir, backend="onnx"), nonfinite="raise")
    x = eeg[:, :1000].copy()
    x[0, 10] = np.inf
    with pytest.raises(NonFiniteError, match="1 of 1000"):
        clf.push(x)
    assert clf.stats.samples_received == 0 and clf.stats.samples_stream == 0
    assert len(clf.push(eeg[:, :1000])) == 1


def test_no_filter_no_scipy_a_filter_imports_it(clip_dir, model_dir, eeg, tmp_path):  # noqa: F811
    np.save(tmp_path / "x.npy", eeg[:, :12000])
    code = """
import json, sys
import numpy as np
from edge_runtime import StreamingClassifier, open_model
x = np.load({npy!r})
clf = StreamingClassifier(open_model({folder!r}, backend="onnx"))
n = sum(len(clf.push(x[:, i:i + 333])) for i in range(0, x.shape[1], 333))
print(json.dumps([n, "scipy" in sys.modules]))
"""
    for folder, needs in ((clip_dir, False), (model_dir, True)):
        out = run_python(code.format(npy=str(tmp_path / "x.npy"), folder=str(folder)))
        assert out.returncode == 0, out.stderr.decode()
        assert json.loads(out.stdout.decode().splitlines()[-1]) == [12, needs]


def test_profile_measures_in_a_fresh_process_and_times_a_cold_run(clip_dir):
    out = run_cli("profile", clip_dir, "--backend", "onnx", "--json", "--windows", "20",
                  "--warmup", "2", "--cold-runs", "1", timeout=600)
    assert out.returncode == 0, out.stderr.decode()
    rep = json.loads(out.stdout.decode())
    assert rep["decision_ratio"] == rep["decision_ms"]["p50"] / rep["latency_ms"]["p50"]
    assert len(rep["decision_samples_ms"]) == len(rep["latency_samples_ms"]) == 20
    cs = rep["cold_start"]
    assert cs["median_s"] > 0 and len(cs["runs_s"]) == 1 and cs["import_s"] > 0
    assert "--stdin" in cs["command"]
    # the profiling process holds no CLI (typer, pydantic, rich); a `run` process does
    assert 0 < rep["peak_rss_mb"] < cs["run_peak_rss_mb"]


def test_footprint_bench_writes_its_tables(clip_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "edge_footprint.py"), str(clip_dir),
         "--windows", "10", "--cold-runs", "1", "--out", str(tmp_path), "--name", "fp",
         "--installs", "checkout"],  # the board venv's pip install is left to the benchmark
        capture_output=True, timeout=1200, cwd=REPO)
    assert out.returncode in (0, 1), out.stderr.decode()  # 1: a goal missed on this fixture
    rep = json.loads((tmp_path / "fp.json").read_text())
    assert [(r["install"], r["backend"], r["preprocessing"].split()[0]) for r in rep["rows"]] \
        == [("checkout", "onnx", "as"), ("checkout", "tflite", "as"), ("checkout", "onnx", "+"),
            ("checkout", "tflite", "+")]
    for row in rep["rows"]:
        assert row["decision_ratio"] > 0 and row["peak_rss_mb"] > 0
    assert set(rep["goals_by_install"]["checkout"]) == {"onnx", "tflite"}
    assert rep["versions"]["checkout"]["numpy"] == np.__version__
    md = (tmp_path / "fp.md").read_text()
    assert "Written by `python" in md and "sosfilt" in md
