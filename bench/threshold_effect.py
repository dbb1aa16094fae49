"""What the validation-tuned decision threshold does to each row of the CV benchmark.

    python bench/threshold_effect.py --cv runs/cv --out results

Every student and scratch baseline of `bench/cv_benchmark.py` has its two-class threshold
tuned on the 4 validation subjects and folded into the classifier bias
(``metrics.json: threshold_bias``, a shift of class 1's logit; a run with an int8-aware
phase was shifted before it and may be shifted again after it, ``qat.threshold_bias``).
This reloads each saved model of ``--cv`` (every seed), scores its fold's test subjects
with and without the shifts, and tabulates test BAcc both ways, per row (mean over folds
of the seed mean). For ``dlink-qat`` "untuned" is approximate: its int8-aware phase was
trained with the first shift in place. Band-
power + LR is not tuned (its probability 0.5 decides) and is not re-scored here. The
question it answers: are the gaps between rows larger than what this one protocol choice
moves them by? Needs the data set (``DLINK_DATA_DIR``) and the trained runs (about 2 min on
one core). Writes ``OUT/threshold_effect.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

ROWS = ["shallowconvnet", "shallowconvnet-relu6", "eegnet", "no-kd", "logit-kd", "fitnet",
        "layer-avg", "static-weights", "dlink-no-spectral", "dlink", "dlink-qat"]


def rescore(run: Path, metrics: dict, x_test, y_test) -> tuple[float, float]:
    """(test BAcc with the tuned threshold, without it) of the model saved in ``run``, whose
    ``metrics.json`` is ``metrics``; ``x_test`` (n, C, T) model units, ``y_test`` (n,)."""
    import torch

    from dlink.metrics import compute_metrics
    from dlink.student import load_student
    from dlink.training import predict_logits

    shift = (metrics.get("threshold_bias") or 0.0) + \
        ((metrics.get("qat") or {}).get("threshold_bias") or 0.0)  # both shifts in the bias
    with torch.no_grad():
        z = predict_logits(load_student(run), x_test)
    untuned = z.copy()
    untuned[:, 1] -= shift
    return compute_metrics(y_test, z)["bacc"], compute_metrics(y_test, untuned)["bacc"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", type=Path, default=Path("runs/cv"), help="bench/cv_benchmark.py --out")
    ap.add_argument("--out", type=Path, default=Path("results"))
    args = ap.parse_args()
    import torch

    from dlink.data import kfold_subjects, load_windows

    torch.set_num_threads(1)
    windows = load_windows("eegmat")
    splits = kfold_subjects(windows, k=6, seed=0)
    per_fold: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for k, split in enumerate(splits):
        test = np.isin(windows.subject, split.test)
        x_by_clip = {}  # the fold's test windows in model units, per input clamp (µV)
        for row in ROWS:
            runs = sorted(p for p in (args.cv / f"fold{k}").glob(f"{row}*")
                          if p.name.split("@")[0] == row and (p / "model.safetensors").is_file())
            for run in runs:
                metrics = json.loads((run / "metrics.json").read_text())
                clip = metrics["config"]["input_clip_uv"]
                if clip not in x_by_clip:
                    x_by_clip[clip] = torch.from_numpy(
                        windows.signal.with_clip(clip).to_model_units(windows.X[test]))
                per_fold.setdefault(row, {}).setdefault(k, []).append(
                    rescore(run, metrics, x_by_clip[clip], windows.y[test]))
    summary = {}
    for row, folds in per_fold.items():
        if len(folds) < 6:
            continue
        tuned = [statistics.mean(t for t, _ in folds[k]) for k in range(6)]
        untuned = [statistics.mean(u for _, u in folds[k]) for k in range(6)]
        diff = [t - u for t, u in zip(tuned, untuned)]
        summary[row] = {"tuned": statistics.mean(tuned), "untuned": statistics.mean(untuned),
                        "tuned_per_fold": tuned, "untuned_per_fold": untuned,
                        "gain": statistics.mean(diff), "gain_sd": statistics.stdev(diff),
                        "folds_helped": sum(d > 0 for d in diff),
                        "runs": sum(len(v) for v in folds.values())}
    command = "python bench/threshold_effect.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = ["# What the validation-tuned threshold does to each row\n",
             f"Written by `{command}` from the trained runs of `bench/cv_benchmark.py` (the "
             "6 folds of `results/cv_benchmark.md`). Test BAcc, mean over folds of the seed "
             "mean, with the threshold tuned on the validation subjects (the benchmark's "
             "protocol: these reproduce its table) and at the untuned argmax.\n",
             "| row | tuned (benchmark) | untuned | tuned − untuned (sd) | folds it helps | runs |",
             "|---|---|---|---|---|---|"]
    for row, r in summary.items():
        lines.append(f"| {row} | {r['tuned']:.3f} | {r['untuned']:.3f} | {r['gain']:+.3f} "
                     f"({r['gain_sd']:.3f}) | {r['folds_helped']} / 6 | {r['runs']} |")
    if {"no-kd", "dlink", "shallowconvnet"} <= summary.keys():
        ref = summary["shallowconvnet"]
        gaps = [f"{row} {summary[row]['tuned'] - ref['tuned']:+.3f} tuned, "
                f"{summary[row]['untuned'] - ref['untuned']:+.3f} untuned"
                for row in ("no-kd", "dlink")]
        lines += ["", f"Gaps to ShallowConvNet either way: {'; '.join(gaps)}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threshold_effect.md").write_text("\n".join(lines) + "\n")
    (args.out / "threshold_effect.json").write_text(json.dumps(
        {"command": command, "rows": summary}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
