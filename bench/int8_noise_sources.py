"""Where the int8 student's logit error comes from: one rounding point at a time.

The int8 graph rounds at every stored activation (input, each ReLU6 output, the residual
sum, the logits) and in every conv/linear weight. `dlink.qat.Int8Sim` reproduces the
exported int8 ONNX logits (its simulated SQNR is printed next to the gate's measured one),
so it can switch the rounding on at one place only, or everywhere but one place, and show
which tensor's 8 bits cost the logit SQNR the parity gate asks for (30 dB, issue 13).

    python bench/int8_noise_sources.py RUN_DIR [--out results] [--name int8_noise_sources]

RUN_DIR is a `dlink pipeline` output folder (``student/``, ``calibration.npz``,
``data.json``, ``export/manifest.json``); the held-out windows are its test subjects in
model units, as the gate takes them. Needs the data set
(``DLINK_DATA_DIR``). Writes ``OUT/NAME.md`` and ``OUT/NAME.json``; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch


def held_out(run_dir: Path, signal) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, T) model-input windows of the run's test subjects, converted as the gate does,
    and their (n,) labels."""
    from calibration import to_model_units
    from dlink.data import load_windows

    data = json.loads((run_dir / "data.json").read_text())
    npz = run_dir / "data.npz"
    windows = load_windows(str(npz) if npz.is_file() else data["name"], sfreq=signal.sfreq)
    test = windows.of_subjects(data["split"]["test"])
    return to_model_units(test.X, signal), test.y


def sqnr(reference: np.ndarray, test: np.ndarray) -> float:
    from export.parity import sqnr_db

    return round(sqnr_db(reference, test), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--name", default="int8_noise_sources")
    args = p.parse_args(argv)

    from dlink.qat import LOGITS_HEADROOM, Int8Sim
    from dlink.student import deployed_forward, load_student

    manifest = json.loads((args.run_dir / "export" / "manifest.json").read_text())
    student = load_student(args.run_dir / "student").eval()
    onnx = next(a for a in manifest["artifacts"] if a["path"] == "model.int8.onnx")
    sim = Int8Sim(student, reduce_range=bool(manifest["export"]["onnx"]["quantization"]["reduce_range"]))
    calib = torch.from_numpy(np.load(args.run_dir / "calibration.npz")["X"])
    sim.calibrate(calib)
    x = torch.from_numpy(held_out(args.run_dir, student.signal)[0])
    w, g = student.deployed_weights(), student.deployed_geometry()
    act = sim._act  # noqa: SLF001 - the simulation's own rounding, switched per tensor

    def logits(rounded=lambda name: True, weights=True, wts=None) -> np.ndarray:
        """Logits with the activations named by ``rounded`` and (``weights``) every weight
        rounded; ``wts`` replaces the deployed weights."""
        with torch.no_grad():
            return deployed_forward(x, wts or w, g, q=lambda n, t: act(n, t) if rounded(n) else t,
                                    wq=sim._weight if weights else None).numpy()  # noqa: SLF001

    ref = sim.float_logits(x).numpy()
    int8 = logits()  # every rounding point: the int8 graph
    values: dict[str, list[np.ndarray]] = {}

    def grab(name, t):
        values.setdefault(name, []).append(t.detach().flatten().numpy())
        return t
    with torch.no_grad():
        deployed_forward(calib, w, g, q=grab)

    rows = []
    for name, (lo, hi) in sim.ranges.items():
        v = np.concatenate(values[name])
        rows.append({"tensor": name, "range": [round(lo, 4), round(hi, 4)],
                     "bits": 16 if name == "logits" else 8,
                     "step": round(LOGITS_HEADROOM * max(-lo, hi) / 32767 if name == "logits"
                                   else (hi - lo) / 255, 6),
                     "p50": round(float(np.percentile(v, 50)), 4),
                     "p99_9": round(float(np.percentile(v, 99.9)), 4),
                     "only_db": sqnr(ref, logits(lambda n, kept=name: n == kept, weights=False)),
                     "all_but_db": sqnr(ref, logits(lambda n, left_out=name: n != left_out))})
    weight_rows = []
    for name, t in w.items():
        if t.ndim > 1:
            one = dict(w, **{name: sim._weight(t)})  # noqa: SLF001
            weight_rows.append({"weight": name, "shape": list(t.shape),
                                "only_db": sqnr(ref, logits(lambda n: False, weights=False, wts=one))})
    def flips(z: np.ndarray) -> int:
        """Windows whose decision (argmax; the tuned threshold is in the bias) differs from fp32."""
        return int(np.sum(z.argmax(1) != ref.argmax(1)))

    # Unround activations cumulatively, the costliest first (by `only_db`): what keeping
    # them at higher precision (16 bits: 256x finer steps) would buy in SQNR and flips.
    kept, cumulative = set(), []
    for r in sorted(rows, key=lambda r: r["only_db"]):
        kept.add(r["tensor"])
        z = logits(lambda n, k=frozenset(kept): n not in k)
        cumulative.append({"unrounded": sorted(kept), "sqnr_db": sqnr(ref, z), "flips": flips(z)})
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "run_dir": str(args.run_dir), "n_windows": len(x), "n_calibration": len(calib),
        "reduce_range": sim.qmax == 63,
        "gate_sqnr_db": (onnx.get("gate") or {}).get("sqnr_db"),
        "simulated_sqnr_db": sqnr(ref, int8),
        "weights_only_db": sqnr(ref, logits(lambda n: False)),
        "activations_only_db": sqnr(ref, logits(weights=False)),
        "activations": rows, "weights": weight_rows,
        "gate_agreement": (onnx.get("gate") or {}).get("agreement"),
        "flips": {"all": flips(int8), "weights_only": flips(logits(lambda n: False)),
                  "activations_only": flips(logits(weights=False))},
        "cumulative_unrounded": cumulative,
        "boundary": boundary(ref, int8, allowed=int(0.01 * len(x))),
    }
    write(report, args.out, args.name)
    return 0


def boundary(ref: np.ndarray, z: np.ndarray, allowed: int) -> dict | None:
    """How close the held-out windows sit to the decision boundary, against int8's error.

    ``ref``/``z``: (n, 2) fp32 / int8 logits. The margin of a window is its fp32 logit
    difference (class 1 - class 0; the tuned threshold is in the bias), the int8 error the
    change int8 makes to it. With that error Gaussian, zero-mean, of RMS s, window i flips
    with probability Phi(-|m_i| / s): the expected flips E(s) = sum_i Phi(-|m_i| / s).
    Returns the margin's RMS, the error's RMS (its mean included), the windows closer to
    the boundary than it, E at that error, the error RMS at which E = ``allowed`` (0.5
    when the gate allows none) and the logit SQNR that would take (the measured SQNR
    plus the dB the error must fall; the measured SQNR if E is already below). None
    unless 2 classes.
    """
    from math import erfc, log10, sqrt

    if ref.shape[1] != 2:
        return None
    margin = (ref[:, 1] - ref[:, 0]).astype(np.float64)
    error_rms = float(np.sqrt(np.mean(((z[:, 1] - z[:, 0]) - margin) ** 2)))

    def expected(s: float) -> float:
        return float(sum(0.5 * erfc(abs(m) / (s * sqrt(2))) for m in margin))

    target = max(allowed, 0.5)
    low, high = 1e-6, error_rms  # E grows with s: bisect for E(s) = target below the error
    if expected(error_rms) <= target:
        low = error_rms
    else:
        for _ in range(60):
            mid = sqrt(low * high)
            low, high = (mid, high) if expected(mid) < target else (low, mid)
    return {"margin_rms": round(float(np.sqrt(np.mean(margin ** 2))), 4),
            "int8_error_rms": round(error_rms, 4),
            "windows_within_error": int(np.sum(np.abs(margin) < error_rms)),
            "expected_flips": round(expected(error_rms), 2),
            "allowed_flips": allowed, "error_rms_for_allowed": round(low, 4),
            "sqnr_db_needed": round(sqnr(ref, z) + 20 * log10(error_rms / low), 1)}


def write(report: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    gate = report["gate_sqnr_db"]
    lines = [
        "# Where the int8 logit error comes from\n",
        f"Written by `{report['command']}`. {report['n_windows']} held-out windows (the run's "
        f"test subjects), activation ranges from its {report['n_calibration']} calibration "
        f"windows (global min/max, as the exporters), "
        f"{'7' if report['reduce_range'] else '8'}-bit weights. Logit SQNR against the fp32 "
        f"deployed graph, in dB (the gate asks 30).\n",
        f"- every rounding point (the int8 graph, simulated): **{report['simulated_sqnr_db']}**"
        f" (the exported int8 ONNX measured by the gate: {gate if gate is None else round(gate, 2)})",
        f"- weights only: {report['weights_only_db']}; activations only: "
        f"{report['activations_only_db']}\n",
        "| activation | calibrated range | bits | step | median | 99.9th pct | only this one "
        "rounded | all but this one |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["activations"]:
        lines.append(f"| {r['tensor']} | {r['range'][0]:g} … {r['range'][1]:g} | {r['bits']} | "
                     f"{r['step']:g} | "
                     f"{r['p50']:g} | {r['p99_9']:g} | {r['only_db']} | {r['all_but_db']} |")
    lines += ["", "| weight | shape | only this one rounded |", "|---|---|---|"]
    for r in report["weights"]:
        lines.append(f"| {r['weight']} | {tuple(r['shape'])} | {r['only_db']} |")
    n, f = report["n_windows"], report["flips"]
    lines += ["", f"Decisions that int8 flips against fp32, of {n} (the gate allows "
              f"{int(0.01 * n)}: agreement >= 0.99): every rounding point {f['all']} (the gate "
              f"measured agreement {report['gate_agreement']} on the exported file), weights "
              f"only {f['weights_only']}, activations only {f['activations_only']}. With the "
              "costliest activations left unrounded, one more per row (what 16-bit "
              "activations, 256x finer steps, nearly are), weights and the other activations "
              "rounded:", "", "| unrounded activations | logit SQNR (dB) | flips |",
              "|---|---|---|"]
    for r in report["cumulative_unrounded"]:
        lines.append(f"| {', '.join(r['unrounded'])} | {r['sqnr_db']} | {r['flips']} |")
    b = report.get("boundary")
    if b:
        fails = f["all"] > b["allowed_flips"]
        lead = ("Why the agreement check fails: the windows sit at the boundary." if fails else
                "How close the agreement check is: the windows and the boundary.")
        lines += ["", f"**{lead}** "
                  f"The fp32 decision margin (logit difference, threshold in the bias) has RMS "
                  f"{b['margin_rms']} on these windows; int8 moves it by {b['int8_error_rms']} "
                  f"RMS, and {b['windows_within_error']} windows lie closer than that to the "
                  f"boundary. With a Gaussian error of that RMS the expected flips are "
                  f"{b['expected_flips']} (counted: {f['all']}); for the {b['allowed_flips']} "
                  f"the gate allows, the error RMS must fall to {b['error_rms_for_allowed']}, a "
                  f"logit SQNR of about {b['sqnr_db_needed']} dB against the {report['simulated_sqnr_db']} "
                  "of this int8 graph. A classifier this unsure of many windows (a unimodal "
                  "margin distribution centred near the boundary, as a BAcc of 0.6-0.7 "
                  "implies) needs that SQNR, whatever its size; a confident one would not."
                  + ("" if fails else " Here the check passes: " + (
                      "the error is within that." if b["int8_error_rms"] <= b["error_rms_for_allowed"]
                      else f"the error exceeds that, but only {f['all']} of the "
                      f"{b['windows_within_error']} windows within it crossed, which the "
                      "error's size does not ensure (the next run's windows may fare worse)."))]
    lines += ["", "Error powers add: a source at S dB costs 10^(-S/10) of the signal power; "
              "30 dB overall allows 10^-3 in total. The logits are 16-bit over 4x their "
              "calibrated range (the TFLite file; the ONNX file computes them in float). With "
              "an envelope ceiling, `envelope_relu6` and `envelope` lie on one grid (the "
              "multiply between them is exact), so leaving one out changes nothing.", ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
