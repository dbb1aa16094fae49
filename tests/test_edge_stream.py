"""Streaming classifier: streaming ≡ offline, NaN/gap policy, accounting, shapes."""

from __future__ import annotations

import numpy as np
import pytest
from edge_fixtures import copy_model_dir, eeg, model_dir  # noqa: F401  (pytest fixtures)

from edge_runtime import (
    ChannelMismatchError,
    NonFiniteError,
    StreamingClassifier,
    classify_offline,
    open_model,
)


@pytest.fixture(scope="module")
def onnx32(model_dir):  # noqa: F811
    return open_model(model_dir, backend="onnx", precision="fp32")


def _stream(clf, x, rng, *, gaps=()):
    """Push x in random chunk sizes (0, 1, small, large, the whole rest)."""
    results, pos = [], 0
    while pos < x.shape[1]:
        kind = rng.integers(0, 5)
        k = [0, 1, int(rng.integers(2, 300)), int(rng.integers(300, 6000)), x.shape[1]][kind]
        results += clf.push(x[:, pos:pos + k])
        pos += k
    return results


def _assert_same(stream, offline, atol=1e-5):
    assert len(stream) == len(offline) > 0
    for s, o in zip(stream, offline):
        assert (s.index, s.start, s.stop, s.t_end, s.accepted, s.n_bad) == \
               (o.index, o.start, o.stop, o.t_end, o.accepted, o.n_bad)
        assert s.label == o.label
        if s.accepted:
            np.testing.assert_allclose(s.logits, o.logits, atol=atol, rtol=0)
            np.testing.assert_allclose(s.probabilities, o.probabilities, atol=atol, rtol=0)


@pytest.mark.parametrize("backend,precision", [("onnx", "fp32"), ("tflite", "fp32"),
                                               ("onnx", "int8"), ("tflite", "int8")])
def test_streaming_equals_offline_for_random_chunks(model_dir, eeg, backend, precision):  # noqa: F811
    model = open_model(model_dir, backend=backend, precision=precision)
    x = eeg[:, :12000]  # 60 s
    offline = classify_offline(model, x, hop=250)
    for seed in range(2):
        clf = StreamingClassifier(model, hop=250)
        _assert_same(_stream(clf, x, np.random.default_rng(seed)), offline)
    labels = {r.label for r in offline}
    assert labels == {"rest", "task"}, "fixture should produce both classes"


def test_offline_matches_an_independent_reference(model_dir, eeg, onnx32):  # noqa: F811
    import json

    import onnxruntime as ort
    from scipy.signal import sosfilt

    manifest = json.loads((model_dir / "manifest.json").read_text())
    sos = np.asarray(manifest["input"]["preprocessing"][0]["sos"])
    x = eeg[:, :6000]
    y = sosfilt(sos, x, axis=1)
    windows = np.stack([y[:, e - 1000:e] for e in range(1000, 6001, 500)])
    windows = ((windows - windows.mean(-1, keepdims=True)) * 0.01).astype(np.float32)
    sess = ort.InferenceSession(str(model_dir / "model.fp32.onnx"))
    ref = sess.run(None, {"eeg": windows})[0]
    got = np.stack([r.logits for r in classify_offline(onnx32, x, hop=500)])
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_zero_length_and_one_huge_push(eeg, onnx32):  # noqa: F811
    clf = StreamingClassifier(onnx32, hop=500)
    assert clf.push(np.zeros((19, 0))) == []
    assert clf.push(eeg[:, :0]) == []
    assert clf.stats.samples_received == 0
    results = clf.push(eeg)  # 182 s in one call, processed in slices internally
    clf2 = StreamingClassifier(onnx32, hop=500, max_slice=777)
    _assert_same(results, classify_offline(onnx32, eeg, hop=500))
    _assert_same(clf2.push(eeg), results)
    assert clf.push(np.empty((19, 0))) == []
    st = clf.stats
    assert st.samples_received == eeg.shape[1]
    assert st.windows_emitted == (eeg.shape[1] - 1000) // 500 + 1


def test_nan_burst_rejects_touched_windows_and_filter_recovers(eeg, onnx32):  # noqa: F811
    from scipy.signal import sosfilt

    x = eeg[:, :8000].copy()
    x[3, 3000:3050] = np.nan
    x[7, 3020] = np.inf
    clf = StreamingClassifier(onnx32, hop=250)
    results = _stream(clf, x, np.random.default_rng(3))
    _assert_same(results, classify_offline(onnx32, x, hop=250))
    for r in results:
        touched = r.start < 3050 and r.stop > 3000
        assert r.accepted == (not touched), r
        assert r.n_bad == (max(0, min(r.stop, 3050) - max(r.start, 3000)) if touched else 0)
        if r.accepted:
            assert np.isfinite(r.logits).all()
    st = clf.stats
    assert st.samples_nonfinite == 50
    assert st.windows_rejected == sum(not r.accepted for r in results) == 4
    assert st.windows_emitted + st.windows_rejected == len(results)
    # The filter state was never poisoned: later windows equal the reference computed on
    # the recording with each non-finite sample held at the channel's last finite value.
    held = x.copy()
    held[3, 3000:3050] = held[3, 2999]
    held[7, 3020] = held[7, 3019]
    ref = classify_offline(onnx32, held, hop=250)
    for r, o in zip(results, ref):
        if r.accepted:
            np.testing.assert_allclose(r.logits, o.logits, atol=1e-5)
    manifest_sos = np.asarray(onnx32.manifest.input.preprocessing[0]["sos"])
    assert np.isfinite(sosfilt(manifest_sos, held, axis=1)).all()


def test_declared_gap_takes_its_place_in_time(eeg, onnx32):  # noqa: F811
    clf = StreamingClassifier(onnx32, hop=500)
    first = clf.push(eeg[:, :2600])
    during = clf.push_gap(300) + clf.push_gap(0)
    after = clf.push(eeg[:, 2600:6000])
    results = first + during + after
    st = clf.stats
    assert st.samples_gap == 300 and st.samples_received == 6000
    assert st.samples_stream == 6300
    assert [r.stop for r in results] == list(range(1000, 6301, 500))
    for r in results:
        overlaps = r.start < 2900 and r.stop > 2600
        assert r.accepted == (not overlaps)
    assert st.windows_rejected == sum(not r.accepted for r in results) == 2
    # same as offline on the recording with the gap filled with NaN
    x = np.concatenate([eeg[:, :2600], np.full((19, 300), np.nan), eeg[:, 2600:6000]], 1)
    _assert_same(results, classify_offline(onnx32, x, hop=500))


def test_wrong_channel_count_is_a_value_error_and_consumes_nothing(eeg, onnx32):  # noqa: F811
    clf = StreamingClassifier(onnx32)
    clf.push(eeg[:, :100])
    with pytest.raises(ChannelMismatchError, match="n_chans=19.*\\(18, 50\\)"):
        clf.push(eeg[:18, :50])
    with pytest.raises(ValueError, match="pass samples.T"):
        clf.push(eeg[:, :50].T)
    with pytest.raises(ChannelMismatchError):
        clf.push(eeg[0, :50])
    assert clf.stats.samples_received == 100


def test_raise_policy_refuses_nonfinite_and_gaps_without_consuming(eeg, onnx32):  # noqa: F811
    clf = StreamingClassifier(onnx32, nonfinite="raise")
    x = eeg[:, :1500].copy()
    x[0, 10] = np.nan
    with pytest.raises(NonFiniteError, match="1 of 1500"):
        clf.push(x)
    with pytest.raises(NonFiniteError, match="gap"):
        clf.push_gap(10)
    assert clf.stats.samples_received == 0 and clf.stats.samples_gap == 0
    assert len(clf.push(eeg[:, :1500])) == 1
    with pytest.raises(ValueError, match="unknown"):
        StreamingClassifier(onnx32, nonfinite="ignore")


def test_hold_policy_classifies_repaired_windows(eeg, onnx32):  # noqa: F811
    x = eeg[:, :3000].copy()
    x[:, 1500:1510] = np.nan
    clf = StreamingClassifier(onnx32, nonfinite="hold", hop=500)
    results = clf.push(x)
    assert all(r.accepted for r in results)
    assert [r.n_bad for r in results] == [0, 0, 10, 10, 0]
    assert clf.stats.windows_repaired == 2 and clf.stats.windows_rejected == 0


def test_hop_longer_than_window_skips_and_counts(eeg, onnx32):  # noqa: F811
    clf = StreamingClassifier(onnx32, hop=1300)
    results = _stream(clf, eeg[:, :9000], np.random.default_rng(5))
    _assert_same(results, classify_offline(onnx32, eeg[:, :9000], hop=1300))
    st = clf.stats
    assert [r.stop for r in results] == list(range(1000, 9001, 1300))
    assert st.samples_skipped == (len(results) - 1) * 300
    assert st.samples_stream == st.samples_decided + st.samples_pending


def test_accounting_identity_holds_throughout(eeg, onnx32):  # noqa: F811
    rng = np.random.default_rng(11)
    clf = StreamingClassifier(onnx32, hop=333)
    pos = n_results = 0
    for _ in range(60):
        if rng.random() < 0.15:
            n_results += len(clf.push_gap(int(rng.integers(0, 400))))
        else:
            k = int(rng.integers(0, 900))
            n_results += len(clf.push(eeg[:, pos:pos + k]))
            pos += k
        st = clf.stats
        assert st.samples_received == pos
        assert st.samples_stream == st.samples_received + st.samples_gap
        assert st.samples_stream == st.samples_decided + st.samples_pending
        assert 0 <= st.samples_pending < 1000 + 333
        assert st.windows_decided == n_results
    assert st.pipeline_s >= st.model_s > 0


def test_device_rate_is_resampled_statefully(model_dir, onnx32):  # noqa: F811
    from edge_fixtures import CH_NAMES, EEG_FILE

    from edge_runtime.sources import read_edf

    raw = read_edf(EEG_FILE, CH_NAMES, 500.0).data[:, :25000]  # 50 s at the device rate
    clf = StreamingClassifier(onnx32, device_sfreq=500.0, hop=500)
    stream = _stream(clf, raw, np.random.default_rng(2))
    offline = classify_offline(onnx32, raw, sfreq=500.0, hop=500)
    _assert_same(stream, offline)
    assert clf.stats.samples_received == 25000
    assert clf.stats.samples_stream == 10000
    # A NaN at the device rate rejects the windows its resampling filter reaches.
    bad = raw.copy()
    bad[0, 12500] = np.nan
    rejected = [r for r in classify_offline(onnx32, bad, sfreq=500.0, hop=500)
                if not r.accepted]
    assert rejected and all(r.start <= 5000 < r.stop for r in rejected)


def test_streaming_resampler_is_resample_poly_delayed():
    from edge_fixtures import CH_NAMES, EEG_FILE
    from scipy.signal import resample_poly

    from edge_runtime.resample import StreamingResampler
    from edge_runtime.sources import read_edf

    raw = read_edf(EEG_FILE, CH_NAMES, 500.0).data[:, :10000]
    rs = StreamingResampler(500.0, 200.0, len(CH_NAMES))
    rng = np.random.default_rng(0)
    parts, pos = [], 0
    while pos < raw.shape[1]:
        k = int(rng.integers(0, 700))
        parts.append(rs.process(raw[:, pos:pos + k], np.zeros(raw[:, pos:pos + k].shape[1],
                                                              bool))[0])
        pos += k
    y = np.concatenate(parts, axis=1)
    ref = resample_poly(raw, 2, 5, axis=1)
    d = int(rs.delay)
    assert y.shape == ref.shape and d == 10  # 50 ms causal delay at 200 Hz
    # away from the edges (resample_poly pads the ends), the stream is ref delayed by d
    np.testing.assert_allclose(y[:, 100 + d:-100], ref[:, 100:-100 - d], atol=1e-9)
