"""Streaming and offline classification with the manifest's preprocessing.

Shape legend: C channels (``n_chans``), n samples in a push, T samples per window
(``n_times``), B windows in a batch, K classes. Samples are µV.

`StreamingClassifier.push` takes any number of new samples and returns one `WindowResult`
per window that became complete: the first window ends at sample T, then one every
``hop`` samples. `classify_offline` windows a whole recording at once; for the same
recording both give the same windows, labels and (to float32 rounding) scores, however the
stream is chunked — at the manifest rate always, and at a device rate when
`classify_offline` is given the same ``sfreq`` (see `edge_runtime.resample`).

Non-finite samples (NaN, ±Inf) and declared gaps follow the ``nonfinite`` policy:

``"reject"`` (default)
    Each non-finite sample is replaced by its channel's last finite value before any
    filter (so filter state is never poisoned, see `preprocessing.hold_fill`); every window
    that contains a replaced sample (or, with resampling, a sample the replaced one reached
    through the resampling filter) is rejected: returned with ``accepted=False`` and no
    scores, and counted in ``windows_rejected``. The stream goes on. Windows after the
    burst are classified normally; an ``sosfilt`` stage then sees the held value instead
    of a step, which keeps its ringing short.
``"hold"``
    The same replacement, but windows are classified anyway; ``n_bad`` tells how many
    replaced samples each holds and ``windows_repaired`` counts them.
``"raise"``
    A push with any non-finite sample, or a gap, raises `NonFiniteError` and leaves the
    stream untouched.

Every sample is accounted for by `StreamStats`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ChannelMismatchError, NonFiniteError
from edge_runtime.model import EdgeModel
from edge_runtime.preprocessing import StreamStage, WindowStage, hold_fill, split_ops

NONFINITE_POLICIES = ("reject", "hold", "raise")


@dataclass(frozen=True)
class WindowResult:
    """The decision on one window.

    ``start``/``stop`` are sample indices at the manifest rate since stream start (gap
    samples included); ``t_end`` = ``stop / sfreq`` is the time of the window end in s.
    """

    index: int  # window number since stream start, rejected windows included
    start: int
    stop: int
    t_end: float
    accepted: bool
    n_bad: int  # samples in the window that were non-finite or a declared gap
    logits: np.ndarray | None = None  # (K,) raw model output
    probabilities: np.ndarray | None = None  # (K,) softmax of the logits
    label: str | None = None

    def to_dict(self) -> dict:
        d = {"index": self.index, "t_end": self.t_end, "start": self.start,
             "stop": self.stop, "accepted": self.accepted, "n_bad": self.n_bad,
             "label": self.label}
        for key in ("logits", "probabilities"):
            v = getattr(self, key)
            d[key] = None if v is None else [float(a) for a in v]
        return d


@dataclass(frozen=True)
class StreamStats:
    """Counters of a stream. Input-rate counts are at the pushed rate; the rest at the
    manifest rate (they are equal without resampling).

    Invariant: ``samples_stream == samples_decided + samples_pending``; of the decided
    samples, ``samples_skipped`` fell between windows (only when hop > n_times).
    """

    samples_received: int  # time points pushed with `push` (finite or not)
    samples_nonfinite: int  # of those, time points with any NaN/Inf
    samples_gap: int  # time points declared missing with `push_gap`
    samples_stream: int  # time points at the manifest rate entering the window buffer
    samples_decided: int  # stream samples before the end of the last decided window
    samples_skipped: int  # decided samples in no window (hop > n_times)
    samples_pending: int  # stream samples after the last decided window end
    windows_emitted: int  # windows classified
    windows_rejected: int  # windows refused under nonfinite="reject"
    windows_repaired: int  # classified windows holding replaced samples ("hold")
    pipeline_s: float  # wall time inside push/push_gap
    model_s: float  # of which inside the model

    @property
    def windows_decided(self) -> int:
        return self.windows_emitted + self.windows_rejected

    @property
    def overhead_s(self) -> float:
        """Buffering + preprocessing time (pipeline minus model)."""
        return self.pipeline_s - self.model_s

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["windows_decided"] = self.windows_decided
        d["overhead_s"] = self.overhead_s
        return d


class _Buffer:
    """Growable (C, capacity) float32 buffer of stream samples with a bad-sample mask;
    ``data[:, lo:hi]`` holds absolute samples ``[lo_abs, lo_abs + hi - lo)``.

    float32 is the model's input type: each sample is rounded once, on the way in, and a
    window is a plain copy out."""

    def __init__(self, n_chans: int, capacity: int):
        self.data = np.empty((n_chans, capacity), np.float32)
        self.bad = np.zeros(capacity, bool)
        self.lo = self.hi = self.lo_abs = 0
        self.bad_stop_abs = 0  # absolute index just after the last bad sample appended

    @property
    def stop_abs(self) -> int:
        return self.lo_abs + self.hi - self.lo

    def _reserve(self, n: int) -> None:
        """Make room for n more samples after ``hi`` (compact, or grow)."""
        if self.hi + n > self.data.shape[1]:
            kept = self.hi - self.lo
            if kept + n > self.data.shape[1]:  # grow
                cap = max(2 * self.data.shape[1], kept + n)
                data = np.empty((self.data.shape[0], cap), np.float32)
                mask = np.zeros(cap, bool)
            else:  # compact in place
                data, mask = self.data, self.bad
            data[:, :kept] = self.data[:, self.lo:self.hi]
            mask[:kept] = self.bad[self.lo:self.hi]
            self.data, self.bad, self.lo, self.hi = data, mask, 0, kept

    def append_finite(self, x: np.ndarray) -> bool:
        """Append (C, n) samples if all are finite (as float32); else append nothing and
        return False. Copies first and checks the float32 copy, still in cache: one pass
        over the caller's samples."""
        n = x.shape[1]
        self._reserve(n)
        dst = self.data[:, self.hi:self.hi + n]
        dst[...] = x  # rounds to float32
        # A sum is finite iff every term is (NaN and ±Inf propagate); a float32 overflow
        # of huge finite samples only sends them down the exact path.
        if not math.isfinite(dst.sum()):
            return False  # not committed: `hi` did not move
        self.bad[self.hi:self.hi + n] = False
        self.hi += n
        return True

    def append(self, y: np.ndarray, bad: np.ndarray | None) -> None:
        """Add (C, n) samples; ``bad`` (n,) bool, or None when none is bad."""
        n = y.shape[1]
        self._reserve(n)
        self.data[:, self.hi:self.hi + n] = y  # rounds to float32
        if bad is None:
            self.bad[self.hi:self.hi + n] = False
        else:
            self.bad[self.hi:self.hi + n] = bad
            hits = np.flatnonzero(bad)
            if hits.size:
                self.bad_stop_abs = self.stop_abs + int(hits[-1]) + 1
        self.hi += n

    def skip(self, n: int) -> None:
        """Advance an empty buffer by n samples that need no keeping."""
        assert self.lo == self.hi, "skip() needs an empty buffer"
        self.lo_abs += n

    def window(self, start_abs: int, stop_abs: int) -> tuple[np.ndarray, int]:
        """(C, T) float32 view of samples [start_abs, stop_abs) and how many are bad."""
        a = self.lo + start_abs - self.lo_abs
        b = self.lo + stop_abs - self.lo_abs
        assert a >= self.lo and b <= self.hi, "window outside the buffered samples"
        n_bad = int(self.bad[a:b].sum()) if start_abs < self.bad_stop_abs else 0
        return self.data[:, a:b], n_bad

    def discard_until(self, abs_idx: int) -> None:
        k = min(abs_idx, self.stop_abs) - self.lo_abs
        if k > 0:
            self.lo += k
            self.lo_abs += k


def _check_policy(nonfinite: str) -> None:
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(
            f"nonfinite={nonfinite!r} is unknown; choose one of {', '.join(NONFINITE_POLICIES)}."
        )


def _as_samples(samples: np.ndarray, n_chans: int) -> np.ndarray:
    """(C, n) numeric view of the pushed samples (no copy), or ChannelMismatchError."""
    x = np.asarray(samples)
    if x.ndim != 2 or x.shape[0] != n_chans:
        hint = ""
        if x.ndim == 2 and x.shape[1] == n_chans:
            hint = " It looks like (n_samples, n_chans); pass samples.T."
        raise ChannelMismatchError(
            f"samples must have shape (n_chans={n_chans}, n_samples), got {x.shape}.{hint}"
        )
    if x.dtype.kind not in "fiu":
        x = x.astype(np.float64)
    return x


def _all_finite(x: np.ndarray) -> bool:
    return x.dtype.kind != "f" or bool(np.isfinite(x).all())


def _softmax(z: np.ndarray) -> np.ndarray:
    """(K,) scores -> (K,) float32 probabilities, computed in float64 (K is small)."""
    v = z.tolist()
    top = max(v)
    e = [math.exp(a - top) for a in v]
    total = sum(e)
    return np.array([a / total for a in e], np.float32)


def _decide(model: EdgeModel, x: np.ndarray, n_bad: list[int], first_index: int,
            stops: list[int], nonfinite: str) -> tuple[list[WindowResult], float]:
    """Results for preprocessed windows (B, C, T) float32 ending at ``stops``; returns
    them and the model time in s."""
    spec, out = model.manifest.input, model.manifest.output
    ok = [nonfinite != "reject" or nb == 0 for nb in n_bad]
    n_ok, model_s, scores = sum(ok), 0.0, None
    if n_ok:
        if n_ok < len(ok):
            x = x[np.array(ok)]
        t0 = time.perf_counter()
        scores = model.predict(x)  # (B', K)
        model_s = time.perf_counter() - t0
    results, j = [], 0
    for i, stop in enumerate(stops):
        if ok[i]:
            z = scores[j]
            results.append(WindowResult(
                first_index + i, stop - spec.n_times, stop, stop / spec.sfreq, True, n_bad[i],
                z, _softmax(z) if out.kind == "logits" else z, out.class_names[int(z.argmax())]))
            j += 1
        else:
            results.append(WindowResult(first_index + i, stop - spec.n_times, stop,
                                        stop / spec.sfreq, False, n_bad[i]))
    return results, model_s


class StreamingClassifier:
    """Classify a live stream of µV samples, one result per hop.

    Parameters
    ----------
    model : an opened `EdgeModel`.
    hop : samples (manifest rate) between decisions; default the manifest's ``hop``.
    device_sfreq : rate of the pushed samples in Hz if it differs from the manifest's
        ``sfreq``; they are then resampled causally with carried state
        (`edge_runtime.resample.StreamingResampler`, which delays the signal slightly).
    nonfinite : ``"reject"`` (default), ``"hold"`` or ``"raise"``; see the module docstring.
    batch_size : most windows scored in one model call when a push completes several.
    max_slice : a push longer than this many samples is processed in slices, so one huge
        push costs no more memory than a few slices.

    Not thread-safe: push from one thread.
    """

    def __init__(self, model: EdgeModel, *, hop: int | None = None,
                 device_sfreq: float | None = None, nonfinite: str = "reject",
                 batch_size: int = 32, max_slice: int = 1 << 15):
        _check_policy(nonfinite)
        spec = model.manifest.input
        self.model = model
        self.spec = spec
        self.hop = int(hop or spec.hop)
        if self.hop < 1:
            raise ValueError(f"hop must be >= 1 sample, got {self.hop}.")
        self.nonfinite = nonfinite
        self.batch_size = max(1, int(batch_size))
        self._max_slice = max(1, int(max_slice))
        stream_ops, window_ops = split_ops(spec.preprocessing)
        self._stage = StreamStage(stream_ops, spec.n_chans)
        self._window_stage = WindowStage(window_ops)
        self.device_sfreq = float(device_sfreq or spec.sfreq)
        self._resampler = None
        if self.device_sfreq != spec.sfreq:
            from edge_runtime.resample import StreamingResampler  # only streams that need it

            self._resampler = StreamingResampler(self.device_sfreq, spec.sfreq, spec.n_chans)
        # samples go straight into the buffer: no stream stage and no resampler
        self._direct = self._stage.empty and self._resampler is None
        self.reset()

    def reset(self) -> None:
        """Start a new stream: zero filter state, empty buffer, zero counters."""
        self._stage.reset()
        if self._resampler is not None:
            self._resampler.reset()
        # grows to fit the largest push (at most max_slice samples more), then stays
        self._buf = _Buffer(self.spec.n_chans, 2 * self.spec.n_times + self.hop)
        self._last = np.zeros(self.spec.n_chans)  # last finite µV per channel
        self._next_stop = self.spec.n_times
        self._n = dict(received=0, nonfinite=0, gap=0, stream=0, emitted=0, rejected=0,
                       repaired=0)
        self._pipeline_s = self._model_s = 0.0

    @property
    def stats(self) -> StreamStats:
        n, T, hop = self._n, self.spec.n_times, self.hop
        decided = n["emitted"] + n["rejected"]
        decided_end = T + (decided - 1) * hop if decided else 0
        return StreamStats(
            samples_received=n["received"], samples_nonfinite=n["nonfinite"],
            samples_gap=n["gap"], samples_stream=n["stream"], samples_decided=decided_end,
            samples_skipped=max(0, decided - 1) * max(0, hop - T),
            samples_pending=n["stream"] - decided_end, windows_emitted=n["emitted"],
            windows_rejected=n["rejected"], windows_repaired=n["repaired"],
            pipeline_s=self._pipeline_s, model_s=self._model_s)

    def push(self, samples: np.ndarray) -> list[WindowResult]:
        """Add new samples and return the windows they complete.

        Parameters
        ----------
        samples : (C, n) µV at ``device_sfreq`` (default the manifest rate); n may be 0.

        Raises
        ------
        ChannelMismatchError : C differs from the manifest's channel count.
        NonFiniteError : under ``nonfinite="raise"``, if any sample is NaN/Inf.
        """
        x = _as_samples(samples, self.spec.n_chans)
        if self._direct and 0 < x.shape[1] <= self._max_slice:
            t0 = time.perf_counter()
            results = self._push_aligned(x)
            if results is not None:
                self._pipeline_s += time.perf_counter() - t0
                return results
            if self._buf.append_finite(x):  # the common case: no filter, no resampler
                n = x.shape[1]
                self._last = x[:, -1].astype(np.float64)
                self._n["received"] += n
                self._n["stream"] += n
                results = self._drain()
                self._pipeline_s += time.perf_counter() - t0
                return results
            self._pipeline_s += time.perf_counter() - t0
        finite = _all_finite(x)
        bad_cols = 0 if finite else int((~np.isfinite(x)).any(axis=0).sum())
        if bad_cols and self.nonfinite == "raise":
            raise NonFiniteError(
                f"{bad_cols} of {x.shape[1]} pushed samples hold NaN/Inf and "
                f"nonfinite='raise'; nothing was consumed. Use nonfinite='reject' to skip "
                f"the affected windows instead."
            )
        self._n["received"] += x.shape[1]
        self._n["nonfinite"] += bad_cols
        t0 = time.perf_counter()
        results: list[WindowResult] = []
        for s in range(0, x.shape[1], self._max_slice):
            results += self._feed(x[:, s:s + self._max_slice], finite)
        self._pipeline_s += time.perf_counter() - t0
        return results

    def push_gap(self, n: int) -> list[WindowResult]:
        """Declare ``n`` missing samples (at ``device_sfreq``): they take their place in
        time and are handled as non-finite samples under the policy."""
        n = int(n)
        if n < 0:
            raise ValueError(f"a gap must be >= 0 samples, got {n}.")
        if n and self.nonfinite == "raise":
            raise NonFiniteError(
                f"a gap of {n} samples was declared and nonfinite='raise'; use "
                f"nonfinite='reject' to reject the windows it touches."
            )
        self._n["gap"] += n
        results: list[WindowResult] = []
        t0 = time.perf_counter()
        for s in range(0, n, self._max_slice):
            k = min(self._max_slice, n - s)
            results += self._feed(np.full((self.spec.n_chans, k), np.nan), False)
        self._pipeline_s += time.perf_counter() - t0
        return results

    def _push_aligned(self, x: np.ndarray) -> list[WindowResult] | None:
        """Windows straight from ``x``, without the buffer, when the next window starts at
        its first sample (hop == T, nothing pending: a source that delivers one hop per
        push). The same numbers as through the buffer; None if this does not apply or a
        sample is not finite (then the general path takes ``x``)."""
        T, n, buf = self.spec.n_times, x.shape[1], self._buf
        if self.hop != T or n < T or buf.lo != buf.hi or self._next_stop - T != buf.stop_abs:
            return None
        k = n // T  # windows inside x
        w = np.empty((k, self.spec.n_chans, T), np.float32)  # (B, C, T)
        for j in range(k):  # rounds to float32, as the buffer would, and preprocesses
            if not self._window_stage.load_finite(w[j], x[:, j * T:(j + 1) * T]):
                return None
        buf.skip(k * T)
        if n > k * T and not buf.append_finite(x[:, k * T:]):
            buf.skip(-k * T)
            return None
        stops = [self._next_stop + j * T for j in range(k)]
        self._next_stop += k * T
        self._last = x[:, -1].astype(np.float64)
        self._n["received"] += n
        self._n["stream"] += n
        return self._score(w, [0] * k, stops)

    def _feed(self, x: np.ndarray, finite: bool) -> list[WindowResult]:
        """(C, n) samples at the device rate -> the windows they complete.

        The common case (all finite, manifest rate, no filter) costs one float32 copy
        into the buffer; the rest is only paid by the streams that need it."""
        bad = None
        if not finite:
            x, bad, self._last = hold_fill(np.asarray(x, np.float64), self._last)
        elif x.shape[1]:
            self._last = x[:, -1].astype(np.float64)
        if self._resampler is not None:
            x, bad = self._resampler.process(
                np.asarray(x, np.float64), np.zeros(x.shape[1], bool) if bad is None else bad)
        y = self._stage.process(x)
        self._n["stream"] += y.shape[1]
        self._buf.append(y, bad)
        return self._drain()

    def _drain(self) -> list[WindowResult]:
        T, results = self.spec.n_times, []
        while self._next_stop <= self._buf.stop_abs:
            stops = []
            while self._next_stop <= self._buf.stop_abs and len(stops) < self.batch_size:
                stops.append(self._next_stop)
                self._next_stop += self.hop
            views, n_bad = zip(*[self._buf.window(s - T, s) for s in stops])
            x = self._window_stage.fill(
                np.empty((len(stops), self.spec.n_chans, T), np.float32), views)  # (B, C, T)
            results += self._score(x, n_bad, stops)
            self._buf.discard_until(self._next_stop - T)
        return results

    def _score(self, x: np.ndarray, n_bad, stops: list[int]) -> list[WindowResult]:
        """Decide preprocessed windows (B, C, T) and count them."""
        first = self._n["emitted"] + self._n["rejected"]
        got, model_s = _decide(self.model, x, n_bad, first, stops, self.nonfinite)
        self._model_s += model_s
        for r in got:
            self._n["emitted" if r.accepted else "rejected"] += 1
            self._n["repaired"] += int(r.accepted and r.n_bad > 0)
        return got


def classify_offline(model: EdgeModel, recording: np.ndarray, *, sfreq: float | None = None,
                     hop: int | None = None, nonfinite: str = "reject",
                     batch_size: int = 64) -> list[WindowResult]:
    """Classify a whole recording at once: filter it in one pass, cut every window.

    Parameters
    ----------
    model : an opened `EdgeModel`.
    recording : (C, N) µV at ``sfreq`` (default the manifest rate).
    hop : samples between window ends at the manifest rate; default the manifest's.
    nonfinite : as for `StreamingClassifier`.

    Returns
    -------
    One `WindowResult` per window: ends at T, T + hop, ... <= N (manifest rate).
    """
    _check_policy(nonfinite)
    spec = model.manifest.input
    T, hop = spec.n_times, int(hop or spec.hop)
    x = _as_samples(recording, spec.n_chans)
    if nonfinite == "raise" and not _all_finite(x):
        raise NonFiniteError("the recording holds NaN/Inf samples and nonfinite='raise'.")
    x, bad, _ = hold_fill(np.asarray(x, np.float64), np.zeros(spec.n_chans))
    if sfreq is not None and float(sfreq) != spec.sfreq:
        from edge_runtime.resample import StreamingResampler

        x, bad = StreamingResampler(float(sfreq), spec.sfreq, spec.n_chans).process(x, bad)
    stream_ops, window_ops = split_ops(spec.preprocessing)
    y = StreamStage(stream_ops, spec.n_chans).process(x)  # (C, N)
    stage = WindowStage(window_ops)
    C = spec.n_chans
    n_win = (y.shape[1] - T) // hop + 1 if y.shape[1] >= T else 0
    stops = [T + hop * i for i in range(n_win)]
    bad_cum = np.concatenate([[0], np.cumsum(bad)])
    n_bad = [int(bad_cum[e] - bad_cum[e - T]) for e in stops]
    results: list[WindowResult] = []
    for b in range(0, n_win, batch_size):
        s = stops[b:b + batch_size]
        # float32 first, as the stream buffer holds them: the same numbers either way
        views = [y[:, e - T:e].astype(np.float32) for e in s]
        x = stage.fill(np.empty((len(s), C, T), np.float32), views)  # (B, C, T)
        got, _ = _decide(model, x, n_bad[b:b + batch_size], b, s, nonfinite)
        results += got
    return results
