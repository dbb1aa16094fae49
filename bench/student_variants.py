"""EEG-MiC variants on the 6 CV folds, trained alone or distilled: what was tried for the student.

    python bench/student_variants.py --out runs/student-variants --seeds 2 --jobs 2

Each variant is the `mic-s` no-KD row of `bench/cv_benchmark.py` (12 epochs, same folds
and seeds k, k + 10, ...; threshold tuned on validation) as it was before band-pass
initialised filters became the default (``base``: random-initialised filters) with one
change:

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
- ``drop0.5`` / ``drop0`` / ``wd0.1``: dropout 0.5 / none before the classifier / weight
  decay 0.1;
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
- ``nothr``: no decision threshold tuned on the validation subjects (`tune_threshold`
  off: the class-weighted argmax, as band-power + LR decides);
- ``trval``: the 4 validation subjects join the 24 training subjects (17 % more people;
  selection and threshold then see training subjects: join with ``last`` and ``nothr``);
- ``flip`` / ``rev``: every training window, each time it is drawn, multiplied by -1 /
  reversed in time with probability 1/2 (both keep every band's power, the quantity the
  task is separable by) -- patched, not a config option;
- ``pbm``: every band's filtered signals mixed across the electrodes before rectification
  (a learned 19 x 19 spatial filter per band, identity at start: spatial filtering before
  power, as FBCSP and ShallowConvNet); ``abs``: full-wave rectification |z| (clamped at 6)
  instead of the half-wave ReLU6; ``pbm-abs``, ``pbm-sqlog``: the band mix with |z| / with
  the log of the mean power -- patched, not shipped; ``bp+pbm``: the band mix with
  band-pass initialised filters;
- ``st1`` / ``st2``: the filter bank's output kept at every sample / every 2nd instead of
  every 4th (50 Hz): a 25 Hz rhythm sampled at 50 Hz hits the same two phases, so its
  rectified mean depends on phase, not only amplitude; a full-rate envelope does not alias
  (``st2`` and ``bp+st1`` were not run: ``st1`` costs 4x the filter-bank work and fell
  behind the base);
- ``swa`` / ``swa4``: no model selection either, but the average of the student's weights
  after every optimiser step from epoch 2 / 4 on, BatchNorm statistics then re-estimated on
  the training windows (`torch.optim.swa_utils`; stochastic weight averaging, whose flat
  minima generalise to unseen domains, SWAD) -- patched; ``bs128``: batches of 128 windows
  instead of 32 (a less noisy gradient, 4x fewer steps); ``sq``: the log of each band's
  mean power without the band mix (``sqlog`` as a composable front end); run with ``bp``:
  ``bp+swa``, ``bp+swa4``, ``bp+bs128``, ``bp+xs``, ``bp+sq``, ``bp+pbm-sqlog``;
- ``lbp`` / ``lbp-only``: the classifier also reads / reads only the log of every band
  amplitude averaged over the window (F x C values through a BatchNorm): band-power + LR's
  features from the student's own filter bank, a log-power pathway in the compress stage
  (``abp``, ``abp-only``: the mean amplitudes without the log; ``pbp``, ``pbp-only``: the
  log of each band's mean power, the square of the un-rectified filter output) -- patched,
  float only;
  ``frz``: the filter bank's taps frozen at their initial values (with ``bp``: fixed
  band-pass filters, as band-power + LR's fixed bands), its BatchNorm still trained;
- ``refit``: after training, the classifier (the last linear layer) refitted by band-power +
  LR's logistic regression (standardised, C = 1, balanced, to convergence) on the trained
  student's features of the training windows, no tuned threshold -- patched at test time;
- ``kd`` / ``dlink`` / ``dlink-kd``: not trained alone but distilled from the fold's
  fine-tuned teacher (``--cv``'s ``fold{k}/teacher``, the benchmark's): the ``logit-kd``
  method (Hinton logit KD), the ``dlink`` method (router, mimic, spectral terms), or
  ``dlink`` with the logit KD term added (``kd_weight`` 1, `bench/router_variants.py`'s
  ``kd1``); joined with the variants above (``kd+bp+pbm-sqlog``): does a front end that
  helps alone help a distilled student, and does KD help it;
- ``shallowconvnet``: not a variant: the benchmark's ShallowConvNet row (same recipe, folds
  and seeds, 1 thread), so that it can be run on more seeds than the table's 3 and set
  against ``bp`` (EEG-MiC alone as the benchmark's ``no-kd`` row trains it) seed for seed;
  the seeds the benchmark ran are read from its runs in ``--cv`` (trained here, its fold
  0 and 1 seed-0 runs repeated the benchmark's BAcc to the last digit), the others trained;
- ``A+B``: the changes of variants A and B together (``bp+fl49``, ``clip100+xs``; the
  architecture and training variants above, ``last``, ``trval``, ``flip``, ``rev`` and at most
  one patched front end (``pbm``, ``abs``, ``pbm-abs``, ``pbm-sqlog``) can be joined on the
  command line; ``flip``, ``trval`` etc. also run alone): do the single gains add up?

Besides test BAcc it reports the logit SQNR of the simulated int8 deployed graph
(`dlink.qat.Int8Sim`, 256 training windows for the ranges, the test subjects for the
SQNR; not for the patched graphs, which the simulation does not know). Each run writes
OUT/VARIANT/fold{k}/seed{s}/result.json; a re-run skips those. The table uses seeds
0..``--seeds``-1; a variant of ``--variants`` that also has runs of later seeds (a
confirmation, e.g. ``--seeds 4 --variants base,bp``) gets its paired difference on those,
and its BAcc over all its seeds, in a section below it (list ``base`` and it in
``--variants`` to keep that section).
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
            "clip100+fl49", "clip100+ep30", "nothr", "last+nothr", "trval+last+nothr", "flip+rev",
            "bp+flip+rev", "pbm", "abs", "pbm-abs", "pbm-sqlog", "bp+pbm",
            "st1", "bp+swa", "bp+swa4", "bp+bs128", "bp+xs", "bp+sq", "bp+pbm-sqlog", "bp+lbp",
            "bp+lbp-only", "bp+pbp", "bp+pbp-only", "bp+frz", "bp+frz+lbp", "bp+frz+lbp-only",
            "bp+frz+pbp-only", "bp+last+nothr", "bp+frz+pbp-only+last+nothr",
            "bp+frz+pbp-only+last+nothr+ls0+drop0+ep30", "bp+ep30", "bp+last+ep30",
            "bp+refit", "kd+bp", "kd+bp+pbm-sqlog", "dlink-kd+bp+pbm-sqlog", "shallowconvnet"]
# not EEG-MiC: a baseline of `bench/cv_benchmark.py` trained here as there (more seeds)
BASELINE_ROWS = ("shallowconvnet",)
# the mic-s preset as the variants were measured against it: random-initialised filters (the
# default until the ``bp`` variant's gain held on fresh seeds and band-pass became the default)
MIC_S = {"n_bands": 16, "n_virtual": 4, "width": 48, "filter_init": "random"}
XS = {"n_bands": 8, "n_virtual": 2, "width": 16}  # the mic-xs preset's sizes
ARCH = {"ch8": {"compress_hidden": 8}, "xs": XS, "fl49": {"filter_length": 49},
        "drop0.5": {"dropout": 0.5}, "fl99": {"filter_length": 99},
        "fl49-xs": {"filter_length": 49, **XS}, "fl49-d0.5": {"filter_length": 49, "dropout": 0.5},
        "im": {"input_mix": True}, "im-xs": {"input_mix": True, **XS},
        "tsh": {"time_shared_head": True}, "tsh-xs": {"time_shared_head": True, **XS},
        "s8": {"n_virtual": 8}, "s16-w24": {"n_virtual": 16, "width": 24},
        "f32": {"n_bands": 32}, "s16-w24-ep30": {"n_virtual": 16, "width": 24},
        "bp": {"filter_init": "bandpass"}, "st1": {"filter_stride": 1},
        "st2": {"filter_stride": 2}, "drop0": {"dropout": 0.0}}  # student kwargs
# distillation instead of training alone: part -> (DistillConfig.method, other fields)
DISTILLED = {"kd": ("logit-kd", {}), "dlink": ("dlink", {}), "dlink-kd": ("dlink", {"kd_weight": 1.0})}
TRAINING = {"gj0.3": {"gain_jitter": 0.3}, "wd0.1": {"weight_decay": 0.1},
            "clip100": {"input_clip_uv": 100.0}, "clip200": {"input_clip_uv": 200.0},
            "noclip": {"input_clip_uv": None}, "ep30": {"epochs": 30},
            "ls0": {"label_smoothing": 0.0}, "lr5e-4": {"lr": 5e-4},
            "s16-w24-ep30": {"epochs": 30}, "crop": {"crop_jitter": True},
            "crop-ep24": {"crop_jitter": True, "epochs": 24},
            "last-ep6": {"epochs": 6}, "ep6": {"epochs": 6},
            "nothr": {"tune_threshold": False}, "bs128": {"batch_size": 128}}  # DistillConfig fields changed


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


def _front_end(band_mix: bool, power: str) -> None:
    """Patch EEGMiC's band amplitudes: with ``band_mix`` each band's filtered signals are mixed
    across the C electrodes before rectification (a learned C x C spatial filter per band,
    initialised to the identity, as FBCSP / ShallowConvNet filter space before taking power);
    ``power`` is ``"relu"`` (the shipped half-wave ReLU6), ``"abs"`` (full-wave: |z|) or
    ``"sqlog"`` (log of the patch's mean power). Float training only, not shipped."""
    import torch

    import dlink.student as st

    init = st.EEGMiC.__init__

    @functools.wraps(init)
    def __init__(self, *a, **kw):
        init(self, *a, **kw)
        F, C = self.envelope.out_channels, self.n_chans
        if band_mix:
            self.band_mix = torch.nn.Conv2d(F * C, F * C, 1, groups=F, bias=False)
            with torch.no_grad():
                self.band_mix.weight.copy_(torch.eye(C).repeat(F, 1)[:, :, None, None])

    def band_amplitudes(self, x):
        if self.input_mix is not None:
            x = self.input_mix(x)
        z = self.filterbank[:2](x.unsqueeze(1))  # (B, F, C, T'), before rectification
        if band_mix:
            B, F, C, T = z.shape
            z = self.band_mix(z.reshape(B, F * C, 1, T)).reshape(B, F, C, T)
        if power == "relu":
            return self.envelope(torch.nn.functional.relu6(z))
        if power == "abs":
            return self.envelope(z.abs().clamp_max(6.0))
        return torch.log(self.envelope(z * z).clamp_min(0.0) + 0.01)

    st.EEGMiC.__init__ = __init__
    st.EEGMiC._band_amplitudes = band_amplitudes


def _log_amplitude_pathway(only: bool, log: bool = True, power: bool = False) -> None:
    """Patch EEGMiC so its classifier also reads (``only``: reads only) the log of every
    band amplitude averaged over the window (``log`` False: the mean amplitude itself;
    ``power``: the log of each band's mean power, the square of its un-rectified output),
    (F x C) values standardised by a BatchNorm:
    band-power + LR's features, from the student's own filter bank, beside the compressed
    mimic representation (a log-power pathway in the compress stage, as ShallowConvNet /
    FBCNet take power; float log, not shipped; `forward` only, so no-KD variants only)."""
    import torch

    import dlink.student as st

    init = st.EEGMiC.__init__

    @functools.wraps(init)
    def __init__(self, *a, **kw):
        init(self, *a, **kw)
        n = self.envelope.out_channels * self.n_chans
        self.log_norm = torch.nn.BatchNorm1d(n)
        self.classifier = torch.nn.Linear(n + (0 if only else self.num_features), self.n_outputs)

    def forward(self, x):
        if power:
            z = self.filterbank[:2](x.unsqueeze(1))  # (B, F, C, T'), before rectification
            mean = (z * z).mean(-1).flatten(1)  # (B, F*C)
        else:
            mean = self._band_amplitudes(x).clamp_min(0.0).mean(-1).flatten(1)  # (B, F*C)
        lbp = self.log_norm(torch.log(mean + 0.01) if log else mean)
        if not only:
            lbp = torch.cat([self.forward_head(self.forward_features(x), pre_logits=True), lbp], 1)
        return self.classifier(self.drop(lbp))

    st.EEGMiC.__init__ = __init__
    st.EEGMiC.forward = forward


def _freeze_filter_bank() -> None:
    """Patch EEGMiC so the filter bank's taps are not trained (its BatchNorm still is): the
    band-pass filters it starts with (``bp``) stay band-pass, as band-power + LR's fixed
    bands do, instead of adapting to the training subjects."""
    import dlink.student as st

    init = st.EEGMiC.__init__

    @functools.wraps(init)
    def __init__(self, *a, **kw):
        init(self, *a, **kw)
        self.filterbank[0].weight.requires_grad_(False)

    st.EEGMiC.__init__ = __init__


PATHWAYS = {"lbp": (False, True), "lbp-only": (True, True), "abp": (False, False),
            "abp-only": (True, False), "pbp": (False, True, True), "pbp-only": (True, True, True)}

FRONT_ENDS = {"pbm": (True, "relu"), "abs": (False, "abs"), "pbm-abs": (True, "abs"),
              "pbm-sqlog": (True, "sqlog"), "sq": (False, "sqlog")}
# graphs the int8 simulation and export do not know
PATCHED = ("eg2", "eg3", "log", "sqlog", *FRONT_ENDS, *PATHWAYS)
# training changes made by patching, composable
PATCHED_TRAINING = ("last", "trval", "flip", "rev", "swa", "swa4", "frz", "refit")


def _augment(flip: bool, reverse: bool) -> None:
    """Patch `dlink.distill`'s per-batch augmentation so that each training window is also
    multiplied by -1 (``flip``) and/or reversed in time (``reverse``) with probability 1/2."""
    import torch

    import dlink.distill

    jitter = dlink.distill.gain_jitter

    def augmented(x, sigma):
        x = jitter(x, sigma)
        if flip:
            x = x * (1 - 2 * torch.randint(0, 2, (len(x), 1, 1))).to(x.dtype)
        if reverse:
            rev = torch.rand(len(x)) < 0.5
            x = torch.where(rev[:, None, None], x.flip(-1), x)
        return x

    dlink.distill.gain_jitter = augmented


def _weight_average(start_epoch: int, train_batches: list[np.ndarray]) -> None:
    """Patch `dlink.distill.train_loop` so the saved student is the average of its weights
    after every optimiser step from epoch ``start_epoch`` (1-based) on, BatchNorm statistics
    re-estimated on the training windows (`torch.optim.swa_utils`; SWA / SWAD, flat minima
    for unseen domains: here unseen people) instead of the epoch of best validation AUROC.
    ``train_batches``: the training windows in model units, for the BatchNorm pass."""
    import torch
    from torch.optim.swa_utils import AveragedModel, update_bn

    import dlink.distill
    from dlink.training import epoch_batches

    loop = dlink.distill.train_loop

    def averaged_loop(**kw):
        student, cfg = kw["modules"]["objective"].student, kw["cfg"]
        average = AveragedModel(student)
        steps = {"n": 0}
        per_epoch = len(epoch_batches(kw["n_train"], cfg.batch_size, cfg.seed, 0))  # as train_loop
        loss_fn = kw["loss_fn"]

        def counting_loss_fn(batch):  # the weights now are those after the previous step
            if steps["n"] >= (start_epoch - 1) * per_epoch:
                average.update_parameters(student)
            steps["n"] += 1
            return loss_fn(batch)

        result = loop(**{**kw, "loss_fn": counting_loss_fn, "select": None})
        average.update_parameters(student)
        student.load_state_dict(average.module.state_dict())
        update_bn([torch.from_numpy(b) for b in train_batches], student)
        student.eval()
        kw["on_best"](cfg.epochs)
        return result

    dlink.distill.train_loop = averaged_loop


def _refit_classifier(model, x_train: np.ndarray, y_train: np.ndarray) -> None:
    """Replace the trained student's last linear layer by band-power + LR's classifier
    (standardised L2 logistic regression, C = 1, balanced classes: a convex fit to
    convergence) on its pre-logit features of the training windows, folded into the layer
    (no threshold shift). Dropout is off in eval mode, so the layer reads the same features."""
    import torch

    from dlink.bandpower import BandPowerLR
    from dlink.training import predict_logits

    feats = predict_logits(lambda xb: model.forward_head(model.forward_features(xb), pre_logits=True),
                           torch.from_numpy(x_train))  # (n, D) the classifier's input
    lr = BandPowerLR().model.fit(feats, y_train)
    scaler, logreg = lr.steps[0][1], lr.steps[1][1]
    w = logreg.coef_[0] / scaler.scale_  # (D,): logit of class 1 minus class 0
    b = logreg.intercept_[0] - float(w @ scaler.mean_)
    with torch.no_grad():  # two-class softmax logits whose difference is the LR's
        model.classifier.weight.copy_(torch.tensor(np.stack([-w / 2, w / 2]), dtype=torch.float32))
        model.classifier.bias.copy_(torch.tensor([-b / 2, b / 2], dtype=torch.float32))


def variant_changes(variant: str) -> tuple[dict, dict]:
    """(student kwargs, DistillConfig fields) a variant changes; ``A+B`` merges A's and B's."""
    parts = variant.split("+")
    arch = {k: v for p in parts for k, v in ARCH.get(p, {}).items()}
    training = {k: v for p in parts for k, v in TRAINING.get(p, {}).items()}
    return arch, training


def check_variants(variants: list[str]) -> None:
    """SystemExit naming the unknown variants (a combination may join the variants that
    change student kwargs or training fields, the patched training changes and at most one
    patched front end)."""
    composable = (set(ARCH) | set(TRAINING) | set(PATCHED_TRAINING) | set(FRONT_ENDS) | set(PATHWAYS)
                  | set(DISTILLED))
    unknown = sorted(v for v in variants if v not in VARIANTS and not (
        all(p in composable for p in v.split("+")) and len(set(v.split("+")) & set(FRONT_ENDS)) <= 1
        and len(set(v.split("+")) & set(DISTILLED)) <= 1))
    if unknown:
        raise SystemExit(f"student_variants: unknown variant(s) {', '.join(unknown)}; choose "
                         f"from {', '.join(VARIANTS)}, or join {', '.join(sorted(composable))} "
                         "with '+'.")


def run_one(job: tuple) -> None:
    variant, k, s, out_root, cv = job
    out = Path(out_root) / variant / f"fold{k}" / f"seed{s}"
    if (out / "result.json").is_file():
        return
    if variant in BASELINE_ROWS:  # a seed the benchmark ran: its run, not a second one
        from cv_benchmark import seed_dirs  # bench/ is on sys.path when a bench script runs

        name, _ = seed_dirs(variant, k, s + 1)[s]
        metrics = Path(cv) / f"fold{k}" / name / "metrics.json"
        if metrics.is_file():
            out.mkdir(parents=True, exist_ok=True)
            bacc = json.loads(metrics.read_text())["test"]["bacc"]
            (out / "result.json").write_text(json.dumps({"bacc": bacc, "from": str(metrics)}))
            return
    import torch

    torch.set_num_threads(1)
    from sklearn.metrics import balanced_accuracy_score

    from dlink import signal as sig
    from dlink.data import kfold_subjects, load_windows
    from dlink.distill import DistillConfig, distill
    from dlink.student import load_student

    parts = variant.split("+")
    if variant in ("rms", "chrms"):
        to_units = sig.SignalSpec.to_model_units
        sig.SignalSpec.to_model_units = lambda self, X: _normalise(to_units(self, X),
                                                                    variant == "chrms")
    if variant.startswith("eg"):
        _saturating_envelope(float(variant[2:]))
    for front_end in set(parts) & set(FRONT_ENDS):  # at most one: they patch the same method
        _front_end(*FRONT_ENDS[front_end])
    if "frz" in parts:
        _freeze_filter_bank()
    for pathway in set(parts) & set(PATHWAYS):
        _log_amplitude_pathway(*PATHWAYS[pathway])
    if variant in ("log", "sqlog"):
        _log_envelope(square=variant == "sqlog")
    if "flip" in parts or "rev" in parts:
        _augment("flip" in parts, "rev" in parts)
    if any(p.startswith("last") for p in parts):
        import dlink.distill

        dlink.distill.selection_metric = lambda n_classes: None  # keep the last epoch
    windows = load_windows("eegmat")
    split = kfold_subjects(windows, k=6, seed=0)[k]
    if "trval" in parts:
        from dlink.data.splits import Split

        split = Split(train=[*split.train, *split.val], val=split.val, test=split.test)
    train = np.flatnonzero(np.isin(windows.subject, split.train))
    arch, training = variant_changes(variant)
    method, distilled = next((DISTILLED[p] for p in parts if p in DISTILLED), ("no-kd", {}))
    cfg = DistillConfig(**{"student": "mic-s", "method": method, "epochs": 12, "seed": k + 10 * s,
                           **training, **distilled})
    if "swa" in parts or "swa4" in parts:
        signal = windows.signal.with_clip(cfg.input_clip_uv)  # the windows as the student sees them
        _weight_average(4 if "swa4" in parts else 2, [signal.to_model_units(windows.X[train[i:i + 64]])
                                                      for i in range(0, len(train), 64)])
    import dlink.student as st

    if variant in BASELINE_ROWS:
        cfg.student = variant
    else:
        st.register_student(f"mic-s-{variant}", st.EEGMiC, f"mic-s with {arch}", **{**MIC_S, **arch})
        cfg.student = f"mic-s-{variant}"
    distill(Path(cv) / f"fold{k}" / "teacher" if method != "no-kd" else None, windows, split, out, cfg)
    model = load_student(out).eval()
    test = np.isin(windows.subject, split.test)
    x = torch.from_numpy(model.signal.to_model_units(windows.X[test]))
    if "refit" in parts:
        _refit_classifier(model, model.signal.to_model_units(windows.X[train]), windows.y[train])
    with torch.no_grad():
        logits = model(x).numpy()
    result = {"bacc": balanced_accuracy_score(windows.y[test], logits.argmax(1))}
    if not set(parts) & set(PATCHED) and variant not in BASELINE_ROWS:  # the int8 simulation
        # needs EEG-MiC's shipped graph
        from dlink.qat import Int8Sim

        calib = train[np.random.default_rng(0).permutation(len(train))[:256]]
        sim = Int8Sim(model)
        sim.calibrate(torch.from_numpy(model.signal.to_model_units(windows.X[calib])))
        with torch.no_grad():
            ref, q = sim.float_logits(x), sim(x)
        result["sqnr_db"] = float(10 * torch.log10((ref ** 2).sum() / ((q - ref) ** 2).sum()))
    (out / "result.json").write_text(json.dumps(result))


def seed_runs(out_root: Path, variant: str) -> dict[tuple[int, int], dict]:
    """{(fold, seed): result} of the finished runs of ``variant``."""
    return {(int(f.parts[-3][4:]), int(f.parts[-2][4:])): json.loads(f.read_text())
            for f in sorted((out_root / variant).glob("fold*/seed*/result.json"))}


def tables(out_root: Path, run: list[str], carried: dict, seeds: int) -> tuple[str, dict]:
    """Markdown table and summary: the variants in ``run`` from their runs of seeds
    0..``seeds``-1 in ``out_root`` (all 6 folds needed), every other variant of ``carried``
    (a previous summary) as it was, marked carried. Rows in `VARIANTS` order, then the others."""
    summary = {}
    order = VARIANTS + [v for v in [*carried, *run] if v not in VARIANTS]
    for v in dict.fromkeys(order):
        if v not in run:
            if v in carried:
                summary[v] = {**carried[v], "carried": True}
            continue
        per_fold = {}
        for (k, s), r in seed_runs(out_root, v).items():
            if s < seeds:
                per_fold.setdefault(k, []).append(r)
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


def complete_seeds(out_root: Path, variant: str) -> dict[tuple[int, int], float]:
    """{(fold, seed): BAcc} of ``variant``'s seeds that were run in all 6 folds."""
    runs = {k: r["bacc"] for k, r in seed_runs(out_root, variant).items()}
    done = {s for _, s in runs if all((k, s) in runs for k in range(6))}
    return {k: b for k, b in runs.items() if k[1] in done}


def seed_means(runs: dict[tuple[int, int], float]) -> list[float]:
    """Each seed's mean BAcc over the folds of ``runs`` ({(fold, seed): BAcc}), by seed."""
    return [statistics.mean(b for (_, s), b in runs.items() if s == seed)
            for seed in sorted({s for _, s in runs})]


def plot_seeds(out_root: Path, run: list[str], seeds: int, cv: dict, path: Path) -> bool:
    """Each seed's 6-fold mean BAcc, one dot per seed, for the variants of ``run`` with more
    than ``seeds`` seeds (and ``base``), against band-power + LR and ShallowConvNet's table
    rows; False (no file) when no variant has more seeds."""
    rows = {}
    for v in run:
        per_seed = seed_means(complete_seeds(out_root, v))
        if len(per_seed) > seeds or (v == "base" and per_seed):
            rows[v] = per_seed
    if len(rows) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(rows) + 1.8))
    for i, per_seed in enumerate(rows.values()):
        ax.plot(per_seed, [i] * len(per_seed), "o", color="C0", alpha=0.7)
        ax.plot([statistics.mean(per_seed)], [i], "|", color="k", markersize=16)
    for name, color in (("bandpower-lr", "C2"), ("shallowconvnet", "C3")):
        ax.axvline(cv[name]["bacc"][0], color=color, ls="--",
                   label=f"{name} in the CV table ({cv[name]['bacc'][0]:.3f})")
    ax.set_yticks(range(len(rows)), [f"{v} ({len(p)} seeds)" for v, p in rows.items()])
    ax.set_xlabel("BAcc, mean over the 6 test folds, one dot per seed (bar: mean over seeds)")
    ax.invert_yaxis()  # first variant on top
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def more_seeds(out_root: Path, run: list[str], seeds: int) -> str:
    """Markdown lines for the variants of ``run`` that also have runs of seeds >= ``seeds``
    (a confirmation after the choice): their paired difference to ``base`` on the table's
    seeds, on the later seeds alone, and on all, over the (fold, seed) runs both have; their
    BAcc over every seed run in all 6 folds, and per seed; and, where ``shallowconvnet`` was
    run on more seeds too, their paired difference to it."""
    def paired(runs: dict, ref: dict, keep=lambda s: True) -> str:
        d = [runs[k] - ref[k] for k in runs if k in ref and keep(k[1])]
        return f"{statistics.mean(d):+.3f}, higher in {sum(x > 0 for x in d)} of {len(d)} runs"

    base, scn = complete_seeds(out_root, "base"), complete_seeds(out_root, "shallowconvnet")
    lines = []
    for v in run:
        runs = complete_seeds(out_root, v)
        if v == "base" or not any(s >= seeds for _, s in runs):
            continue
        parts = [f"{label}: {paired(runs, base, keep)}" for label, keep in (
            (f"seeds 0-{seeds - 1}", lambda s: s < seeds), (f"seeds {seeds}+", lambda s: s >= seeds),
            ("all", lambda s: True)) if any(k in base and keep(k[1]) for k in runs)]
        per_seed = seed_means(runs)
        line = (f"- {v} − base, paired per (fold, seed): " + "; ".join(parts)
                + f" ({v} over all {len(per_seed)} seeds: BAcc {statistics.mean(per_seed):.3f}; "
                "per seed " + ", ".join(f"{b:.3f}" for b in per_seed) + ")")
        if v != "shallowconvnet" and any(s >= 3 for _, s in scn):  # more than the table's 3 seeds
            line += f"; − shallowconvnet, paired per (fold, seed): {paired(runs, scn)}"
        lines.append(line + ".")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/student-variants")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cv", type=Path, default=Path("runs/cv"),
                    help="bench/cv_benchmark.py's output: the fine-tuned teacher of each fold "
                         "(fold{k}/teacher), read by the distilled variants (kd, dlink, dlink-kd)")
    args = ap.parse_args()
    variants = args.variants.split(",")
    check_variants(variants)
    missing = [k for k in range(6) if not (args.cv / f"fold{k}" / "teacher").is_dir()]
    if missing and any(set(v.split("+")) & set(DISTILLED) for v in variants):
        teacher = args.cv / f"fold{missing[0]}" / "teacher"
        raise SystemExit(f"student_variants: no fine-tuned teacher in {teacher}; "
                         "run bench/cv_benchmark.py first or pass --cv.")
    cv_json = REPO / "results" / "cv_benchmark.json"  # the reference rows, read before training
    if not cv_json.is_file():
        raise SystemExit(f"student_variants: {cv_json} is missing; run bench/cv_benchmark.py first.")
    cv = json.loads(cv_json.read_text())["summary"]
    jobs = [(v, k, s, args.out, args.cv) for s in range(args.seeds) for v in variants for k in range(6)]
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        list(pool.imap_unordered(run_one, jobs))
    summary_json = REPO / "results" / "student_variants.json"
    # the variants not run now keep their committed rows (written by this script)
    carried = json.loads(summary_json.read_text()) if summary_json.is_file() else {}
    table, summary = tables(Path(args.out), variants, carried, args.seeds)
    confirmation = more_seeds(Path(args.out), variants, args.seeds)
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/student_variants.py", *sys.argv[1:]])
    doc = (f"# EEG-MiC variants, 6 folds\n\nWritten by `{command}`. "
           "What each variant changes: the script's docstring. BAcc per fold is the mean "
           f"over {args.seeds} seeds (a row with fewer runs than {6 * args.seeds} ran fewer). "
           "\"(carried)\": the variant was not run here; its row is "
           "the one an earlier run of this script committed, its SQNR from the int8 "
           "simulation of that time (compare SQNR only among rows that are not carried). "
           "SQNR is the simulated int8 logit SQNR on the test subjects "
           f"(not computed for the patched variants {', '.join(PATCHED)}, nor for "
           f"{', '.join(BASELINE_ROWS)}). For comparison, ShallowConvNet "
           f"scores {cv['shallowconvnet']['bacc'][0]:.3f} ({cv['shallowconvnet']['n_seeds']} seeds) and "
           f"band-power + LR {cv['bandpower-lr']['bacc'][0]:.3f} on the same folds "
           "(`results/cv_benchmark.md`).\n\n" + table + "\n")
    if confirmation:
        doc += ("\nMore seeds (`--seeds` larger for these variants in an earlier run of this "
                "script; the table above uses seeds 0.." f"{args.seeds - 1} only):\n\n" + confirmation + "\n")
    if plot_seeds(Path(args.out), variants, args.seeds, cv, REPO / "results" / "student_variants_seeds.png"):
        doc += ("\nHow far a seed moves the 6-fold mean (the variants above with more seeds):\n\n"
                "![each seed's 6-fold mean BAcc](student_variants_seeds.png)\n")
    (REPO / "results" / "student_variants.md").write_text(doc)
    summary_json.write_text(json.dumps(summary, indent=1))
    print(doc)


if __name__ == "__main__":
    main()
