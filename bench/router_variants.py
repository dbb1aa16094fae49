"""DLink's router settings on the 6 CV folds: how often the router collapses, and what BAcc does.

    python bench/router_variants.py --cv runs/cv --out runs/router-variants --jobs 2

A collapsed router gives every window the same layer mix: the mean over layers of the
per-layer standard deviation of its weights across the test windows falls below 0.02
(the bar of issue 12). Each variant is the benchmark's ``dlink`` row (`bench/cv_benchmark.py`:
`mic-s`, 12 epochs, seeds k, k + 10, k + 20, the fold's fine-tuned teacher in
``CV/fold{k}/teacher``) with one `DistillConfig` change:

- ``base``: none (read from the benchmark's own ``dlink`` runs in ``CV``, not re-trained;
  ``router_mi`` 0.3 since this benchmark's ``mi0.3`` row made it the default);
- ``mi0.1``: the router's mutual-information reward at 0.1 (``router_mi``, the default
  before);
- ``mi0.3``: at 0.3 (run when 0.1 was the default; now the same as ``base``, run for run);
- ``tau1``: router softmax temperature 1 instead of 0.5 (``router_tau``: less sharp mixes,
  less saturated gradients), with ``router_mi`` 0.1 (the default it was measured with);
- ``kd1``: Hinton logit KD on the teacher's logits added at weight 1 (``kd_weight``, the
  ``logit-kd`` row's term): layer-wise features *and* the teacher's decision.

Each run writes OUT/VARIANT/fold{k}/seed{s}/result.json (test BAcc, router weight sd); a
re-run skips those. Writes results/router_variants.md and .json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHANGES = {"mi0.1": {"router_mi": 0.1}, "mi0.3": {"router_mi": 0.3},
           "tau1": {"router_tau": 1.0, "router_mi": 0.1}, "kd1": {"kd_weight": 1.0}}
COLLAPSED = 0.02  # mean per-layer sd of the router weights across test windows


def router_sd(run_dir: Path) -> float:
    """Mean over layers of the per-layer sd of a run's router weights across its test windows."""
    return float(np.load(run_dir / "router_weights.npz")["weights"].std(axis=0).mean())


def run_fold(job: tuple) -> None:
    """Every missing (variant, seed) run of one fold, with one teacher cache."""
    k, variants, n_seeds, cv, out_root = job
    todo = [(v, s) for v in variants for s in range(n_seeds)
            if not (Path(out_root) / v / f"fold{k}" / f"seed{s}" / "result.json").is_file()]
    if not todo:
        return
    import torch

    torch.set_num_threads(1)
    from dlink.data import kfold_subjects, load_windows
    from dlink.distill import DistillConfig, cache_teacher, distill
    from dlink.teacher import load_teacher

    windows = load_windows("eegmat")
    split = kfold_subjects(windows, k=6, seed=0)[k]
    teacher_dir = Path(cv) / f"fold{k}" / "teacher"
    cache = cache_teacher(load_teacher(teacher_dir), windows)
    for v, s in todo:
        out = Path(out_root) / v / f"fold{k}" / f"seed{s}"
        cfg = DistillConfig(student="mic-s", method="dlink", epochs=12, seed=k + 10 * s, **CHANGES[v])
        metrics = distill(teacher_dir, windows, split, out, cfg, cache=cache)
        (out / "result.json").write_text(json.dumps(
            {"bacc": metrics["test"]["bacc"], "router_sd": router_sd(out)}))


def base_runs(cv: Path, n_seeds: int) -> dict[tuple[int, int], dict]:
    """{(fold, seed): result} of the benchmark's own dlink runs (their metrics.json holds the
    same router sd, ``router_std``, written by the benchmark)."""
    from cv_benchmark import seed_dirs  # bench/ is on sys.path when a bench script runs

    runs = {}
    for k in range(6):
        for s, (name, _seed) in enumerate(seed_dirs("dlink", k, n_seeds)):
            metrics = cv / f"fold{k}" / name / "metrics.json"
            if metrics.is_file():
                m = json.loads(metrics.read_text())
                runs[(k, s)] = {"bacc": m["test"]["bacc"], "router_sd": m["router_std"]}
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", default="runs/cv", help="the CV benchmark's working folder")
    ap.add_argument("--out", default="runs/router-variants")
    ap.add_argument("--variants", default=",".join(CHANGES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in CHANGES]
    if unknown:
        raise SystemExit(f"router_variants: unknown variant(s) {unknown}; choose from {list(CHANGES)}.")
    cv, out_root = Path(args.cv), Path(args.out)
    base = base_runs(cv, args.seeds)
    if len(base) < 6 * args.seeds:
        raise SystemExit(f"router_variants: {cv} lacks the benchmark's dlink runs "
                         f"({len(base)} of {6 * args.seeds}); run bench/cv_benchmark.py first.")
    jobs = [(k, variants, args.seeds, str(cv), str(out_root)) for k in range(6)]
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        list(pool.imap_unordered(run_fold, jobs))
    from student_variants import seed_runs

    rows = {"base": base, **{v: seed_runs(out_root, v) for v in variants}}
    lines = ["| variant | BAcc (mean ± sd over folds) | − base (folds won) | router sd, mean (min–max) "
             "| collapsed runs (sd < 0.02) |", "|---|---|---|---|---|"]
    summary = {}
    base_fold = [statistics.mean(base[(k, s)]["bacc"] for s in range(args.seeds)) for k in range(6)]
    for v, runs in rows.items():
        if len(runs) < 6 * args.seeds:
            continue
        fold = [statistics.mean(runs[(k, s)]["bacc"] for s in range(args.seeds)) for k in range(6)]
        sd = [r["router_sd"] for r in runs.values()]
        d = [a - b for a, b in zip(fold, base_fold)]
        summary[v] = {"bacc_per_fold": fold, "router_sd": sd, "collapsed": sum(x < COLLAPSED for x in sd)}
        diff = "–" if v == "base" else f"{statistics.mean(d):+.3f} ({sum(x > 0 for x in d)} / 6)"
        lines.append(f"| {v} | {statistics.mean(fold):.3f} ± {statistics.stdev(fold):.3f} | {diff} | "
                     f"{statistics.mean(sd):.3f} ({min(sd):.4f}–{max(sd):.3f}) | "
                     f"{summary[v]['collapsed']} / {len(sd)} |")
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/router_variants.py", *sys.argv[1:]])
    doc = (f"# DLink router settings, 6 folds × {args.seeds} seeds\n\nWritten by `{command}`. "
           "What each variant changes: the script's docstring; `base` is the benchmark's "
           f"`dlink` row (`results/cv_benchmark.md`). BAcc per fold is the mean over {args.seeds} "
           "seeds; router sd is the mean over layers of the per-layer standard deviation of the "
           f"router weights across each run's test windows; a run below {COLLAPSED} gives every "
           "window nearly the same layer mix (collapsed).\n\n" + "\n".join(lines) + "\n")
    (REPO / "results" / "router_variants.md").write_text(doc)
    (REPO / "results" / "router_variants.json").write_text(json.dumps(summary, indent=1))
    print(doc)


if __name__ == "__main__":
    main()
