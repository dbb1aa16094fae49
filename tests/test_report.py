"""`dlink.report.write_report` on a small but real pipeline-like output folder.

The folder is built stage by stage with the real code, on six EEGMAT subjects: a tiny
CBraMod teacher fine-tuned for one epoch, mic-xs students distilled for one epoch with and
without the spectral loss, an ONNX + TFLite export, `dlink-edge profile --reference` and
`check` run as subprocesses, a short `dlink-edge run`, and the gate metrics. Then the
report must open, every <img> must exist and be non-empty, and every section must be
drawn (no "skipped" note) -- and missing parts must become notes, not failures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "dlink" / "reference"
SUBJECTS = ["00", "01", "02", "03", "34", "35"]  # split: 4 train, 1 val, 1 test


def _edge(*args, ok=(0,)) -> str:
    """Run the real `dlink-edge` CLI in a fresh interpreter; return stdout."""
    res = subprocess.run([sys.executable, "-m", "edge_runtime.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode in ok, res.stderr
    return res.stdout


def build_pipeline_folder(out: Path, shared_data: Path) -> dict:
    """A `dlink pipeline`-like output folder, every stage real; returns stage seconds."""
    from calibration import from_windows
    from dlink.data import load_windows, split_subjects
    from dlink.distill import DistillConfig, distill
    from dlink.finetune import FinetuneConfig, finetune
    from dlink.gate import write_gate_metrics
    from dlink.teacher import create_teacher, save_teacher
    from export import GateThresholds, export_student

    torch.set_num_threads(1)
    stages, t0 = {}, time.perf_counter()

    def done(name):
        nonlocal t0
        stages[name] = {"seconds": round(time.perf_counter() - t0, 2), "status": "done"}
        t0 = time.perf_counter()

    windows = load_windows("eegmat", subjects=SUBJECTS)
    split = split_subjects(windows)
    out.mkdir(parents=True)
    (out / "data.json").write_text(json.dumps(
        {"data": "eegmat", "summary": windows.summary(), "split": split.to_dict()}))
    done("data")
    torch.manual_seed(0)
    backbone = save_teacher(create_teacher("tiny"), out.parent / "tiny-backbone")
    finetune(backbone, windows, split, out / "teacher", FinetuneConfig(epochs=1, batch_size=64))
    done("finetune")
    for folder, method in (("student", "dlink"), ("student_no_spectral", "dlink-no-spectral")):
        distill(out / "teacher", windows, split, out / folder,
                DistillConfig(student="mic-xs", method=method, epochs=1, batch_size=64))
    done("distill")
    from dlink.student import load_student

    calib = from_windows(windows, split.train, split.val + split.test,
                         signal=load_student(out / "student").signal, n_windows=64)
    export_student(out / "student", out / "export", calib=calib,
                   holdout=windows.of_subjects(split.test), formats=("onnx", "tflite"),
                   gate=GateThresholds(enforce=False))
    done("export")
    (out / "profile").mkdir()
    for backend in ("onnx", "tflite"):
        (out / "profile" / f"{backend}.json").write_text(_edge(
            "profile", out / "export", "--backend", backend, "--json", "--windows", "40",
            "--warmup", "3", "--reference", REFERENCE, "--allow-failed-gate"))
    (out / "profile" / "budget_rpi4.json").write_text(_edge(
        "check", out / "export", "--budget", "rpi4", "--json", "--windows", "20",
        "--reference", REFERENCE, "--allow-failed-gate", ok=(0, 3)))
    done("profile")
    edf = shared_data / "eegmat" / f"Subject{split.test[0]}_1.edf"
    lines = _edge("run", out / "export", "--edf", edf, "--jsonl", "--duration", "60",
                  "--allow-failed-gate").splitlines()
    labels = [json.loads(line)["label"] for line in lines]
    (out / "stream.json").write_text(json.dumps(
        {"edf": edf.name, "decisions": len(labels),
         "per_class": {c: labels.count(c) for c in sorted(set(labels))}}))
    done("stream")
    (out / "pipeline.json").write_text(json.dumps({"stages": stages}))
    write_gate_metrics(out)
    return stages


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("report") / "run"
    stages = build_pipeline_folder(out, shared_data)
    print("stage seconds:", {k: v["seconds"] for k, v in stages.items()})
    return out


def _images(path: Path) -> list[str]:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.srcs


def test_report_draws_every_section(pipeline_out):
    from dlink.report import SECTIONS, write_report

    t0 = time.perf_counter()
    path = write_report(pipeline_out)
    print(f"write_report: {time.perf_counter() - t0:.1f} s")
    text = path.read_text(encoding="utf-8")
    assert path == pipeline_out / "report.html" and text.startswith("<!DOCTYPE html>")
    assert "skipped:" not in text and "could not be drawn" not in text, re.findall(
        r'<p class="note">(.*?)</p>', text)
    assert text.count("<section") == len(SECTIONS)
    srcs = _images(path)
    expected = {"router_weights", "spectra", "confusion", "latency", "loss_teacher",
                "loss_student", "loss_student_no_spectral"}
    assert {Path(s).stem for s in srcs} == expected
    for src in srcs:
        img = pipeline_out / src
        assert img.is_file() and img.stat().st_size > 1000, src
        assert img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert "without the spectral loss" in text and "model.int8.tflite" in text
    for needle in ("rpi4", "latency ratio", "sha256", "MACs per window"):
        assert needle.lower() in text.lower(), needle


def test_report_survives_missing_parts(pipeline_out, tmp_path):
    from dlink.report import write_report

    thin = tmp_path / "thin"
    shutil.copytree(pipeline_out / "export", thin / "export")
    shutil.copytree(pipeline_out / "profile", thin / "profile")
    for rep in (thin / "profile").glob("*.json"):  # an older profile: no per-window samples
        d = json.loads(rep.read_text())
        d.pop("latency_samples_ms", None)
        rep.write_text(json.dumps(d))
    path = write_report(thin)
    text = path.read_text(encoding="utf-8")
    assert "student/router_weights.npz not found" in text
    assert "no split found" in text  # spectra and confusion need the test windows
    assert "no per-window latencies" in text
    for src in _images(path):
        assert (thin / src).stat().st_size > 0
    os.remove(thin / "export" / "manifest.json")
    assert write_report(thin).is_file()


def test_profile_json_has_samples_and_reference_ratio(pipeline_out):
    rep = json.loads((pipeline_out / "profile" / "onnx.json").read_text())
    assert len(rep["latency_samples_ms"]) == rep["n_windows"] == 40
    assert len(rep["decision_samples_ms"]) == 40
    ref = rep["reference"]
    assert ref["name"] == "reference-mic-xs" and ref["backend"] == "onnx"
    assert ref["precision"] == rep["precision"] == "int8"
    assert len(ref["latency_samples_ms"]) == 40
    assert ref["p50_ms"] == pytest.approx(np.median(ref["latency_samples_ms"]), rel=1e-3)
    assert rep["latency_ratio"] == pytest.approx(rep["latency_ms"]["p50"] / ref["p50_ms"])
    budget = json.loads((pipeline_out / "profile" / "budget_rpi4.json").read_text())
    assert budget["latency_ratio"] == budget["profile"]["latency_ratio"] > 0

    from edge_runtime.profiling import profile_model

    plain = profile_model(pipeline_out / "export", n_windows=5, warmup=0, allow_failed_gate=True)
    assert plain.reference is None and plain.latency_ratio is None
    assert len(plain.latency_samples_ms) == 5


@pytest.mark.slow
def test_report_of_the_smoke_pipeline(tmp_path, shared_data):
    """The real `dlink pipeline --preset smoke` (~3 min on 2 busy cores) ends in a full report."""
    out = tmp_path / "smoke"
    env = {**os.environ, "DLINK_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dlink.cli", "pipeline", "--preset", "smoke",
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "skipped:" not in text and "could not be drawn" not in text, re.findall(
        r'<p class="note">(.*?)</p>', text)
    srcs = _images(out / "report.html")
    assert {"router_weights", "spectra", "confusion", "latency"} <= {Path(s).stem for s in srcs}
    for src in srcs:
        assert (out / src).stat().st_size > 1000, src
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["latency"]["onnx"]["ratio"] > 0 and metrics["size_bytes"]
