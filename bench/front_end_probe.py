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
training subjects and scored on its test subjects.

Then the ``power, log`` features, standardised the same way, through a linear layer
fitted by AdamW with class-weighted cross-entropy (`dlink.training`'s warm-up + cosine
schedule and class weights), no selection, no threshold: the students' recipe (12 epochs,
batch 32, peak lr 2e-3, weight decay 1e-2, label smoothing 0.1: `DistillConfig` and the
benchmark's epochs), 100 epochs of it without label smoothing, and full-batch steps until
converged (2,000 at lr 1e-2, no decay): the same model as the logistic regression, fitted
less or more completely. Seed 0. Writes OUT/front_end_probe.md and .json.
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
# AdamW fits of a linear layer on the standardised `power, log` features: name -> settings
FITS = {"the students' recipe: 12 epochs, batch 32, lr 2e-3, wd 1e-2, label smoothing 0.1":
        {"epochs": 12, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-2, "label_smoothing": 0.1},
        "100 epochs, batch 32, lr 2e-3, wd 1e-2, no label smoothing":
        {"epochs": 100, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-2, "label_smoothing": 0.0},
        "full batch, 2,000 steps, lr 1e-2, no decay, no label smoothing (converged)":
        {"epochs": 2000, "batch_size": None, "lr": 1e-2, "weight_decay": 0.0, "label_smoothing": 0.0}}


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


def adamw_linear(X: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int | None, lr: float,
                 weight_decay: float, label_smoothing: float, seed: int = 0):
    """Fit a standardised linear layer (n, D) -> 2 classes by AdamW as students are trained
    (`dlink.training.lr_at` schedule, `class_weights`); ``batch_size`` None: full batch.
    Returns predict: (m, D) -> (m,) labels."""
    import torch

    from dlink.training import class_weights, epoch_batches, lr_at

    torch.manual_seed(seed)
    mu, sd = X.mean(0), X.std(0) + 1e-8
    xt, yt = torch.tensor((X - mu) / sd, dtype=torch.float32), torch.from_numpy(y)
    layer = torch.nn.Linear(X.shape[1], 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    weight = class_weights(y, 2)
    per_epoch = 1 if batch_size is None else len(epoch_batches(len(X), batch_size, seed, 0))
    step, total = 0, epochs * per_epoch
    for epoch in range(epochs):
        for batch in ([np.arange(len(X))] if batch_size is None
                      else epoch_batches(len(X), batch_size, seed, epoch)):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, 0.05)
            loss = torch.nn.functional.cross_entropy(layer(xt[batch]), yt[batch], weight=weight,
                                                     label_smoothing=label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1

    def predict(Z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return layer(torch.tensor((Z - mu) / sd, dtype=torch.float32)).argmax(1).numpy()

    return predict


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
    fitted = {k: [] for k in FITS}
    for split in kfold_subjects(windows, k=6, seed=0):
        train, test = (np.isin(windows.subject, s) for s in (split.train, split.test))
        for k, f in feats.items():
            model = BandPowerLR().model.fit(f[train], windows.y[train])
            bacc[k].append(float(balanced_accuracy_score(windows.y[test], model.predict(f[test]))))
        f = feats["power, log"]
        for k, settings in FITS.items():
            predict = adamw_linear(f[train], windows.y[train], **settings)
            fitted[k].append(float(balanced_accuracy_score(windows.y[test], predict(f[test]))))
    ref = bacc["power, log"]
    lines = ["| features | per band and electrode | BAcc (mean ± sd over folds) "
             "| − power, log (folds won) | per fold |", "|---|---|---|---|---|"]
    for k, b in bacc.items():
        d = [a - r for a, r in zip(b, ref)]
        diff = "–" if k == "power, log" else f"{statistics.mean(d):+.3f} ({sum(x > 0 for x in d)} / 6)"
        lines.append(f"| {k} | {feats[k].shape[1] // windows.signal.n_chans} values | "
                     f"{statistics.mean(b):.3f} ± {statistics.stdev(b):.3f} | {diff} | "
                     + ", ".join(f"{x:.3f}" for x in b) + " |")
    fit_lines = ["| fit | BAcc (mean ± sd over folds) | − logistic regression (folds won) | per fold |",
                 "|---|---|---|---|"]
    for k, b in fitted.items():
        d = [a - r for a, r in zip(b, ref)]
        fit_lines.append(f"| {k} | {statistics.mean(b):.3f} ± {statistics.stdev(b):.3f} | "
                         f"{statistics.mean(d):+.3f} ({sum(x > 0 for x in d)} / 6) | "
                         + ", ".join(f"{x:.3f}" for x in b) + " |")
    command = "python bench/front_end_probe.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc = (f"# What EEG-MiC's front end hands a linear classifier\n\nWritten by `{command.strip()}`. "
           "The `mic-s` band-pass filter bank at initialisation (16 bands, 25 taps, every 4th "
           "output sample), untrained, over the ±50 µV-clamped windows; one value per band, "
           "electrode and window; band-power + LR's classifier on the 6 CV folds' training "
           "subjects, BAcc on their test subjects (what each summary is: the script's "
           "docstring). `amplitude` is what EEG-MiC's envelope computes.\n\n"
           + "\n".join(lines) + "\n\nThe `power, log` features through a linear layer fitted by AdamW "
           "(standardised, class-weighted cross-entropy, warm-up + cosine schedule, no "
           "selection, no threshold; seed 0), against the logistic regression's "
           f"{statistics.mean(ref):.3f}:\n\n" + "\n".join(fit_lines) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "front_end_probe.md").write_text(doc)
    (args.out / "front_end_probe.json").write_text(json.dumps(
        {"command": command.strip(), "bacc_per_fold": bacc, "adamw_bacc_per_fold": fitted}, indent=1))
    print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
