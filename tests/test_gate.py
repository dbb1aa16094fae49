"""`dlink check`, the CI regression gate, on real exports profiled against dlink/reference.

Three untrained students for EEGMAT windows (19 x 1000), exported to ONNX with a real
calibration set and timed by the real `dlink-edge profile --reference`:

* ``base``: mic-xs; profiled twice, the second run is the "unchanged" candidate;
* ``bloated``: mic-m, ~6x the parameters (bigger files);
* ``slowed``: EEGNet, smaller files but ~10x the MACs of mic-xs (higher latency ratio).

The comparison logic itself is also tested on hand-made metrics (BAcc, missing and new
metrics, a changed reference), which needs no exports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dlink.gate import (
    EXIT_REGRESSION,
    METRICS_SCHEMA,
    Tolerances,
    bacc_interval,
    bacc_tolerance,
    compare,
    gate_metrics,
    load_metrics,
    write_gate_metrics,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "dlink" / "reference"
SUBJECTS = ["00", "01", "35"]  # calibration on 00/01, parity gate on 35


def _export(arch: str, windows, root: Path) -> Path:
    from calibration import from_windows
    from dlink.student import build_student, save_student
    from export import GateThresholds, export_student

    torch.manual_seed(0)
    model = build_student(arch, windows.signal, len(windows.class_names),
                          class_names=windows.class_names)
    student = save_student(model, root / "students" / arch)
    calib = from_windows(windows, SUBJECTS[:2], SUBJECTS[2:], signal=windows.signal, n_windows=32)
    out = root / arch
    export_student(student, out / "export", calib=calib, holdout=windows.of_subjects(SUBJECTS[2:]),
                   formats=("onnx",), gate=GateThresholds(enforce=False))
    return out


def _profile(run: Path) -> None:
    """`dlink-edge profile --reference` as the pipeline runs it, into run/profile/onnx.json."""
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "profile", str(run / "export"), "--backend",
         "onnx", "--threads", "1", "--windows", "150", "--warmup", "10", "--json",
         "--reference", str(REFERENCE), "--allow-failed-gate"],
        capture_output=True, text=True, timeout=900)  # generous: CI machines are often shared
    assert proc.returncode == 0, proc.stderr
    (run / "profile").mkdir(exist_ok=True)
    (run / "profile" / "onnx.json").write_text(proc.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    from dlink.data import load_windows

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gate")
    windows = load_windows("eegmat", subjects=SUBJECTS)
    t0 = time.perf_counter()
    out = {name: _export(arch, windows, root)
           for name, arch in (("base", "mic-xs"), ("bloated", "mic-m"), ("slowed", "eegnet"))}
    t1 = time.perf_counter()
    unchanged = root / "unchanged"
    unchanged.mkdir()
    (unchanged / "export").symlink_to(out["base"] / "export")  # same model, profiled anew
    out["unchanged"] = unchanged
    for run in out.values():
        _profile(run)
        write_gate_metrics(run)
    print(f"exports {t1 - t0:.1f} s, profiles {time.perf_counter() - t1:.1f} s")
    return out


def test_metrics_file_schema(runs):
    m = json.loads((runs["base"] / "metrics.json").read_text())
    assert m == gate_metrics(runs["base"])
    assert m["schema"] == METRICS_SCHEMA and m["model"]["arch"] == "mic-xs"
    manifest = json.loads((runs["base"] / "export" / "manifest.json").read_text())
    assert m["size_bytes"] == {a["path"]: a["bytes"] for a in manifest["artifacts"]}
    assert m["model"]["parameters"] == manifest["model"]["parameters"]
    gate = manifest["artifacts"][1]["gate"]
    assert m["bacc"]["fp32"] == gate["bacc_fp32"]
    assert m["bacc"]["int8"] == {"model.int8.onnx": gate["bacc_int8"]}
    lat = m["latency"]["onnx"]
    assert lat["reference"] == "reference-mic-xs" and lat["precision"] == "int8"
    assert lat["ratio"] == pytest.approx(lat["p50_ms"] / lat["reference_p50_ms"])
    assert set(m) >= {"sha256", "teacher_bacc", "budgets"}


def test_unchanged_model_passes(runs):
    result = compare(load_metrics(runs["unchanged"]), load_metrics(runs["base"]))
    ratio = next(r for r in result.rows if r.metric == "latency ratio onnx")
    assert result.passed, (result.summary(), ratio)
    assert ratio.status == "pass" and abs(ratio.change) < 25


def test_bloated_model_fails_on_size(runs):
    result = compare(load_metrics(runs["bloated"]), load_metrics(runs["base"]))
    size = [r for r in result.rows if r.kind == "size"]
    assert len(size) == 2 and all(r.status == "fail" and r.change > 100 for r in size)
    assert not result.passed and "bytes model.int8.onnx" in result.summary()


def test_slowed_model_fails_on_latency_ratio(runs):
    base, slow = load_metrics(runs["base"]), load_metrics(runs["slowed"])
    assert slow["model"]["macs"] > 5 * base["model"]["macs"]
    result = compare(slow, base)
    by_metric = {r.metric: r for r in result.rows}
    ratio = by_metric["latency ratio onnx"]
    assert ratio.status == "fail" and ratio.change > 100, ratio
    assert by_metric["bytes model.int8.onnx"].status == "pass"  # EEGNet's files are smaller
    assert result.failed and all(by_metric[m].kind in ("latency", "bacc") for m in result.failed)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlink.cli", "check", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={"COLUMNS": "120", "PATH": ""})


def test_cli_exit_codes_table_and_json(runs, tmp_path):
    baseline = runs["base"] / "metrics.json"
    ok = _cli(runs["unchanged"], "--baseline", baseline, "--json", tmp_path / "ok.json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "regression gate: passed" in ok.stdout and "latency ratio onnx" in ok.stdout
    assert json.loads((tmp_path / "ok.json").read_text())["passed"] is True

    bad = _cli(runs["bloated"], "--baseline", baseline, "--json", "-")
    assert bad.returncode == EXIT_REGRESSION
    res = json.loads(bad.stdout)  # the table went to stderr, the JSON alone to stdout
    assert res["schema"] == "dlink-gate-result/1" and res["passed"] is False
    assert "bytes model.int8.onnx" in res["failed"]
    assert bad.stderr.strip().splitlines()[-1].startswith("dlink check: ")
    row = next(r for r in res["rows"] if r["metric"] == "bytes model.int8.onnx")
    assert set(row) == {"metric", "kind", "unit", "baseline", "current", "change", "change_unit",
                        "limit", "status", "note"}

    # every limit loosened: mic-m is another model (folded graph ~30x mic-xs's bytes, trained
    # as briefly, its own parity result), so only a run told to ignore all of that passes
    loose = _cli(runs["bloated"], "--baseline", baseline, "--max-size-growth", "100000",
                 "--max-latency-growth", "100000", "--max-bacc-drop", "1", "--allow-failed-gate")
    assert loose.returncode == 0, loose.stderr

    missing = _cli(runs["base"], "--baseline", tmp_path / "nowhere.json")
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("error:") and "nowhere.json" in missing.stderr
    assert "Traceback" not in missing.stderr


# ---------------------------------------------------------------------------------------
# compare() on hand-made metrics


def _metrics(**over) -> dict:
    m = {"schema": METRICS_SCHEMA, "model": {"parameters": 1000, "macs": 10_000},
         "size_bytes": {"model.int8.onnx": 1000}, "sha256": {},
         "bacc": {"fp32": 0.70, "int8": {"model.int8.onnx": 0.69}}, "teacher_bacc": 0.72,
         "latency": {"onnx": {"ratio": 1.0, "p50_ms": 0.1, "reference_p50_ms": 0.1,
                              "reference": "ref", "reference_sha256": "aa"}},
         "budgets": {"rpi4": {"within_limits": True, "verdict": "estimate",
                              "measured_on": "x86_64 Linux"}}}
    return m | over


def test_compare_limits_are_inclusive_and_bacc_is_absolute():
    tol = Tolerances(max_size_growth_pct=10, max_latency_growth_pct=25, max_bacc_drop=0.02)
    edge = _metrics(size_bytes={"model.int8.onnx": 1100},
                    bacc={"fp32": 0.68, "int8": {"model.int8.onnx": 0.67}},
                    latency={"onnx": {"ratio": 1.25, "reference_sha256": "aa"}})
    assert compare(edge, _metrics(), tol).passed
    worse = _metrics(bacc={"fp32": 0.70, "int8": {"model.int8.onnx": 0.66}})
    result = compare(worse, _metrics(), tol)
    assert result.failed == ["BAcc model.int8.onnx"]
    row = next(r for r in result.rows if r.failed)
    assert row.change == pytest.approx(-0.03) and row.change_unit == "abs"
    better = _metrics(bacc={"fp32": 0.9, "int8": {"model.int8.onnx": 0.9}},
                      size_bytes={"model.int8.onnx": 10})
    assert compare(better, _metrics(), tol).passed


def test_compare_missing_new_and_incomparable_metrics():
    no_latency = _metrics(latency={})
    result = compare(no_latency, _metrics())
    assert result.failed == ["latency ratio onnx"]
    assert "missing" in next(r.note for r in result.rows if r.failed)
    assert compare(_metrics(), no_latency).passed  # new in the current run: reported, passes
    other_ref = _metrics(latency={"onnx": {"ratio": 1.0, "reference": "new",
                                           "reference_sha256": "bb"}})
    result = compare(other_ref, _metrics())
    assert result.failed == ["latency ratio onnx"] and "another reference" in result.summary()
    info = {r.metric: r for r in compare(_metrics(model={"parameters": 5000}), _metrics()).rows}
    assert info["parameters"].status == "info" and info["parameters"].change == 400.0


def test_failed_parity_gate_fails_the_check_unless_allowed():
    failed = {"passed": False, "agreement": 0.94, "sqnr_db": 20.6, "failed_checks": ["sqnr_db"]}
    run = _metrics(parity_gate={"model.int8.onnx": failed})
    result = compare(run, _metrics())
    assert result.failed == ["parity gate model.int8.onnx"]
    assert "failed the int8 parity gate (sqnr_db" in result.summary()
    allowed = compare(run, _metrics(), Tolerances(allow_failed_gate=True))
    assert allowed.passed and any("allowed" in r.note for r in allowed.rows)
    ok = _metrics(parity_gate={"model.int8.onnx": {"passed": True}})
    assert compare(ok, _metrics()).passed


def test_bacc_interval_is_a_subject_then_window_bootstrap():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 96)
    subject = np.repeat(["32", "33", "34", "35"], 48)
    hit = rng.random(192) < np.repeat([0.9, 0.5, 0.7, 0.6], 48)  # subjects differ
    pred = np.where(hit, y, 1 - y)
    four = bacc_interval(y, pred, subject)
    assert four["n_subjects"] == 4 and four["low"] < four["bacc"] < four["high"]
    assert four == bacc_interval(y, pred, subject)  # seeded: same data, same interval
    one = bacc_interval(y[:48], pred[:48], subject[:48])  # one subject: windows only
    assert one["half_width"] > 0
    flat = bacc_interval(y, np.where(rng.random(192) < 0.7, y, 1 - y), subject)
    assert four["half_width"] > flat["half_width"]  # spread between subjects widens it


def test_bacc_tolerance_comes_from_the_baselines_interval():
    base = _metrics(bacc={"fp32": 0.70, "int8": {"model.int8.onnx": 0.69},
                          "interval": {"half_width": 0.08}})
    assert bacc_tolerance(base, Tolerances()) == pytest.approx(0.08 * 2 ** 0.5, abs=1e-4)
    assert bacc_tolerance(base, Tolerances(max_bacc_drop=0.01)) == 0.01
    assert bacc_tolerance(_metrics(), Tolerances()) == 0.02  # no interval recorded
    swing = _metrics(bacc={"fp32": 0.61, "int8": {"model.int8.onnx": 0.60}})  # -0.09
    result = compare(swing, base)
    assert result.passed, result.summary()
    assert result.tolerances.max_bacc_drop == pytest.approx(0.1131, abs=1e-4)
    assert not compare(_metrics(bacc={"fp32": 0.55, "int8": {}}), base).passed


def test_budgets_are_labelled_estimates_with_the_machine():
    result = compare(_metrics(), _metrics())
    row = next(r for r in result.rows if r.metric == "budget rpi4")
    assert row.status == "info" and "estimate" in row.note and "x86_64 Linux" in row.note


def test_load_metrics_rejects_other_files(tmp_path):
    from dlink.gate import GateInputError

    (tmp_path / "m.json").write_text(json.dumps({"schema": "something/1"}))
    with pytest.raises(GateInputError, match="expected 'dlink-gate-metrics/1'"):
        load_metrics(tmp_path / "m.json")
    with pytest.raises(GateInputError, match="export/manifest.json not found"):
        load_metrics(tmp_path)  # a folder without metrics.json and without an export
