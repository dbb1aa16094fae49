"""What EEG-MiC's front end hands a linear classifier: power or amplitude, with or without log.

    python bench/front_end_probe.py --out results

EEG-MiC trained alone stays near 0.65 BAcc on the 6 CV folds whatever its later layers do
(`results/student_variants.md`), while band-power + LR, a linear model, scores 0.677. This
takes the student's front end out of training and asks what each way of summarising a
band makes linearly separable. Per fold: the `mic-s` filter bank at its band-pass
initialisation (`dlink.student.bandpass_bank`: 16 bands over 1-45 Hz, 25 taps, output kept
every 4th sample, as the student) run over the clamped windows (±50 µV, `SignalSpec`'s
clip, model units); per band and electrode one number per window:

- ``power, log``: log of the mean squared output (band-power + LR's and ShallowConvNet's
  quantity);
- ``power``: the mean squared output;
- ``amplitude, log``: log of the mean half-wave rectified output;
- ``amplitude``: the mean half-wave rectified output: what EEG-MiC's envelope computes
  (ReLU, then a per-patch mean; no square, no log: the ops int8 runs);

and ``Welch, log`` (band-power + LR's own features: 5 bands, Welch). Each goes through
band-power + LR's classifier (`dlink.bandpower.BandPowerLR`'s: standardised, L2 logistic
regression, C = 1, balanced class weights, no threshold tuning), trained on the fold's
training subjects and scored on its test subjects. No network is trained; deterministic.
Writes OUT/front_end_probe.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

SUMMARIES = ("power, log", "power", "amplitude, log", "amplitude")


def filter_bank_features(X: np.ndarray, sfreq: float) -> dict[str, np.ndarray]:
    """(n, C, T) model units -> {summary: (n, F * C)} of the band-pass filter bank's outputs."""
    from scipy.signal import lfilter

    from dlink.student import bandpass_bank

    taps = bandpass_bank(16, 25, sfreq)[:, 0, 0, :].numpy()  # (F, 25), mic-s's bank at init
    out = np.stack([lfilter(t, 1.0, X, axis=-1)[..., ::4] for t in taps], axis=1)  # (n, F, C, T/4)
    power, amplitude = (out ** 2).mean(-1), np.maximum(out, 0.0).mean(-1)  # (n, F, C)
    feats = {"power, log": np.log(power + 1e-6), "power": power,
             "amplitude, log": np.log(amplitude + 0.01), "amplitude": amplitude}
    return {k: v.reshape(len(X), -1) for k, v in feats.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()
    from sklearn.metrics import balanced_accuracy_score

    from dlink.bandpower import BandPowerLR, log_band_power
    from dlink.data import kfold_subjects, load_windows

    windows = load_windows("eegmat")
    signal = windows.signal.with_clip(50.0)
    feats = filter_bank_features(signal.to_model_units(windows.X), windows.sfreq)
    feats["Welch, log"] = log_band_power(windows.X, windows.sfreq)
    bacc = {k: [] for k in feats}
    for split in kfold_subjects(windows, k=6, seed=0):
        train, test = (np.isin(windows.subject, s) for s in (split.train, split.test))
        for k, f in feats.items():
            model = BandPowerLR().model.fit(f[train], windows.y[train])
            bacc[k].append(float(balanced_accuracy_score(windows.y[test], model.predict(f[test]))))
    ref = bacc["power, log"]
    lines = ["| features | per band and electrode | BAcc (mean ± sd over folds) "
             "| − power, log (folds won) | per fold |", "|---|---|---|---|---|"]
    for k, b in bacc.items():
        d = [a - r for a, r in zip(b, ref)]
        diff = "–" if k == "power, log" else f"{statistics.mean(d):+.3f} ({sum(x > 0 for x in d)} / 6)"
        lines.append(f"| {k} | {feats[k].shape[1] // windows.signal.n_chans} values | "
                     f"{statistics.mean(b):.3f} ± {statistics.stdev(b):.3f} | {diff} | "
                     + ", ".join(f"{x:.3f}" for x in b) + " |")
    command = "python bench/front_end_probe.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc = (f"# What EEG-MiC's front end hands a linear classifier\n\nWritten by `{command.strip()}`. "
           "The `mic-s` band-pass filter bank at initialisation (16 bands, 25 taps, every 4th "
           "output sample), untrained, over the ±50 µV-clamped windows; one value per band, "
           "electrode and window; band-power + LR's classifier on the 6 CV folds' training "
           "subjects, BAcc on their test subjects (what each summary is: the script's "
           "docstring). `amplitude` is what EEG-MiC's envelope computes.\n\n"
           + "\n".join(lines) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "front_end_probe.md").write_text(doc)
    (args.out / "front_end_probe.json").write_text(json.dumps(
        {"command": command.strip(), "bacc_per_fold": bacc}, indent=1))
    print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
