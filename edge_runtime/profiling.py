"""Measure a model folder on this machine: load time, latency, throughput, memory.

Run it on the board itself; numbers from a development machine say nothing about a Pi.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
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
    peak_rss_mb: float  # peak resident set of this process (resource.getrusage)
    machine: str
    python: str

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak RSS of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
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


def profile_model(model_dir: str | Path, *, backend: str = "auto", precision: str = "int8",
                  threads: int = 1, n_windows: int = 200, warmup: int = 20,
                  data: np.ndarray | None = None,
                  allow_failed_gate: bool = False) -> ProfileReport:
    """Open a model folder and time it.

    Parameters
    ----------
    n_windows : windows timed per latency distribution (model-only and streaming).
    warmup : untimed inferences after the first one.
    data : (C, N) µV at the manifest rate to cycle through; default seeded noise.
    """
    if n_windows < 1 or warmup < 0:
        raise ValueError(f"need n_windows >= 1 and warmup >= 0, got {n_windows}, {warmup}.")
    model = open_model(model_dir, backend=backend, precision=precision, threads=threads,
                       allow_failed_gate=allow_failed_gate)
    spec = model.manifest.input
    T, hop = spec.n_times, spec.hop
    n_distinct = min(n_windows, 32)  # distinct windows to cycle through
    sig = _signal(spec.n_chans, T + hop * n_distinct, data)

    stream_ops, window_ops = split_ops(spec.preprocessing)
    y = StreamStage(stream_ops, spec.n_chans).process(sig)
    windows = apply_window_ops(
        window_ops, np.stack([y[:, i * hop:i * hop + T] for i in range(n_distinct)]))

    t0 = time.perf_counter()
    model.predict(windows[:1])
    first_ms = (time.perf_counter() - t0) * 1e3
    for i in range(warmup):
        model.predict(windows[i % n_distinct][None])
    lat = []
    for i in range(n_windows):
        t0 = time.perf_counter()
        model.predict(windows[i % n_distinct][None])
        lat.append((time.perf_counter() - t0) * 1e3)

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
    return ProfileReport(
        model_dir=str(model_dir), artifact=model.artifact.path, backend=model.backend_name,
        precision=model.precision, threads=threads, model_bytes=model.model_bytes,
        load_s=model.load_s, first_inference_ms=first_ms, n_windows=n_windows, warmup=warmup,
        latency_ms=_percentiles(lat), decision_ms=_percentiles(dec),
        throughput_wps=n_stream / pipe_s if pipe_s > 0 else float("inf"),
        model_ms_per_window=model_s / max(n_stream, 1) * 1e3,
        overhead_ms_per_window=(pipe_s - model_s) / max(n_stream, 1) * 1e3,
        peak_rss_mb=peak_rss_mb(), machine=f"{platform.machine()} {platform.system()}",
        python=platform.python_version())
