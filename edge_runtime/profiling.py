"""Measure a model folder on this machine: load time, latency, throughput, memory.

Run it on the board itself; numbers from a development machine say nothing about a Pi.

With ``reference=`` a second, fixed model folder is timed in the same process, window by
window interleaved with the model (same backend, precision and threads), and the report
gains ``latency_ratio`` = model p50 / reference p50: a number that cancels most of the
machine's speed and load, so CI runners of different speed can compare it with a
committed baseline (``dlink check``).

Decision time (one push of one hop, through buffering, preprocessing, the model and the
result) and model time (``EdgeModel.predict`` on the same, already preprocessed window) are
timed alternately, window by window, so that ``decision_ratio`` = decision p50 / model p50
compares the two under the same load. ``cold_start`` starts ``dlink-edge run --stdin`` in
fresh processes and times process start -> first decision line on stdout.

`profile_fresh` (what ``dlink-edge profile`` and ``check`` call) runs `profile_model` in a
fresh interpreter, ``python -m edge_runtime.profiling``, so that ``peak_rss_mb`` is the
runtime's: interpreter, numpy, the backend, the model, the stream buffers and the
profiler's few windows, not the CLI's typer, pydantic and rich (about 14 MB here; a
``dlink-edge run`` process carries them, see ``cold_start["run_peak_rss_mb"]``).
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgeError
from edge_runtime.manifest import load_manifest
from edge_runtime.model import open_model
from edge_runtime.preprocessing import StreamStage, WindowStage, split_ops
from edge_runtime.stream import StreamingClassifier

N_DISTINCT = 2  # distinct windows cycled through: the data varies, the memory stays small


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
    decision_ratio: float  # decision_ms["p50"] / latency_ms["p50"], timed alternately
    throughput_wps: float  # windows per second through the streaming classifier
    model_ms_per_window: float  # streaming: model time per window
    overhead_ms_per_window: float  # streaming: buffering + preprocessing per window
    peak_rss_mb: float  # peak resident set of this process (`peak_rss_mb`)
    machine: str
    python: str
    cold_start: dict | None = None  # `cold_start()`: process start -> first decision
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


def _quantile(values: list[float], q: float) -> float:
    """numpy's default ("linear") percentile, in Python: `np.percentile` alone adds ~2 MB
    to the resident set of a process that has not used it yet."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _percentiles(ms: list[float]) -> dict:
    return {"p50": _quantile(ms, 0.50), "p95": _quantile(ms, 0.95),
            "p99": _quantile(ms, 0.99), "mean": sum(ms) / len(ms), "max": max(ms)}


def _signal(n_chans: int, n: int, data: np.ndarray | None) -> np.ndarray:
    """(C, n) float64 µV to cycle through: the given recording or seeded noise (uniform,
    20 µV rms).

    The noise comes from the standard library: `numpy.random` would pull in OpenSSL
    (through `secrets`) and add ~4 MB to the measured RSS that the runtime never needs."""
    if data is not None:
        if data.shape[1] < n:
            data = np.tile(data, (1, -(-n // data.shape[1])))
        return np.array(data[:, :n], dtype=np.float64)
    raw = np.frombuffer(random.Random(0).randbytes(2 * n_chans * n), "<i2")
    return (raw * (20.0 * 3 ** 0.5 / 32768)).reshape(n_chans, n)


def _prepare(spec, data: np.ndarray | None, n: int
             ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Model-input windows (n, C, T) float32, the n µV chunks of one hop that complete
    them in a stream, and the (C, max(T - hop, 0)) samples to push first."""
    T, hop = spec.n_times, spec.hop
    if data is not None and data.shape[0] != spec.n_chans:
        data = None  # a reference with another montage times seeded noise instead
    lead = max(T - hop, 0)
    sig = _signal(spec.n_chans, lead + hop * n, data)
    stream_ops, window_ops = split_ops(spec.preprocessing)
    y = StreamStage(stream_ops, spec.n_chans).process(sig)
    ends = [lead + hop * (k + 1) for k in range(n)]
    windows = np.empty((n, spec.n_chans, T), np.float32)
    for w, e in zip(windows, ends):
        w[...] = y[:, e - T:e]
    chunks = [np.ascontiguousarray(sig[:, e - hop:e]) for e in ends]  # as a source hands them
    return WindowStage(window_ops).apply(windows), chunks, sig[:, :lead].copy()


def _time_ms(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return (time.perf_counter() - t0) * 1e3


def _round(ms: list[float]) -> list[float]:
    return [round(v, 5) for v in ms]  # 10 ns: far below timer noise, keeps the JSON small


def profile_model(model_dir: str | Path, *, backend: str = "auto", precision: str = "int8",
                  threads: int = 1, n_windows: int = 200, warmup: int = 20,
                  data: np.ndarray | None = None,
                  allow_failed_gate: bool = False,
                  reference: str | Path | None = None, cold_runs: int = 3) -> ProfileReport:
    """Open a model folder and time it.

    Parameters
    ----------
    n_windows : windows timed per latency distribution (model-only and streaming).
    warmup : untimed inferences after the first one.
    data : (C, N) µV at the manifest rate to cycle through; default seeded noise.
    reference : another model folder (e.g. the committed ``dlink/reference``) to time
        interleaved with this one, with the backend and precision this model resolved to;
        its quantisation gate is not enforced (only its compute matters).
    cold_runs : fresh ``dlink-edge run`` processes for `cold_start` (0: skip it).
    """
    if n_windows < 1 or warmup < 0:
        raise ValueError(f"need n_windows >= 1 and warmup >= 0, got {n_windows}, {warmup}.")
    n_distinct = min(n_windows, N_DISTINCT)
    # The data first, while the process is small: its temporaries never add to the peak.
    spec = load_manifest(model_dir, verify=False).input
    windows, chunks, lead = _prepare(spec, data, n_distinct)
    ref_windows = None
    if reference is not None:
        ref_windows = _prepare(load_manifest(reference, verify=False).input, data,
                               n_distinct)[0]
    del data
    model = open_model(model_dir, backend=backend, precision=precision, threads=threads,
                       allow_failed_gate=allow_failed_gate)
    ref = None
    if reference is not None:
        ref = open_model(reference, backend=model.backend_name, precision=model.precision,
                         threads=threads, allow_failed_gate=True)

    first_ms = _time_ms(model.predict, windows[:1])
    for i in range(warmup):
        model.predict(windows[i % n_distinct][None])
    if ref is not None:
        for i in range(warmup + 1):
            ref.predict(ref_windows[i % n_distinct][None])
    clf = StreamingClassifier(model)
    clf.push(lead)  # from here on, each chunk completes one window
    for i in range(min(warmup, n_distinct)):
        clf.push(chunks[i])
    before = clf.stats
    lat, ref_lat, dec = [], [], []
    for i in range(n_windows):
        k = i % n_distinct
        x = windows[k][None]
        # Alternate the order so that no measure always runs on a warmer cache.
        timed = [(lat, model.predict, x), (dec, clf.push, chunks[k])]
        if ref is not None:
            timed.append((ref_lat, ref.predict, ref_windows[k][None]))
        for out, fn, arg in (timed if i % 2 == 0 else timed[::-1]):
            out.append(_time_ms(fn, arg))
    after = clf.stats
    n_stream = after.windows_decided - before.windows_decided
    pipe_s = after.pipeline_s - before.pipeline_s
    model_s = after.model_s - before.model_s
    latency, decision = _percentiles(lat), _percentiles(dec)
    rss_mb = peak_rss_mb()  # before the cold-start processes are started
    ref_report = _reference_report(ref, reference, threads, ref_lat) if ref is not None else None
    return ProfileReport(
        model_dir=str(model_dir), artifact=model.artifact.path, backend=model.backend_name,
        precision=model.precision, threads=threads, model_bytes=model.model_bytes,
        load_s=model.load_s, first_inference_ms=first_ms, n_windows=n_windows, warmup=warmup,
        latency_ms=latency, decision_ms=decision,
        decision_ratio=decision["p50"] / latency["p50"],
        throughput_wps=n_stream / pipe_s if pipe_s > 0 else float("inf"),
        model_ms_per_window=model_s / max(n_stream, 1) * 1e3,
        overhead_ms_per_window=(pipe_s - model_s) / max(n_stream, 1) * 1e3,
        peak_rss_mb=rss_mb, machine=f"{platform.machine()} {platform.system()}",
        python=platform.python_version(), latency_samples_ms=_round(lat),
        decision_samples_ms=_round(dec),
        reference=ref_report.to_dict() if ref_report is not None else None,
        latency_ratio=latency["p50"] / ref_report.p50_ms if ref_report is not None else None,
        cold_start=cold_start(model_dir, backend=model.backend_name, precision=model.precision,
                              threads=threads, allow_failed_gate=allow_failed_gate,
                              runs=cold_runs) if cold_runs else None)


def profile_fresh(model_dir: str | Path, *, edf: str | Path | None = None,
                  **kwargs) -> ProfileReport:
    """`profile_model` in a fresh interpreter; ``edf`` is read there (resampled to the
    manifest rate) and cycled through instead of noise. Raises `EdgeError` with the
    child's one-line message if it fails."""
    args = {"model_dir": str(model_dir), "edf": None if edf is None else str(edf), **kwargs}
    args = {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}
    import subprocess

    out = subprocess.run([sys.executable, "-m", "edge_runtime.profiling", json.dumps(args)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        raise EdgeError(lines[-1] if lines else f"profiling exited with {out.returncode}.")
    return ProfileReport(**json.loads(out.stdout))


def _main(argv: list[str]) -> int:
    """``python -m edge_runtime.profiling JSON_ARGS``: print the report as JSON."""
    args = json.loads(argv[0])
    edf = args.pop("edf", None)
    try:
        if edf is not None:
            from edge_runtime.sources import read_edf

            spec = load_manifest(args["model_dir"], verify=False).input
            args["data"] = read_edf(edf, spec.ch_names, spec.sfreq).data
        report = profile_model(**args)
    except EdgeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict()))
    return 0


def _vm_hwm_mb(pid: int) -> float | None:
    """VmHWM of another process in MiB (Linux), else None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds another process has used so far (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _import_s(backend: str) -> tuple[float, float]:
    """(wall, CPU) seconds a fresh interpreter takes to import what ``dlink-edge run``
    imports (NaN if it cannot, e.g. with tflite_runtime instead of ai_edge_litert)."""
    import subprocess

    module = "onnxruntime" if backend == "onnx" else "ai_edge_litert.interpreter"
    code = ("import time; t, c = time.perf_counter(), time.process_time(); "
            "import edge_runtime.cli, edge_runtime.model, edge_runtime.sources, "
            f"edge_runtime.stream; import importlib; importlib.import_module({module!r}); "
            "print(time.perf_counter() - t, time.process_time() - c)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    try:
        wall, cpu = out.stdout.strip().splitlines()[-1].split()
        return float(wall), float(cpu)
    except (ValueError, IndexError):
        return float("nan"), float("nan")


def cold_start(model_dir: str | Path, *, backend: str, precision: str = "int8",
               threads: int = 1, allow_failed_gate: bool = False, runs: int = 3) -> dict:
    """Time ``dlink-edge run MODEL --stdin`` from process start to its first decision.

    Each run starts a fresh interpreter, writes one window of zeros (float32, manifest
    rate) to its stdin and waits for the first decision line on stdout; that span holds
    interpreter start, imports, sha256 verification, backend load and first inference.

    Returns
    -------
    dict: ``median_s`` and ``runs_s`` (process start -> first decision, wall s),
    ``cpu_median_s`` (CPU seconds the process used by then: what the wall time would be on
    an otherwise idle core, 10 ms resolution), ``import_s``/``import_cpu_s`` (the imports
    alone, in a separate fresh interpreter) and ``run_peak_rss_mb`` (VmHWM of the ``run``
    process at its first decision). CPU and RSS are None off Linux.
    """
    import subprocess

    spec = load_manifest(model_dir, verify=False).input
    window = np.zeros((spec.n_times, spec.n_chans), "<f4").tobytes()  # interleaved frames
    cmd = [sys.executable, "-m", "edge_runtime.cli", "run", str(model_dir), "--stdin",
           "--backend", backend, "--precision", precision, "--threads", str(threads)]
    if allow_failed_gate:
        cmd.append("--allow-failed-gate")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    times, cpu, rss = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        try:
            proc.stdin.write(window)
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died early; its stderr says why, below
        line = proc.stdout.readline()
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s(proc.pid))
        rss.append(_vm_hwm_mb(proc.pid))
        _, err = proc.communicate(timeout=60)
        if not line or proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise EdgeError(f"cold start: `{' '.join(cmd)}` gave no decision "
                            f"(exit {proc.returncode}): {lines[-1] if lines else ''}")
    import_s, import_cpu_s = _import_s(backend)
    return {"median_s": _quantile(times, 0.5), "runs_s": times,
            "cpu_median_s": _quantile(cpu, 0.5) if None not in cpu else None,
            "import_s": import_s, "import_cpu_s": import_cpu_s,
            "run_peak_rss_mb": max(rss) if None not in rss else None,
            "command": " ".join(cmd[2:])}


def _reference_report(ref, reference, threads: int, ms: list[float]) -> ReferenceReport:
    latency = _percentiles(ms)
    return ReferenceReport(
        model_dir=str(reference), name=str(ref.manifest.model.get("name", "?")),
        artifact=ref.artifact.path, sha256=ref.artifact.sha256, backend=ref.backend_name,
        precision=ref.precision, threads=threads, model_bytes=ref.model_bytes,
        n_windows=len(ms), p50_ms=latency["p50"], latency_ms=latency,
        latency_samples_ms=_round(ms))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
