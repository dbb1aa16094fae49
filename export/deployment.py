"""Which file to deploy: fp32 and int8 latency of the exported files, measured at export.

int8 is not faster everywhere: for a model this small (a few MMACs) per-op overhead and
requantisation cost as much as the arithmetic int8 saves, and the runtimes' int8 kernels
differ by CPU (on our x86 development machine LiteRT runs the default student's int8 file
in half its fp32 time and ONNX Runtime its int8 file 1.6x slower than fp32, see
`results/int8_latency.md`). So the exporter times each runtime's
fp32 and int8 file on the machine it runs on and records the numbers and the faster file
per runtime in the manifest's ``deployment`` section; on any other CPU,
``dlink-edge profile --precision fp32|int8`` on the board itself is the answer.

Timing: one process, one thread, batch 1, the files of a runtime interleaved window by
window, median of ``repeats`` runs after a warm-up; the LiteRT files run with the default
delegates (XNNPACK), as ``dlink-edge`` opens them.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from export import onnx_export, tflite_export

REPEATS = 100
WARMUP = 10


def cpu_description() -> dict:
    """Architecture, CPU model name and the int8 dot-product instructions it has (Linux)."""
    flags, model = set(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
            elif key in ("model name", "cpu model", "hardware") and not model:
                model = value.strip()
    except OSError:
        pass
    int8_dot = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
    return {"machine": platform.machine(), "model": model or platform.processor() or "?",
            "int8_dot_product": int8_dot}


def _onnx_runner(path: Path, x: np.ndarray):
    sess = onnx_export.session(path)
    feed = {onnx_export.INPUT_NAME: x}
    return lambda: sess.run(None, feed)


def _tflite_runner(path: Path, x: np.ndarray, delegates: bool = True):
    interp = tflite_export.interpreter(path, delegates=delegates)
    (inp,) = interp.get_input_details()
    x = tflite_export._to_input(x, inp)  # an int8 input is quantised once, outside the timing

    def run():
        interp.set_tensor(inp["index"], x)
        interp.invoke()
    return run


def _median_ms(runners: dict, repeats: int) -> dict:
    times = {name: [] for name in runners}
    for fn in runners.values():
        for _ in range(WARMUP):
            fn()
    for i in range(repeats):
        order = list(runners.items())
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def measure(files: dict[str, Path], x: np.ndarray, repeats: int = REPEATS) -> dict:
    """The manifest's ``deployment`` section.

    Parameters
    ----------
    files : ``{"onnx": {"fp32": path, "int8": path}, "tflite": {...}}``, any subset.
    x : (1, C, T) float32 model input (one calibration window).

    Returns
    -------
    dict with ``measured_on`` (`cpu_description`), ``method``, per runtime the median ms of
    each precision, ``int8_over_fp32`` and ``use_on_this_cpu`` (the faster file's
    precision), and ``other_cpus`` (what to do elsewhere).
    """
    x = np.ascontiguousarray(x[:1], dtype=np.float32)
    makers = {"onnx": _onnx_runner, "tflite": _tflite_runner}
    runtimes = {}
    for runtime, by_precision in files.items():
        runners = {p: makers[runtime](Path(f), x) for p, f in by_precision.items()}
        ms = _median_ms(runners, repeats)
        entry = {"median_ms": {p: round(v, 6) for p, v in ms.items()}}
        if {"fp32", "int8"} <= set(ms):
            entry["int8_over_fp32"] = round(ms["int8"] / ms["fp32"], 3)
            entry["use_on_this_cpu"] = "int8" if ms["int8"] <= ms["fp32"] else "fp32"
        runtimes[runtime] = entry
    return {
        "measured_on": cpu_description(),
        "method": f"1 thread, batch 1, interleaved, median of {repeats} runs after {WARMUP} "
                  "warm-up runs; LiteRT with its default delegates",
        "runtimes": runtimes,
        "other_cpus": "time both precisions on the board: dlink-edge profile MODEL "
                      "--precision fp32 and --precision int8; int8 pays only where the "
                      "runtime has fast int8 kernels for that CPU",
    }
