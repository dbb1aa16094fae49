"""`export_student`: a saved student folder in, a verified board-ready model folder out.

Steps: load the student; fold each BatchNorm into the conv before it; write fp32 ONNX
(checked against PyTorch) and int8 ONNX; convert to fp32 TFLite and quantise to int8
TFLite; embed the int8 TFLite as a C array; run every int8 artifact on held-out windows
and gate it against the fp32 model; write ``manifest.json`` last.

Everything is written into a temporary folder beside ``out_dir`` and renamed into place
only when every step and the gate passed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calibration import (
    DEFAULT_N_WINDOWS,
    X_UNITS,
    CalibrationSet,
    from_windows,
    load_calibration_set,
    save_calibration_set,
    to_model_units,
)
from dlink.errors import CheckpointError, ConfigError, DLinkError
from dlink.signal import SignalSpec
from export import c_array, deployment, onnx_export, tflite_export, tflm
from export._console import Steps, quiet
from export.errors import ExportError, GateError, OutputExistsError
from export.manifest import (
    MANIFEST_NAME,
    SCHEMA,
    artifact_entry,
    input_section,
    output_section,
    sha256_file,
    toolchain_versions,
)
from export.parity import GateThresholds, ParityResult, compare
from export.spectral_fidelity import band_errors_safe

FORMATS = ("onnx", "tflite", "c")
FP32_TOLERANCE = 1e-5  # fp32 ONNX vs PyTorch: largest |logit difference| allowed
FP32_TFLITE_TOLERANCE = 1e-4  # fp32 TFLite vs PyTorch (XNNPACK reorders sums): recorded
FILES = {
    "fp32_onnx": "model.fp32.onnx",
    "int8_onnx": "model.int8.onnx",
    "fp32_tflite": "model.fp32.tflite",
    "int8_tflite": "model.int8.tflite",
    "header": "model_data.h",
    "source": "model_data.cc",
}


def export_student(
    student_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    calib: CalibrationSet | str | os.PathLike | None = None,
    data: str | None = None,
    data_dir: str | os.PathLike | None = None,
    holdout=None,
    formats: Sequence[str] = FORMATS,
    force: bool = False,
    gate: GateThresholds | None = None,
    n_calib: int = DEFAULT_N_WINDOWS,
    seed: int = 0,
    calib_clip: float | None = None,
    hop: int | None = None,
    tflite_io: str = tflite_export.TFLITE_IO,
    target: str | None = None,
    save_calib: str | os.PathLike | None = None,
    progress: bool = False,
    verbose: bool = False,
) -> dict:
    """Export a saved student (or baseline) to fp32/int8 ONNX, int8 TFLite and a C array.

    Parameters
    ----------
    student_dir : folder written by `dlink.student.save_student`.
    out_dir : model folder to create (replaced only with ``force``).
    calib : a `CalibrationSet` or a calibration ``.npz``; default: drawn from ``data``'s
        training subjects.
    data : data set name or ``.npz`` (`dlink.data.load_windows`); gives the calibration
        set (training subjects) and the held-out windows (test subjects).
    data_dir : data root for ``data``.
    holdout : held-out windows for the parity gate: a `dlink.data.Windows` or a data-set
        ``.npz`` in µV; default: ``data``'s test subjects.
    formats : any of ``"onnx"``, ``"tflite"``, ``"c"`` (``"c"`` embeds the int8 TFLite).
    force : replace an existing ``out_dir``.
    gate : parity thresholds; ``GateThresholds(enforce=False)`` writes failing artifacts
        and marks them failed in the manifest.
    n_calib, seed : size and seed of a calibration set drawn from ``data``.
    calib_clip : clip the calibration windows at this percentile of |X| before
        calibrating (`CalibrationSet.clipped`); None (default) calibrates on them as drawn.
    hop : default samples between decisions on the board; default ``n_times``.
    tflite_io : ``"int8"`` (default) or ``"float32"`` TFLite input/output tensors.
    target : CPU the int8 ONNX file is for, ``"x86"`` (7-bit weights, see
        `onnx_export.TARGETS`) or ``"arm"``; default: this machine's. The gate runs here, so
        an ``arm`` file gated on an x86 CPU without VNNI may fail on saturation that the
        board does not have.
    save_calib : also write the calibration set drawn from ``data`` here (.npz + .json).
    progress : show a progress bar on stderr.
    verbose : let the converters print their own logs.

    Returns
    -------
    dict
        The manifest written to ``out_dir/manifest.json``.

    Raises
    ------
    CheckpointError, ConfigError, DataFormatError, ChecksumError, ExportError
        With a one-line message; nothing is left in or beside ``out_dir``.
    GateError
        An int8 artifact failed the gate (``.results`` holds every artifact's checks).
    """
    gate = gate or GateThresholds()
    formats = _check_formats(formats)
    target = target or onnx_export.default_target()
    if target not in onnx_export.TARGETS:
        raise ConfigError(f"unknown target {target!r}; choose from {sorted(onnx_export.TARGETS)}.")
    out_dir = Path(out_dir)
    if _exists(out_dir) and not force:
        raise OutputExistsError(
            f"output folder {out_dir} already exists; pass --force to replace it."
        )
    model = _load_student(student_dir)
    with _staging(out_dir, force) as stage:
        calib_set, held = _resolve_data(model, calib, data, data_dir, holdout, n_calib, seed, gate)
        file_sha256 = calib_set.sha256
        if calib_clip is not None:
            calib_set = calib_set.clipped(calib_clip)
        if save_calib is not None and (calib is None or calib_clip is not None):
            save_calibration_set(calib_set, save_calib)
        job = _write_artifacts(stage, model, calib_set, held, formats, gate, tflite_io,
                               progress, verbose, target)
        manifest = {
            "schema": SCHEMA,
            "model": _model_section(model, job, Path(student_dir).resolve().name),
            "input": input_section(model.signal, hop or model.signal.n_times,
                                   onnx_export.INPUT_NAME),
            "output": output_section(model.class_names, onnx_export.OUTPUT_NAME),
            "artifacts": job.artifacts,
            "calibration": _calibration_section(calib_set, file_sha256),
            "parity": _parity_section(held, len(job.y), gate, job.results),
            "export": job.settings,
            "deployment": job.deployment,
            "toolchain": toolchain_versions(),
        }
        (stage / MANIFEST_NAME).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return manifest


# ---------------------------------------------------------------------------------------
# Inputs: student, calibration set, held-out windows


def _check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ConfigError(f"unknown format(s) {unknown or formats}; choose from {list(FORMATS)}.")
    if "c" in formats and "tflite" not in formats:
        raise ConfigError("format 'c' embeds the int8 TFLite model; add 'tflite' to --formats.")
    return tuple(f for f in FORMATS if f in formats)


def _load_student(student_dir) -> nn.Module:
    from dlink.student import load_student

    try:
        model = load_student(student_dir)
    except DLinkError:
        raise
    except Exception as exc:  # anything the loader did not anticipate is still a bad checkpoint
        raise CheckpointError(
            f"could not load the student in {student_dir}: {_one_line(exc)}"
        ) from exc
    missing = [a for a in ("signal", "class_names", "config") if not hasattr(model, a)]
    if missing:
        raise CheckpointError(f"the model loaded from {student_dir} lacks {missing}.")
    return model.eval()


def _resolve_data(model, calib, data, data_dir, holdout, n_calib, seed, gate):
    """(calibration set, held-out windows or None), both checked against the student."""
    signal = model.signal
    windows = split = None
    if data is not None:
        from dlink.data import DATASETS, load_windows, split_subjects

        params = {"sfreq": signal.sfreq}
        if data in DATASETS:
            params["window_s"] = signal.window_s
        windows = load_windows(data, data_dir=data_dir, **params)
        _check_windows(windows, signal, f"data set {data!r}")
        split = split_subjects(windows)
    if isinstance(calib, CalibrationSet):
        calib_set = calib
    elif calib is not None:
        calib_set = load_calibration_set(calib)
    elif windows is not None:
        calib_set = from_windows(windows, split.train, split.val + split.test, signal=signal,
                                 n_windows=n_calib, seed=seed)
    else:
        raise ConfigError(
            "int8 export needs calibration windows: pass --calib FILE.npz or --data NAME."
        )
    _check_calibration(calib_set, signal)
    if holdout is not None and not hasattr(holdout, "X"):
        from dlink.data import load_windows

        holdout = load_windows(str(holdout), sfreq=signal.sfreq)
    if holdout is None and windows is not None:
        holdout = windows.of_subjects(split.test)
    if holdout is not None:
        _check_windows(holdout, signal, "held-out windows")
        _check_disjoint(calib_set, holdout)
        n_classes = len(model.class_names)
        if int(np.max(holdout.y)) >= n_classes:
            raise ConfigError(
                f"held-out labels reach {int(np.max(holdout.y))}, the student has "
                f"{n_classes} classes {model.class_names}; is it the right data set?"
            )
    elif gate.enforce:
        raise ConfigError(
            "the parity gate needs held-out windows: pass --data NAME (its test subjects) "
            "or --holdout FILE.npz, or --no-gate to export without a held-out check."
        )
    return calib_set, holdout


def _check_windows(windows, signal: SignalSpec, what: str) -> None:
    have = (list(windows.ch_names), float(windows.sfreq), int(windows.X.shape[-1]))
    want = (list(signal.ch_names), float(signal.sfreq), int(signal.n_times))
    if have != want:
        raise ConfigError(
            f"{what} are {len(have[0])} channels at {have[1]:g} Hz x {have[2]} samples "
            f"({', '.join(have[0][:4])}...), the student expects {len(want[0])} channels at "
            f"{want[1]:g} Hz x {want[2]} samples ({', '.join(want[0][:4])}...)."
        )
    if len(windows.X) == 0:
        raise ConfigError(f"{what} hold no windows.")


def _check_calibration(cs: CalibrationSet, signal: SignalSpec) -> None:
    fields = ("ch_names", "sfreq", "n_times", "input_scale", "preprocessing")
    diff = [f for f in fields if getattr(cs.signal, f) != getattr(signal, f)]
    if diff:
        f = diff[0]
        raise ConfigError(
            f"calibration set was built for {f}={getattr(cs.signal, f)!r}, the student has "
            f"{f}={getattr(signal, f)!r}; rebuild it from the student's data."
        )


def _check_disjoint(cs: CalibrationSet, holdout) -> None:
    if cs.source != getattr(holdout, "name", None):
        return  # subject ids of different data sets are not comparable
    shared = sorted(set(cs.subjects) & set(np.asarray(holdout.subject).astype(str).tolist()))
    if shared:
        raise ConfigError(
            f"calibration set and held-out windows share subjects {shared}; calibrate on "
            "training subjects only."
        )


# ---------------------------------------------------------------------------------------
# Artifacts


class _Exporter:
    """Writes the artifacts into ``stage`` and gathers their manifest entries and checks."""

    def __init__(self, stage: Path, work: Path, model: nn.Module, calib: CalibrationSet,
                 held, gate: GateThresholds, steps: Steps, verbose: bool, target: str = "x86"):
        self.stage, self.work, self.model, self.calib = stage, work, model, calib
        self.gate, self.steps, self.verbose = gate, steps, verbose
        # the graph to ship: a model may fold training-only structure away (EEG-MiC's mimic
        # projection, `deployable()`); its logits are checked against the model's below
        deployable = model.deployable() if hasattr(model, "deployable") else model
        self.deploy, folded = _fold_batchnorm(deployable)
        folded = folded or deployable is not model  # deployable() folded them itself
        # The TFLite files get the graph in the layout XNNPACK runs fast, each for its
        # precision (EEG-MiC's front end as plain convs, same int8 products); the C array, for
        # MCU kernels that run depthwise convs at their MAC count, keeps the nchw graph, which
        # has fewer MACs (`c_files`).
        self.deploy_nhwc = {p: _fold_batchnorm(model.deployable(layout="nhwc", precision=p))[0]
                            if hasattr(model, "deployable") else self.deploy
                            for p in ("fp32", "int8")}
        self.target = target  # the int8 ONNX file's CPU (onnx_export.TARGETS)
        self.sample = torch.from_numpy(calib.X[:1])  # (1, C, T)
        if held is not None:
            self.X, self.y = to_model_units(held.X, model.signal), np.asarray(held.y)
        else:  # --no-gate without held-out windows: parity on the calibration windows
            self.X, self.y = calib.X, calib.y
        self.ref = _torch_logits(model, self.X)  # (n, K) fp32 reference logits
        self.artifacts: list[dict] = []
        self.results: list[ParityResult] = []
        self.settings: dict = {"batchnorm_folded": folded}
        self.deployment: dict = {}  # `export.deployment.measure`, once the files exist

    def onnx(self) -> None:
        fp32, int8 = self.stage / FILES["fp32_onnx"], self.stage / FILES["int8_onnx"]
        with self.steps.step("exporting fp32 ONNX (torch.export)"):
            info = self._tool("ONNX export", onnx_export.export_fp32, self.deploy, self.sample,
                              fp32)
        with self.steps.step("checking fp32 ONNX against PyTorch"):
            check = _fp32_check(onnx_export.run(fp32, self.X), self.ref)
        if not check["passed"]:
            raise ExportError(
                f"fp32 ONNX differs from PyTorch by {check['max_abs_err']:.3g} > "
                f"{check['tolerance']:.3g} on {check['n_windows']} windows; the exported "
                "graph is wrong (an op the exporter mistranslates?)."
            )
        with self.steps.step("quantising int8 ONNX (ONNX Runtime QDQ)"):
            quant = self._tool("ONNX Runtime quantisation", onnx_export.quantize_int8, fp32,
                               int8, self.calib, self.target)
        with self.steps.step("gating int8 ONNX"):
            result = self._gate(FILES["int8_onnx"], onnx_export.run(int8, self.X),
                                onnx_export.float_ops(int8))
        with self.steps.step("int8 spectral fidelity per EEG band"):
            spectral = band_errors_safe(fp32, int8, self.X[:128], self.model.signal.sfreq)
        io = {"batch": info["batch"]}
        self._add(FILES["fp32_onnx"], "onnx", "fp32", io=io, parity_vs_torch=check)
        self._add(FILES["int8_onnx"], "onnx", "int8", io=io, gate=result.to_manifest(),
                  spectral_fidelity=spectral, parameter_bytes=onnx_export.parameter_bytes(int8))
        self.settings["onnx"] = {**info, "ort_optimization_level": onnx_export.ORT_LEVEL,
                                 "quantization": quant}

    def tflite(self, io_dtype: str) -> None:
        self.tflite_io = io_dtype
        fp32, int8 = self.stage / FILES["fp32_tflite"], self.stage / FILES["int8_tflite"]
        with self.steps.step("converting fp32 TFLite (litert-torch)"):
            conv_err = self._convert_tflite(self.deploy_nhwc["fp32"], fp32)
            source, source_err = fp32, conv_err  # the fp32 graph the int8 file is quantised from
            # EEG-MiC: a wider filter-bank block for int8 (`_graph_note` spells the geometry)
            if _graph_note(self.deploy_nhwc["int8"]) != _graph_note(self.deploy_nhwc["fp32"]):
                source = self.work / "model.fp32.for-int8.tflite"  # not shipped
                source_err = self._convert_tflite(self.deploy_nhwc["int8"], source)
        with self.steps.step("quantising int8 TFLite (ai-edge-quantizer)"):
            quant = self._tool("ai-edge-quantizer", tflite_export.quantize_int8, source, int8,
                               self.calib, io_dtype)
        with self.steps.step("gating int8 TFLite"):
            self.int8_tflite_logits = tflite_export.run(int8, self.X)  # (n, K); `_mcu_tflite`
            result = self._gate(FILES["int8_tflite"], self.int8_tflite_logits,
                                tflite_export.float_ops(int8))
        io = tflite_export.io_details(int8)
        self._add(FILES["fp32_tflite"], "tflite", "fp32",
                  io={"dtype": "float32", **tflite_export.io_details(fp32)},
                  parity_vs_torch={"max_abs_err": conv_err, "tolerance": FP32_TFLITE_TOLERANCE,
                                   "n_windows": len(self.X),
                                   "passed": conv_err <= FP32_TFLITE_TOLERANCE})
        self._add(FILES["int8_tflite"], "tflite", "int8", io={"dtype": io["input"]["dtype"], **io},
                  gate=result.to_manifest(), parameter_bytes=tflite_export.parameter_bytes(int8))
        self.settings["tflite"] = {"fp32_conversion_max_abs_err": conv_err,
                                   "int8_source_conversion_max_abs_err": source_err,
                                   "quantization": quant,
                                   "graphs": {FILES[f"{p}_tflite"]: _graph_note(self.deploy_nhwc[p])
                                              for p in ("fp32", "int8")}}

    def _convert_tflite(self, graph: nn.Module, path: Path) -> float:
        """Convert ``graph`` to an fp32 TFLite file at ``path``; its largest logit difference
        from the PyTorch model on the gate's windows."""
        self._tool("litert-torch conversion", tflite_export.convert_fp32, graph, self.sample, path)
        return float(np.abs(tflite_export.run(path, self.X) - self.ref).max())

    def c_files(self) -> None:
        signal = self.model.signal
        with self.steps.step("int8 TFLite for microcontrollers (nchw graph)"):
            model, embeds = self._mcu_tflite()
        # TFLite Micro check (issue 14, export/tflm.py): ops + smallest arena into the header,
        # then model_data.cc's bytes run on TFLM vs LiteRT; recorded on the c-source entry.
        with self.steps.step("finding the TFLite Micro ops and smallest tensor arena"):
            mcu = tflm.plan(model)
        with self.steps.step("writing model_data.h/.cc"):
            c_array.write_c_array(
                model, self.stage / FILES["header"], self.stage / FILES["source"],
                sha256=embeds["sha256"], n_chans=signal.n_chans, n_times=signal.n_times,
                class_names=list(self.model.class_names), io=tflite_export.io_details(model),
                tflm=mcu,
            )
        with self.steps.step("running model_data.cc on TFLite Micro vs LiteRT"):
            mcu = tflm.verify(self.stage / FILES["source"], model, self.X, mcu,
                              enforce=self.gate.enforce)
        self._add(FILES["header"], "c-header", "int8", embeds=embeds)
        self._add(FILES["source"], "c-source", "int8", embeds=embeds, tflm=mcu)

    def _mcu_tflite(self) -> tuple[Path, dict]:
        """The int8 TFLite the C array embeds, and the manifest's ``embeds`` entry for it.

        ``model.int8.tflite`` itself, unless that file has the nhwc graph: then the nchw
        graph (depthwise convs, fewer MACs) quantised the same way, which must give exactly
        ``model.int8.tflite``'s outputs on the gate's windows (the two layouts compute the
        same int8 products); a difference is an ExportError, or recorded (``equal``:
        false) when the gate is not enforced."""
        shipped = self.stage / FILES["int8_tflite"]
        if self.deploy_nhwc["int8"] is self.deploy:  # one graph for both: the shipped file itself
            model, graph, diff = shipped, "the shipped model.int8.tflite", 0.0
        else:
            fp32, model = self.work / "model.fp32.nchw.tflite", self.work / "model.int8.nchw.tflite"
            graph = "nchw: depthwise convs, fewer MACs on MCU kernels (not shipped as a file)"
            self._tool("litert-torch conversion", tflite_export.convert_fp32, self.deploy,
                       self.sample, fp32)
            self._tool("ai-edge-quantizer", tflite_export.quantize_int8, fp32, model,
                       self.calib, self.tflite_io)
            diff = float(np.abs(tflite_export.run(model, self.X) - self.int8_tflite_logits).max())
        if diff > 0 and self.gate.enforce:
            raise ExportError(
                f"the C array's int8 model gives outputs up to {diff:.3g} away from "
                f"{FILES['int8_tflite']}'s; the two layouts should compute the same int8 "
                "products (use --no-gate to write and record it)."
            )
        return model, {"file": model.name, "graph": graph, "sha256": sha256_file(model),
                       "bytes": model.stat().st_size, "same_outputs_as": FILES["int8_tflite"],
                       "equal": diff == 0, "max_abs_diff": diff}

    def _add(self, rel: str, fmt: str, precision: str, **extra) -> None:
        self.artifacts.append(artifact_entry(self.stage, rel, fmt, precision, **extra))

    def _gate(self, artifact: str, logits: np.ndarray, float_ops: list[str]) -> ParityResult:
        result = compare(artifact, self.ref, logits, self.y, self.gate, float_ops)
        self.results.append(result)
        return result

    def _tool(self, what: str, fn, *args):
        """Run a converter quietly; its failure becomes a one-line `ExportError`."""
        try:
            with quiet(not self.verbose):
                return fn(*args)
        except DLinkError:
            raise
        except Exception as exc:
            raise ExportError(
                f"{what} failed: {_one_line(exc)} (rerun with --verbose for the tool's log)"
            ) from exc


def _write_artifacts(stage: Path, model, calib, held, formats, gate, tflite_io, progress,
                     verbose, target: str = "x86") -> _Exporter:
    """Write every requested artifact into ``stage``; raise `GateError` if the gate fails."""
    n_steps = 4 * ("onnx" in formats) + 3 * ("tflite" in formats) + 4 * ("c" in formats) + 1
    with tempfile.TemporaryDirectory() as work, Steps(n_steps, progress) as steps:
        job = _Exporter(stage, Path(work), model, calib, held, gate, steps, verbose, target)
        if "onnx" in formats:
            job.onnx()
        if "tflite" in formats:
            job.tflite(tflite_io)
        if "c" in formats:
            job.c_files()
        with steps.step("timing fp32 vs int8 on this CPU"):
            job.deployment = deployment.measure(_runtime_files(stage, job.artifacts),
                                                calib.X[:1])
    job.settings["timings_s"] = dict(steps.timings)
    failed = [r for r in job.results if not r.passed]
    if failed and gate.enforce:
        detail = "; ".join(f"{r.artifact} ({', '.join(r.failed)})" for r in failed)
        raise GateError(
            f"int8 parity gate failed for {detail}; nothing was written. "
            "Use --no-gate to write anyway (marked failed in the manifest).",
            job.results,
        )
    return job


def _runtime_files(stage: Path, artifacts: list[dict]) -> dict[str, dict[str, Path]]:
    """``{"onnx"|"tflite": {precision: path}}`` of the written model files."""
    files: dict[str, dict[str, Path]] = {}
    for a in artifacts:
        if a["format"] in ("onnx", "tflite"):
            files.setdefault(a["format"], {})[a["precision"]] = stage / a["path"]
    return files


def _fp32_check(onnx_logits: np.ndarray, ref: np.ndarray) -> dict:
    err = float(np.max(np.abs(onnx_logits - ref)))
    return {"max_abs_err": err, "tolerance": FP32_TOLERANCE, "n_windows": len(ref),
            "passed": err <= FP32_TOLERANCE}


# ---------------------------------------------------------------------------------------
# Model helpers


def _graph_note(deployed: nn.Module) -> str:
    """One line on the graph a TFLite file was converted from (EEG-MiC's nhwc front end)."""
    g = getattr(deployed, "geometry", None)
    if not g or g.get("layout") != "nhwc":
        return "the model's deployable graph"
    p, s = g["filter_phases"], g["filter_stride"][1]
    return (f"nhwc: filter bank as a stride-1 conv over blocks of {p * s} samples "
            f"({p} output phase{'s' if p > 1 else ''}), envelope as a dense 1x1 conv")


def _fold_batchnorm(model: nn.Module) -> tuple[nn.Module, bool]:
    """An eval-mode copy with every Conv -> BatchNorm pair in a Sequential fused into one conv.

    Both exporters then see one conv instead of conv + (mul, add): fewer int8 rounding
    steps. Returns (copy, whether anything was folded); the copy's logits are checked
    later against the original model (fp32 ONNX check).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    deploy = copy.deepcopy(model).eval()
    folded = False
    for seq in [m for m in deploy.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv1d | nn.Conv2d) and isinstance(
                bn, nn.BatchNorm1d | nn.BatchNorm2d
            ) and bn.num_features == conv.out_channels:
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
                folded = True
    return deploy, folded


@torch.no_grad()
def _torch_logits(model: nn.Module, X: np.ndarray, batch: int = 64) -> np.ndarray:
    outs = [model(torch.from_numpy(np.ascontiguousarray(X[i : i + batch]))).numpy()
            for i in range(0, len(X), batch)]
    return np.concatenate(outs).astype(np.float32)


def _model_section(model: nn.Module, job: _Exporter, name: str) -> dict:
    from dlink.nn_utils import count_macs, count_parameters

    n_params = count_parameters(model)
    int8_bytes = next(
        (a["parameter_bytes"] for fmt in ("onnx", "tflite") for a in job.artifacts
         if a["format"] == fmt and a["precision"] == "int8" and "parameter_bytes" in a),
        None,
    )
    return {
        "name": name,
        "arch": model.config.get("arch"),
        "family": model.config.get("family"),
        "parameters": int(n_params),
        "parameter_bytes_fp32": int(4 * n_params),
        "parameter_bytes_int8": int8_bytes,
        "macs": int(count_macs(model, job.sample)),
        "config": model.config,
    }


def _calibration_section(cs: CalibrationSet, file_sha256: str | None) -> dict:
    info = cs.info()
    if cs.sha256 is None:  # drawn or clipped in memory: checksum of the file it would be
        with tempfile.TemporaryDirectory() as tmp:
            save_calibration_set(cs, Path(tmp) / "calib.npz")
    return {
        "sha256": cs.sha256,
        "file_sha256": file_sha256,  # the --calib file as given (None if drawn from --data)
        "n_windows": info["n_windows"],
        "subjects": info["subjects"],
        "excluded_subjects": info["excluded_subjects"],
        "n_per_class": info["n_per_class"],
        "source": info["source"],
        "seed": info["seed"],
        "x_units": X_UNITS,
        "x_note": info["x_note"],
        "clip": info["clip"],
    }


def _parity_section(held, n_windows, gate, results) -> dict:
    source = {
        "source": getattr(held, "name", None) if held is not None else "calibration set",
        "held_out": held is not None,
        "n_windows": int(n_windows),
        "subjects": sorted(set(np.asarray(held.subject).astype(str).tolist()))
        if held is not None else [],
    }
    return {
        "reference": "fp32 PyTorch model (logits)",
        "data": source,
        "thresholds": gate.to_dict(),
        "passed": all(r.passed for r in results),
        "enforced": gate.enforce,
    }


# ---------------------------------------------------------------------------------------
# Atomic output folder


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


@contextlib.contextmanager
def _staging(out_dir: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside ``out_dir``, renamed onto it if the block succeeds.

    On any failure (or Ctrl-C) the temporary folder, and any parent folders this call
    created, are removed.
    """
    created = _make_parents(out_dir.parent)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as exc:
        _remove(created)
        raise ExportError(
            f"cannot write to output folder {out_dir.parent} ({exc.strerror or exc}); "
            "choose a writable --out."
        ) from exc
    try:
        yield stage
        _publish(stage, out_dir, force)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove(created)
        raise


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and missing ancestors; return those created (deepest first)."""
    missing = []
    p = parent.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except OSError as exc:
            _remove([q for q in missing if q.exists()])
            raise ExportError(
                f"cannot create output folder {p} ({exc.strerror or exc}); "
                "choose a writable --out."
            ) from exc
    return missing


def _remove(folders: list[Path]) -> None:
    for p in folders:  # deepest first
        with contextlib.suppress(OSError):
            p.rmdir()


def _publish(stage: Path, out_dir: Path, force: bool) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it 0700; give it a normal folder's mode
    if not _exists(out_dir):
        os.rename(stage, out_dir)
        return
    if not force:
        raise OutputExistsError(
            f"output folder {out_dir} appeared during the export; pass --force to replace it."
        )
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rename(out_dir, old / "previous")
    os.rename(stage, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
