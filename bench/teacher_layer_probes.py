"""Where in the teacher the task information is: a linear probe on each frozen layer.

    python bench/teacher_layer_probes.py --out results

For each backbone (the committed self-pretrained one and, if it exists, the 50-epoch one of
`bench/teacher_variants.py`), every EEGMAT window goes once through the frozen backbone
(eval mode); the features of depth l are what the teacher's ``channel`` head reads at that
depth: the tokens after the patch embedding (l = 0) or after encoder layer l, averaged over
the patches of each electrode, (n, C*d). In each of the 6 subject-wise folds of
`results/cv_benchmark.md` a standardised L2 logistic regression (balanced class weights) is
fitted on the training subjects; its C (1e-4 ... 1e-1) and its two-class decision threshold
are chosen on the validation subjects; BAcc on the test subjects. Band-power features
(`dlink.bandpower`, C x 5 log band powers) go through the same probe as a reference.

This is the linear-probe step of the teacher's LP-FT recipe, at every depth instead of the
last only. Writes OUT/teacher_layer_probes.md, .json and .png (about 6 min per backbone on
1 core).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BACKBONES = {"committed (5 epochs)": "dlink/pretrained/cbramod-small-eegmat",
             "pretrain50 (50 epochs)": "runs/pretrain-e50"}
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def layer_features(backbone: Path, windows, batch_size: int = 64) -> list[np.ndarray]:
    """n windows -> per depth (patch embedding, then each encoder layer) the (n, C*d)
    per-electrode patch means of the frozen backbone's tokens."""
    import torch

    from dlink.finetune import teacher_input
    from dlink.teacher import load_teacher

    torch.set_num_threads(1)
    model = load_teacher(backbone).eval()
    patches = teacher_input(windows)  # (n, C, N, P) in µV / 100, as the teacher is fed
    depths: list[list[np.ndarray]] = [[] for _ in range(model.n_layers + 1)]
    with torch.no_grad():
        for i in range(0, len(patches), batch_size):
            x = patches[i:i + batch_size]
            h = model.patch_embedding(x)  # (B, C, N, d)
            outs = [h, *[h := layer(h) for layer in model.encoder.layers]]
            for store, o in zip(depths, outs):
                store.append(o.mean(dim=2).flatten(1).numpy())  # (B, C*d)
    return [np.concatenate(d) for d in depths]


def probe(F: np.ndarray, y: np.ndarray, subject: np.ndarray, splits) -> dict[str, list[float]]:
    """Test BAcc and AUROC per fold of a logistic regression on features (n, D), C and
    threshold chosen on the validation subjects."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from dlink.metrics import tune_threshold

    out: dict[str, list[float]] = {"bacc": [], "auroc": []}
    for sp in splits:
        tr, va, te = (np.isin(subject, s) for s in (sp.train, sp.val, sp.test))
        scale = StandardScaler().fit(F[tr])
        best = None
        for C in C_GRID:
            lr = LogisticRegression(C=C, class_weight="balanced", max_iter=3000)
            lr.fit(scale.transform(F[tr]), y[tr])
            m = lr.decision_function(scale.transform(F[va]))
            bias, bacc = tune_threshold(np.stack([np.zeros_like(m), m], 1), y[va])
            if best is None or bacc > best[0]:
                best = (bacc, lr, bias)
        m = best[1].decision_function(scale.transform(F[te]))
        out["bacc"].append(float(balanced_accuracy_score(y[te], (m + best[2] > 0).astype(int))))
        out["auroc"].append(float(roc_auc_score(y[te], m)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    from dlink.bandpower import log_band_power
    from dlink.data import kfold_subjects, load_windows

    w = load_windows("eegmat")
    y, subject = np.asarray(w.y), np.asarray(w.subject)
    splits = kfold_subjects(w, k=6, seed=0)
    rows = {"band-power (C x 5)": probe(log_band_power(w.X, w.sfreq), y, subject, splits)}
    for name, path in BACKBONES.items():
        if not (REPO / path).is_dir():
            print(f"{path} not found: skipping {name}")
            continue
        for depth, F in enumerate(layer_features(REPO / path, w)):
            label = "patch embedding" if depth == 0 else f"layer {depth}"
            rows[f"{name}: {label}"] = probe(F, y, subject, splits)
            print(f"{name} {label}: {statistics.mean(rows[f'{name}: {label}']['bacc']):.3f}",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "teacher_layer_probes.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Linear probes on the frozen teacher, layer by layer, 6 folds", "",
             "Written by `python bench/teacher_layer_probes.py --out results`; the protocol is "
             "in the script's docstring (per-electrode patch means of the frozen tokens, "
             "logistic regression, C and threshold chosen on the validation subjects, BAcc on "
             "the test subjects).", "",
             "| features | BAcc (mean ± sd over folds) | AUROC | BAcc per fold |",
             "|---|---|---|---|"]
    for name, r in rows.items():
        b = r["bacc"]
        lines.append(f"| {name} | {statistics.mean(b):.3f} ± {statistics.stdev(b):.3f} | "
                     f"{statistics.mean(r['auroc']):.3f} | {', '.join(f'{v:.3f}' for v in b)} |")
    lines += ["", "![test AUROC by depth](teacher_layer_probes.png)"]
    (out / "teacher_layer_probes.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "teacher_layer_probes.png")
    print(f"wrote {out / 'teacher_layer_probes.md'} and .png")


def plot(rows: dict, path: Path) -> None:
    """Left: test AUROC (mean over folds) against depth, one line per backbone, band power
    as a reference. Right: each depth's AUROC minus the patch embedding's, paired per fold
    (mean ± sd): the folds differ more from each other than the depths do."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    ax, dx = fig.subplots(1, 2)
    for name in BACKBONES:
        auroc = np.array([r["auroc"] for key, r in rows.items() if key.startswith(f"{name}: ")])
        if not auroc.size:
            continue
        depth = np.arange(len(auroc))  # (depths, folds)
        line = ax.plot(depth, auroc.mean(1), marker="o", label=name)[0]
        diff = auroc - auroc[:1]
        dx.errorbar(depth, diff.mean(1), yerr=diff.std(1, ddof=1), marker="o", capsize=3,
                    color=line.get_color(), label=name)
    bp = statistics.mean(rows["band-power (C x 5)"]["auroc"])
    ax.axhline(bp, color="k", ls="--", lw=1, label=f"band power ({bp:.3f})")
    dx.axhline(0, color="k", lw=0.8)
    ticks = ["embed"] + [str(i) for i in range(1, len(depth))]
    ax.set(xlabel="depth (patch embedding, then encoder layer)", ylabel="test AUROC, mean of 6 folds",
           title="Linear probe on the frozen teacher's tokens")
    dx.set(xlabel="depth", ylabel="AUROC − patch embedding's, same fold",
           title="Paired per fold (mean ± sd)")
    for a in (ax, dx):
        a.set_xticks(depth, ticks)
        a.legend(fontsize=8)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
