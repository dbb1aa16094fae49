"""`write_report`: one HTML page per pipeline run, for people rather than for CI.

``OUT/report.html`` plus its figures in ``OUT/report/*.png`` (relative links, so the pair
can be copied or served together). Sections, each drawn from files the pipeline already
wrote, and each replaced by a one-line note when its inputs are missing:

* model card: data and split, teacher and student metrics, parameters, MACs, every
  exported file with its size, sha256 and parity-gate numbers, calibration, toolchain;
* loss curves of the teacher and the student;
* router: mean weight per teacher layer for each class (``student/router_weights.npz``);
* representation spectra: per frequency (1-45 Hz, on the decoded axis of
  `dlink.losses`), the magnitude error and the phase agreement of the student's mimic
  features (`forward_features`) against the routed teacher target on test windows, with the
  student distilled without the spectral loss beside it if ``OUT/student_no_spectral/``
  exists;
* confusion matrices of the exported fp32 and int8 files on the test windows (ONNX
  Runtime, and LiteRT for the int8 TFLite file);
* latency histograms from the ``dlink-edge profile --json`` files (model and reference);
* the board and MCU budgets (``dlink-edge check --json`` per budget), the regression-gate metrics,
  the streaming summary and the pipeline's stage records.

Test windows: ``write_report(out, windows=...)`` uses the given `Windows` (the pipeline
has them in memory); otherwise they are re-read from ``OUT/data.npz`` if present, else as
``data.json`` describes (``data`` or ``name``: data set name or .npz path; optional
``data_dir``; ``sfreq``/``window_s``, at the top level or under ``summary``), and cut to the
test subjects of its ``split``.

Shape legend: B windows, L teacher layers, C channels, N patches, d feature width,
F frequency bins (1-45 Hz), K classes.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPORT_FILE = "report.html"
ASSET_DIR = "report"
MAX_SPECTRUM_WINDOWS = 64  # test windows pushed through the teacher for the spectra (CPU cost)
STUDENT_VARIANTS = (("student", "DLink student"),
                    ("student_no_spectral", "without the spectral loss"))


class _Skip(Exception):
    """An optional input of a section is missing; the section becomes a note."""


# ---------------------------------------------------------------------------------------
# Entry point


def write_report(out_dir: str | Path, windows=None,
                 max_spectrum_windows: int = MAX_SPECTRUM_WINDOWS) -> Path:
    """Write ``OUT/report.html`` and its figures in ``OUT/report/``; return the HTML path.

    Parameters
    ----------
    out_dir : a `dlink pipeline` output folder.
    windows : the run's `dlink.data.Windows` (all subjects, µV); default: re-read as
        ``data.json`` says. Only the test subjects of the split are used.
    max_spectrum_windows : test windows (evenly spaced) used for the spectra.

    Returns
    -------
    Path of the HTML file. Never fails for a missing optional part: that section says what
    it lacks instead.
    """
    ctx = _Context(Path(out_dir), windows, max_spectrum_windows)
    ctx.assets.mkdir(parents=True, exist_ok=True)
    for old in ctx.assets.glob("*.png"):
        old.unlink()
    body = [_section(ctx, title, fn) for title, fn in SECTIONS]
    path = ctx.out / REPORT_FILE
    path.write_text(_page(ctx, body), encoding="utf-8")
    return path


@dataclass
class _Context:
    """Lazy access to the files of one output folder."""

    out: Path
    windows: object = None
    max_windows: int = MAX_SPECTRUM_WINDOWS
    _cache: dict = field(default_factory=dict)

    @property
    def assets(self) -> Path:
        return self.out / ASSET_DIR

    def json(self, rel: str, required: bool = True) -> dict | None:
        path = self.out / rel
        if not path.is_file():
            if required:
                raise _Skip(f"{rel} not found")
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def figure(self, fig, name: str, alt: str) -> str:
        """Save a matplotlib Figure as report/NAME.png; return its <img> tag."""
        fig.savefig(self.assets / f"{name}.png", dpi=110, bbox_inches="tight")
        return f'<img src="{ASSET_DIR}/{name}.png" alt="{html.escape(alt)}">'

    def test_windows(self):
        """Test-subject windows of the run (cached); raises _Skip if they cannot be had."""
        if "test" not in self._cache:
            self._cache["test"] = _load_test_windows(self)
        return self._cache["test"]


def _section(ctx: _Context, title: str, fn: Callable[[_Context], str]) -> str:
    t0 = time.perf_counter()
    try:
        body = fn(ctx)
    except _Skip as exc:
        body = _note(f"skipped: {exc}.")
    except Exception as exc:  # a broken optional part must not cost the whole report
        body = _note(f"could not be drawn: {type(exc).__name__}: {exc}")
    anchor = title.lower().replace(" ", "-")
    return (f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}'
            f'<p class="t">{time.perf_counter() - t0:.1f} s</p></section>')


# ---------------------------------------------------------------------------------------
# Data


def _split(ctx: _Context) -> dict:
    for rel in ("data.json", "student/metrics.json", "teacher/metrics.json"):
        d = ctx.json(rel, required=False) or {}
        if isinstance(d.get("split"), dict) and d["split"].get("test"):
            return d["split"]
    raise _Skip("no split found in data.json or the metrics files")


def _load_test_windows(ctx: _Context):
    test_subjects = [str(s) for s in _split(ctx)["test"]]
    if ctx.windows is not None:
        test = ctx.windows.of_subjects(test_subjects)
    else:
        from dlink.data import DATASETS, load_windows

        info = ctx.json("data.json")
        summary = info.get("summary", info)
        name = info.get("data") or summary.get("name")
        if (ctx.out / "data.npz").is_file():  # the pipeline's copy of a subset / custom set
            name = str(ctx.out / "data.npz")
        if not name:
            raise _Skip("data.json names no data set ('data' or 'summary.name')")
        params = {"sfreq": float(summary.get("sfreq", 200.0))}
        if name in DATASETS:
            params["window_s"] = float(summary.get("window_s", 5.0))
            params["subjects"] = ([int(s) for s in test_subjects] if name == "eegmmidb"
                                  else test_subjects)
        test = load_windows(name, data_dir=info.get("data_dir"), **params)
        test = test.of_subjects(test_subjects)
    if len(test) == 0:
        raise _Skip(f"no windows of the test subjects {test_subjects}")
    return test


def _spaced(n: int, k: int) -> np.ndarray:
    """Up to k evenly spaced indices into range(n)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


# ---------------------------------------------------------------------------------------
# Sections


def _model_card(ctx: _Context) -> str:
    parts = []
    data = ctx.json("data.json", required=False)
    if data:
        parts.append(_data_card(data))
    rows = []
    for folder, label in (("teacher", "teacher"), *STUDENT_VARIANTS):
        m = ctx.json(f"{folder}/metrics.json", required=False)
        if m:
            rows += [[label, part, *(_num(m.get(part, {}).get(k)) for k in METRIC_KEYS)]
                     for part in ("val", "test") if part in m]
    if rows:
        parts.append("<h3>Metrics</h3>" + _table(["model", "part", *METRIC_KEYS], rows))
    manifest = ctx.json("export/manifest.json", required=False)
    student = ctx.json("student/metrics.json", required=False) or {}
    if manifest or student:
        parts.append(_student_card(manifest or {}, student))
    if manifest:
        parts.append(_artifact_card(manifest))
    gate = ctx.json("metrics.json", required=False)
    if gate and gate.get("latency"):
        rows = [[b, _num(v.get("ratio")), _num(v.get("p50_ms")), _num(v.get("reference_p50_ms")),
                 v.get("reference") or "-", v.get("precision") or "-"]
                for b, v in gate["latency"].items()]
        parts.append("<h3>Latency ratio (regression-gate metrics.json)</h3>" + _table(
            ["backend", "ratio", "model p50 ms", "reference p50 ms", "reference", "precision"],
            rows))
    if not parts:
        raise _Skip("none of data.json, */metrics.json, export/manifest.json found")
    return "".join(parts)


METRIC_KEYS = ("bacc", "auroc", "auprc", "kappa", "f1_weighted")


def _data_card(data: dict) -> str:
    s = data.get("summary", data)
    rows = [["data set", data.get("data") or s.get("name", "-")],
            ["windows", f"{s.get('n_windows', '-')} "
             f"({', '.join(f'{k} {v}' for k, v in (s.get('windows_per_class') or {}).items())})"],
            ["subjects", s.get("n_subjects", "-")],
            ["channels", f"{s.get('n_channels', '-')}: {' '.join(s.get('ch_names', []))}"],
            ["sampling rate", f"{s.get('sfreq', '-')} Hz"],
            ["window", f"{s.get('window_s', '-')} s ({s.get('n_times', '-')} samples)"]]
    if data.get("split_kind"):
        rows.append(["split", data["split_kind"]])
    for part, subjects in (data.get("split") or {}).items():
        rows.append([f"{part} subjects", f"{len(subjects)}: {', '.join(map(str, subjects))}"])
    return "<h3>Data</h3>" + _table(["", ""], rows, show_header=False)


def _student_card(manifest: dict, student: dict) -> str:
    model = manifest.get("model", {})
    rows = [["architecture", model.get("arch") or student.get("student", "-")],
            ["distillation method", student.get("method", "-")],
            ["parameters", _int(model.get("parameters", student.get("parameters")))],
            ["MACs per window", _int(model.get("macs", student.get("macs")))],
            ["int8 parameter bytes", _int(model.get("parameter_bytes_int8"))],
            ["selected epoch", student.get("selected_epoch", "-")]]
    cal = manifest.get("calibration")
    if cal:
        rows.append(["calibration", f"{cal.get('n_windows')} windows of {cal.get('source')} "
                     f"subjects {', '.join(map(str, cal.get('subjects', [])))}; "
                     f"sha256 {str(cal.get('sha256'))[:16]}…"])
    parity = manifest.get("parity", {}).get("data", {})
    if parity:
        where = ("held-out subjects " + ", ".join(map(str, parity.get("subjects", [])))
                 if parity.get("held_out") else "the calibration set")
        rows.append(["parity-gate windows", f"{parity.get('n_windows')} from {where}"])
    tool = manifest.get("toolchain", {})
    if tool:
        rows.append(["toolchain", ", ".join(f"{k} {v}" for k, v in tool.items())])
    return "<h3>Student</h3>" + _table(["", ""], rows, show_header=False)


def _artifact_card(manifest: dict) -> str:
    rows = []
    for a in manifest.get("artifacts", []):
        g = a.get("gate") or {}
        rows.append([a["path"], a.get("format"), a.get("precision"), _int(a.get("bytes")),
                     f'<code title="{a.get("sha256")}">{str(a.get("sha256"))[:16]}…</code>',
                     _num(g.get("agreement")), _num(g.get("sqnr_db"), 1),
                     _num(g.get("bacc_change"), signed=True),
                     "" if g.get("near_boundary") is None else
                     f'{g["near_boundary"]} of {g.get("n_windows")}',
                     "" if not g else ("pass" if g.get("passed") else "FAIL")])
    return "<h3>Exported files</h3>" + _table(
        ["file", "format", "precision", "bytes", "sha256", "agreement", "SQNR dB",
         "BAcc change", "windows within int8 noise of the boundary", "gate"], rows,
        raw_cols={4})


def _loss_curves(ctx: _Context) -> str:
    imgs = []
    for folder, label in (("teacher", "teacher fine-tuning"), *STUDENT_VARIANTS):
        src = ctx.out / folder / "loss_curve.png"
        if src.is_file() and src.stat().st_size:
            name = f"loss_{folder}.png"
            shutil.copyfile(src, ctx.assets / name)
            imgs.append(f'<figure><img src="{ASSET_DIR}/{name}" alt="{label} loss curve">'
                        f"<figcaption>{html.escape(label)}</figcaption></figure>")
    if not imgs:
        raise _Skip("no */loss_curve.png found")
    return '<div class="row">' + "".join(imgs) + "</div>"


def _router_section(ctx: _Context) -> str:
    path = ctx.out / "student" / "router_weights.npz"
    if not path.is_file():
        raise _Skip("student/router_weights.npz not found (a method without a router?)")
    with np.load(path, allow_pickle=False) as z:
        w, y, names = z["weights"], z["y"], [str(c) for c in z["class_names"]]  # (n, L)
    n, L = w.shape
    fig = _fig(11, 3.6)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(names)
    layers = np.arange(1, L + 1)
    for k, name in enumerate(names):
        wk = w[y == k]
        if len(wk):
            ax1.bar(layers + (k - (len(names) - 1) / 2) * width, wk.mean(0), width,
                    yerr=wk.std(0), capsize=2, label=f"{name} (n={len(wk)})")
    ax1.axhline(1 / L, color="grey", ls="--", lw=1, label="uniform 1/L")
    ax1.set(xlabel="teacher layer", ylabel="mean router weight", xticks=layers,
            title="router weight per teacher layer and class (test windows)")
    ax1.legend(fontsize=8)
    order = np.argsort(y, kind="stable")
    im = ax2.imshow(w[order], aspect="auto", interpolation="nearest", cmap="viridis",
                    extent=(0.5, L + 0.5, n, 0))
    for b in np.flatnonzero(np.diff(y[order])) + 1:
        ax2.axhline(b, color="white", lw=1)
    ax2.set(xlabel="teacher layer", ylabel="test window (sorted by class)", xticks=layers,
            title="per-window weights")
    fig.colorbar(im, ax=ax2, fraction=0.05)
    img = ctx.figure(fig, "router_weights", "router weights per layer and class")
    import torch

    from dlink.losses import router_mutual_information

    entropy = float(-(w * np.log(np.clip(w, 1e-12, None))).sum(1).mean())
    # what training rewards; >= 0 in exact arithmetic (float residue of a static mix: -0.000)
    mutual_info = max(0.0, float(router_mutual_information(torch.from_numpy(w))))
    rows = [[name, *(f"{v:.3f}" for v in w[y == k].mean(0))] for k, name in enumerate(names)
            if (y == k).any()]
    return (img + _table(["class", *(f"layer {i}" for i in layers)], rows)
            + f"<p>Mean weight entropy {entropy:.3f} nats (uniform: {np.log(L):.3f}). How much "
            f"the mix varies with the window: per-layer standard deviation across test windows "
            f"{float(w.std(0).mean()):.3f} (mean over layers; 0 for a static mix), mutual "
            f"information between window and layer {mutual_info:.3f} nats (0 for a static "
            f"mix, at most {np.log(L):.3f}).</p>")


def _spectra_section(ctx: _Context) -> str:
    import torch

    from dlink.losses import Decoder, spectral_agreement
    from dlink.student import load_student
    from dlink.teacher import load_teacher, patchify

    if not (ctx.out / "teacher").is_dir():
        raise _Skip("teacher/ not found")
    test = ctx.test_windows()
    idx = _spaced(len(test), ctx.max_windows)
    teacher = load_teacher(ctx.out / "teacher")
    first = load_student(ctx.out / "student")
    x = torch.from_numpy(first.signal.to_model_units(test.X[idx]))  # (B, C, T) model units
    xt = torch.from_numpy(test.X[idx] * teacher_scale(teacher))
    with torch.no_grad():
        stacked = torch.stack(teacher.forward_layers(patchify(xt, teacher.patch_size)), 1)  # (B, L, C, N, d)
    proj = teacher.proj_out[0]
    decoder = Decoder(proj.weight.detach(), proj.bias.detach(), fs=float(test.sfreq))
    curves, notes = {}, []
    for folder, label in STUDENT_VARIANTS:
        if not (ctx.out / folder).is_dir():
            continue
        weights = _router_weights(ctx.out / folder, test, stacked.shape[1])
        if weights is None:
            notes.append(f"{folder}: no usable router_weights.npz, skipped")
            continue
        w = torch.from_numpy(weights[idx]).float()  # (B, L)
        target = torch.einsum("bl,blcnd->bcnd", w, stacked)  # (B, C, N, d)
        student = first if folder == "student" else load_student(ctx.out / folder)
        with torch.no_grad():
            feats = student.forward_features(x)  # (B, C, N, d)
        if feats.shape != target.shape:
            notes.append(f"{folder}: features {tuple(feats.shape)} vs teacher "
                         f"{tuple(target.shape)}, skipped")
            continue
        curves[label] = spectral_agreement(feats, target, decoder)
    if not curves:
        raise _Skip("; ".join(notes) or "no student folder with router weights")
    img = _spectra_figure(ctx, curves, len(idx))
    rows = [[label, f"{c['mag_err_db'].mean():.2f}", f"{c['phase_agreement'].mean():.3f}"]
            for label, c in curves.items()]
    return (img + _table(["student", "mean magnitude error (dB)", "mean phase agreement"], rows)
            + (_note("; ".join(notes)) if notes else "")
            + "<p>Each token (student mimic representation and routed teacher target, both "
              "layer-normalised over d as the losses see them) is decoded to its 1-s patch by "
              "the teacher's pre-training decoder; the curves compare the rFFT of those patches "
              "bin by bin, 1-45 Hz (the axis the spectral terms act on, see dlink/losses.py).</p>")


def teacher_scale(teacher) -> float:
    return teacher.signal.input_scale if teacher.signal is not None else 0.01


def _router_weights(folder: Path, test, n_layers: int) -> np.ndarray | None:
    path = folder / "router_weights.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        w, y = z["weights"], z["y"]  # (n, L), (n,)
    if w.shape != (len(test), n_layers) or not np.array_equal(y, test.y):
        return None
    return w


def _spectra_figure(ctx: _Context, curves: dict, n_windows: int) -> str:
    fig = _fig(11, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    for name, c in curves.items():
        ax1.plot(c["freqs"], c["mag_err_db"], "-", label=name)
        ax2.plot(c["freqs"], c["phase_agreement"], "-", label=name)
    ax1.set(xlabel="frequency (Hz)", ylabel="|Δ magnitude| (dB)",
            title=f"magnitude error vs the teacher target ({n_windows} test windows)")
    ax2.set(xlabel="frequency (Hz)", ylabel="magnitude-weighted cos Δφ", ylim=(-0.05, 1.05),
            title="phase agreement with the teacher target (1 = same)")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    return ctx.figure(fig, "spectra", "teacher vs student spectra on the decoded axis")


def _confusion_section(ctx: _Context) -> str:
    manifest = ctx.json("export/manifest.json")
    test = ctx.test_windows()
    x = _model_input(test.X, manifest["input"].get("preprocessing", []))
    names = manifest["output"]["class_names"]
    runs, notes = [], []
    for a in manifest["artifacts"]:
        if a["format"] not in ("onnx", "tflite"):
            continue
        try:
            logits = _run_artifact(ctx.out / "export" / a["path"], a["format"], x)
        except Exception as exc:  # e.g. LiteRT not installed
            notes.append(f"{a['path']}: {type(exc).__name__}: {exc}")
            continue
        runs.append((f"{a['precision']} {a['format'].upper()}", a["path"], logits.argmax(1)))
    if not runs:
        raise _Skip("; ".join(notes) or "no ONNX or TFLite file in export/")
    fig = _fig(3.6 * len(runs), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(runs)))
    ref = runs[0][2]
    rows = []
    for ax, (title, path, pred) in zip(axes, runs):
        cm = _confusion(test.y, pred, len(names))
        bacc = _bacc(cm)
        _draw_confusion(ax, cm, names, f"{title}\nBAcc {bacc:.3f}")
        rows.append([path, f"{bacc:.4f}", f"{np.mean(pred == ref):.4f}", str(len(pred))])
    img = ctx.figure(fig, "confusion", "confusion matrices of the exported files")
    return (img + _table(["file", "test BAcc", f"agreement with {runs[0][1]}", "windows"], rows)
            + (_note("; ".join(notes)) if notes else ""))


def _model_input(X_uv: np.ndarray, ops: list[dict]) -> np.ndarray:
    """µV windows -> model input with the manifest's window-local steps (clip, scale, demean).

    Streaming filters (``sosfilt``) are the data layer's business before windows are cut,
    as in the export's own parity check.
    """
    x = np.asarray(X_uv, dtype=np.float32)
    for op in ops:
        if op.get("op") == "scale":
            x = x * np.float32(op["factor"])
        elif op.get("op") == "demean":
            x = x - x.mean(axis=-1, keepdims=True)
        elif op.get("op") == "clip":
            x = np.clip(x, -np.float32(op["uV"]), np.float32(op["uV"]))
    return x.astype(np.float32)


def _run_artifact(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """(B, C, T) float32 model input -> (B, K) float32 logits."""
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        step = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else 64
        return np.concatenate([sess.run(None, {inp.name: x[i:i + step]})[0]
                               for i in range(0, len(x), step)]).astype(np.float32)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    din, dout = it.get_input_details()[0], it.get_output_details()[0]
    step = int(din["shape"][0])
    outs = []
    for i in range(0, len(x), step):
        xb = x[i:i + step]
        if len(xb) != step:  # last, short batch of a fixed-batch model
            xb = np.concatenate([xb, np.zeros((step - len(xb), *xb.shape[1:]), np.float32)])
        it.set_tensor(din["index"], _quantize(xb, din))
        it.invoke()
        outs.append(_dequantize(it.get_tensor(dout["index"]), dout)[:len(x) - i])
    return np.concatenate(outs)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dt = np.dtype(detail["dtype"])
    if dt.kind not in "iu":
        return x.astype(dt)
    scale, zero = detail["quantization"]
    info = np.iinfo(dt)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dt)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind not in "iu":
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=int)  # rows: true class, columns: predicted
    np.add.at(cm, (y, pred), 1)
    return cm


def _bacc(cm: np.ndarray) -> float:
    present = cm.sum(1) > 0
    return float(np.mean(np.diag(cm)[present] / cm.sum(1)[present]))


def _draw_confusion(ax, cm: np.ndarray, names: list[str], title: str) -> None:
    rate = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    ax.imshow(rate, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{cm[i, j]}\n{rate[i, j]:.0%}", ha="center", va="center",
                    color="white" if rate[i, j] > 0.5 else "black", fontsize=9)
    ticks = np.arange(len(names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title=title)


def _machine(ctx: _Context, profile: dict) -> str:
    """Where a profile was timed: its own label, with the CPU from metrics.json if known."""
    where = (ctx.json("metrics.json", required=False) or {}).get("measured_on") or {}
    cpu = f" ({where['cpu']}, {where.get('cores')} cores)" if where.get("cpu") else ""
    return (profile.get("machine") or "this machine") + cpu


def _latency_section(ctx: _Context) -> str:
    reps = {b: rep for b in ("onnx", "tflite")
            if (rep := _profile(ctx.json(f"profile/{b}.json", required=False)))}
    if not reps:
        raise _Skip("no profile/onnx.json or profile/tflite.json")
    rows = []
    for b, r in reps.items():
        ref = r.get("reference") or {}
        rows.append([f"{r['artifact']} on {b}", _num(r["latency_ms"]["p50"]),
                     _num(r["latency_ms"]["p95"]), _num(r["decision_ms"]["p95"]),
                     _num(ref.get("p50_ms")), _num(r.get("latency_ratio")),
                     _num(r.get("throughput_wps"), 0), _num(r.get("peak_rss_mb"), 1),
                     html.escape(_machine(ctx, r))])
    table = _table(["model", "p50 ms", "p95 ms", "decision p95 ms", "reference p50 ms",
                    "ratio", "windows/s", "peak RSS MB", "measured on"], rows)
    with_samples = {b: r for b, r in reps.items() if r.get("latency_samples_ms")}
    if not with_samples:
        return table + _note("the profiles hold no per-window latencies "
                             "(dlink-edge profile older than latency_samples_ms)")
    fig = _fig(5.5 * len(with_samples), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(with_samples)))
    for ax, (b, r) in zip(axes, with_samples.items()):
        series = {"model": r["latency_samples_ms"],
                  "decision (stream)": r.get("decision_samples_ms") or []}
        if r.get("reference"):
            series[f"reference {r['reference'].get('name', '')}"] = \
                r["reference"].get("latency_samples_ms") or []
        every = np.concatenate([np.asarray(v, float) for v in series.values() if len(v)])
        bins = np.linspace(0, np.percentile(every, 99), 40)
        for label, v in series.items():
            if len(v):
                ax.hist(np.clip(v, None, bins[-1]), bins=bins, alpha=0.55, label=label)
        ax.set(xlabel="ms per window (clipped at p99)", ylabel="windows",
               title=f"{r['artifact']} on {b}, {r.get('threads', 1)} thread(s)")
        ax.legend(fontsize=8)
    return ctx.figure(fig, "latency", "latency histograms") + table


def _profile(rep: dict | None) -> dict | None:
    if rep is not None and "profile" in rep and "latency_ms" not in rep:  # `check --json`
        return rep["profile"]
    return rep


def _budget_section(ctx: _Context) -> str:
    files = sorted((ctx.out / "profile").glob("budget_*.json"))
    if not files:
        raise _Skip("no profile/budget_<board>.json")
    rows, machines, mcu = [], set(), []
    for path in files:
        rep = json.loads(path.read_text(encoding="utf-8"))
        bud = rep.get("budget", {})
        if bud.get("kind") == "mcu":  # microcontrollers: a table of their own, below
            mcu.append(rep)
            continue
        machines.add((rep.get("profile") or {}).get("machine") or "this machine")
        for r in rep.get("rows", []):
            fmt = "{:,.0f}" if r.get("unit") == "bytes" else "{:.2f}"
            rows.append([bud.get("name", path.stem), bud.get("board", ""), r["metric"],
                         f"{fmt.format(r['measured'])} {r['unit']}",
                         f"{fmt.format(r['limit'])} {r['unit']}",
                         '<b class="ok">within (estimate)</b>' if r.get("ok")
                         else '<b class="bad">OVER (estimate)</b>'])
    where = html.escape(", ".join(sorted(machines)))
    boards = "" if not rows else _table(
        ["budget", "board", "metric", f"measured on {where}", "limit", "verdict"], rows,
        raw_cols={5}) + f"<p>Estimates: measured on {where}, the machine that ran the " \
                        "pipeline, not on the board. Only <code>dlink-edge check</code> " \
                        "run on the board itself gives a pass.</p>"
    return boards + _mcu_budget_table(mcu)


def _mcu_budget_table(reps: list[dict]) -> str:
    """`dlink-edge check --budget MCU --json` results: TFLM sizes vs RAM/flash, latency estimate."""
    if not reps:
        return ""
    rows = []
    for rep in reps:
        bud, est = rep.get("budget", {}), rep.get("estimate")
        for r in rep.get("rows", []):
            rows.append([bud.get("name", "?"), bud.get("board", ""), r["metric"],
                         f"{r['measured']:,.0f} bytes", f"{r['limit']:,.0f} bytes",
                         '<b class="ok">within</b>' if r.get("ok") else '<b class="bad">OVER</b>'])
        if est:
            rows.append([bud.get("name", "?"), bud.get("board", ""), "latency per window",
                         f"{est['latency_ms']:.1f} ms", "(not a limit)",
                         f"ESTIMATE, not measured: {html.escape(est['basis'])}"])
    fp = reps[0].get("footprint", {})
    return "<h3>Microcontrollers (TensorFlow Lite Micro)</h3>" + _table(
        ["budget", "MCU", "metric", "needed", "limit", "verdict"], rows, raw_cols={5}) + (
        f"<p>Sizes from the exporter's run of <code>model_data.cc</code> on "
        f"{html.escape(str(fp.get('runtime')))}: the smallest tensor arena that allocates "
        f"({fp.get('arena_bytes', 0):,} bytes, reference kernels), one int8 input window "
        f"({fp.get('input_buffer_bytes', 0):,} bytes) and the model "
        f"({fp.get('model_bytes', 0):,} bytes). MCU latency is only estimated from MACs and "
        "the MAC rate each budget file states; nothing here ran on a microcontroller.</p>")


def _stream_section(ctx: _Context) -> str:
    """Overall and per-class accuracy of the streamed decisions, then each recording."""
    stream = ctx.json("stream.json")
    if "recordings" not in stream:  # an older or hand-made stream.json
        return _generic(stream)
    head = {k: stream.get(k) for k in ("decisions", "accepted", "accuracy", "balanced_accuracy")}
    return (_generic(head) + _generic(stream["per_class"]) + _generic(stream["recordings"]))


def _stages_section(ctx: _Context) -> str:
    return _generic(ctx.json("pipeline.json"))


SECTIONS: list[tuple[str, Callable[[_Context], str]]] = [
    ("Model card", _model_card),
    ("Loss curves", _loss_curves),
    ("Router weights", _router_section),
    ("Representation spectra", _spectra_section),
    ("Confusion matrices", _confusion_section),
    ("Latency", _latency_section),
    ("Board and MCU budgets", _budget_section),
    ("Streaming the held-out recordings", _stream_section),
    ("Pipeline stages", _stages_section),
]


# ---------------------------------------------------------------------------------------
# HTML and figure helpers


def _fig(w: float, h: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas

    return Figure(figsize=(w, h), layout="constrained")


def _num(v, digits: int = 3, signed: bool = False) -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return "-" if v is None else html.escape(str(v))
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _int(v) -> str:
    return f"{int(v):,}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(header: list[str], rows: list[list], raw_cols: set[int] = frozenset(),
           show_header: bool = True) -> str:
    """An HTML table; cells are escaped except in ``raw_cols`` (already HTML)."""
    head = ("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
            if show_header else "")
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i in raw_cols else html.escape(str(c))}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _generic(obj) -> str:
    """A JSON value as a table: a list of records, or key/value rows (nested as JSON)."""
    if isinstance(obj, dict) and isinstance(obj.get("stages"), list | dict):
        obj = obj["stages"]
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        obj = [{"name": k, **v} for k, v in obj.items()]
    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        cols = list(dict.fromkeys(k for r in obj for k in r))
        return _table(cols, [[_cell(r.get(c)) for c in cols] for r in obj])
    if isinstance(obj, dict):
        return _table(["", ""], [[k, _cell(v)] for k, v in obj.items()], show_header=False)
    return f"<pre>{html.escape(json.dumps(obj, indent=2))}</pre>"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        text = json.dumps(v)
        return text if len(text) <= 120 else text[:117] + "..."
    return "-" if v is None else str(v)


CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}img{max-width:100%}
.note{color:#8a6d3b;background:#fcf8e3;padding:.4em .8em;border-radius:4px}
.t{color:#999;font-size:11px;text-align:right}.ok{color:#2a7}.bad{color:#c22}
.row{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;flex:1 1 380px}
nav a{margin-right:1em}code{font-size:12px}
"""


def _page(ctx: _Context, sections: list[str]) -> str:
    title = f"DLink run {ctx.out.resolve().name}"
    nav = "".join(f'<a href="#{t.lower().replace(" ", "-")}">{html.escape(t)}</a>'
                  for t, _ in SECTIONS)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(str(ctx.out))}, written {stamp} by "
            f"<code>dlink.report.write_report</code>.</p><nav>{nav}</nav>"
            + "".join(sections) + "</body></html>\n")
