"""Live input from a Lab Streaming Layer (LSL) stream, through mne-lsl's liblsl binding.

Optional: ``pip install 'dlink[edge,lsl]'`` (mne-lsl ships liblsl in its wheel; it brings
MNE, never torch). `LSLSource` finds a stream by name, checks its channels (the shared
`edge_runtime.channels` rule, plus a user map) and rate against the manifest, and yields
`LiveChunk`s of µV samples in model channel order.

Time stamps are synchronised to this machine's LSL clock (``clocksync``). Samples are
*dropped* when a chunk's first time stamp is later than expected (previous time stamp +
one period) by more than ``max(half a period, 20 ms)`` (the tolerance absorbs the jitter
of chunked time stamps; smaller losses are seen only through a counter) or, if the stream
has a channel named ``counter``, when the counter skips; the missing samples are passed
on as a gap so that windows stay aligned in time. End-to-end latency of a decision is the
local clock at the decision minus the time stamp of the window's last sample.

The stream has *stopped* when no sample arrives for ``stall_s`` seconds, and has
*vanished* when liblsl reports the connection lost or, after a quiet second, the stream
is no longer announced on the network; both end the iteration with
`StreamEnded` (its message says which), never a hang.

liblsl's own log lines are switched off (``[log] level = -3``) before it is first used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.errors import EdgeError, SourceError
from edge_runtime.sources import find_channels

_LIBLSL_CONFIG = "[log]\nlevel = -3\n"
_GAP_TOLERANCE_S = 0.02
_UNIT_WORDS = {"microvolts": 1.0, "microvolt": 1.0, "uv": 1.0, "µv": 1.0, "μv": 1.0,
               "millivolts": 1e3, "millivolt": 1e3, "mv": 1e3, "volts": 1e6, "volt": 1e6,
               "v": 1e6, "nanovolts": 1e-3, "nv": 1e-3}


class StreamEnded(EdgeError):
    """The live stream stopped sending or vanished; the message says which and when."""


def _lsl():
    """The mne-lsl binding, with liblsl's logging off; SourceError if not installed."""
    try:
        from mne_lsl import lsl
    except ImportError as exc:
        raise SourceError("live LSL input needs mne-lsl: pip install 'dlink[lsl]' "
                          "(it ships liblsl; no torch).") from exc
    if not getattr(_lsl, "configured", False):
        try:
            lsl.set_config_content(_LIBLSL_CONFIG)
        except Exception:  # older liblsl, or already initialised: keep its defaults
            pass
        _lsl.configured = True
    return lsl


def unit_factor(unit: str | None) -> float | None:
    """Factor to µV of an LSL channel unit ('microvolts', 'uV', MNE's exponent '-6' or '0'
    for volts); None if the unit is unknown or missing."""
    if unit is None:
        return None
    u = unit.strip().lower()
    if u in _UNIT_WORDS:
        return _UNIT_WORDS[u]
    try:
        return 10.0 ** (int(u) + 6)  # mne-lsl: unit_mul exponent of volts
    except ValueError:
        return None


@dataclass(frozen=True)
class LiveChunk:
    """Samples received in one pull, preceded by ``gap`` dropped samples."""

    samples: np.ndarray  # (C, n) float64 µV, model channel order, stream rate
    t_first: float  # LSL time stamp (local clock) of samples[:, 0], s
    gap: int = 0  # samples missing before this chunk


@dataclass
class LiveStats:
    """What the source saw: received and dropped samples, decision latencies."""

    samples_received: int = 0
    samples_dropped: int = 0
    latencies_s: list = field(default_factory=list)
    end_reason: str = ""

    def to_dict(self, windows_decided: int) -> dict:
        lat = np.asarray(self.latencies_s, dtype=float) * 1e3
        pct = {f"latency_{k}_ms": (float(np.percentile(lat, q)) if lat.size else None)
               for k, q in (("p50", 50), ("p95", 95))}
        return {"samples_received": self.samples_received,
                "samples_dropped": self.samples_dropped, "windows_decided": windows_decided,
                **pct, "end": self.end_reason}


class LSLSource:
    """A named LSL stream read as the model's input.

    Parameters
    ----------
    name : the stream's LSL name.
    ch_names : the model's channels (manifest order).
    sfreq : the model's rate, Hz; a stream at another rate is accepted when ``resample``.
    channel_map : model name -> stream label, for names the automatic rule misses.
    resolve_s : how long to look for the stream, s.
    stall_s : no sample for this long means the stream stopped, s.
    """

    def __init__(self, name: str, ch_names: tuple[str, ...], sfreq: float, *,
                 channel_map: dict[str, str] | None = None, resample: bool = True,
                 resolve_s: float = 10.0, stall_s: float = 5.0):
        self.name, self.stall_s = name, float(stall_s)
        self.stats = LiveStats()
        lsl = _lsl()
        infos = lsl.resolve_streams(timeout=resolve_s, name=name)
        if not infos:
            seen = sorted({i.name for i in lsl.resolve_streams(timeout=0.5)})
            raise SourceError(f"no LSL stream named {name!r} found within {resolve_s:g} s; "
                              f"streams visible now: {seen or 'none'}.")
        self._inlet = lsl.StreamInlet(infos[0], recover=False, processing_flags=["clocksync"])
        try:
            self._inlet.open_stream(timeout=resolve_s)
            info = self._inlet.get_sinfo(timeout=resolve_s)  # with channel names and units
        except Exception as exc:  # liblsl's TimeoutError/LostError
            raise SourceError(f"LSL stream {name!r} did not send its description within "
                              f"{resolve_s:g} s: {exc}") from exc
        self.sfreq = float(info.sfreq)
        if self.sfreq <= 0:
            raise SourceError(f"LSL stream {name!r} has an irregular rate (0 Hz); the model "
                              f"needs samples at a fixed rate ({sfreq:g} Hz).")
        if self.sfreq != sfreq and not resample:
            raise SourceError(f"LSL stream {name!r} runs at {self.sfreq:g} Hz, the model "
                              f"expects {sfreq:g} Hz; allow resampling (--resample).")
        if info.dtype in ("string", str) or getattr(info.dtype, "__name__", "") == "c_char_p":
            raise SourceError(f"LSL stream {name!r} carries strings, not samples.")
        labels = info.get_channel_names() or []
        if len(labels) != info.n_channels or any(lab is None for lab in labels):
            raise SourceError(f"LSL stream {name!r} does not name its {info.n_channels} "
                              "channels; the model needs them by name.")
        self.match = find_channels(labels, ch_names, channel_map)
        self._picks = np.array(self.match.picks)
        self._scale = self._units(info, labels)
        keys = [lab.strip().lower() for lab in labels]
        self._counter = keys.index("counter") if "counter" in keys else None
        self._clock = lsl.local_clock
        self._uid, self._checked_at = info.uid, 0.0
        self._lost_error = getattr(__import__("mne_lsl.lsl._utils", fromlist=["LostError"]),
                                   "LostError", RuntimeError)
        self._t_next = None  # expected time stamp of the next sample
        self._last_count = None
        self._marks: list[tuple[int, float]] = []  # (stream index, time stamp) per chunk

    def _units(self, info, labels) -> np.ndarray:
        units = info.get_channel_units() or [None] * len(labels)
        scale = []
        for i in self.match.picks:
            f = unit_factor(units[i])
            if f is None:
                raise SourceError(f"LSL channel {labels[i]!r} has unit {units[i]!r}; "
                                  "expected microvolts, millivolts or volts.")
            scale.append(f)
        return np.array(scale)[:, None]

    @property
    def units_note(self) -> str:
        return "µV" if np.all(self._scale == 1.0) else "converted to µV"

    def chunks(self, duration_s: float | None = None) -> Iterator[LiveChunk]:
        """Chunks until ``duration_s`` seconds of stream time; `StreamEnded` when the stream
        stops or vanishes first."""
        limit = None if duration_s is None else int(round(duration_s * self.sfreq))
        quiet_since = time.monotonic()
        while limit is None or self.stats.samples_received + self.stats.samples_dropped < limit:
            try:
                data, ts = self._inlet.pull_chunk(timeout=0.1, max_samples=1024)
            except self._lost_error as exc:
                self._end(f"LSL stream {self.name!r} vanished (connection lost)")
                raise StreamEnded(self.stats.end_reason + self._tally()) from exc
            if len(ts) == 0:
                quiet = time.monotonic() - quiet_since
                if quiet > 1.0 and not self._still_announced():
                    self._end(f"LSL stream {self.name!r} vanished (no longer on the network)")
                    raise StreamEnded(self.stats.end_reason + self._tally())
                if quiet > self.stall_s:
                    self._end(f"LSL stream {self.name!r} stopped: no sample for "
                              f"{self.stall_s:g} s")
                    raise StreamEnded(self.stats.end_reason + self._tally())
                continue
            quiet_since = time.monotonic()
            if limit is not None:
                room = limit - self.stats.samples_received - self.stats.samples_dropped
                data, ts = data[:room], ts[:room]
            yield from self._chunk(np.asarray(data, dtype=np.float64), np.asarray(ts))
        self._end(f"{duration_s:g} s of LSL stream {self.name!r} classified")

    def _chunk(self, data: np.ndarray, ts: np.ndarray) -> Iterator[LiveChunk]:
        """Split a pull at its gaps (time stamps or counter); one `LiveChunk` per piece."""
        tol = max(0.5 / self.sfreq, _GAP_TOLERANCE_S)
        prev = np.concatenate([[ts[0] if self._t_next is None else self._t_next],
                               ts[:-1] + 1.0 / self.sfreq])
        gaps = np.where(ts - prev > tol, np.round((ts - prev) * self.sfreq), 0).astype(int)
        if self._counter is not None:
            count = data[:, self._counter]
            last = count[0] - 1 if self._last_count is None else self._last_count
            skips = np.diff(np.concatenate([[last], count])).round().astype(int) - 1
            gaps = np.maximum(gaps, skips)
            self._last_count = count[-1]
        self._t_next = ts[-1] + 1.0 / self.sfreq
        cuts = [0, *(int(i) + 1 for i in np.flatnonzero(gaps[1:] > 0)), len(ts)]
        x = data[:, self._picks].T * self._scale  # (C, n) µV
        for a, b in zip(cuts[:-1], cuts[1:]):
            gap = int(max(gaps[a], 0))
            self.stats.samples_dropped += gap
            self._marks.append((self.stats.samples_received + self.stats.samples_dropped,
                                float(ts[a])))
            self.stats.samples_received += b - a
            yield LiveChunk(samples=x[:, a:b], t_first=float(ts[a]), gap=gap)
        del self._marks[:-256]

    def latency(self, stop: int, model_sfreq: float) -> float:
        """Seconds from the time stamp of the sample that ended a window (``stop``, in
        samples at the model rate since stream start) to now; kept in the stats."""
        index = max(0, int(np.ceil(stop * self.sfreq / model_sfreq)) - 1)  # stream rate
        start, t0 = next(((i, t) for i, t in reversed(self._marks) if i <= index),
                         self._marks[0])
        lat = self._clock() - (t0 + (index - start) / self.sfreq)
        self.stats.latencies_s.append(lat)
        return lat

    def _still_announced(self) -> bool:
        """Whether the stream is still on the network (checked at most once a second)."""
        now = time.monotonic()
        if now - self._checked_at < 1.0:
            return True
        self._checked_at = now
        found = _lsl().resolve_streams(timeout=0.5, name=self.name)
        return any(i.uid == self._uid for i in found)

    def _end(self, reason: str) -> None:
        self.stats.end_reason = reason

    def _tally(self) -> str:
        return (f"; {self.stats.samples_received} samples received, "
                f"{self.stats.samples_dropped} dropped.")

    def close(self) -> None:
        try:
            self._inlet.close_stream()
        except Exception:  # already lost
            pass
