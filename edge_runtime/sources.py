"""Sample sources: EDF replay (edfio) and raw float32 samples from a binary stream.

EDF channels are matched to the manifest's names by label, tolerant to case, an
``EEG `` type prefix, a reference suffix (``-REF``, ``-LE``, ``-AR``, ``-AVG``) and the
old/new 10-20 names of the temporal electrodes (T3/T7, T4/T8, T5/P7, T6/P8). Physical
values are converted to µV from the signal's physical dimension. A recording at another
rate is resampled with `scipy.signal.resample_poly` over the whole file (zero-phase), or
refused with ``resample=False``.

Raw stdin format: little-endian float32 µV at the stated rate, either

- ``interleaved`` (default): frame after frame, each frame = one sample of every channel
  in manifest order (``c0 c1 … cC-1 c0 c1 …``), the usual device/DMA layout; or
- ``channel-major``: block after block of ``block`` samples, each block = channel 0's
  ``block`` samples, then channel 1's, … (i.e. a C-contiguous ``(C, block)`` array).

A stream that ends inside a frame or block is a `SourceError` naming the bytes left over,
raised after every complete sample has been yielded: nothing is dropped silently.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edge_runtime.errors import SourceError
from edge_runtime.resample import rational_ratio

_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
_ALIASES = {"t3": "t7", "t7": "t3", "t4": "t8", "t8": "t4", "t5": "p7", "p7": "t5",
            "t6": "p8", "p8": "t6"}
STDIN_LAYOUTS = ("interleaved", "channel-major")


@dataclass(frozen=True)
class Recording:
    """µV samples with their metadata."""

    data: np.ndarray  # (C, N) float64 µV
    sfreq: float  # Hz
    ch_names: tuple[str, ...]
    source: str  # where it came from (path)

    @property
    def duration_s(self) -> float:
        return self.data.shape[1] / self.sfreq


def normalize_label(label: str) -> str:
    """'EEG Fp1-REF' -> 'fp1'."""
    s = label.strip().lower()
    s = re.sub(r"^eeg[\s:_-]+", "", s)
    s = re.sub(r"[\s_-]+(ref|le|ar|avg)$", "", s)
    return s.strip()


def match_channels(labels: list[str], wanted: tuple[str, ...]) -> list[int]:
    """Index into ``labels`` of each wanted channel; SourceError naming what is missing."""
    norm = [normalize_label(lab) for lab in labels]
    picks, missing = [], []
    for name in wanted:
        idx = [i for i, lab in enumerate(labels) if lab == name]
        if not idx:
            key = normalize_label(name)
            idx = [i for i, n in enumerate(norm) if n == key]
            if not idx and key in _ALIASES:
                idx = [i for i, n in enumerate(norm) if n == _ALIASES[key]]
        if len(idx) > 1:
            raise SourceError(
                f"channel {name!r} matches several labels: {[labels[i] for i in idx]}."
            )
        if idx:
            picks.append(idx[0])
        else:
            missing.append(name)
    if missing:
        raise SourceError(
            f"the recording lacks channel(s) {missing} the model needs; it has {labels}."
        )
    return picks


def _to_uv(unit: str, label: str) -> float:
    factor = _UNIT_TO_UV.get(unit.strip().lower())
    if factor is None:
        raise SourceError(
            f"channel {label!r} has physical dimension {unit!r}; expected one of uV, mV, V, nV."
        )
    return factor


def read_edf(path: str | Path, ch_names: tuple[str, ...], sfreq: float, *,
             resample: bool = True) -> Recording:
    """Read the model's channels from an EDF/EDF+ file as µV at ``sfreq``.

    Parameters
    ----------
    path : EDF file.
    ch_names : channels in the order the model expects (the manifest's ``ch_names``).
    sfreq : the model's rate in Hz.
    resample : resample a file at another rate (rational factor) instead of refusing it.

    Raises
    ------
    SourceError : unreadable file, missing channels, unknown units, rate mismatch.
    """
    import edfio

    path = Path(path)
    try:
        edf = edfio.read_edf(path)
    except FileNotFoundError as exc:
        raise SourceError(f"EDF file {path} does not exist.") from exc
    except Exception as exc:  # edfio raises ValueError and friends on bad headers
        raise SourceError(f"{path} is not a readable EDF file: {exc}") from exc
    signals = list(edf.signals)
    picks = match_channels([s.label for s in signals], ch_names)
    rows = []
    for i in picks:
        sig = signals[i]
        x = np.asarray(sig.data, dtype=np.float64) * _to_uv(sig.physical_dimension, sig.label)
        rate = float(sig.sampling_frequency)
        if rate != sfreq:
            if not resample:
                raise SourceError(
                    f"{path} channel {sig.label!r} is sampled at {rate:g} Hz, the model "
                    f"expects {sfreq:g} Hz; allow resampling (--resample) or record at "
                    f"{sfreq:g} Hz."
                )
            x = _resample_poly(x, rate, sfreq)
        rows.append(x)
    n = min(len(r) for r in rows)
    data = np.stack([r[:n] for r in rows])  # (C, N)
    return Recording(data=data, sfreq=float(sfreq), ch_names=tuple(ch_names), source=str(path))


def _resample_poly(x: np.ndarray, src: float, dst: float) -> np.ndarray:
    from scipy.signal import resample_poly

    up, down = rational_ratio(src, dst)
    return resample_poly(x, up, down)


def replay(data: np.ndarray, sfreq: float, *, chunk_s: float = 0.25, realtime: bool = False,
           speed: float = 1.0) -> Iterator[np.ndarray]:
    """Yield (C, k) chunks of a recording, paced in real time (× ``speed``) if asked."""
    k = max(1, int(round(chunk_s * sfreq)))
    t0 = time.monotonic()
    for start in range(0, data.shape[1], k):
        if realtime:
            due = t0 + start / sfreq / speed
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield data[:, start:start + k]


def read_raw_stream(stream: BinaryIO, n_chans: int, *, layout: str = "interleaved",
                    block: int = 50) -> Iterator[np.ndarray]:
    """Yield (C, k) float32 µV chunks from a binary stream of float32 samples.

    ``block`` is the number of samples per channel read at a time (and, for
    ``channel-major``, the block length of the format). See the module docstring.
    """
    if layout not in STDIN_LAYOUTS:
        raise SourceError(f"stdin layout {layout!r} is unknown; use {' or '.join(STDIN_LAYOUTS)}.")
    if block < 1:
        raise SourceError(f"block must be >= 1 sample, got {block}.")
    frame = 4 * n_chans * block
    while True:
        buf = _read_full(stream, frame)
        if not buf:
            return
        usable = len(buf) - len(buf) % (4 * n_chans)
        if layout == "channel-major" and len(buf) != frame:
            usable = 0
        if usable:
            x = np.frombuffer(buf[:usable], dtype="<f4")
            if layout == "interleaved":
                yield x.reshape(-1, n_chans).T  # (C, k)
            else:
                yield x.reshape(n_chans, block)  # (C, block)
        if usable != len(buf):
            unit = (f"{n_chans} float32 per frame" if layout == "interleaved"
                    else f"blocks of {n_chans}x{block} float32")
            raise SourceError(
                f"the sample stream ended mid-{'frame' if layout == 'interleaved' else 'block'}:"
                f" {len(buf) - usable} bytes left over ({unit} expected)."
            )


def _read_full(stream: BinaryIO, n: int) -> bytes:
    """Read up to n bytes, short only at end of stream."""
    parts, got = [], 0
    while got < n:
        b = stream.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)
