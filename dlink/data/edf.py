"""Reading one EDF recording with MNE, with checks that turn bad files into clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlink.data import channels
from dlink.errors import DataFormatError, DataNotFoundError


def edf_shortfall(path: Path) -> tuple[float, float]:
    """(seconds the EDF header promises, seconds of complete data records in the file).

    The rule `edge_runtime.sources.edf_shortfall` applies on the board (edge_runtime imports
    no dlink code, so it is written in both). A record count of -1 promises what is there.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256 or not head[:8].strip().isdigit():
            raise DataFormatError(f"{path} is not an EDF file ({size} bytes, no EDF header)")
        try:
            header_bytes, n_records = int(head[184:192]), int(head[236:244])
            record_s, n_signals = float(head[244:252]), int(head[252:256])
            f.seek(256 + n_signals * 216)
            record_bytes = 2 * sum(int(f.read(8)) for _ in range(n_signals))
        except ValueError as exc:
            raise DataFormatError(f"{path} has a malformed EDF header: {exc}") from exc
    if record_bytes <= 0 or size < header_bytes:
        raise DataFormatError(f"{path} has a malformed EDF header ({size} bytes)")
    present = (size - header_bytes) // record_bytes
    promised = present if n_records < 0 else n_records
    return promised * record_s, min(present, promised) * record_s


def check_edf_complete(path: Path, strict: bool = False) -> float:
    """Seconds of complete data in ``path``; a file shorter than its header promises gets
    one warning line saying how many seconds are missing, or with ``strict`` a
    `DataFormatError`."""
    from dlink.console import stderr

    promised, present = edf_shortfall(Path(path))
    if present < promised:
        msg = (f"{Path(path).name} is truncated: {promised - present:g} s of the {promised:g} s "
               f"its header promises are missing")
        if strict:
            raise DataFormatError(f"{msg}; fetch it again (`dlink data fetch`)")
        stderr.print(f"[bold yellow]warning:[/] {msg}; using the first {present:g} s.",
                     highlight=False, soft_wrap=True)
    return present


def read_edf_uv(
    path: Path,
    ch_names: Sequence[str],
    *,
    channel_map: dict[str, str] | None = None,
    expected_sfreq: float | None = None,
    target_sfreq: float | None = None,
    strict: bool = False,
    quiet: bool = False,
):
    """Read `ch_names` (in that order) from an EDF as µV, resampled to `target_sfreq`.

    Parameters
    ----------
    path : the EDF file.
    ch_names : canonical channel names wanted, in output order, found among the file's
        labels by the rule the board uses (`dlink.data.channels`: ``EEG Fp1`` -> Fp1,
        ``T7..`` -> T3, ...).
    channel_map : name -> file label, for names the rule does not find.
    expected_sfreq : the rate the data set is recorded at, Hz; another rate is an error.
    target_sfreq : resample to this rate, Hz (`resample_uv`, the board's rule).
    strict : a truncated file is an error (else one warning line; the complete records
        are used).
    quiet : no warning line (the caller already said it).

    Returns
    -------
    raw : ``mne.io.Raw`` with only ``ch_names``, data in volts (MNE's convention), at the
        file's own rate.
    data_uv : (C, T) float32 array in µV at ``target_sfreq``.
    """

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"recording {path} does not exist: run `dlink data fetch`")
    present_s = check_edf_complete(path, strict) if not quiet else edf_shortfall(path)[1]
    raw = read_raw_quietly(path)
    try:
        match = channels.match_channels(raw.ch_names, ch_names, channel_map)
    except channels.ChannelMatchError as exc:
        raise DataFormatError(f"{path.name}: {exc}") from exc
    raw.pick(list(match.labels))
    raw.rename_channels(dict(zip(match.labels, ch_names)))
    if raw.times[-1] >= present_s:  # never the padding of an incomplete last record
        raw.crop(0, present_s, include_tmax=False)
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


def read_raw_quietly(path: Path):
    """``mne.io.read_raw_edf`` (preloaded) with MNE's and Python's warnings silenced: DLink
    reports problems itself, in one line."""
    import warnings

    import mne

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mne.io.read_raw_edf(path, preload=True, verbose="error")
    except Exception as exc:  # MNE raises bare ValueError/RuntimeError on broken files
        raise DataFormatError(f"{path} could not be read as EDF: {exc}") from exc


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
