"""Subject-wise 6-fold cross-validation of the teacher, DLink, its ablations and baselines.

    python bench/cv_benchmark.py --out runs/cv --jobs 2

For each fold (`dlink.data.kfold_subjects(k=6, seed=0)`): fine-tune the committed
self-pretrained CBraMod-small backbone, cache its layer features once, distil every
`dlink.distill.METHODS` row into the default student, train EEGNet and ShallowConvNet
from scratch, and fit log-band-power + logistic regression. Every row of a fold uses the
same split, seed and epoch budget. Results per fold land in OUT/fold{k}/{row}/metrics.json
(a re-run skips what exists); each finished fold's result files are also copied to
``--keep`` (default results/cv_runs/, committed), and a run in a fresh checkout restores
the kept folds made with the same settings (backbone weights, epochs, student, seeds)
instead of re-running them, so the table can be built across sessions, fold by fold (each
kept fold records its CPU's vector extensions and package versions, so that a table
built from folds of several machines says which made each). Then fp32
latency per window (1 thread, batch 1, median of warm runs, blocks of each model taking
turns, all in this one process) is measured and the tables are written to
results/cv_benchmark.md and results/cv_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEACHER_ROWS = ["teacher", "teacher-scratch"]
STUDENT_ROWS = ["no-kd", "logit-kd", "fitnet", "layer-avg", "static-weights", "dlink-no-spectral",
                "dlink", "dlink-qat"]
# shallowconvnet-relu6: ShallowConvNet with ReLU6 for square and log, the int8-deployable form
SCRATCH_ROWS = ["eegnet", "shallowconvnet", "shallowconvnet-relu6"]
INT8_ROWS = {"dlink-int8-ptq": "dlink", "dlink-int8-qat": "dlink-qat",
             "shallowconvnet-relu6-int8": "shallowconvnet-relu6"}  # row -> exported row
ALL_ROWS = [*TEACHER_ROWS, "bandpower-lr", *SCRATCH_ROWS, *STUDENT_ROWS, *INT8_ROWS]
ANCHORS = {"CBraMod (published, EEGMAT)": 0.7256, "LaBraM-Base (published)": 0.6909,
           "EEGNet (published)": 0.6770}


# the order a fold runs them in: what the issues' claims rest on first, so that a benchmark
# stopped early has the rows that matter
RUN_ORDER = ["dlink", "no-kd", "shallowconvnet", "eegnet", "static-weights", "dlink-no-spectral",
             "fitnet", "layer-avg", "logit-kd", "dlink-qat", "shallowconvnet-relu6"]


def _teacher_row(fold_dir: Path, row: str, windows, split, k: int, args, log) -> None:
    """Fine-tune the teacher (``row == "teacher"``) or the same recipe from scratch."""
    from dlink.finetune import FinetuneConfig, finetune

    if (fold_dir / row / "metrics.json").is_file():
        return
    log(f"fine-tuning {row}")
    t0 = time.perf_counter()
    finetune(Path(args.backbone), windows, split, fold_dir / row,
             FinetuneConfig(epochs=args.teacher_epochs, seed=k, from_scratch=row == "teacher-scratch"))
    _add_seconds(fold_dir / row, time.perf_counter() - t0)


def seed_dirs(row: str, k: int, n_seeds: int) -> list[tuple[str, int]]:
    """(folder name, seed) of a row's runs in fold k: seed k, then k + 10, k + 20, ..."""
    return [(row if s == 0 else f"{row}@seed{s}", k + 10 * s) for s in range(n_seeds)]


def run_fold(k: int, args) -> None:
    """Everything for fold k; each run is skipped if its metrics.json exists, and each
    writes its metrics.json (with its wall time) as soon as it is done."""
    import torch

    torch.set_num_threads(args.threads)
    from dlink.bandpower import BandPowerLR
    from dlink.data import kfold_subjects, load_windows
    from dlink.distill import DistillConfig, cache_teacher, distill
    from dlink.metrics import compute_metrics
    from dlink.teacher import load_teacher

    windows = load_windows("eegmat")
    split = kfold_subjects(windows, k=6, seed=0)[k]
    fold_dir = Path(args.out) / f"fold{k}"
    log = lambda msg: print(f"[fold {k} {time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731

    teacher_dir = fold_dir / "teacher"
    _teacher_row(fold_dir, "teacher", windows, split, k, args, log)
    bp = fold_dir / "bandpower-lr" / "metrics.json"
    if not bp.is_file():
        t0 = time.perf_counter()
        train, test = windows.of_subjects(split.train), windows.of_subjects(split.test)
        model = BandPowerLR(seed=k).fit(train.X, train.y, windows.sfreq)
        bp.parent.mkdir(parents=True, exist_ok=True)
        bp.write_text(json.dumps({"test": compute_metrics(test.y, model.predict_proba(test.X)),
                                  "parameters": 19 * 5 * 2 + 2}, indent=1))
        _add_seconds(bp.parent, time.perf_counter() - t0)
    if args.only_teacher:
        _teacher_row(fold_dir, "teacher-scratch", windows, split, k, args, log)
        return log("teacher and band-power rows done")
    cache = None
    seeded = set(args.seeded_rows.split(","))
    for row in RUN_ORDER:
        for name, seed in seed_dirs(row, k, args.seeds if row in seeded else 1):
            out = fold_dir / name
            if (out / "metrics.json").is_file():
                continue
            scratch = row in SCRATCH_ROWS
            if cache is None and not scratch:
                cache = cache_teacher(load_teacher(teacher_dir), windows)
                (fold_dir / "teacher_cache.json").write_text(json.dumps(
                    {"seconds": cache.seconds, "n_windows": len(windows)}))
            log(f"training {name}")
            t0 = time.perf_counter()
            method = "dlink" if row == "dlink-qat" else ("no-kd" if scratch else row)
            cfg = DistillConfig(student=row if scratch else args.student, method=method,
                                epochs=args.student_epochs, seed=seed,
                                qat_epochs=args.qat_epochs if row == "dlink-qat" else 0)
            distill(teacher_dir, windows, split, out, cfg, cache=None if scratch else cache)
            if not scratch and METHOD_HAS_ROUTER.get(method):
                _add_router_and_spectra(out, cache, windows, split)
            _add_seconds(out, time.perf_counter() - t0)
    for row, source in INT8_ROWS.items():
        if not (fold_dir / row / "metrics.json").is_file():
            log(f"exporting {source} to int8 ({row})")
            t0 = time.perf_counter()
            _int8_row(fold_dir / source, fold_dir / row, windows, split, k)
            _add_seconds(fold_dir / row, time.perf_counter() - t0)
    _teacher_row(fold_dir, "teacher-scratch", windows, split, k, args, log)
    log("done")


METHOD_HAS_ROUTER = {"dlink": True, "dlink-no-spectral": True, "static-weights": True,
                     "layer-avg": True, "fitnet": True}


def _add_router_and_spectra(out: Path, cache, windows, split) -> None:
    """Add to a distilled row's metrics.json: how much its layer weights vary across test
    windows, and its per-frequency agreement with the teacher target (decoded axis)."""
    import torch

    from dlink.losses import spectral_agreement
    from dlink.student import load_student

    test = np.flatnonzero(np.isin(windows.subject, split.test))
    m = json.loads((out / "metrics.json").read_text())
    wpath = out / "router_weights.npz"
    if wpath.is_file():
        with np.load(wpath) as z:
            w = z["weights"]  # (n_test, L)
        m["router_std"] = float(w.std(axis=0).mean())  # mean over layers of the per-layer std
        m["router_mean"] = w.mean(axis=0).round(4).tolist()
    else:  # fixed selectors (fitnet: last layer, layer-avg: uniform)
        name = m["method"]
        L = cache.layers.shape[1]
        w = np.tile(np.eye(L)[-1] if name == "fitnet" else np.full(L, 1 / L), (len(test), 1))
    pick = test[np.linspace(0, len(test) - 1, min(64, len(test))).round().astype(int)]
    student = load_student(out)
    x = torch.from_numpy(student.signal.to_model_units(windows.X[pick]))
    rows = np.searchsorted(test, pick)
    target = torch.einsum("bl,blcnd->bcnd", torch.from_numpy(w[rows]).float(), cache.layers[pick].float())
    with torch.no_grad():
        agree = spectral_agreement(student.forward_features(x), target, cache.decoder)
    m["spectral"] = {k: np.round(v, 4).tolist() for k, v in agree.items()}
    path = out / "metrics.json"
    path.with_suffix(".tmp").write_text(json.dumps(m, indent=1))
    path.with_suffix(".tmp").replace(path)


def _int8_row(student_dir: Path, out: Path, windows, split, k: int) -> None:
    """Export a fold's student to int8 ONNX and TFLite (calibrated on its training subjects,
    gate not enforced; ONNX for ``arm``, full 8-bit weights, as `dlink pipeline` exports and
    the int8-aware phase simulates) and record both int8 BAcc on the test subjects next to
    fp32's."""
    from calibration import from_windows
    from dlink.student import load_student
    from export.parity import GateThresholds
    from export.pipeline import export_student

    model = load_student(student_dir)
    calib = from_windows(windows, split.train, split.val + split.test, signal=model.signal,
                         n_windows=256, seed=k)
    manifest = export_student(student_dir, out / "export", calib=calib,
                              holdout=windows.of_subjects(split.test), formats=("onnx", "tflite"),
                              force=True, gate=GateThresholds(enforce=False), target="arm")
    gates = {a["path"]: a["gate"] for a in manifest["artifacts"] if a.get("gate")}
    fp32 = json.loads((student_dir / "metrics.json").read_text())["test"]
    onnx_gate, tfl_gate = gates["model.int8.onnx"], gates["model.int8.tflite"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({
        "test": {**fp32, "bacc": tfl_gate["bacc_int8"]},  # the deployable full-integer file
        "fp32_bacc": fp32["bacc"], "int8_bacc_tflite": tfl_gate["bacc_int8"],
        "int8_bacc_onnx": onnx_gate["bacc_int8"], "gates": gates,
        "parameters": manifest["model"]["parameters"]}, indent=1))


def _add_seconds(row_dir: Path, seconds: float) -> None:
    """Record a row's wall time in its metrics.json (the benchmark's cost per stage)."""
    path = row_dir / "metrics.json"
    m = json.loads(path.read_text())
    m["seconds"] = round(seconds, 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(m, indent=1))
    tmp.replace(path)


def _fold_worker(k, args):
    try:
        run_fold(k, args)
        if args.keep and not args.only_teacher and k not in args.restored:
            keep_fold(Path(args.out), Path(args.keep), k, args.fold_config)
    except Exception as exc:  # report and let the parent fail
        print(f"[fold {k}] failed: {exc!r}", file=sys.stderr, flush=True)
        raise


KEPT_FILES = ("metrics.json", "history.json")  # all the tables and the curves read of a run
CONFIG_KEYS = ("teacher_epochs", "student_epochs", "student", "qat_epochs", "seeds",
               "seeded_rows")  # what makes two runs of a fold the same run


def fold_config(args) -> dict:
    """The settings a kept fold was made with (the backbone by its weights' sha256); a fold
    is only restored under the same."""
    import hashlib

    from dlink.errors import ConfigError
    from dlink.losses import LOSSES
    from dlink.nn_utils import lookup
    from dlink.student import available_models

    cfg = {key: str(getattr(args, key)) for key in CONFIG_KEYS}
    # the student preset's resolved options: a changed default (filter_init) is a new run
    try:
        student = lookup(available_models(), args.student, "student")
    except ConfigError as e:
        raise SystemExit(f"cv_benchmark: --student: {e}") from None
    cfg["student_kwargs"] = json.dumps(student.resolve({}), sort_keys=True)
    # and the loss presets the rows train with (router_mi, spectral weights, ...)
    cfg["loss_presets"] = json.dumps({name: loss.to_dict() for name, loss in LOSSES.items()},
                                     sort_keys=True)
    weights = Path(args.backbone) / "model.safetensors"
    if not weights.is_file():
        raise SystemExit(f"cv_benchmark: --backbone {args.backbone} holds no model.safetensors; "
                         "pass a folder written by dlink pretrain.")
    cfg["backbone_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return cfg


def keep_fold(out: Path, keep: Path, k: int, config: dict) -> None:
    """Copy a finished fold's small result files (OUT/fold{k}/RUN/{metrics,history}.json) to
    KEEP/fold{k}/, which is committed, with ``config`` (`fold_config`): a fresh checkout then
    resumes per fold (weights and caches stay in OUT)."""
    src, dst = out / f"fold{k}", keep / f"fold{k}"
    if dst.exists():
        shutil.rmtree(dst)
    for path in sorted(src.glob("*/*.json")):
        if path.name in KEPT_FILES:
            (dst / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst / path.parent.name / path.name)
    if (src / "teacher_cache.json").is_file():  # the table's teacher-cache time
        shutil.copy2(src / "teacher_cache.json", dst / "teacher_cache.json")
    (dst / "fold.json").write_text(json.dumps(
        {"config": config, "cpu": cpu_isa(), "packages": _versions()}, indent=1))


def _versions() -> dict:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("torch", "numpy", "scipy", "scikit-learn", "mne")}


def cpu_isa() -> list[str]:
    """This CPU's vector extensions, which select torch's float kernels: a kept fold
    records them, so a table restored from folds of several machines says which made each."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return [platform.machine()]
    return sorted(set(flags) & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma"})


def restore_folds(out: Path, keep: Path, folds: list[int], config: dict) -> list[int]:
    """Copy each kept fold made with settings ``config`` (`fold_config`) into OUT, so that
    `run_fold` skips all its runs; only into an empty OUT/fold{k} (a fold is never a mix of
    two runs). Returns the folds restored."""
    restored = []
    for k in folds:
        cfg = keep / f"fold{k}" / "fold.json"
        if not cfg.is_file() or json.loads(cfg.read_text()).get("config") != config:
            continue
        if (out / f"fold{k}").exists() and any((out / f"fold{k}").iterdir()):
            print(f"fold {k}: kept in {keep} but {out / f'fold{k}'} is not empty; not restored",
                  flush=True)
            continue
        for path in sorted((keep / f"fold{k}").rglob("*.json")):  # all keep_fold wrote
            if path.name != "fold.json":
                target = out / f"fold{k}" / path.relative_to(keep / f"fold{k}")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        restored.append(k)
    return restored


def _ort_sessions(models: dict, folder: Path) -> dict:
    """fp32 ONNX Runtime sessions (1 thread) of the same models, exported with the dynamo exporter."""
    import onnxruntime as ort
    import torch

    sessions = {}
    for name, (model, inp) in models.items():
        path = folder / f"{name.split()[-1].strip('()')}.onnx"
        torch.onnx.export(model, (inp,), str(path), dynamo=True, external_data=False, verbose=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        sessions[name] = (sess, {sess.get_inputs()[0].name: inp.numpy()})
    return sessions


def measure_latency(repeats: int = 50, rounds: int = 10) -> dict:
    """fp32 ms per window, 1 thread, batch 1: PyTorch eager (``torch/...``) and ONNX Runtime
    (``ort/...``) for every model, all in this process, median of ``repeats`` runs each.

    Each model runs in blocks of ``repeats / rounds`` consecutive calls after one untimed
    call (warm, as on a board that runs only it); the blocks take turns over ``rounds``
    rounds in alternating order, so a change in machine load hits every model alike.
    Interleaving single calls instead times the small models cold: a teacher call between
    two student calls evicts the student's weights (measured: ORT mic-s 0.249 ms that way,
    about 4x its warm time)."""
    import tempfile

    import torch

    from dlink.data import eegmat
    from dlink.signal import SignalSpec
    from dlink.student import build_student
    from dlink.teacher import create_teacher

    torch.set_num_threads(1)
    sig = SignalSpec(eegmat.CH_NAMES, 200.0, 1000)
    x = torch.randn(1, 19, 1000)
    models = {
        "teacher (cbramod-small)": (create_teacher("small", n_outputs=2).eval(), x.reshape(1, 19, 5, 200)),
        "teacher (cbramod-base)": (create_teacher("base", n_outputs=2).eval(), x.reshape(1, 19, 5, 200)),
        "mic-s": (build_student("mic-s", sig, 2).eval(), x),
        "eegnet": (build_student("eegnet", sig, 2).eval(), x),
        "shallowconvnet": (build_student("shallowconvnet", sig, 2).eval(), x),
        "shallowconvnet-relu6": (build_student("shallowconvnet-relu6", sig, 2).eval(), x),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sessions = _ort_sessions(models, Path(tmp))
        runners = {**{f"torch/{n}": (lambda m=m, i=i: m(i)) for n, (m, i) in models.items()},
                   **{f"ort/{n}": (lambda s=s, f=f: s.run(None, f)) for n, (s, f) in sessions.items()}}
        times = {name: [] for name in runners}
        per_block = -(-repeats // rounds)  # at least `repeats` runs in all
        with torch.no_grad():
            for r in range(rounds):
                order = list(runners.items())
                for name, run in (order if r % 2 == 0 else order[::-1]):
                    run()  # untimed: the first call after another model's
                    for _ in range(per_block):
                        t0 = time.perf_counter()
                        run()
                        times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_cache_benefit(repeats: int = 5) -> dict:
    """Seconds per 32-window training batch: the student step alone (features cached) vs
    the same step plus the frozen teacher's forward pass (no cache). 1 thread, medians."""
    import torch

    from dlink.distill import DistillObjective
    from dlink.losses import build_loss
    from dlink.router import build_router
    from dlink.signal import SignalSpec
    from dlink.student import build_student
    from dlink.teacher import create_teacher

    torch.set_num_threads(1)
    sig = SignalSpec(tuple(f"c{i}" for i in range(19)), 200.0, 1000)
    from dlink.losses import Decoder

    teacher = create_teacher("small", n_outputs=2).eval()
    proj = teacher.proj_out[0]
    objective = DistillObjective(build_student("mic-s", sig, 2),
                                 build_router("router", 6, 200, n_chans=19, n_outputs=2),
                                 build_loss("dlink", label_smoothing=0.1), None,
                                 decoder=Decoder(proj.weight.detach(), proj.bias.detach()))
    x, y = torch.randn(32, 19, 1000), torch.randint(0, 2, (32,))
    teacher_s, step_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            hs = teacher.forward_layers(x.reshape(32, 19, 5, 200))
            layers, t_logits = torch.stack(hs, 1), teacher.forward_head(hs[-1])
        t1 = time.perf_counter()
        objective(x, y, layers, t_logits)["loss"].backward()
        t2 = time.perf_counter()
        teacher_s.append(t1 - t0)
        step_s.append(t2 - t1)
    teacher_med, step_med = statistics.median(teacher_s), statistics.median(step_s)
    return {"student_step_s": step_med, "teacher_forward_s": teacher_med,
            "speedup_with_cache": (step_med + teacher_med) / step_med}


def _mean_sd(values):
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def collect(out: Path) -> dict:
    """{row: {fold: [metrics of each seed]}} from OUT/fold*/ROW[@seedS]/metrics.json."""
    rows = {}
    for row in ALL_ROWS:
        per_fold = {}
        for k in range(6):
            runs = sorted((out / f"fold{k}").glob(f"{row}@seed*/metrics.json"))
            first = out / f"fold{k}" / row / "metrics.json"
            found = [json.loads(p.read_text()) for p in ([first] if first.is_file() else []) + runs]
            if found:
                per_fold[k] = found
        rows[row] = per_fold
    return rows


def _both_classes(m: dict) -> bool:
    """Every class was predicted for some test window (no class has recall 0)."""
    recalls = [v for key, v in m["test"].items() if key.startswith("recall/")]
    return bool(recalls) and min(recalls) > 0


def _teacher_curves(out: Path, dest: Path) -> None:
    """One figure: training loss and validation BAcc (tuned threshold) / AUROC per epoch of
    every fold's teacher and teacher-from-scratch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 6, figsize=(20, 6), sharey="row", squeeze=False)
    for k in range(6):
        for row, style in (("teacher", "-o"), ("teacher-scratch", "--s")):
            path = out / f"fold{k}" / row / "history.json"
            if not path.is_file():
                continue
            h = json.loads(path.read_text())
            ep = [r["epoch"] for r in h]
            axes[0, k].plot(ep, [r["train"]["loss"] for r in h], style, label=f"{row} train CE")
            for key in ("bacc_tuned", "auroc"):
                if key in h[0]["val"]:
                    axes[1, k].plot(ep, [r["val"][key] for r in h], style, label=f"{row} val {key}")
        axes[0, k].axhline(np.log(2), color="grey", lw=1, ls=":", label="ln 2 (chance CE)")
        axes[0, k].set(title=f"fold {k}", xlabel="epoch")
        axes[1, k].axhline(0.5, color="grey", lw=1, ls=":")
        axes[1, k].set(xlabel="epoch")
    axes[0, 0].set_ylabel("training loss (class-weighted CE)")
    axes[1, 0].set_ylabel("validation subjects")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=90)
    plt.close(fig)


def write_tables(out: Path, args, latency: dict, cache_benefit: dict) -> None:
    import torch

    from dlink.nn_utils import count_macs, count_parameters
    from dlink.signal import SignalSpec
    from dlink.student import build_student
    from dlink.teacher import create_teacher

    rows = collect(out)
    sig = SignalSpec(tuple(f"c{i}" for i in range(19)), 200.0, 1000)
    x = torch.randn(1, 19, 1000)
    size = {}
    for name in [args.student, *SCRATCH_ROWS]:
        m = build_student(name, sig, 2)
        size[name] = (count_parameters(m), count_macs(m, x))
    for preset in ["small", "base"]:
        t = create_teacher(preset, n_outputs=2, head="channel", n_chans=19)
        size[f"cbramod-{preset}"] = (count_parameters(t), count_macs(t, x.reshape(1, 19, 5, 200)))
    student_rows = STUDENT_ROWS + [r for r, src in INT8_ROWS.items() if src not in SCRATCH_ROWS]
    model_of = {"teacher": "cbramod-small", "teacher-scratch": "cbramod-small",
                **{r: r for r in SCRATCH_ROWS}, **{r: args.student for r in student_rows},
                **{r: src for r, src in INT8_ROWS.items() if src in SCRATCH_ROWS}}
    lat_of = {**model_of, "teacher": "teacher (cbramod-small)", "teacher-scratch": "teacher (cbramod-small)"}
    summary, lines = {}, []
    for row in ALL_ROWS:
        folds = rows[row]
        if not folds:
            continue
        s = {m: _mean_sd([np.mean([r["test"][m] for r in runs]) for runs in folds.values()])
             for m in ("bacc", "auroc", "auprc", "kappa")}
        s["per_fold_bacc"] = {k: round(float(np.mean([r["test"]["bacc"] for r in runs])), 4)
                              for k, runs in folds.items()}
        s["per_fold_seeds"] = {k: [round(r["test"]["bacc"], 4) for r in runs] for k, runs in folds.items()}
        s["n_folds"], s["n_seeds"] = len(folds), max(len(r) for r in folds.values())
        s["seconds_per_fold"] = float(np.mean([sum(r.get("seconds", 0) for r in runs)
                                               for runs in folds.values()]))
        first = next(iter(folds.values()))[0]
        params, macs = size.get(model_of.get(row, ""), (first.get("parameters"), None))
        s["parameters"], s["macs"] = params, macs
        s["latency_ms"] = latency.get(f"torch/{lat_of.get(row, '')}")
        s["ort_latency_ms"] = latency.get(f"ort/{lat_of.get(row, '')}")
        if any("router_std" in r for runs in folds.values() for r in runs):
            s["router_std"] = float(np.mean([r["router_std"] for runs in folds.values() for r in runs
                                             if "router_std" in r]))
        if any("spectral" in r for runs in folds.values() for r in runs):
            s["phase_agreement_per_fold"] = {k: float(np.mean([np.mean(r["spectral"]["phase_agreement"])
                                                               for r in runs if "spectral" in r]))
                                             for k, runs in folds.items()}
            s["mag_err_db_per_fold"] = {k: float(np.mean([np.mean(r["spectral"]["mag_err_db"])
                                                          for r in runs if "spectral" in r]))
                                        for k, runs in folds.items()}
        if row in TEACHER_ROWS:
            s["both_classes"] = {k: all(_both_classes(r) for r in runs) for k, runs in folds.items()}
        summary[row] = s
        # an int8 row measures BAcc only (its other metrics are the fp32 model's)
        fmt = lambda m, s=s, row=row: ("–" if row in INT8_ROWS and m != "bacc"  # noqa: E731
                                       else f"{s[m][0]:.3f} ± {s[m][1]:.3f}")
        lat = " / ".join(f"{s[k]:.3f}" if s[k] is not None else "–" for k in ("latency_ms", "ort_latency_ms"))
        lines.append(f"| {row} | {fmt('bacc')} | {fmt('auroc')} | {fmt('auprc')} | {fmt('kappa')} | "
                     f"{s['n_seeds']} | {f'{params:,}' if params else '–'} | {macs / 1e6 if macs else 0:.2f} M | {lat} |")

    def paired(a, b):
        if a not in summary or b not in summary:
            return None
        pa, pb = summary[a]["per_fold_bacc"], summary[b]["per_fold_bacc"]
        d = [pa[k] - pb[k] for k in sorted(set(pa) & set(pb))]
        return (*_mean_sd(d), sum(v > 0 for v in d), len(d))

    paired_lines = []
    for other in ["no-kd", "logit-kd", "fitnet", "layer-avg", "static-weights", "dlink-no-spectral",
                  "eegnet", "shallowconvnet", "shallowconvnet-relu6", "bandpower-lr", "teacher"]:
        d = paired("dlink", other)
        if d:
            paired_lines.append(f"| dlink − {other} | {d[0]:+.3f} | {d[1]:.3f} | {d[2]} / {d[3]} |")
    int8_pairs = [(f"dlink-int8-{q}", "shallowconvnet-relu6-int8") for q in ("ptq", "qat")]
    for a, b in int8_pairs:
        d = paired(a, b)  # the int8 files, DLink's against the int8-deployable ShallowConvNet's
        if d:
            paired_lines.append(f"| {a} − {b} | {d[0]:+.3f} | {d[1]:.3f} | {d[2]} / {d[3]} |")

    base_params = size["cbramod-base"][0]
    trio = ("teacher (cbramod-small)", "teacher (cbramod-base)", args.student)
    t_lat, b_lat, s_lat = (latency[f"ort/{n}"] for n in trio)
    tt_lat, tb_lat, ts_lat = (latency[f"torch/{n}"] for n in trio)
    checks = []

    def claim(text, diff, ok, paired_test=False):
        """A verdict; a paired claim 'holds' only when the mean difference exceeds two standard
        errors over the folds, otherwise it holds in the mean only (within fold noise)."""
        d = (f" (paired BAcc difference {diff[0]:+.3f} ± {diff[1]:.3f} sd over folds, "
             f"{diff[2]} of {diff[3]} folds)") if diff else ""
        verdict = "holds" if ok else "does not hold"
        if ok and paired_test and diff and diff[0] <= 2 * diff[1] / np.sqrt(diff[3]):
            verdict = "holds in the mean only, within fold noise (< 2 standard errors)"
        checks.append(f"- {text}: **{verdict}**{d}")

    if "dlink" in summary:
        d = summary["dlink"]["bacc"][0]
        for other, text in [("fitnet", "Router beats the last layer (FitNet)"),
                            ("layer-avg", "Router beats the layer average"),
                            ("static-weights", "per-input routing beats one learned layer mix"),
                            ("dlink-no-spectral", "spectral terms help BAcc"),
                            ("no-kd", "distillation beats the student trained alone"),
                            ("logit-kd", "DLink beats logit KD")]:
            diff = paired("dlink", other)
            if diff:
                claim(text, diff, diff[0] > 0, paired_test=True)
        best_light = max((r for r in ("eegnet", "shallowconvnet", "bandpower-lr") if r in summary),
                         key=lambda r: summary[r]["bacc"][0], default=None)
        if "teacher" in summary:
            claim("student mean BAcc ≥ teacher − 0.02", paired("dlink", "teacher"),
                  d >= summary["teacher"]["bacc"][0] - 0.02)
        if "eegnet" in summary:
            claim("student mean BAcc ≥ EEGNet + 0.03", paired("dlink", "eegnet"),
                  d >= summary["eegnet"]["bacc"][0] + 0.03)
        if best_light:
            claim(f"student mean BAcc ≥ the best lightweight baseline ({best_light})",
                  paired("dlink", best_light), d >= summary[best_light]["bacc"][0])
        claim("student mean BAcc ≥ 0.72 (the published CBraMod on this task)", None, d >= 0.72)
    if "dlink" in summary and "dlink-no-spectral" in summary and "phase_agreement_per_fold" in summary["dlink"]:
        pa, pb = summary["dlink"]["phase_agreement_per_fold"], summary["dlink-no-spectral"]["phase_agreement_per_fold"]
        diffs = [pa[k] - pb[k] for k in sorted(set(pa) & set(pb))]
        m, sd = _mean_sd(diffs)
        claim(f"spectral terms improve phase agreement with the teacher on the decoded 1-45 Hz axis "
              f"(mean magnitude-weighted cos Δφ {np.mean(list(pa.values())):.3f} vs "
              f"{np.mean(list(pb.values())):.3f}; paired difference {m:+.3f} ± {sd:.3f}, "
              f"{sum(v > 0 for v in diffs)} of {len(diffs)} folds)", None,
              m > 2 * sd / np.sqrt(len(diffs)))
    claim(f"student parameters ≤ 1/50 of CBraMod-base ({size[args.student][0]:,} vs {base_params:,}, "
          f"1/{base_params / size[args.student][0]:.0f})", None, size[args.student][0] * 50 <= base_params)
    claim(f"teacher/student fp32 latency ratio ≥ 100 in ONNX Runtime (CBraMod-base {b_lat / s_lat:.0f}×, "
          f"our CBraMod-small teacher {t_lat / s_lat:.0f}×; in PyTorch eager, where per-call overhead "
          f"dominates the student, {tb_lat / ts_lat:.0f}× and {tt_lat / ts_lat:.0f}×)", None,
          b_lat / s_lat >= 100)

    teacher_lines = []
    for row in TEACHER_ROWS:
        if row in summary:
            s = summary[row]
            teacher_lines.append(f"| {row} | " + " | ".join(
                f"{s['per_fold_bacc'][k]:.3f}{'' if s['both_classes'][k] else ' (one class)'}"
                if k in s["per_fold_bacc"] else "–" for k in range(6))
                + f" | {min(s['per_fold_bacc'].values()):.3f} |")
    int8_lines = []
    for row, source in INT8_ROWS.items():
        for k, runs in rows[row].items():
            r = runs[0]
            g = r["gates"]
            int8_lines.append(
                f"| {row} | {k} | {r['fp32_bacc']:.3f} | {r['int8_bacc_onnx']:.3f} | {r['int8_bacc_tflite']:.3f} | "
                f"{g['model.int8.onnx']['agreement']:.3f} / {g['model.int8.tflite']['agreement']:.3f} | "
                f"{g['model.int8.onnx']['sqnr_db']:.1f} / {g['model.int8.tflite']['sqnr_db']:.1f} | "
                f"{'pass' if g['model.int8.onnx']['passed'] else 'fail'} / "
                f"{'pass' if g['model.int8.tflite']['passed'] else 'fail'} |")
    int8_means = []
    for row in INT8_ROWS:
        if rows[row]:
            rr = [runs[0] for runs in rows[row].values()]
            drop = [r["int8_bacc_tflite"] - r["fp32_bacc"] for r in rr]
            int8_means.append(f"- {row}: fp32 {np.mean([r['fp32_bacc'] for r in rr]):.3f}, int8 ONNX "
                              f"{np.mean([r['int8_bacc_onnx'] for r in rr]):.3f}, int8 TFLite "
                              f"{np.mean([r['int8_bacc_tflite'] for r in rr]):.3f} (TFLite − fp32: "
                              f"{np.mean(drop):+.3f} mean, worst fold {min(drop):+.3f}); gate passed in "
                              f"{sum(r['gates']['model.int8.tflite']['passed'] for r in rr)} of {len(rr)} "
                              f"folds (TFLite), {sum(r['gates']['model.int8.onnx']['passed'] for r in rr)} (ONNX)")
    router_line = ""
    for row in ("dlink", "static-weights"):
        if "router_std" in summary.get(row, {}):
            router_line += (f"- {row}: mean over layers of the per-layer standard deviation of the "
                            f"router weight across test windows: {summary[row]['router_std']:.3f}\n")
    cost_lines = [f"| {row} | {summary[row]['n_seeds']} | {summary[row]['seconds_per_fold'] / 60:.1f} |"
                  for row in ALL_ROWS if row in summary]
    total_min = sum(summary[r]["seconds_per_fold"] * summary[r]["n_folds"] for r in summary) / 60
    cache_s = [json.loads(p.read_text())["seconds"] for p in sorted(out.glob("fold*/teacher_cache.json"))]
    _teacher_curves(out, REPO / "results" / "cv_teacher_curves.png")
    header = ("| row | BAcc | AUROC | AUC-PR | κ | seeds | parameters | MACs | fp32 ms/window (torch / ORT) |\n"
              "|---|---|---|---|---|---|---|---|---|")
    anchors = "\n".join(f"| {k} | {v:.4f} |" for k, v in ANCHORS.items())
    text = f"""# EEGMAT, subject-wise 6-fold cross-validation

Written by `python bench/cv_benchmark.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')}
({platform.processor() or platform.machine()}, {os.cpu_count()} cores) from the per-fold results in
`{args.out}` (the same command without `--tables-only` trains them; a re-run skips every run
whose metrics.json exists, so an interrupted benchmark resumes per run). Nothing here is typed
by hand.

Protocol: EEGMAT rest vs. mental arithmetic, 1,707 windows of 5 s at 200 Hz, 19 channels;
folds from `kfold_subjects(k=6, n_val=4, seed=0)` (6 test subjects per fold, 4 validation
subjects, the rest for training). Seeds: fold index k (and k+10, k+20 for the rows run with
{args.seeds} seeds, whose per-fold BAcc is the mean over seeds). Selection on validation
subjects only. Mean ± sd over folds, test subjects only.

Teacher: CBraMod-architecture `small` (6 layers) with the per-electrode pooled head, from
the committed self-pretrained backbone (`dlink/pretrained/cbramod-small-eegmat/MODEL_CARD.md`),
fine-tuned {args.teacher_epochs} epochs with `dlink.finetune`'s recipe (frozen cached patch embedding,
linear-probe warm start, lr 5e-5/1e-4, dropout 0, decision threshold tuned on the validation
subjects); `teacher-scratch` is the same architecture and recipe from a random initialisation.
Students and scratch baselines: {args.student_epochs} epochs (lr 2e-3, batch 32, class-weighted CE,
label smoothing 0.1, selection on validation AUROC, then the two-class decision threshold
tuned on the validation subjects and folded into the classifier bias, as for the teacher);
student `{args.student}`; `dlink-qat` adds
{args.qat_epochs} int8-aware epochs (`dlink.qat`). Latency: fp32, 1 thread, batch 1, median of
{args.latency_repeats} warm runs per model (blocks of consecutive runs, the models' blocks taking
turns), in one process, in PyTorch eager and in ONNX Runtime.

{header}
{chr(10).join(lines)}

Per-fold BAcc (seed means): {json.dumps({r: s['per_fold_bacc'] for r, s in summary.items()})}

Per-seed BAcc of the seeded rows: {json.dumps({r: s['per_fold_seeds'] for r, s in summary.items() if s['n_seeds'] > 1})}

## Teacher per fold

| row | fold 0 | fold 1 | fold 2 | fold 3 | fold 4 | fold 5 | worst |
|---|---|---|---|---|---|---|---|
{chr(10).join(teacher_lines)}

"(one class)" marks a fold where the teacher predicted a single class on the test subjects.
Training and validation curves of every fold: `results/cv_teacher_curves.png`.

## Paired differences of DLink (per-fold BAcc; the int8 rows: seed 0 of each fold)

| comparison | mean | sd | folds won |
|---|---|---|---|
{chr(10).join(paired_lines)}

## Router and spectral terms

{router_line}
## int8: post-training quantisation vs int8-aware distillation

Each fold's `dlink` and `dlink-qat` students, and its `shallowconvnet-relu6` baseline (not
distilled: the int8-deployable ShallowConvNet, for reference), exported by `dlink-export` (256 calibration
windows of the training subjects; ONNX for `arm`, 8-bit weights; TFLite with 16-bit
logits), gated on the test subjects (the gate asks agreement ≥ 0.99, SQNR ≥ 30 dB, BAcc
drop ≤ 0.01).

| row | fold | fp32 BAcc | int8 ONNX BAcc | int8 TFLite BAcc | agreement ONNX / TFLite | SQNR dB ONNX / TFLite | gate ONNX / TFLite |
|---|---|---|---|---|---|---|---|
{chr(10).join(int8_lines)}

{chr(10).join(int8_means)}

## Published anchors for this task (not re-run here)

| model | BAcc |
|---|---|
{anchors}

Ours is self-pretrained on far less data than the published CBraMod, so its teacher row is
not comparable to the anchor; the log-band-power, EEGNet and ShallowConvNet rows are re-run on
our folds.

## What holds of the paper's claims on our data

{chr(10).join(checks)}

## Cost (this machine, 2 folds in parallel, 1 thread each)

| row | runs per fold | minutes per fold |
|---|---|---|
{chr(10).join(cost_lines)}

A run interrupted and resumed (from its last epoch's checkpoint) counts only the time after
its resume; on this shared machine some runs had other jobs beside them. Sum over all
runs: {total_min:.0f} CPU-thread minutes (about {total_min / 2:.0f} wall minutes with 2 jobs). Teacher feature cache: one teacher pass over all 1,707 windows took
{', '.join(f'{c:.0f}' for c in cache_s)} s per fold (once; every feature-using row of the fold reuses it).
Measured per 32-window batch, 1 thread: the student's training step takes
{cache_benefit['student_step_s'] * 1e3:.0f} ms with cached features and the frozen teacher's forward pass
would add {cache_benefit['teacher_forward_s'] * 1e3:.0f} ms, so caching makes distillation epochs
{cache_benefit['speedup_with_cache']:.1f}× faster.
"""
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "cv_benchmark.md").write_text(text)
    (REPO / "results" / "cv_benchmark.json").write_text(json.dumps(
        {"summary": summary, "latency_ms": latency, "sizes": size, "teacher_cache_s": cache_s,
         "cache_benefit": cache_benefit, "args": vars(args)}, indent=1))
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/cv", help="working folder (resumable)")
    p.add_argument("--backbone", default=str(REPO / "dlink/pretrained/cbramod-small-eegmat"))
    p.add_argument("--folds", default="0,1,2,3,4,5", help="folds to run")
    p.add_argument("--jobs", type=int, default=2, help="folds run in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--student-epochs", type=int, default=12)
    p.add_argument("--student", default="mic-s", help="student preset of the distilled rows")
    p.add_argument("--qat-epochs", type=int, default=3, help="int8-aware phase of the dlink-qat row")
    p.add_argument("--seeds", type=int, default=3, help="seeds per fold of the --seeded-rows")
    p.add_argument("--seeded-rows", default="dlink,no-kd,shallowconvnet,shallowconvnet-relu6",
                   help="rows run with --seeds seeds (DLink, the student alone, the strongest "
                   "trained baseline and its int8-deployable form)")
    p.add_argument("--latency-repeats", type=int, default=50)
    p.add_argument("--only-teacher", action="store_true", help="run the teacher and band-power rows only")
    p.add_argument("--tables-only", action="store_true", help="skip training, rewrite tables")
    p.add_argument("--keep", default=str(REPO / "results" / "cv_runs"),
                   help="where finished folds' result files are kept (committed) and restored "
                   "from, so that a fresh checkout resumes per fold; '' to keep nothing")
    args = p.parse_args()
    folds = [int(f) for f in args.folds.split(",")]
    args.fold_config = fold_config(args) if args.keep else None  # hashes the backbone once
    args.restored = restore_folds(Path(args.out), Path(args.keep), folds,
                                  args.fold_config) if args.keep else []
    if args.restored:  # not kept again: their fold.json says which machine made them
        print(f"restored finished folds {args.restored} from {args.keep}", flush=True)
    if args.only_teacher:
        args.tables_only = False
    if not args.tables_only:
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.jobs, maxtasksperchild=1) as pool:
            for r in [pool.apply_async(_fold_worker, (k, args)) for k in folds]:
                r.get()
    if not args.only_teacher:
        write_tables(Path(args.out), args, measure_latency(args.latency_repeats), measure_cache_benefit())


if __name__ == "__main__":
    main()
