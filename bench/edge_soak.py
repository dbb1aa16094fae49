"""Soak test of the on-board runtime: stream >= 1 hour of real EEG as fast as possible.

Concatenates the EEGMAT recordings (read with edfio, resampled to the manifest rate; loaded
first so that file reading does not blur the runtime's memory) into one continuous stream,
pushes it through `StreamingClassifier` in random chunk sizes (0..--chunk-max) and reports
windows/s, resident-memory growth from the end of a warm-up (5 min of stream, at most a
tenth) to the end (goal < 1 MB) and dropped samples or windows (goal 0). Writes
``results/edge_soak.json`` and ``results/edge_soak.md``; exits 1 if a goal is missed.

    python bench/edge_soak.py MODEL_DIR --hours 1 [--backend onnx] [--precision int8]

Imports only edge_runtime (no torch), like the board.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from edge_runtime import EdgeError, StreamingClassifier, open_model
from edge_runtime.profiling import peak_rss_mb
from edge_runtime.sources import read_edf

# The project's data-root rule (as `dlink.data.data_root`, which a board does not have):
# $DLINK_DATA_DIR, else ~/.cache/dlink/data; EEGMAT's EDF files are in its eegmat/ folder.
DEFAULT_DATA = Path(os.environ.get("DLINK_DATA_DIR") or Path.home() / ".cache" / "dlink" / "data") / "eegmat"
RSS_GOAL_MB = 1.0


def current_rss_mb() -> float:
    """Resident set now (Linux /proc), else the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def _files(data_dir: Path) -> list[Path]:
    files = sorted(data_dir.glob("*.edf"))
    if not files:
        raise SystemExit(f"edge_soak: no .edf files in {data_dir}")
    return files


def load_stream(data_dir: Path, spec, hours: float) -> tuple[np.ndarray, list[str]]:
    """Concatenate recordings (cycling if needed) until >= ``hours``; (C, N) float32 µV.

    Loaded before streaming so that reading files does not blur the runtime's RSS."""
    target = int(np.ceil(hours * 3600 * spec.sfreq))
    parts, names, n = [], [], 0
    files = _files(data_dir)
    while n < target:
        path = files[len(names) % len(files)]
        x = read_edf(path, spec.ch_names, spec.sfreq).data.astype(np.float32)
        parts.append(x)
        names.append(path.name)
        n += x.shape[1]
    return np.concatenate(parts, axis=1), names


def soak(model_dir: Path, *, hours: float, data_dir: Path, backend: str, precision: str,
         threads: int, chunk_max: int, seed: int, warmup_s: float = 300.0,
         allow_failed_gate: bool = False) -> dict:
    model = open_model(model_dir, backend=backend, precision=precision, threads=threads,
                       allow_failed_gate=allow_failed_gate)
    spec = model.manifest.input
    t = time.perf_counter()
    data, files_used = load_stream(data_dir, spec, hours)
    t_read = time.perf_counter() - t
    clf = StreamingClassifier(model)
    rng = np.random.default_rng(seed)
    fed, labels = data.shape[1], Counter()
    warm = min(int(warmup_s * spec.sfreq), fed // 10)  # RSS baseline after this many
    rss_base, rss_max, next_probe = None, 0.0, warm
    pos = 0
    t0 = time.perf_counter()
    while pos < fed:
        k = int(rng.integers(0, chunk_max + 1))
        for r in clf.push(data[:, pos:pos + k]):
            labels[r.label if r.accepted else "<rejected>"] += 1
        pos += k
        if pos >= next_probe:
            rss = current_rss_mb()
            rss_base = rss if rss_base is None else rss_base
            rss_max = max(rss_max, rss)
            next_probe += int(60 * spec.sfreq)  # once per streamed minute
    wall = time.perf_counter() - t0
    rss_end = current_rss_mb()  # before `data` is freed, like the baseline
    rss_base = rss_end if rss_base is None else rss_base
    rss_max = max(rss_max, rss_end)
    del data
    st = clf.stats
    T, hop = spec.n_times, clf.hop
    expected = (fed - T) // hop + 1 if fed >= T else 0
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "model_dir": str(model_dir), "artifact": model.artifact.path,
        "backend": model.backend_name, "precision": model.precision, "threads": threads,
        "machine": f"{platform.machine()} {platform.system()}",
        "files": len(files_used), "stream_hours": fed / spec.sfreq / 3600,
        "samples_fed": fed, "windows_expected": expected,
        "windows_decided": st.windows_decided, "windows_emitted": st.windows_emitted,
        "windows_rejected": st.windows_rejected,
        "dropped_samples": fed - st.samples_received,
        "missing_windows": expected - st.windows_decided,
        "accounting_ok": st.samples_stream == st.samples_decided + st.samples_pending,
        "wall_s": wall, "read_s": t_read, "pipeline_s": st.pipeline_s, "model_s": st.model_s,
        "windows_per_s": st.windows_decided / st.pipeline_s if st.pipeline_s else 0.0,
        "x_realtime": fed / spec.sfreq / st.pipeline_s if st.pipeline_s else 0.0,
        "warmup_s": warm / spec.sfreq,
        "rss_after_warmup_mb": rss_base, "rss_end_mb": rss_end, "rss_max_mb": rss_max,
        "rss_growth_mb": rss_end - rss_base, "peak_rss_mb": peak_rss_mb(),
        "labels": dict(labels), "stats": st.to_dict(),
    }
    report["goals"] = {
        "rss_growth_lt_1mb": report["rss_growth_mb"] < RSS_GOAL_MB,
        "zero_dropped_samples": report["dropped_samples"] == 0,
        "zero_missing_windows": report["missing_windows"] == 0,
        "accounting_ok": report["accounting_ok"],
    }
    return report


def write_results(report: dict, out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{name}.json"
    js.write_text(json.dumps(report, indent=2))
    md = out_dir / f"{name}.md"
    rows = [
        ("stream", f"{report['stream_hours']:.3f} h from {report['files']} EDF files"),
        ("artifact", f"{report['artifact']} on {report['backend']} "
                     f"({report['threads']} thread(s), {report['machine']})"),
        ("windows decided / expected",
         f"{report['windows_decided']} / {report['windows_expected']}"),
        ("windows/s (pipeline)", f"{report['windows_per_s']:.1f}"),
        ("x real time", f"{report['x_realtime']:.0f}"),
        ("model / pipeline time", f"{report['model_s']:.2f} s / {report['pipeline_s']:.2f} s"),
        (f"RSS after {report['warmup_s']:.0f} s warm-up -> end",
         f"{report['rss_after_warmup_mb']:.2f} -> {report['rss_end_mb']:.2f} MB "
         f"(max {report['rss_max_mb']:.2f})"),
        ("RSS growth (goal < 1 MB)", f"{report['rss_growth_mb']:+.3f} MB"),
        ("dropped samples (goal 0)", str(report["dropped_samples"])),
        ("missing windows (goal 0)", str(report["missing_windows"])),
        ("all goals met", str(all(report["goals"].values()))),
    ]
    lines = ["# Edge runtime soak\n", f"Written by `{report['command']}`.\n",
             "| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    md.write_text("\n".join(lines))
    return js, md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--hours", type=float, default=1.0, help="stream length to reach (h)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="folder of EDF files (default: $DLINK_DATA_DIR/eegmat, else "
                   "~/.cache/dlink/data/eegmat)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnx", "tflite"))
    p.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-max", type=int, default=2000,
                   help="pushes are 0..chunk-max samples, uniformly at random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-failed-gate", action="store_true",
                   help="soak an int8 artifact that failed the exporter's parity gate")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--name", default="edge_soak", help="base name of the result files")
    args = p.parse_args(argv)
    try:
        report = soak(args.model_dir, hours=args.hours, data_dir=args.data,
                      backend=args.backend, precision=args.precision, threads=args.threads,
                      chunk_max=args.chunk_max, seed=args.seed, allow_failed_gate=args.allow_failed_gate)
    except EdgeError as exc:
        print(f"edge_soak: error: {exc}", file=sys.stderr)
        return 2
    js, md = write_results(report, args.out, args.name)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0 if all(report["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
