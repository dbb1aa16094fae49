"""`dlink pipeline`: the main job, from recorded EEG to a profiled int8 model and a report.

Stages, each also a command of its own:

    data -> teacher (dlink finetune) -> student (dlink distill)
         -> export (dlink-export: calibration set, int8 ONNX + int8 TFLite + C array)
         -> profile (dlink-edge profile / check for every shipped board)
         -> stream (dlink-edge run on the held-out recordings of every class) -> report

The int8 parity gate of dlink-export is measured and recorded, not enforced here: an
artifact that fails it is written marked failed (the pipeline warns, the report and
``metrics.json`` show it, and ``dlink check`` can gate on it), so the job always ends
with a report. A firmware team's own ``dlink-export`` call keeps the gate enforced.

A stage is skipped when its content key — a hash of its settings and of everything it
consumes (data, upstream stage keys, weights) — matches the one recorded in
``OUT/pipeline.json``; a changed input re-runs it and everything downstream (the settings
that changed since the last run in OUT are named on stderr). An interrupted stage resumes
(training stages from their checkpoint). Every file a later stage or run reads is written
atomically (`dlink.atomic`). Export, profiling and
streaming run the real command-line tools in subprocesses, exactly as a firmware team
would, which also keeps the one-way imports (dlink never imports export or edge_runtime).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dlink.atomic import check_writable, savez_atomic, write_bytes_atomic, write_text_atomic
from dlink.console import stderr
from dlink.errors import ConfigError, DLinkError

BOARDS = ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano")
# Checked from the export's TFLite Micro sizes (issue 14), when tflite-micro (dlink[mcu]) is here.
MCUS = ("nrf52840", "stm32h743", "esp32-s3")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one pipeline run (a preset, then command-line overrides)."""

    data: str = "eegmat"  # data set name or .npz path
    subjects: tuple[str, ...] | None = None  # restrict to these subjects (None: all)
    max_subjects: int | None = None  # if ``subjects`` are not in the data: this many, evenly spaced
    conditioning: str = "none"  # causal input filters (dlink.data.conditioning), in the manifest
    teacher_weights: str | None = None  # pre-trained backbone (None: the committed one)
    teacher_epochs: int = 8  # fine-tuning passes (dlink.finetune's recipe; CBraMod uses 50)
    student: str = "mic-s"  # student preset
    method: str = "dlink"  # distillation method (dlink.distill.METHODS)
    student_epochs: int = 20
    qat_epochs: int = 4  # int8-aware final phase of the student (dlink.qat); 0: plain PTQ
    ablation: bool = True  # also distil without the spectral terms, for the report's spectra
    enforce_gate: bool = True  # stop if an int8 file fails the parity gate (False: record it)
    target: str = "arm"  # CPU of the int8 ONNX file: the boards checked (BOARDS) are ARM
    n_calib: int = 256  # calibration windows
    profile_windows: int = 200  # timed windows per profile
    seed: int = 0


PRESETS = {
    "default": PipelineConfig(),
    "smoke": PipelineConfig(subjects=("00", "01", "02", "03", "31", "35"), max_subjects=6,
                            teacher_epochs=1, student="mic-xs", student_epochs=2, qat_epochs=1,
                            ablation=False, n_calib=32, profile_windows=100),
}


@dataclass
class _Record:
    key: str
    status: str = "running"
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_sha(path: Path) -> str:
    from dlink.data.checksums import sha256_file

    return sha256_file(path)


class Pipeline:
    """Runs the stages into ``out`` and records what it did in ``out/pipeline.json``."""

    def __init__(self, cfg: PipelineConfig, out: Path, data_dir: Path | None = None):
        self.cfg, self.out, self.data_dir = cfg, Path(out), data_dir
        check_writable(self.out, "--out")
        self.record_path = self.out / "pipeline.json"
        saved = self._load_record()
        self.records = {k: _Record(**v) for k, v in saved.get("stages", {}).items()}
        changed = _changed_settings(saved.get("config"), asdict(cfg))
        if changed:
            stderr.print(f"settings changed since the last run in {self.out}: {changed}; "
                         "the stages they feed run again", highlight=False, soft_wrap=True)

    def _load_record(self) -> dict:
        if not self.record_path.is_file():
            return {}
        try:
            saved = json.loads(self.record_path.read_text())
            for rec in saved.get("stages", {}).values():
                _Record(**rec)
            return saved
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.record_path} is not a pipeline record ({exc}); delete it "
                              "(every stage then runs again) or give another --out.") from exc

    # --- bookkeeping ------------------------------------------------------------------------
    def _save(self) -> None:
        write_text_atomic(self.record_path, json.dumps(
            {"config": asdict(self.cfg), "stages": {k: asdict(v) for k, v in self.records.items()}},
            indent=2))

    def stage(self, name: str, key: str, outputs: list[Path], run) -> None:
        """Run ``run()`` unless ``name`` already finished with ``key``; resume a stage that
        was interrupted with the same key; start over (deleting ``outputs``) otherwise."""
        rec = self.records.get(name)
        if rec and rec.key == key and rec.status == "done" and all(p.exists() for p in outputs):
            stderr.print(f"[dim]{name}: unchanged, skipped[/]")
            return
        if not (rec and rec.key == key):
            for p in outputs:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        self.records[name] = _Record(key=key)
        self._save()
        stderr.print(f"[bold]{name}[/] ...")
        t0 = time.perf_counter()
        info = run() or {}
        self.records[name] = _Record(key=key, status="done", seconds=round(time.perf_counter() - t0, 1),
                                     info=info)
        self._save()

    def _tool(self, *args: str, stdout: Path | None = None, ok_codes=(0,),
              stdin: bytes | None = None) -> subprocess.CompletedProcess:
        """Run one of our command-line tools (optionally feeding ``stdin``); its stdout goes to
        the file ``stdout``; a failure becomes a DLinkError naming the tool."""
        proc = subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True)
        if stdout is not None:
            write_bytes_atomic(stdout, proc.stdout)
        if proc.returncode not in ok_codes:
            tail = (proc.stderr.decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
            raise DLinkError(f"`{' '.join(args[:2])}` failed (exit {proc.returncode}): {tail}")
        return proc

    # --- the job ----------------------------------------------------------------------------
    def run(self) -> dict:
        from dlink.data import load_windows
        from dlink.data.splits import pick_subjects, pipeline_split

        cfg = self.cfg
        extra = {"conditioning": cfg.conditioning} if cfg.conditioning != "none" else {}
        windows = load_windows(cfg.data, data_dir=self.data_dir, **extra)
        if cfg.subjects:
            missing = sorted(set(cfg.subjects) - set(windows.subjects))
            if missing and not cfg.max_subjects:
                raise ConfigError(f"subjects {', '.join(missing)} are not in {cfg.data}")
            windows = windows.of_subjects(
                pick_subjects(windows.subjects, cfg.max_subjects) if missing else cfg.subjects)
        windows, split, self.split_kind = pipeline_split(windows)
        # a subset or within-subject blocks: dlink-export must read OUT/data.npz, not cfg.data
        self.relabelled = (bool(cfg.subjects) or self.split_kind.startswith("within")
                           or cfg.conditioning != "none")  # filtered windows: export reads them
        data_key = _hash(hashlib.sha256(windows.X.tobytes()).hexdigest(), windows.y.tolist(),
                         windows.subject.tolist(), split.to_dict())
        data_spec = self._data_stage(windows, split, data_key)

        backbone = Path(cfg.teacher_weights) if cfg.teacher_weights else _default_backbone()
        weights = backbone / "model.safetensors" if backbone.is_dir() else backbone
        teacher_key = _hash(data_key, _file_sha(weights), cfg.teacher_epochs, cfg.seed)
        self.stage("teacher", teacher_key, [self.out / "teacher"], lambda: self._teacher(
            backbone, windows, split))
        student_key = _hash(teacher_key, cfg.student, cfg.method, cfg.student_epochs, cfg.qat_epochs,
                            _loss_key(cfg.method))
        self.stage("student", student_key, [self.out / "student"], lambda: self._student(windows, split))
        if cfg.ablation:  # the same student without the spectral terms (report: spectra)
            self.stage("ablation", _hash(student_key, "no-spectral"), [self.out / "student_no_spectral"],
                       lambda: self._student(windows, split, "dlink-no-spectral", "student_no_spectral"))
        export_key = _hash(student_key, cfg.n_calib, data_spec, cfg.enforce_gate, cfg.target)
        self.stage("export", export_key, [self.out / "export", self.out / "calibration.npz"],
                   lambda: self._export(data_spec))
        profile_key = _hash(export_key, cfg.profile_windows)
        self.stage("profile", profile_key, [self.out / "profile"], self._profile)
        stream_key = _hash(export_key, "stream", "every class")
        self.stage("stream", stream_key, [self.out / "stream", self.out / "stream.json"],
                   lambda: self._stream(windows, split))
        self.stage("report", _hash(profile_key, stream_key), [self.out / "report.html"],
                   lambda: self._report(windows, split))
        return json.loads((self.out / "metrics.json").read_text())

    def _data_stage(self, windows, split, data_key) -> str:
        """Write data.json; a subset or a custom data set is also written as OUT/data.npz so
        that dlink-export calibrates and gates on exactly this split."""
        from dlink.data import DATASETS

        summary = {**windows.summary(), "split": split.to_dict(), "split_kind": self.split_kind}
        summary.pop("windows_per_subject")
        write_text_atomic(self.out / "data.json", json.dumps(summary, indent=2))
        if self.cfg.data in DATASETS and not self.relabelled:
            return self.cfg.data
        path = self.out / "data.npz"
        if not path.is_file() or self.records.get("data", _Record("")).key != data_key:
            savez_atomic(path, X=windows.X, y=windows.y, subject=windows.subject, sfreq=windows.sfreq,
                         ch_names=np.array(windows.ch_names), class_names=np.array(windows.class_names))
            self.records["data"] = _Record(key=data_key, status="done")
            self._save()
        return str(path)

    def _teacher(self, backbone, windows, split) -> dict:
        from dlink.finetune import FinetuneConfig, finetune

        m = finetune(backbone, windows, split, self.out / "teacher",
                     FinetuneConfig(epochs=self.cfg.teacher_epochs, seed=self.cfg.seed))
        return {"test_bacc": m["test"]["bacc"], "test_auroc": m["test"]["auroc"],
                "selected_epoch": m["selected_epoch"]}

    def _student(self, windows, split, method: str | None = None, folder: str = "student") -> dict:
        from dlink.distill import DistillConfig, distill

        main = method is None
        cfg = DistillConfig(student=self.cfg.student, method=method or self.cfg.method,
                            epochs=self.cfg.student_epochs, seed=self.cfg.seed,
                            qat_epochs=self.cfg.qat_epochs if main else 0)
        m = distill(self.out / "teacher", windows, split, self.out / folder, cfg)
        return {"test_bacc": m["test"]["bacc"], "parameters": m["parameters"], "macs": m["macs"],
                "qat": m.get("qat")}

    def _export(self, data_spec: str) -> dict:
        args = ["export.cli", str(self.out / "student"), "--out", str(self.out / "export"), "--force",
                "--data", data_spec, "--n-calib", str(self.cfg.n_calib), "--seed", str(self.cfg.seed),
                "--save-calib", str(self.out / "calibration.npz"), "--target", self.cfg.target]
        if not self.cfg.enforce_gate:
            args.append("--no-gate")
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        self._tool(*args)
        manifest = json.loads((self.out / "export" / "manifest.json").read_text())
        gates = {a["path"]: a["gate"] for a in manifest["artifacts"] if a.get("gate")}
        for path, gate in gates.items():
            if not gate["passed"]:
                stderr.print(f"[bold yellow]warning:[/] {path} failed the int8 parity gate "
                             f"({', '.join(gate['failed_checks'])}: agreement {gate['agreement']:.3f}, "
                             f"SQNR {gate['sqnr_db']:.1f} dB, BAcc change {gate['bacc_change']:+.3f}); "
                             "it is written, marked failed in the manifest, and profiled anyway")
        return {"bytes": {a["path"]: a["bytes"] for a in manifest["artifacts"]},
                "gate_passed": {p: g["passed"] for p, g in gates.items()}}

    def _gate_flags(self) -> list[str]:
        """dlink-edge refuses artifacts marked failed; a run that records failures says so."""
        return [] if self.cfg.enforce_gate else ["--allow-failed-gate"]

    def _profile(self) -> dict:
        folder = self.out / "profile"
        folder.mkdir(exist_ok=True)
        model = str(self.out / "export")
        from dlink.gate import REFERENCE_DIR  # packaged: a plain install times it too

        common = ["--threads", "1", "--windows", str(self.cfg.profile_windows), "--json",
                  *self._gate_flags(), "--reference", str(REFERENCE_DIR)]
        for backend in ("onnx", "tflite"):
            self._tool("edge_runtime.cli", "profile", model, "--backend", backend, *common,
                       stdout=folder / f"{backend}.json")
        within = {}
        for board in BOARDS + (MCUS if importlib.util.find_spec("tflite_micro") else ()):
            proc = self._tool("edge_runtime.cli", "check", model, "--budget", board, *common,
                              stdout=folder / f"budget_{board}.json", ok_codes=(0, 3))
            within[board] = proc.returncode == 0
        return {"within_budget": within}

    def _stream(self, windows, split) -> dict:
        """Stream the held-out recordings of every class through the int8 model: for EEGMAT
        each test subject's two EDF files (rest, task), else each test subject's windows of
        each class back to back as raw float32 on stdin. Decisions go to OUT/stream/, the
        overall and per-class accuracy of the accepted decisions to OUT/stream.json."""
        folder = self.out / "stream"
        folder.mkdir(exist_ok=True)
        recordings = []
        for subject in split.test:
            for label, source in self._held_out_recordings(windows, subject):
                jsonl = folder / f"{subject}_{windows.class_names[label]}.jsonl"
                args = ["edge_runtime.cli", "run", str(self.out / "export"), "--jsonl",
                        *self._gate_flags()]
                if isinstance(source, Path):
                    self._tool(*args, "--edf", str(source), stdout=jsonl)
                else:
                    self._tool(*args, "--stdin", stdout=jsonl, stdin=source)
                decisions = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
                labels = [d.get("label") for d in decisions if d.get("accepted", True)]
                recordings.append({
                    "source": source.name if isinstance(source, Path) else f"subject {subject} windows",
                    "subject": subject, "true_label": windows.class_names[label],
                    "decisions": len(decisions), "accepted": len(labels),
                    "correct": sum(lab == windows.class_names[label] for lab in labels)})
        summary = _stream_summary(recordings, windows.class_names)
        write_text_atomic(self.out / "stream.json", json.dumps(summary, indent=2))
        return {k: summary[k] for k in ("accuracy", "balanced_accuracy", "per_class")}

    def _held_out_recordings(self, windows, subject: str) -> list[tuple[int, Path | bytes]]:
        """(class index, EDF path or interleaved float32 samples) per class of ``subject``."""
        from dlink.data import data_root

        if self.cfg.data == "eegmat":
            folder = data_root(self.data_dir) / "eegmat"
            edfs = [(k, folder / f"Subject{subject}_{k + 1}.edf") for k in range(2)]
            if all(path.is_file() for _, path in edfs):
                return edfs
        held = windows.of_subjects([subject])
        out = []
        for k in np.unique(held.y):
            samples = np.concatenate(list(held.X[held.y == k]), axis=1).T  # (T, C) interleaved
            out.append((int(k), samples.astype("<f4").tobytes()))
        return out

    def _report(self, windows, split) -> dict:
        from dlink.gate import write_gate_metrics
        from dlink.report import write_report

        self._test_predictions(windows, split)
        metrics = write_gate_metrics(self.out)
        return {"report": str(write_report(self.out)), "metrics": metrics}


    def _test_predictions(self, windows, split) -> None:
        """OUT/test_predictions.npz: the fp32 student's class per test window, with the
        window's subject; `dlink.gate` bootstraps the BAcc interval from it."""
        import torch

        from dlink.gate import PREDICTIONS_FILE
        from dlink.student import load_student
        from dlink.training import predict_logits

        model = load_student(self.out / "student").eval()
        test = windows.of_subjects(split.test)
        with torch.no_grad():
            logits = predict_logits(model, torch.from_numpy(model.signal.to_model_units(test.X)))
        savez_atomic(self.out / PREDICTIONS_FILE, y=test.y, pred=logits.argmax(1),
                     subject=np.asarray(test.subject).astype(str))


def _stream_summary(recordings: list[dict], class_names) -> dict:
    """Overall accuracy of the accepted decisions, and per class (which a model answering
    one class for everything cannot pass)."""
    per_class = {}
    for name in class_names:
        recs = [r for r in recordings if r["true_label"] == name]
        n = sum(r["accepted"] for r in recs)
        per_class[name] = {"recordings": len(recs), "decisions": n,
                           "accuracy": sum(r["correct"] for r in recs) / n if n else None}
    accepted = sum(r["accepted"] for r in recordings)
    scored = [c["accuracy"] for c in per_class.values() if c["accuracy"] is not None]
    return {"decisions": sum(r["decisions"] for r in recordings), "accepted": accepted,
            "accuracy": sum(r["correct"] for r in recordings) / accepted if accepted else None,
            "balanced_accuracy": float(np.mean(scored)) if scored else None,
            "per_class": per_class, "recordings": recordings}


def _changed_settings(saved: dict | None, now: dict) -> str:
    """``"student_epochs 20 -> 3, ..."`` for the settings that differ ('' if none or no record)."""
    if not saved:
        return ""
    now = json.loads(json.dumps(now))  # tuples as lists, as saved
    return ", ".join(f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v)


def _default_backbone() -> Path:
    return Path(__file__).parent / "pretrained" / "cbramod-small-eegmat"


def _loss_key(method: str) -> str:
    """The resolved loss of a distillation method, so that a changed default (a new term, a
    new weight) re-trains the student instead of reusing one trained under the old loss."""
    from dlink.distill import METHODS
    from dlink.losses import build_loss

    if method not in METHODS:
        return method
    return json.dumps(build_loss(METHODS[method].loss).to_dict(), sort_keys=True)


def resolve_config(preset: str, **overrides) -> PipelineConfig:
    """A preset with the given (non-None) fields replaced."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
