"""Sample sources: EDF replay (edfio) and raw float32 samples from a binary stream.

EDF channels are matched to the manifest's names by `edge_runtime.channels` (case, an
``EEG `` prefix, BCI2000's trailing dots, reference suffixes, T3/T7, T4/T8, T5/P7, T6/P8,
and an optional user map), the rule the training loaders share. Physical values are
converted to µV from the signal's physical dimension. A recording at another rate is
resampled with `scipy.signal.resample_poly` over the whole file (zero-phase), or refused
with ``resample=False``. A file shorter than its header promises (a truncated copy) is
read up to its last complete data record and ``Recording.missing_s`` says how many
seconds are missing; ``strict=True`` makes it a `SourceError`. edfio's own warnings are
never shown: DLink says it in one line.

Raw stdin format: little-endian float32 µV at the stated rate, either

- ``interleaved`` (default): frame after frame, each frame = one sample of every channel
  in manifest order (``c0 c1 … cC-1 c0 c1 …``), the usual device/DMA layout; or
- ``channel-major``: block after block of ``block`` samples, each block = channel 0's
  ``block`` samples, then channel 1's, … (i.e. a C-contiguous ``(C, block)`` array).

A stream that ends inside a frame or block is a `SourceError` naming the bytes left over,
raised after every complete sample has been yielded: nothing is dropped silently.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edge_runtime import channels
from edge_runtime.errors import SourceError
from edge_runtime.resample import rational_ratio

_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
STDIN_LAYOUTS = ("interleaved", "channel-major")


@dataclass(frozen=True)
class Recording:
    """µV samples with their metadata."""

    data: np.ndarray  # (C, N) float64 µV
    sfreq: float  # Hz
    ch_names: tuple[str, ...]
    source: str  # where it came from (path)
    mapping: str = ""  # how the channels were found (`ChannelMatch.describe`)
    missing_s: float = 0.0  # seconds the file's header promises but the file lacks
    flat: tuple[str, ...] = ()  # model channels whose samples are all equal (dead electrode)

    @property
    def duration_s(self) -> float:
        return self.data.shape[1] / self.sfreq


def match_channels(labels: list[str], wanted: tuple[str, ...],
                   channel_map: dict[str, str] | None = None) -> list[int]:
    """Index into ``labels`` of each wanted channel (`edge_runtime.channels` rule)."""
    return list(find_channels(labels, wanted, channel_map).picks)


def find_channels(labels, wanted, channel_map=None) -> channels.ChannelMatch:
    """`channels.match_channels` with its errors as `SourceError`."""
    try:
        return channels.match_channels(labels, wanted, channel_map)
    except channels.ChannelMatchError as exc:
        raise SourceError(str(exc)) from exc


def read_channel_map(path: str | Path) -> dict[str, str]:
    """A ``--channel-map`` file: JSON object or ``MODEL_NAME = RECORDING_LABEL`` lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"channel map {path} cannot be read: {exc}") from exc
    try:
        return channels.parse_channel_map(text, source=f"channel map {path}")
    except channels.ChannelMatchError as exc:
        raise SourceError(str(exc)) from exc


def edf_shortfall(path: str | Path) -> tuple[float, float]:
    """(seconds the EDF header promises, seconds of complete data records in the file).

    Reads only the header; SourceError if it is not an EDF header. A header with an
    unknown record count (-1) promises what the file holds.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256 or not head[:8].strip().isdigit():
            raise SourceError(f"{path} is not an EDF file ({size} bytes, no EDF header).")
        try:
            header_bytes, n_records = int(head[184:192]), int(head[236:244])
            record_s, n_signals = float(head[244:252]), int(head[252:256])
            f.seek(256 + n_signals * 216)
            record_bytes = 2 * sum(int(f.read(8)) for _ in range(n_signals))
        except ValueError as exc:
            raise SourceError(f"{path} has a malformed EDF header: {exc}") from exc
    if record_bytes <= 0 or size < header_bytes:
        raise SourceError(f"{path} has a malformed EDF header ({size} bytes, header "
                          f"{header_bytes} bytes, {record_bytes} bytes per record).")
    present = (size - header_bytes) // record_bytes
    promised = present if n_records < 0 else n_records
    return promised * record_s, min(present, promised) * record_s


def truncation_message(path: str | Path, promised_s: float, present_s: float) -> str:
    """The one line DLink says about a truncated EDF (runtime and training loaders)."""
    return (f"{Path(path).name} is truncated: {promised_s - present_s:g} s of the "
            f"{promised_s:g} s its header promises are missing; using the first "
            f"{present_s:g} s.")


def _to_uv(unit: str, label: str) -> float:
    factor = _UNIT_TO_UV.get(unit.strip().lower())
    if factor is None:
        raise SourceError(
            f"channel {label!r} has physical dimension {unit!r}; expected one of uV, mV, V, nV."
        )
    return factor


def read_edf(path: str | Path, ch_names: tuple[str, ...], sfreq: float, *,
             resample: bool = True, channel_map: dict[str, str] | None = None,
             strict: bool = False) -> Recording:
    """Read the model's channels from an EDF/EDF+ file as µV at ``sfreq``.

    Parameters
    ----------
    path : EDF file.
    ch_names : channels in the order the model expects (the manifest's ``ch_names``).
    sfreq : the model's rate in Hz.
    resample : resample a file at another rate (rational factor) instead of refusing it.
    channel_map : model name -> EDF label for names the matching rule does not find.
    strict : a file shorter than its header promises is an error, not a note.

    Raises
    ------
    SourceError : unreadable or truncated (strict) file, missing channels, unknown units,
        rate mismatch.
    """
    import edfio

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"EDF file {path} does not exist.")
    promised_s, present_s = edf_shortfall(path)
    if strict and present_s < promised_s:
        raise SourceError(truncation_message(path, promised_s, present_s).split(";")[0]
                          + " (--strict).")
    try:
        with warnings.catch_warnings():  # truncation is reported by us, in one line
            warnings.simplefilter("ignore")
            edf = edfio.read_edf(path)
    except Exception as exc:  # edfio raises ValueError and friends on bad headers
        raise SourceError(f"{path} is not a readable EDF file: {exc}") from exc
    signals = [s for s in edf.signals if s.label != "EDF Annotations"]
    match = find_channels([s.label for s in signals], ch_names, channel_map)
    rows = []
    for i in match.picks:
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
    if n == 0:
        raise SourceError(f"{path} holds no samples of the model's channels.")
    data = np.stack([r[:n] for r in rows])  # (C, N)
    flat = tuple(c for c, row in zip(ch_names, data) if np.ptp(row) == 0)
    return Recording(data=data, sfreq=float(sfreq), ch_names=tuple(ch_names), source=str(path),
                     mapping=match.describe(), missing_s=promised_s - present_s, flat=flat)


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
