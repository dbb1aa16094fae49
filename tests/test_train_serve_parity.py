"""Train/serve parity: the windows training reads (`dlink.data`, MNE + `resample_uv`) equal
the windows the board reads (`edge_runtime.sources.read_edf`, edfio + the same
`resample_poly` rule) on real recordings, at 500 -> 200 Hz (EEGMAT) and 160 -> 200 Hz
(PhysioNet-MI S001). Measured max |difference|: 3.0e-5 µV on all 36 EEGMAT subjects and on
S001 (float32 rounding; signals of 11 and 57 µV RMS); before the shared rule (MNE's FFT
resampling in training) it was 16 µV at 500 -> 200 Hz.

Also the streaming resampler (`edge_runtime.resample.StreamingResampler`): chunked equals
whole, equals the causal zero-stuffed filter it replaces, and is polyphase (it never
touches the zero-stuffed samples).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.resample import StreamingResampler
from edge_runtime.sources import read_edf

TOL_UV = 1e-3  # µV; measured 3.0e-5 (float32 rounding)


def _cut(data: np.ndarray, starts, n_times: int) -> np.ndarray:
    return np.stack([data[:, i : i + n_times] for i in starts])


def test_eegmat_windows_equal_the_boards_at_500_to_200_hz(shared_data):
    from dlink.data import load_windows

    w = load_windows("eegmat", subjects=["00", "35"])
    for subject in ("00", "35"):
        for k in (1, 2):
            rec = read_edf(shared_data / "eegmat" / f"Subject{subject}_{k}.edf", w.ch_names, 200.0)
            board = _cut(rec.data, range(0, rec.data.shape[1] - 999, 1000), 1000)
            train = w.X[(w.subject == subject) & (w.y == k - 1)]
            assert board.shape == train.shape, (board.shape, train.shape)
            diff = np.abs(board - train).max()
            assert diff < TOL_UV, f"Subject{subject}_{k}: max |diff| {diff:.3g} µV"


def test_eegmmidb_windows_equal_the_boards_at_160_to_200_hz(shared_data):
    import mne

    from dlink.data import load_windows
    from dlink.data.eegmmidb import RUNS, run_path

    w = load_windows("eegmmidb", subjects=[1])
    board = []
    for run in RUNS:
        path = run_path(shared_data, 1, run)
        onsets = [a["onset"] for a in mne.read_annotations(path) if a["description"] in ("T1", "T2")]
        rec = read_edf(path, w.ch_names, 200.0)
        starts = [int(round(t * 200.0)) for t in onsets]
        board.append(_cut(rec.data, [i for i in starts if i + 800 <= rec.data.shape[1]], 800))
    board = np.concatenate(board)
    assert board.shape == w.X.shape, (board.shape, w.X.shape)
    diff = np.abs(board - w.X).max()
    assert diff < TOL_UV, f"max |diff| {diff:.3g} µV"


@pytest.mark.parametrize(("src", "dst"), [(500, 200), (160, 200), (256, 200)])
def test_streaming_resampler_is_chunk_invariant_and_equals_the_zero_stuffed_filter(src, dst):
    from scipy.signal import lfilter

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3001)) * 30
    bad = rng.random(3001) < 0.002
    whole, whole_bad = StreamingResampler(src, dst, 3).process(x, bad)
    rs, outs, masks, i = StreamingResampler(src, dst, 3), [], [], 0
    for size in [1, 2, 7, 1, 500, 3, 999, 64] * 10:
        if i >= x.shape[1]:
            break
        y, m = rs.process(x[:, i : i + size], bad[i : i + size])
        outs.append(y)
        masks.append(m)
        i += size
    assert np.array_equal(np.concatenate(outs, axis=1), whole)
    assert np.array_equal(np.concatenate(masks), whole_bad)
    # The filter it implements: zero-stuff by up, causal FIR h, keep every down-th sample.
    up, down, h = rs.up, rs.down, rs.h
    xu = np.zeros((3, x.shape[1] * up))
    xu[:, ::up] = x
    ref = lfilter(h, [1.0], xu, axis=1)[:, ::down]
    np.testing.assert_allclose(whole, ref, atol=1e-9)
    ref_bad = lfilter(np.ones(len(h)), [1.0], np.repeat(bad, up) * (np.arange(bad.size * up) % up == 0))
    assert np.array_equal(whole_bad, ref_bad[::down] > 0.5)


def test_streaming_resampler_does_polyphase_work(monkeypatch):
    """It filters with scipy's polyphase `upfirdn` on the input-rate samples only: the arrays
    it filters never hold the zero-stuffed up-sampled signal."""
    import scipy.signal

    seen = []
    real = scipy.signal.upfirdn

    def spy(h, x, up=1, down=1, axis=-1):
        seen.append(np.shape(x)[-1])
        return real(h, x, up, down, axis=axis)

    monkeypatch.setattr(scipy.signal, "upfirdn", spy)
    rs = StreamingResampler(160, 200, 2)
    y, _ = rs.process(np.ones((2, 1600)), np.zeros(1600, bool))
    assert y.shape[1] == 2000 and seen and max(seen) < 1600 + len(rs.h)  # never 1600 * up
