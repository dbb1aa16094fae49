"""What 16-bit activations would buy and cost: the default run's student as an A16W8 TFLite.

    python bench/a16w8_probe.py runs/pipeline-mi --out results

The parity gate's agreement check (issue 13) fails for the shipped int8 file because many
held-out windows sit at the decision boundary (`bench/int8_noise_sources.py`, boundary
section). This quantises the run's fp32 TFLite file as the exporter does its int8
file but with 16-bit activations (`export.tflite_export.quantize_int8`,
``activation_bits=16``: ai-edge-quantizer's ``static_wi8_ai16`` recipe, the same global
min/max calibration on the run's calibration windows) and compares it with the shipped
``model.int8.tflite`` on the run's held-out windows: the gate's metrics against the fp32
file (agreement, logit SQNR, BAcc; the gate itself compares with the PyTorch model) and
LiteRT latency as the export measures it (`export.deployment.measure`: one thread, the
files interleaved, median of ``--repeats``). The A16W8 file is written to
``RUN_DIR/probe/`` and is not an artifact of the export. Needs the data set
(``DLINK_DATA_DIR``). Writes ``OUT/a16w8_probe.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a `dlink pipeline` output folder")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--repeats", type=int, default=300, help="timed calls per file")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from int8_noise_sources import held_out

    from dlink.student import load_student
    from export import deployment, tflite_export
    from export.parity import balanced_accuracy, sqnr_db

    export = args.run_dir / "export"
    a16 = args.run_dir / "probe" / "model.a16w8.tflite"
    a16.parent.mkdir(parents=True, exist_ok=True)
    tflite_export.quantize_int8(export / "model.fp32.tflite", a16,
                                np.load(args.run_dir / "calibration.npz")["X"],
                                activation_bits=16)
    x, y = held_out(args.run_dir, load_student(args.run_dir / "student").signal)
    files = {"fp32": export / "model.fp32.tflite", "int8": export / "model.int8.tflite",
             "a16w8": a16}
    logits = {k: tflite_export.run(p, x) for k, p in files.items()}  # as the gate runs them
    ms = deployment.measure({"tflite": files}, x[:1], repeats=args.repeats)
    ms = ms["runtimes"]["tflite"]["median_ms"]
    ref = logits["fp32"]
    rows = {}
    for k in files:
        z = logits[k]
        rows[k] = {"bytes": files[k].stat().st_size,
                   "agreement": round(float(np.mean(z.argmax(1) == ref.argmax(1))), 6),
                   "sqnr_db": None if k == "fp32" else round(sqnr_db(ref, z), 2),
                   "bacc": round(balanced_accuracy(y, z.argmax(1)), 6),
                   "p50_ms": round(ms[k], 4)}
    command = "python bench/a16w8_probe.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = {"command": command, "n_windows": len(x), "repeats": args.repeats,
              "machine": f"{platform.machine()} {platform.system()}", "files": rows}
    lines = ["# 16-bit activations: what they buy and cost\n",
             f"Written by `{command}` ({report['machine']}, LiteRT with its default "
             f"delegate, one thread). {len(x)} held-out windows of the run's test subjects; "
             "agreement and SQNR against the fp32 TFLite file (the parity gate compares "
             "with the fp32 PyTorch model, so its numbers for the int8 file differ slightly; "
             "it asks agreement ≥ 0.99, SQNR ≥ 30 dB, BAcc change ≤ 0.01); latency: the "
             "export's own measurement (`export/deployment.py`: the three files interleaved, "
             f"input quantised outside the timing), median of {args.repeats}.\n",
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
