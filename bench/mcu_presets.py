"""Tensor arena, model bytes and MCU budget verdicts of every EEG-MiC student preset.

Each preset is built for the EEGMAT signal (19 channels x 1000 samples), trained briefly
(``--steps`` of cross-entropy on the training subjects: the sizes do not depend on the
weights, the TFLM-vs-LiteRT counts do a little), exported by `export_student` (int8 TFLite
+ C array, TFLite Micro check on the default split's test subjects) and checked with
``dlink-edge check --budget`` against each shipped MCU budget. Writes ``OUT/mcu_presets.md``
and ``OUT/mcu_presets.json``.

    python bench/mcu_presets.py --out results
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

MCUS = ("nrf52840", "stm32h743", "esp32-s3")


def _train(name: str, windows, train_subjects, steps: int):
    from dlink.signal import SignalSpec
    from dlink.student import EEGMiC, build_student

    signal = getattr(windows, "signal", None) or SignalSpec(
        ch_names=tuple(windows.ch_names), sfreq=windows.sfreq, n_times=windows.X.shape[-1])
    if hasattr(signal, "with_clip"):  # the default student's ±50 µV clamp, as preprocessing
        signal = signal.with_clip(50.0)
    # An in-graph input clamp is a float op TFLite Micro refuses; older students had one.
    extra = {"input_clip": None} if "input_clip" in inspect.signature(EEGMiC).parameters else {}
    torch.manual_seed(0)
    model = build_student(name, signal, len(windows.class_names),
                          class_names=windows.class_names, **extra)
    train = windows.of_subjects(train_subjects)
    to_units = getattr(signal, "to_model_units", None)
    X = to_units(train.X) if to_units else train.X * np.float32(signal.input_scale)
    X, y = torch.from_numpy(np.asarray(X, np.float32)), torch.from_numpy(train.y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(X), (32,))
        loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _check(model_dir: Path, budget: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "check", str(model_dir),
                           "--budget", budget, "--json"], capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"dlink-edge check --budget {budget} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def measure(name: str, windows, split, steps: int, work: Path) -> dict:
    from dlink.student import save_student
    from export import GateThresholds, export_student

    save_student(_train(name, windows, split.train, steps), work / name / "student")
    manifest = export_student(work / name / "student", work / name / "export", data="eegmat",
                              formats=("tflite", "c"), gate=GateThresholds(enforce=False))
    tflm = next(a for a in manifest["artifacts"] if a["path"] == "model_data.cc")["tflm"]
    checks = {b: _check(work / name / "export", b) for b in MCUS}
    return {"preset": name, "parameters": manifest["model"]["parameters"],
            "macs": manifest["model"]["macs"], "tflm": tflm,
            "footprint": checks[MCUS[0]]["footprint"],
            "budgets": {b: {"ok": c["ok"], "estimate": c["estimate"],
                            "rows": c["rows"]} for b, c in checks.items()}}


def markdown(rows: list[dict], steps: int) -> str:
    runtime = rows[0]["tflm"]["runtime"]
    lines = [
        "# Student presets on microcontrollers (TensorFlow Lite Micro)",
        "",
        f"Written by `python bench/mcu_presets.py --out results --steps {steps}`. Each preset is "
        "exported for EEGMAT (19 x 1000 int8 input) and its `model_data.cc` run on "
        f"{runtime}'s reference interpreter: the arena is the smallest that allocates "
        "(bisection on real allocations); the input buffer is one int8 window; "
        "`dlink-edge check --budget` gives the verdicts (`edge_runtime/budgets/*.toml`). "
        "Sizes do not depend on training; the TFLM-vs-LiteRT counts are on the default "
        "split's test-subject windows after a short training. Latency is an ESTIMATE "
        "(MACs / the MAC rate the budget file states), never a measurement.",
        "",
        "| preset | parameters | MACs | tensor arena | input buffer | model (flash) | "
        "arena + input + model | nRF52840 | STM32H743 | ESP32-S3 | est. latency nRF52840 | "
        "TFLM vs LiteRT |",
        "|---|" + "---:|" * 11,
    ]
    for r in rows:
        fp, p = r["footprint"], r["tflm"]["parity"]
        verdict = {b: "fits" if r["budgets"][b]["ok"] else "over" for b in MCUS}
        est = r["budgets"]["nrf52840"]["estimate"]
        lines.append(
            f"| {r['preset']} | {r['parameters']:,} | {r['macs']:,} | {fp['arena_bytes']:,} | "
            f"{fp['input_buffer_bytes']:,} | {fp['model_bytes']:,} | {fp['total_bytes']:,} | "
            f"{verdict['nrf52840']} | {verdict['stm32h743']} | {verdict['esp32-s3']} | "
            f"~{est['latency_ms']:.0f} ms (estimate) | {p['n_differing']}/{p['n_values']} "
            f"values differ, max {p['max_abs_diff_lsb']} LSB |")
    lines += ["", "nRF52840 budget: arena + input buffer <= 192 KB of RAM, model <= 768 KB of "
              "flash, and arena + input buffer + model <= 192 KB (room for the firmware).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--presets", default="mic-xs,mic-s,mic-m")
    args = parser.parse_args()

    from dlink.data import load_windows, split_subjects

    torch.set_num_threads(1)
    windows = load_windows("eegmat")
    split = split_subjects(windows)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, windows, split, args.steps, Path(tmp))
                for name in args.presets.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mcu_presets.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "mcu_presets.md").write_text(markdown(rows, args.steps))
    print(markdown(rows, args.steps))


if __name__ == "__main__":
    main()
