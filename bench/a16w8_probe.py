"""What 16-bit activations would buy and cost: the default run's student as an A16W8 TFLite.

    python bench/a16w8_probe.py runs/pipeline-mi --out results

The parity gate's agreement check (issue 13) fails for the shipped int8 file because many
held-out windows sit at the decision boundary (`bench/int8_noise_sources.py`, boundary
section). This quantises the run's fp32 TFLite file with ai-edge-quantizer's
``static_wi8_ai16`` recipe (int8 per-channel weights, int16 activations, the same global
min/max calibration on the run's calibration windows) and compares it with the shipped
``model.int8.tflite`` on the run's held-out windows: the gate's metrics against the fp32
file (agreement, logit SQNR, BAcc; the gate itself compares with the PyTorch model) and
LiteRT latency (one thread, the runtime's backend, all three files interleaved window by
window, median of ``--repeats``). The A16W8 file is
written to ``RUN_DIR/probe/`` and is not an artifact of the export. Needs the data set
(``DLINK_DATA_DIR``). Writes ``OUT/a16w8_probe.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np


def quantize_a16w8(fp32: Path, calib: np.ndarray, out: Path) -> None:
    """Write ``out``: ``fp32`` with int16 activations and int8 weights, ranges from ``calib``
    ((n, C, T) float32, model units)."""
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    from calibration import representative_dataset
    from export.tflite_export import _signature

    model = fp32.read_bytes()
    signature, input_name = _signature(model)
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe.static_wi8_ai16())
    run = calibrator.Calibrator(model, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    run.calibrate(representative_dataset(calib, input_name, signature), manager)
    result = quantizer.Quantizer(bytearray(model), manager.get_quantization_recipe()).quantize(
        run.get_model_qsvs(), enable_progress_report=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(result.quantized_model))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a `dlink pipeline` output folder")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--repeats", type=int, default=300, help="timed calls per file")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from int8_noise_sources import held_out
    from sklearn.metrics import balanced_accuracy_score

    from dlink.data import load_windows
    from dlink.student import load_student
    from edge_runtime.backends import LiteRTBackend
    from export.parity import sqnr_db

    export = args.run_dir / "export"
    a16 = args.run_dir / "probe" / "model.a16w8.tflite"
    quantize_a16w8(export / "model.fp32.tflite",
                   np.load(args.run_dir / "calibration.npz")["X"], a16)
    signal = load_student(args.run_dir / "student").signal
    x = held_out(args.run_dir, signal)  # (n, C, T) model units
    data = json.loads((args.run_dir / "data.json").read_text())
    y = load_windows(data["name"], sfreq=signal.sfreq).of_subjects(data["split"]["test"]).y
    files = {"fp32": export / "model.fp32.tflite", "int8": export / "model.int8.tflite",
             "a16w8": a16}
    backends = {k: LiteRTBackend(p, threads=1) for k, p in files.items()}
    logits = {k: np.concatenate([b.run(x[i:i + 1]) for i in range(len(x))])
              for k, b in backends.items()}
    ref = logits["fp32"]
    times: dict[str, list[float]] = {k: [] for k in files}
    for i in range(args.repeats + 20):  # 20 untimed rounds first
        for k, b in backends.items():
            t0 = time.perf_counter()
            b.run(x[i % len(x):i % len(x) + 1])
            if i >= 20:
                times[k].append((time.perf_counter() - t0) * 1e3)
    rows = {}
    for k in files:
        z = logits[k]
        rows[k] = {"bytes": files[k].stat().st_size,
                   "agreement": round(float(np.mean(z.argmax(1) == ref.argmax(1))), 6),
                   "sqnr_db": None if k == "fp32" else round(sqnr_db(ref, z), 2),
                   "bacc": round(float(balanced_accuracy_score(y, z.argmax(1))), 6),
                   "p50_ms": round(float(np.median(times[k])), 4)}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    report = {"command": command, "n_windows": len(x), "repeats": args.repeats,
              "machine": f"{platform.machine()} {platform.system()}", "files": rows}
    lines = ["# 16-bit activations: what they buy and cost\n",
             f"Written by `{command}` ({report['machine']}, LiteRT with its default "
             f"delegate, one thread). {len(x)} held-out windows of the run's test subjects; "
             "agreement and SQNR against the fp32 TFLite file (the parity gate compares "
             "with the fp32 PyTorch model, so its numbers for the int8 file differ slightly; "
             "it asks agreement ≥ 0.99, SQNR ≥ 30 dB, BAcc change ≤ 0.01); latency: the "
             f"three files interleaved window by window, median of {args.repeats}.\n",
             "| file | bytes | agreement | logit SQNR (dB) | BAcc | p50 ms | × fp32 |",
             "|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        sq = "–" if r["sqnr_db"] is None else r["sqnr_db"]
        lines.append(f"| {k} | {r['bytes']:,} | {r['agreement']:.3f} | {sq} | {r['bacc']:.3f} | "
                     f"{r['p50_ms']:.3f} | {r['p50_ms'] / rows['fp32']['p50_ms']:.2f} |")
    lines += ["", "The A16W8 file is full-integer too (int16 input and output); XNNPACK, "
              "LiteRT's CPU delegate, takes none of its int16 ops (it runs as fast with the "
              "delegate off), so LiteRT's builtin reference kernels run it."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "a16w8_probe.md").write_text("\n".join(lines) + "\n")
    (args.out / "a16w8_probe.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
