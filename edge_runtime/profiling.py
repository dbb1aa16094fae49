"""Measure a model folder on this machine: load time, latency, throughput, memory.

Run it on the board itself; numbers from a development machine say nothing about a Pi.

With ``reference=`` a second, fixed model folder is timed in the same process, window by
window interleaved with the model (same backend, precision and threads), and the report
gains ``latency_ratio`` = model p50 / reference p50: a number that cancels most of the
machine's speed and load, so CI runners of different speed can compare it with a
committed baseline (``dlink check``).
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.model import open_model
from edge_runtime.preprocessing import StreamStage, apply_window_ops, split_ops
from edge_runtime.stream import StreamingClassifier


@dataclass(frozen=True)
class ProfileReport:
    """What `profile_model` measured. Times in ms unless named ``_s``."""

    model_dir: str
    artifact: str
    backend: str
    precision: str
    threads: int
    model_bytes: int
    load_s: float  # manifest + sha256 verification + backend initialisation
    first_inference_ms: float
    n_windows: int  # windows timed for each latency distribution
    warmup: int
    latency_ms: dict  # model only, one window per call: p50/p95/p99/mean/max
    decision_ms: dict  # push of one hop -> its result: buffering + preprocessing + model
    throughput_wps: float  # windows per second through the streaming classifier
    model_ms_per_window: float  # streaming: model time per window
    overhead_ms_per_window: float  # streaming: buffering + preprocessing per window
    peak_rss_mb: float  # peak resident set of this process (`peak_rss_mb`)
    machine: str
    python: str
    latency_samples_ms: list = field(default_factory=list)  # model only, per window, in order
    decision_samples_ms: list = field(default_factory=list)  # streaming, per decision
    reference: dict | None = None  # `ReferenceReport.to_dict()` when profiled against one
    latency_ratio: float | None = None  # latency_ms["p50"] / reference["p50_ms"]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ReferenceReport:
    """The reference model, timed window by window interleaved with the profiled model."""

    model_dir: str
    name: str  # manifest model.name
    artifact: str
    sha256: str  # of the artifact timed: identifies the reference across runs
    backend: str
    precision: str
    threads: int
    model_bytes: int
    n_windows: int
    p50_ms: float  # latency_ms["p50"], the denominator of latency_ratio
    latency_ms: dict  # model only, one window per call: p50/p95/p99/mean/max
    latency_samples_ms: list

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak RSS of this process in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this program's memory.
    ``ru_maxrss`` is not used there because it survives exec: started from a large parent
    (a training job with torch loaded), it reports the parent's peak. Elsewhere
    ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


def _signal(n_chans: int, n: int, data: np.ndarray | None) -> np.ndarray:
    """(C, n) µV to cycle through: the given recording or seeded 20 µV noise."""
    if data is not None:
        if data.shape[1] < n:
            data = np.tile(data, (1, -(-n // data.shape[1])))
        return np.ascontiguousarray(data[:, :n])
    return np.random.default_rng(0).normal(0.0, 20.0, (n_chans, n))


def _windows(model, data: np.ndarray | None, n_distinct: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, T + hop * n_distinct) µV signal and its (n_distinct, C, T) preprocessed windows."""
    spec = model.manifest.input
    T, hop = spec.n_times, spec.hop
    if data is not None and data.shape[0] != spec.n_chans:
        data = None  # a reference with another montage times seeded noise instead
    sig = _signal(spec.n_chans, T + hop * n_distinct, data)
    stream_ops, window_ops = split_ops(spec.preprocessing)
    y = StreamStage(stream_ops, spec.n_chans).process(sig)
    windows = apply_window_ops(
        window_ops, np.stack([y[:, i * hop:i * hop + T] for i in range(n_distinct)]))
    return sig, windows


def _time_ms(model, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    model.predict(x)
    return (time.perf_counter() - t0) * 1e3


def _round(ms: list[float]) -> list[float]:
    return [round(v, 5) for v in ms]  # 10 ns: far below timer noise, keeps the JSON small


def profile_model(model_dir: str | Path, *, backend: str = "auto", precision: str = "int8",
                  threads: int = 1, n_windows: int = 200, warmup: int = 20,
                  data: np.ndarray | None = None,
                  allow_failed_gate: bool = False,
                  reference: str | Path | None = None) -> ProfileReport:
    """Open a model folder and time it.

    Parameters
    ----------
    n_windows : windows timed per latency distribution (model-only and streaming).
    warmup : untimed inferences after the first one.
    data : (C, N) µV at the manifest rate to cycle through; default seeded noise.
    reference : another model folder (e.g. the committed ``bench/reference``) to time
        interleaved with this one, with the backend and precision this model resolved to;
        its quantisation gate is not enforced (only its compute matters).
    """
    if n_windows < 1 or warmup < 0:
        raise ValueError(f"need n_windows >= 1 and warmup >= 0, got {n_windows}, {warmup}.")
    model = open_model(model_dir, backend=backend, precision=precision, threads=threads,
                       allow_failed_gate=allow_failed_gate)
    ref = None
    if reference is not None:
        ref = open_model(reference, backend=model.backend_name, precision=model.precision,
                         threads=threads, allow_failed_gate=True)
    spec = model.manifest.input
    T, hop = spec.n_times, spec.hop
    n_distinct = min(n_windows, 32)  # distinct windows to cycle through
    sig, windows = _windows(model, data, n_distinct)
    ref_windows = _windows(ref, data, n_distinct)[1] if ref is not None else None

    first_ms = _time_ms(model, windows[:1])
    for i in range(warmup):
        model.predict(windows[i % n_distinct][None])
    if ref is not None:
        for i in range(warmup + 1):
            ref.predict(ref_windows[i % n_distinct][None])
    lat, ref_lat = [], []
    for i in range(n_windows):
        x = windows[i % n_distinct][None]
        if ref is None:
            lat.append(_time_ms(model, x))
            continue
        r = ref_windows[i % n_distinct][None]
        if i % 2:  # alternate the order so neither model always runs on a warmer cache
            ref_lat.append(_time_ms(ref, r))
            lat.append(_time_ms(model, x))
        else:
            lat.append(_time_ms(model, x))
            ref_lat.append(_time_ms(ref, r))

    clf = StreamingClassifier(model, hop=hop)
    clf.push(sig[:, :T])  # first window; the rest come one per hop
    before = clf.stats
    dec = []
    for i in range(n_windows):
        s = T + (i % n_distinct) * hop  # each push of one hop completes one window
        chunk = sig[:, s:s + hop]
        t0 = time.perf_counter()
        clf.push(chunk)
        dec.append((time.perf_counter() - t0) * 1e3)
    after = clf.stats
    n_stream = after.windows_decided - before.windows_decided
    pipe_s = after.pipeline_s - before.pipeline_s
    model_s = after.model_s - before.model_s
    latency = _percentiles(lat)
    ref_report = _reference_report(ref, reference, threads, ref_lat) if ref is not None else None
    return ProfileReport(
        model_dir=str(model_dir), artifact=model.artifact.path, backend=model.backend_name,
        precision=model.precision, threads=threads, model_bytes=model.model_bytes,
        load_s=model.load_s, first_inference_ms=first_ms, n_windows=n_windows, warmup=warmup,
        latency_ms=latency, decision_ms=_percentiles(dec),
        throughput_wps=n_stream / pipe_s if pipe_s > 0 else float("inf"),
        model_ms_per_window=model_s / max(n_stream, 1) * 1e3,
        overhead_ms_per_window=(pipe_s - model_s) / max(n_stream, 1) * 1e3,
        peak_rss_mb=peak_rss_mb(), machine=f"{platform.machine()} {platform.system()}",
        python=platform.python_version(), latency_samples_ms=_round(lat),
        decision_samples_ms=_round(dec),
        reference=ref_report.to_dict() if ref_report is not None else None,
        latency_ratio=latency["p50"] / ref_report.p50_ms if ref_report is not None else None)


def _reference_report(ref, reference, threads: int, ms: list[float]) -> ReferenceReport:
    latency = _percentiles(ms)
    return ReferenceReport(
        model_dir=str(reference), name=str(ref.manifest.model.get("name", "?")),
        artifact=ref.artifact.path, sha256=ref.artifact.sha256, backend=ref.backend_name,
        precision=ref.precision, threads=threads, model_bytes=ref.model_bytes,
        n_windows=len(ms), p50_ms=latency["p50"], latency_ms=latency,
        latency_samples_ms=_round(ms))
