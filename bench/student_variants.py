"""EEG-MiC variants trained alone (no KD) on the 6 CV folds: what was tried for the student.

    python bench/student_variants.py --out runs/student-variants --seeds 2 --jobs 2

Each variant is the default `mic-s` no-KD row of `bench/cv_benchmark.py` (12 epochs, same
folds and seeds k, k + 10, ...; threshold tuned on validation) with one change:

- ``rms`` / ``chrms``: every window divided by its RMS over all channels / per channel
  (relative band power, as a log-power model's standardisation would give), in training
  and test alike;
- ``gj0.3``: training windows scaled by exp(N(0, 0.3^2)) (`DistillConfig.gain_jitter`);
- ``ch8``: the learned per-band compression of the band amplitudes (``compress_hidden=8``),
  a piecewise-linear stand-in for a log;
- ``xs``: the smallest preset's sizes (8 bands, 2 virtual channels, width 16): less
  capacity to fit 24 training subjects' idiosyncrasies;
- ``fl49`` / ``fl99``: 49-tap (245 ms) / 99-tap (495 ms) filters instead of 25: sharper
  theta/alpha bands; ``fl49-xs`` / ``fl49-d0.5``: 49 taps with ``xs``'s sizes / dropout 0.5;
- ``im``: a learned 19 -> 19 spatial filter of the raw window before the filter bank
  (``input_mix``, initialised to the identity); ``im-xs``: the same with ``xs``'s sizes;
- ``drop0.5`` / ``wd0.1``: dropout 0.5 before the classifier / weight decay 0.1;
- ``tsh`` / ``tsh-xs``: a time-shared head (``time_shared_head``: the classifier reads each
  compressed feature's mean over the window's time steps, as band power averaged over the
  window, h weights per class instead of h x N'), with the default / ``xs`` sizes;
- ``clip100`` / ``clip200`` / ``noclip``: the input clamp at ±100 / ±200 µV instead of
  ±50, or none (`DistillConfig.input_clip_uv`): what the clamp costs in accuracy (the int8
  input step grows with the clamp: 0.39 µV at ±50);
- ``s8`` / ``s16-w24``: 8 virtual channels / 16 with width 24 instead of 4 with width 48
  (ShallowConvNet keeps 40 spatial filters; mic-s compresses the 19 electrodes to 4);
- ``f32``: 32 filter-bank bands instead of 16 (ShallowConvNet has 40 temporal filters);
- ``ep30`` / ``ls0`` / ``lr5e-4``: 30 epochs instead of 12 / no label smoothing / peak
  learning rate 5e-4 instead of 2e-3; ``s16-w24-ep30``: ``s16-w24`` trained 30 epochs;
- ``crop`` / ``crop-ep24``: every training window, each time it is drawn, shifted a random
  0..T-1 samples into the next window of its recording (`DistillConfig.crop_jitter`), 12 /
  24 epochs;
- ``log`` / ``sqlog``: the log of each band amplitude / the log of each band's mean power
  (square instead of ReLU, as ShallowConvNet) -- patched, not shipped: what a log-power
  front end would be worth;
- ``eg2`` / ``eg3``: a saturating envelope (ReLU6 after an envelope initialised to 2x / 3x
  the patch mean) -- implemented here by patching the model, not shipped;
- ``bp``: the filter bank initialised to band-pass filters splitting 1-45 Hz
  (``filter_init="bandpass"``) instead of at random; with ``fl49``/``fl99`` (``bp+fl99``)
  the longer filters can separate theta from alpha;
- ``last`` / ``last-ep6``: no model selection: the student after its last epoch (12 / 6
  epochs) instead of the epoch of best validation AUROC (4 validation subjects pick
  epochs 1-12 and often 1-2; is the choice itself noise?) -- patched, not a config option;
  ``ep6``: 6 epochs with selection, the control that tells the two changes apart;
- ``A+B``: the changes of variants A and B together (``bp+fl49``, ``clip100+xs``; any two
  or more of the architecture and training variants above can be joined on the command
  line): do the single gains add up?

Besides test BAcc it reports the logit SQNR of the simulated int8 deployed graph
(`dlink.qat.Int8Sim`, 256 training windows for the ranges, the test subjects for the
SQNR). Each run writes OUT/VARIANT/fold{k}/seed{s}/result.json; a re-run skips those.
Writes results/student_variants.md and .json.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["base", "rms", "chrms", "gj0.3", "ch8", "eg2", "eg3", "xs", "fl49", "drop0.5",
            "wd0.1", "fl99", "fl49-xs", "fl49-d0.5", "im",
            "im-xs", "clip100", "clip200", "noclip", "tsh", "tsh-xs", "s8", "s16-w24", "f32",
            "ep30", "ls0", "lr5e-4", "log", "sqlog", "s16-w24-ep30", "crop", "crop-ep24", "bp",
            "bp+fl49", "bp+fl99", "last", "last-ep6", "ep6", "bp+fl49+last-ep6", "clip100+xs",
            "clip100+fl49", "clip100+ep30"]
MIC_S = {"n_bands": 16, "n_virtual": 4, "width": 48}  # the mic-s preset
XS = {"n_bands": 8, "n_virtual": 2, "width": 16}  # the mic-xs preset's sizes
ARCH = {"ch8": {"compress_hidden": 8}, "xs": XS, "fl49": {"filter_length": 49},
        "drop0.5": {"dropout": 0.5}, "fl99": {"filter_length": 99},
        "fl49-xs": {"filter_length": 49, **XS}, "fl49-d0.5": {"filter_length": 49, "dropout": 0.5},
        "im": {"input_mix": True}, "im-xs": {"input_mix": True, **XS},
        "tsh": {"time_shared_head": True}, "tsh-xs": {"time_shared_head": True, **XS},
        "s8": {"n_virtual": 8}, "s16-w24": {"n_virtual": 16, "width": 24},
        "f32": {"n_bands": 32}, "s16-w24-ep30": {"n_virtual": 16, "width": 24},
        "bp": {"filter_init": "bandpass"}}  # student kwargs
TRAINING = {"gj0.3": {"gain_jitter": 0.3}, "wd0.1": {"weight_decay": 0.1},
            "clip100": {"input_clip_uv": 100.0}, "clip200": {"input_clip_uv": 200.0},
            "noclip": {"input_clip_uv": None}, "ep30": {"epochs": 30},
            "ls0": {"label_smoothing": 0.0}, "lr5e-4": {"lr": 5e-4},
            "s16-w24-ep30": {"epochs": 30}, "crop": {"crop_jitter": True},
            "crop-ep24": {"crop_jitter": True, "epochs": 24},
            "last-ep6": {"epochs": 6}, "ep6": {"epochs": 6}}  # DistillConfig fields changed


def _normalise(X: np.ndarray, per_channel: bool) -> np.ndarray:
    axes = 2 if per_channel else (1, 2)
    rms = np.sqrt((X.astype(np.float64) ** 2).mean(axis=axes, keepdims=True))
    return (X * (0.11 / np.maximum(rms, 1e-3))).astype(np.float32)  # 11 µV rms, model units


def _saturating_envelope(gain: float) -> None:
    """Patch EEGMiC so the envelope starts at ``gain`` x the mean and is followed by ReLU6
    (float training only: the int8 simulation and export do not know this graph)."""
    import torch

    import dlink.student as st

    init = st.EEGMiC.__init__

    @functools.wraps(init)  # the preset registry reads the constructor's signature
    def __init__(self, *a, **kw):
        init(self, *a, **kw)
        torch.nn.init.constant_(self.envelope.weight, gain / self.envelope.kernel_size[1])
        self.envelope = torch.nn.Sequential(self.envelope, torch.nn.ReLU6())

    st.EEGMiC.__init__ = __init__


def _log_envelope(square: bool) -> None:
    """Patch EEGMiC so the band amplitudes become log(max(amplitude, 0) + 0.01) (the learned
    envelope weights may turn negative), or, with ``square``,
    log(mean power + 0.01) of the un-rectified filter-bank output, as ShallowConvNet and
    band-power + LR take it (float training only: neither log nor square is in the int8
    graph; a diagnosis of what the front end lacks, not a shipped option)."""
    import torch

    import dlink.student as st

    def band_amplitudes(self, x):  # no input_mix: none of these variants has one
        z = self.filterbank[:2](x.unsqueeze(1)) if square else self.filterbank(x.unsqueeze(1))
        return torch.log(self.envelope(z * z if square else z).clamp_min(0.0) + 0.01)

    st.EEGMiC._band_amplitudes = band_amplitudes


PATCHED = ("eg2", "eg3", "log", "sqlog")  # graphs the int8 simulation and export do not know


def variant_changes(variant: str) -> tuple[dict, dict]:
    """(student kwargs, DistillConfig fields) a variant changes; ``A+B`` merges A's and B's."""
    parts = variant.split("+")
    arch = {k: v for p in parts for k, v in ARCH.get(p, {}).items()}
    training = {k: v for p in parts for k, v in TRAINING.get(p, {}).items()}
    return arch, training


def check_variants(variants: list[str]) -> None:
    """SystemExit naming the unknown variants (a combination may join only the variants
    that change student kwargs or training fields, and ``last``)."""
    composable = set(ARCH) | set(TRAINING) | {"last"}
    unknown = sorted(v for v in variants if v not in VARIANTS and not (
        "+" in v and all(p in composable for p in v.split("+"))))
    if unknown:
        raise SystemExit(f"student_variants: unknown variant(s) {', '.join(unknown)}; choose "
                         f"from {', '.join(VARIANTS)}, or join {', '.join(sorted(composable))} "
                         "with '+'.")


def run_one(job: tuple) -> None:
    variant, k, s, out_root = job
    out = Path(out_root) / variant / f"fold{k}" / f"seed{s}"
    if (out / "result.json").is_file():
        return
    import torch

    torch.set_num_threads(1)
    from sklearn.metrics import balanced_accuracy_score

    from dlink import signal as sig
    from dlink.data import kfold_subjects, load_windows
    from dlink.distill import DistillConfig, distill
    from dlink.student import load_student

    if variant in ("rms", "chrms"):
        to_units = sig.SignalSpec.to_model_units
        sig.SignalSpec.to_model_units = lambda self, X: _normalise(to_units(self, X),
                                                                    variant == "chrms")
    if variant.startswith("eg"):
        _saturating_envelope(float(variant[2:]))
    if variant in ("log", "sqlog"):
        _log_envelope(square=variant == "sqlog")
    if any(p.startswith("last") for p in variant.split("+")):
        import dlink.distill

        dlink.distill.selection_metric = lambda n_classes: None  # keep the last epoch
    windows = load_windows("eegmat")
    split = kfold_subjects(windows, k=6, seed=0)[k]
    arch, training = variant_changes(variant)
    cfg = DistillConfig(**{"student": "mic-s", "method": "no-kd", "epochs": 12, "seed": k + 10 * s,
                           **training})
    if arch:
        import dlink.student as st

        st.register_student(f"mic-s-{variant}", st.EEGMiC, f"mic-s with {arch}",
                            **{**MIC_S, **arch})
        cfg.student = f"mic-s-{variant}"
    distill(None, windows, split, out, cfg)
    model = load_student(out).eval()
    test = np.isin(windows.subject, split.test)
    x = torch.from_numpy(model.signal.to_model_units(windows.X[test]))
    with torch.no_grad():
        logits = model(x).numpy()
    result = {"bacc": balanced_accuracy_score(windows.y[test], logits.argmax(1))}
    if variant not in PATCHED:  # the int8 simulation needs the shipped graph
        from dlink.qat import Int8Sim

        train = np.flatnonzero(np.isin(windows.subject, split.train))
        calib = train[np.random.default_rng(0).permutation(len(train))[:256]]
        sim = Int8Sim(model)
        sim.calibrate(torch.from_numpy(model.signal.to_model_units(windows.X[calib])))
        with torch.no_grad():
            ref, q = sim.float_logits(x), sim(x)
        result["sqnr_db"] = float(10 * torch.log10((ref ** 2).sum() / ((q - ref) ** 2).sum()))
    (out / "result.json").write_text(json.dumps(result))


def tables(out_root: Path, run: list[str], carried: dict) -> tuple[str, dict]:
    """Markdown table and summary: the variants in ``run`` from their runs in ``out_root``
    (all 6 folds needed), every other variant of ``carried`` (a previous summary) as it
    was, marked carried. Rows in `VARIANTS` order, then the others."""
    summary = {}
    order = VARIANTS + [v for v in [*carried, *run] if v not in VARIANTS]
    for v in dict.fromkeys(order):
        if v not in run:
            if v in carried:
                summary[v] = {**carried[v], "carried": True}
            continue
        per_fold = {}
        for f in sorted((out_root / v).glob("fold*/seed*/result.json")):
            per_fold.setdefault(int(f.parts[-3][4:]), []).append(json.loads(f.read_text()))
        if len(per_fold) < 6:
            continue
        bacc = [statistics.mean(r["bacc"] for r in per_fold[k]) for k in range(6)]
        sqnr = [r["sqnr_db"] for k in range(6) for r in per_fold[k] if "sqnr_db" in r]
        summary[v] = {"bacc_per_fold": bacc, "bacc": statistics.mean(bacc),
                      "bacc_sd": statistics.stdev(bacc),
                      "runs": sum(len(r) for r in per_fold.values()),
                      "sqnr_db": statistics.mean(sqnr) if sqnr else None}
    base = summary.get("base", {}).get("bacc_per_fold")
    lines = ["| variant | BAcc (mean ± sd over folds) | − base (folds won) | int8 sim SQNR dB | runs |",
             "|---|---|---|---|---|"]
    for v, r in summary.items():
        diff = "–"
        if base and v != "base":
            d = [a - b for a, b in zip(r["bacc_per_fold"], base)]
            diff = f"{statistics.mean(d):+.3f} ({sum(x > 0 for x in d)} / 6)"
        sq = f"{r['sqnr_db']:.1f}" if r["sqnr_db"] is not None else "–"
        runs = f"{r['runs']} (carried)" if r.get("carried") else r["runs"]
        lines.append(f"| {v} | {r['bacc']:.3f} ± {r['bacc_sd']:.3f} | {diff} | {sq} | {runs} |")
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/student-variants")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    variants = args.variants.split(",")
    check_variants(variants)
    cv_json = REPO / "results" / "cv_benchmark.json"  # the reference rows, read before training
    if not cv_json.is_file():
        raise SystemExit(f"student_variants: {cv_json} is missing; run bench/cv_benchmark.py first.")
    cv = json.loads(cv_json.read_text())["summary"]
    jobs = [(v, k, s, args.out) for s in range(args.seeds) for v in variants for k in range(6)]
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        list(pool.imap_unordered(run_one, jobs))
    summary_json = REPO / "results" / "student_variants.json"
    # the variants not run now keep their committed rows (written by this script)
    carried = json.loads(summary_json.read_text()) if summary_json.is_file() else {}
    table, summary = tables(Path(args.out), variants, carried)
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/student_variants.py", *sys.argv[1:]])
    doc = (f"# EEG-MiC variants trained alone, 6 folds\n\nWritten by `{command}`. "
           "What each variant changes: the script's docstring. BAcc per fold is the mean "
           f"over {args.seeds} seeds. \"(carried)\": the variant was not run here; its row is "
           "the one an earlier run of this script committed, its SQNR from the int8 "
           "simulation of that time (compare SQNR only among rows that are not carried). "
           "SQNR is the simulated int8 logit SQNR on the test subjects "
           f"(not computed for the patched variants {', '.join(PATCHED)}). For comparison, ShallowConvNet "
           f"scores {cv['shallowconvnet']['bacc'][0]:.3f} ({cv['shallowconvnet']['n_seeds']} seeds) and "
           f"band-power + LR {cv['bandpower-lr']['bacc'][0]:.3f} on the same folds "
           "(`results/cv_benchmark.md`).\n\n" + table + "\n")
    (REPO / "results" / "student_variants.md").write_text(doc)
    summary_json.write_text(json.dumps(summary, indent=1))
    print(doc)


if __name__ == "__main__":
    main()
