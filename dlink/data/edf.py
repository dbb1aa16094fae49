"""Reading one EDF recording with MNE, with checks that turn bad files into clear errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dlink.errors import DataFormatError, DataNotFoundError


def check_edf_complete(path: Path) -> None:
    """Raise `DataFormatError` if the file is shorter than its EDF header promises."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256:
            raise DataFormatError(f"{path} is not an EDF file (only {size} bytes)")
        try:
            header_bytes = int(head[184:192])
            n_records = int(head[236:244])
            n_signals = int(head[252:256])
            f.seek(256 + n_signals * 216)
            spr = [int(f.read(8)) for _ in range(n_signals)]
        except ValueError as exc:
            raise DataFormatError(f"{path} has a malformed EDF header: {exc}") from exc
    if n_records < 0:
        return  # length unknown to the header (allowed by the spec)
    expected = header_bytes + n_records * 2 * sum(spr)
    if size < expected:
        raise DataFormatError(
            f"{path} is truncated: {size} bytes, its header promises {expected}; "
            "fetch it again (`dlink data fetch`)"
        )


def read_edf_uv(
    path: Path,
    ch_names: Sequence[str],
    *,
    rename: Callable[[str], str] = lambda name: name,
    expected_sfreq: float | None = None,
    target_sfreq: float | None = None,
):
    """Read `ch_names` (in that order) from an EDF as µV, resampled to `target_sfreq`.

    Parameters
    ----------
    path : the EDF file.
    ch_names : canonical channel names wanted, in output order.
    rename : maps a file label (e.g. ``"EEG Fp1"``) to a canonical name (``"Fp1"``).
    expected_sfreq : the rate the data set is recorded at, Hz; another rate is an error.
    target_sfreq : resample to this rate, Hz (`resample_uv`, the board's rule).

    Returns
    -------
    raw : ``mne.io.Raw`` with only ``ch_names``, data in volts (MNE's convention), at the
        file's own rate.
    data_uv : (C, T) float32 array in µV at ``target_sfreq``.
    """
    import mne

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"recording {path} does not exist: run `dlink data fetch`")
    check_edf_complete(path)
    try:
        raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
    except Exception as exc:  # MNE raises bare ValueError/RuntimeError on broken files
        raise DataFormatError(f"{path} could not be read as EDF: {exc}") from exc
    raw.rename_channels({c: rename(c) for c in raw.ch_names})
    missing = [c for c in ch_names if c not in raw.ch_names]
    if missing:
        raise DataFormatError(
            f"{path.name} lacks channel(s) {', '.join(missing)}; it has {', '.join(raw.ch_names)}"
        )
    raw.pick(list(ch_names))
    sfreq = raw.info["sfreq"]
    if expected_sfreq is not None and abs(sfreq - expected_sfreq) > 1e-6:
        raise DataFormatError(
            f"{path.name} is sampled at {sfreq:g} Hz, this data set is recorded at "
            f"{expected_sfreq:g} Hz; is it the right file?"
        )
    finite = np.isfinite(raw.get_data())
    if not finite.all():
        bad = [ch_names[i] for i in np.flatnonzero(~finite.all(axis=1))]
        raise DataFormatError(f"{path.name} has NaN/Inf samples in channel(s) {', '.join(bad)}")
    data = raw.get_data() * 1e6  # (C, T) float64 µV
    if target_sfreq is not None and abs(sfreq - target_sfreq) > 1e-6:
        data = resample_uv(data, sfreq, target_sfreq)
    return raw, data.astype(np.float32)


def resample_uv(x: np.ndarray, src: float, dst: float) -> np.ndarray:
    """(C, T) samples at ``src`` Hz -> ``dst`` Hz over the whole record (zero-phase).

    DLink's one resampling rule, shared with the board: `scipy.signal.resample_poly` with
    the exact rational factor dst/src (denominator <= 1000) and its default Kaiser filter,
    the call `edge_runtime.sources.read_edf` makes (edge_runtime imports no dlink code, so
    the rule is written in both; ``tests/test_train_serve_parity.py`` holds them equal on
    real recordings). MNE's FFT resampling, used before, put samples 2.5 ms later than the
    board's at 500 -> 200 Hz (16 µV apart on EEGMAT).
    """
    from fractions import Fraction

    from scipy.signal import resample_poly

    frac = Fraction(dst / src).limit_denominator(1000)
    if abs(frac.numerator / frac.denominator - dst / src) > 1e-9:
        raise DataFormatError(f"cannot resample {src:g} Hz to {dst:g} Hz with a rational factor")
    return resample_poly(np.asarray(x, dtype=np.float64), frac.numerator, frac.denominator, axis=1)


def cut_windows(data: np.ndarray, n_times: int) -> np.ndarray:
    """(C, T) -> (n, C, n_times) non-overlapping windows; the incomplete tail is dropped."""
    n = data.shape[1] // n_times
    return data[:, : n * n_times].reshape(data.shape[0], n, n_times).transpose(1, 0, 2)
