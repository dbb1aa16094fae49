"""`dlink-edge` CLI: run, profile, check, budgets, info, and its error handling.

A few commands run in a fresh interpreter (exit codes and RSS as on a board); the error
paths run in-process through typer's CliRunner to stay fast.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from edge_fixtures import (  # noqa: F401  (pytest fixtures)
    EEG_FILE,
    copy_model_dir,
    eeg,
    model_dir,
    run_cli,
)
from typer.testing import CliRunner

from edge_runtime import classify_offline, open_model
from edge_runtime.cli import EXIT_OVER_BUDGET, app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(result_stderr: str, startswith: str = "dlink-edge: error: "):
    err = result_stderr.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err.startswith(startswith), err
    return err


def test_run_edf_prints_one_line_per_decision(model_dir):  # noqa: F811
    out = run_cli("run", model_dir, "--edf", EEG_FILE, "--duration", "30", "--hop", "500")
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert len(lines) == (6000 - 1000) // 500 + 1 == 11
    assert lines[0].startswith("t=    5.000s  #0") and "p=" in lines[0]
    assert "windows_emitted" in out.stderr.decode()  # summary table on stderr


def test_run_stdin_interleaved_matches_offline(model_dir, eeg):  # noqa: F811
    x = eeg[:, :4000].astype(np.float32)  # (C, n) µV
    out = run_cli("run", model_dir, "--stdin", "--jsonl", "--precision", "fp32",
                  "--backend", "onnx", "--block", "37", stdin=x.T.astype("<f4").tobytes())
    assert out.returncode == 0, out.stderr.decode()
    got = [json.loads(line) for line in out.stdout.decode().splitlines()]
    ref = classify_offline(open_model(model_dir, backend="onnx", precision="fp32"),
                           x.astype(np.float64))
    assert [g["label"] for g in got] == [r.label for r in ref] and len(got) == 4
    np.testing.assert_allclose([g["logits"] for g in got], [r.logits for r in ref], atol=1e-5)


def test_run_realtime_paces_the_replay(model_dir):  # noqa: F811
    t0 = time.monotonic()
    res = _invoke("run", model_dir, "--edf", EEG_FILE, "--realtime", "--speed", "40",
                  "--duration", "12", "--chunk-s", "0.5")
    assert res.exit_code == 0, res.stderr
    assert time.monotonic() - t0 >= 11.5 / 40
    assert len(res.stdout.splitlines()) == 2


def test_check_exit_codes_within_and_over_budget(model_dir, tmp_path):  # noqa: F811
    loose = tmp_path / "loose.toml"
    loose.write_text('name = "loose"\n[limits]\nlatency_p95_ms = 1e4\npeak_rss_mb = 1e5\n'
                     "model_bytes = 100000000\n")
    ok = run_cli("check", model_dir, "--budget", loose, "-n", "20", "--warmup", "2")
    assert ok.returncode == 0, ok.stderr.decode()
    assert "decision latency p95" in ok.stdout.decode() and "ok" in ok.stdout.decode()
    tight = tmp_path / "tight.toml"
    tight.write_text('name = "tight"\n[limits]\nlatency_p95_ms = 1e4\npeak_rss_mb = 1e5\n'
                     "model_bytes = 1000\n")
    over = _invoke("check", model_dir, "--budget", tight, "-n", "5", "--warmup", "0",
                   "--json")
    assert over.exit_code == EXIT_OVER_BUDGET, over.stderr
    verdict = json.loads(over.stdout)
    assert verdict["ok"] is False
    assert [r["ok"] for r in verdict["rows"]] == [True, True, False]
    assert over.stderr.strip() == "dlink-edge: over budget tight: model size"


def test_check_with_a_shipped_budget_prints_measured_vs_budget(model_dir):  # noqa: F811
    res = _invoke("check", model_dir, "--budget", "rpi4", "-n", "5", "--warmup", "0",
                  "--json")
    assert res.exit_code in (0, EXIT_OVER_BUDGET)  # RSS here includes the test process
    verdict = json.loads(res.stdout)
    assert verdict["budget"]["name"] == "rpi4"
    assert {r["metric"] for r in verdict["rows"]} == {
        "decision latency p95", "peak RSS", "model size"}


@pytest.mark.parametrize("backend", ["onnx", "tflite"])
def test_profile_json_reports_every_measure(model_dir, backend):  # noqa: F811
    res = _invoke("profile", model_dir, "--backend", backend, "--threads", "1", "--json",
                  "--windows", "30", "--warmup", "3", "--cold-runs", "0")
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["backend"] == backend and rep["precision"] == "int8"
    assert rep["model_bytes"] == (model_dir / rep["artifact"]).stat().st_size
    for key in ("p50", "p95", "p99"):
        assert 0 < rep["latency_ms"][key] and 0 < rep["decision_ms"][key]
    assert rep["load_s"] > 0 and rep["first_inference_ms"] > 0
    assert rep["throughput_wps"] > 0 and rep["peak_rss_mb"] > 0
    assert rep["overhead_ms_per_window"] > 0 and rep["model_ms_per_window"] > 0
    assert rep["decision_ratio"] > 0 and rep["cold_start"] is None
    table = _invoke("profile", model_dir, "--backend", backend, "-n", "5", "--warmup", "0",
                    "--cold-runs", "1")
    assert table.exit_code == 0 and "decision latency p95" in table.stdout
    assert "decision / model time (p50)" in table.stdout and "cold start" in table.stdout


def test_tampered_or_missing_files_exit_1_with_one_line(model_dir, tmp_path):  # noqa: F811
    folder = copy_model_dir(model_dir, tmp_path / "m")
    (folder / "model.fp32.onnx").write_bytes(b"not a model")
    for cmd in (("run", folder, "--edf", EEG_FILE), ("profile", folder), ("info", folder),
                ("check", folder, "--budget", "rpi4")):
        res = _invoke(*cmd)
        assert res.exit_code == 1, (cmd, res.stdout, res.stderr)
        assert "model.fp32.onnx has sha256" in _one_error_line(res.stderr)
        assert res.stdout == ""
    (folder / "model.fp32.onnx").unlink()
    res = _invoke("run", folder, "--edf", EEG_FILE)
    assert res.exit_code == 1 and "is listed in manifest.json" in _one_error_line(res.stderr)
    res = _invoke("profile", tmp_path / "nowhere")
    assert res.exit_code == 1 and "does not exist" in _one_error_line(res.stderr)


def test_source_errors_exit_1_and_usage_errors_exit_2(model_dir, tmp_path):  # noqa: F811
    res = _invoke("run", model_dir, "--edf", EEG_FILE, "--no-resample")
    assert res.exit_code == 1
    assert "500 Hz, the model expects 200 Hz" in _one_error_line(res.stderr)
    res = _invoke("run", model_dir, "--edf", tmp_path / "none.edf")
    assert res.exit_code == 1 and "does not exist" in _one_error_line(res.stderr)
    assert _invoke("run", model_dir).exit_code == 2  # no source
    assert _invoke("run", model_dir, "--edf", EEG_FILE, "--stdin").exit_code == 2
    assert _invoke("run", model_dir, "--edf", EEG_FILE, "--backend", "tpu").exit_code == 2
    res = _invoke("check", model_dir, "--budget", "pi-zero")
    assert res.exit_code == 1 and "no budget named 'pi-zero'" in _one_error_line(res.stderr)


def test_budgets_and_info_list_what_exists(model_dir):  # noqa: F811
    res = _invoke("budgets")
    assert res.exit_code == 0
    for name in ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano"):
        assert name in res.stdout
    res = _invoke("info", model_dir)
    assert res.exit_code == 0 and "model.int8.tflite" in res.stdout and "sosfilt" in res.stdout
