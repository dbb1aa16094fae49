"""Sample sources: EDF replay with edfio (real EEGMAT file) and raw float32 streams."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from edge_fixtures import CH_NAMES, EEG_FILE

from edge_runtime import SourceError
from edge_runtime.sources import match_channels, read_edf, read_raw_stream, replay


@pytest.fixture(scope="module")
def edf():
    import edfio

    return edfio.read_edf(EEG_FILE)


def test_edf_channels_are_matched_by_name_and_kept_in_uv(edf):
    rec = read_edf(EEG_FILE, CH_NAMES, 500.0)  # native rate: no resampling
    assert rec.data.shape == (19, 91000) and rec.sfreq == 500.0
    labels = [s.label for s in edf.signals]
    for i, name in enumerate(CH_NAMES):
        np.testing.assert_array_equal(rec.data[i], edf.signals[labels.index(f"EEG {name}")].data)


def test_edf_at_another_rate_is_resampled_or_refused(edf):
    from scipy.signal import resample_poly

    rec = read_edf(EEG_FILE, CH_NAMES, 200.0)
    assert rec.data.shape == (19, 36400) and rec.duration_s == pytest.approx(182.0)
    np.testing.assert_allclose(rec.data[0], resample_poly(edf.signals[0].data, 2, 5))
    with pytest.raises(SourceError, match="sampled at 500 Hz, the model expects 200 Hz"):
        read_edf(EEG_FILE, CH_NAMES, 200.0, resample=False)
    with pytest.raises(SourceError, match="rational"):
        read_edf(EEG_FILE, CH_NAMES, 500.0 * np.pi)


def test_edf_missing_channel_and_file():
    with pytest.raises(SourceError, match=r"lacks channel\(s\) \['Oz'\]"):
        read_edf(EEG_FILE, ("Fp1", "Oz"), 500.0)
    with pytest.raises(SourceError, match="does not exist"):
        read_edf("/nonexistent.edf", CH_NAMES, 200.0)


def test_channel_labels_are_matched_tolerantly():
    labels = ["EEG FP1-REF", "eeg Fp2-LE", "EEG T7", "ECG ECG", "Cz"]
    assert match_channels(labels, ("Fp1", "Fp2", "T3", "Cz")) == [0, 1, 2, 4]
    with pytest.raises(SourceError, match="several labels"):
        match_channels(["EEG Fp1", "Fp1-REF"], ("FP1",))


def test_edf_units_are_converted_to_uv(tmp_path):
    import edfio

    x = np.sin(np.linspace(0, 20, 400)) * 0.05  # mV
    sigs = [edfio.EdfSignal(x, sampling_frequency=200, label=f"EEG {n}",
                            physical_dimension="mV") for n in ("Cz", "Pz")]
    sigs.append(edfio.EdfSignal(x, sampling_frequency=200, label="EEG Fz",
                                physical_dimension="degC"))
    path = tmp_path / "mv.edf"
    edfio.Edf(sigs).write(path)
    rec = read_edf(path, ("Pz", "Cz"), 200.0)
    np.testing.assert_allclose(rec.data[0], x * 1000, atol=0.05)  # 16-bit digitisation
    with pytest.raises(SourceError, match="'EEG Fz' has physical dimension 'degC'"):
        read_edf(path, ("Fz",), 200.0)


def test_replay_chunks_and_realtime_pace():
    data = np.arange(2 * 1000, dtype=float).reshape(2, 1000)
    chunks = list(replay(data, 200.0, chunk_s=0.3))
    assert [c.shape[1] for c in chunks] == [60] * 16 + [40]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), data)
    t0 = time.monotonic()
    list(replay(data[:, :200], 200.0, chunk_s=0.25, realtime=True, speed=4.0))
    assert 0.18 <= time.monotonic() - t0 < 1.0  # 1 s of data at 4x, last chunk at 0.1875 s


@pytest.mark.parametrize("layout", ["interleaved", "channel-major"])
def test_raw_stream_layouts_round_trip(layout):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, (19, 200)).astype(np.float32)  # (C, n)
    if layout == "interleaved":
        raw = x.T.astype("<f4").tobytes()  # frame after frame
    else:
        raw = b"".join(x[:, i:i + 50].astype("<f4").tobytes() for i in range(0, 200, 50))
    got = np.concatenate(list(read_raw_stream(io.BytesIO(raw), 19, layout=layout, block=50)),
                         axis=1)
    np.testing.assert_array_equal(got, x)


def test_raw_stream_that_ends_mid_frame_reports_leftover_bytes():
    x = np.ones((19, 30), np.float32)
    raw = x.T.tobytes() + b"\x00" * 10
    chunks = []
    with pytest.raises(SourceError, match="ended mid-frame: 10 bytes left over"):
        for c in read_raw_stream(io.BytesIO(raw), 19, block=7):
            chunks.append(c)
    assert sum(c.shape[1] for c in chunks) == 30  # every complete sample was delivered
    with pytest.raises(SourceError, match="mid-block"):
        list(read_raw_stream(io.BytesIO(x.tobytes()), 19, layout="channel-major", block=50))
