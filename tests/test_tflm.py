"""Microcontroller target: model_data.cc on the real TensorFlow Lite Micro interpreter and the
real C++ compiler, the header's resolver lines and arena, and `dlink-edge check` on MCU budgets.

One export (module fixture) of a briefly trained mic-xs student on six real EEGMAT subjects
feeds most tests; the error tests build their own broken models.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from edge_fixtures import FORBIDDEN_MODULES, block_imports_snippet, run_cli, run_python

from export import GateThresholds, export_student, tflite_export, tflm
from export.c_array import read_c_array

pytest.importorskip("tflite_micro", reason="tflite-micro is not installed (pip install 'dlink[mcu]')")
from tflite_micro import runtime  # noqa: E402

SUBJECTS = ("00", "01", "02", "03", "31", "35")  # split: train 00-03, val 31, test 35
CXX = shutil.which("g++") or shutil.which("c++")


def _student(windows, train_subjects):
    """mic-xs trained for 30 steps; without an in-graph clamp (a float op TFLM refuses)."""
    from dlink.signal import SignalSpec
    from dlink.student import EEGMiC, build_student

    signal = SignalSpec(ch_names=tuple(windows.ch_names), sfreq=windows.sfreq,
                        n_times=windows.X.shape[-1])
    # Until issue 13 lands everywhere the clamp may still be a constructor option.
    extra = {"input_clip": None} if "input_clip" in inspect.signature(EEGMiC).parameters else {}
    torch.manual_seed(0)
    model = build_student("mic-xs", signal, 2, class_names=windows.class_names, **extra)
    train = windows.of_subjects(train_subjects)
    X = torch.from_numpy(np.clip(train.X, -50, 50) * np.float32(signal.input_scale))
    y = torch.from_numpy(train.y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, len(X), (32,))
        loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    """dlink-export (ONNX skipped) of the student; gate on test subject 35."""
    from dlink.data import load_windows, split_subjects
    from dlink.student import save_student

    root = tmp_path_factory.mktemp("tflm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        windows = load_windows("eegmat", subjects=list(SUBJECTS))
        split = split_subjects(windows)
        save_student(_student(windows, split.train), root / "student")
        np.savez(root / "data.npz", X=windows.X, y=windows.y, subject=windows.subject,
                 sfreq=windows.sfreq, ch_names=np.array(windows.ch_names),
                 class_names=np.array(windows.class_names))
        manifest = export_student(root / "student", root / "model", data=str(root / "data.npz"),
                                  formats=("tflite", "c"), n_calib=64,
                                  gate=GateThresholds(enforce=False))
    finally:
        torch.set_num_threads(threads)
    source = next(a for a in manifest["artifacts"] if a["path"] == "model_data.cc")
    return {"out": root / "model", "manifest": manifest, "tflm": source["tflm"], "root": root}


# ---------------------------------------------------------------------------------------
# Same numbers on TFLM, the smallest arena, the header


def _embeds(manifest: dict) -> dict:
    """What the manifest says of the int8 TFLite model the C array embeds."""
    return next(a for a in manifest["artifacts"] if a["path"] == "model_data.cc")["embeds"]


def test_tflm_runs_model_data_cc_like_litert(exported):
    t, m = exported["tflm"], exported["manifest"]
    out = exported["out"]
    assert t["checked"] and t["runtime"].startswith("tflite-micro ")
    embedded = read_c_array(out / "model_data.cc")  # EEG-MiC: the nchw graph (fewer MACs)
    assert hashlib.sha256(embedded).hexdigest() == _embeds(m)["sha256"]
    assert _embeds(m)["same_outputs_as"] == "model.int8.tflite"
    assert t["model_bytes"] == len(embedded)
    p = t["parity"]
    assert p["n_windows"] == m["parity"]["data"]["n_windows"] > 0  # the gate's windows
    assert p["n_values"] == 2 * p["n_windows"]
    assert p["max_abs_diff_lsb"] <= 1 and p["passed"]
    assert p["equal"] == (p["n_differing"] == 0)


def test_arena_is_the_smallest_that_allocates(exported):
    model = read_c_array(exported["out"] / "model_data.cc")
    arena = exported["tflm"]["arena_bytes"]
    micro = runtime.Interpreter.from_bytes(model, arena_size=arena)
    micro.set_input(np.zeros((1, 19, 1000), np.int8), 0)
    micro.invoke()  # runs in exactly that arena
    assert micro.get_output(0).shape == (1, 2)
    with tflm._captured_stderr(), pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(model, arena_size=arena - 1)


def test_header_has_resolver_lines_and_arena_constant(exported):
    header = (exported["out"] / "model_data.h").read_text()
    t = exported["tflm"]
    assert t["ops"] == tflm.model_ops(read_c_array(exported["out"] / "model_data.cc"))
    assert {"CONV_2D", "FULLY_CONNECTED"} <= set(t["ops"])
    n = len(t["ops"])
    assert f"//   static tflite::MicroMutableOpResolver<{n}> resolver;\n" in header
    for method in t["resolver"]:
        assert f"//   resolver.{method}();\n" in header
    assert f"constexpr int kDlinkNumOps = {n};" in header
    assert f"constexpr int kDlinkTensorArenaSize = {t['arena_bytes']};" in header


@pytest.mark.parametrize("op, method", [
    ("CONV_2D", "AddConv2D"), ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"),
    ("AVERAGE_POOL_2D", "AddAveragePool2D"), ("FULLY_CONNECTED", "AddFullyConnected"),
    ("BATCH_TO_SPACE_ND", "AddBatchToSpaceNd"), ("PADV2", "AddPadV2"),
    ("L2_POOL_2D", "AddL2Pool2D"), ("RELU6", "AddRelu6"), ("TRANSPOSE", "AddTranspose"),
])
def test_resolver_method_names_follow_micro_mutable_op_resolver(op, method):
    assert tflm.resolver_method(op) == method


# ---------------------------------------------------------------------------------------
# The array compiles (real compiler)

_DUMP = r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"
static_assert(kDlinkTensorArenaSize > 0, "arena constant");
static_assert(kDlinkNumOps > 0, "op count");
int main() {
  if (reinterpret_cast<std::uintptr_t>(g_dlink_model_data) % 16 != 0) return 2;
  std::fwrite(g_dlink_model_data, 1, g_dlink_model_data_len, stdout);
  return 0;
}
"""


def test_model_data_cc_compiles_and_holds_the_tflite_bytes(exported, tmp_path):
    if CXX is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have a C++ compiler (g++) for this test")
        pytest.skip("no C++ compiler (g++/c++) on PATH")
    out = exported["out"]
    flags = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", str(out)]
    obj = tmp_path / "model_data.o"
    proc = subprocess.run([CXX, *flags, "-c", str(out / "model_data.cc"), "-o", str(obj)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    (tmp_path / "dump.cc").write_text(_DUMP)
    exe = tmp_path / "dump"
    proc = subprocess.run([CXX, *flags, str(tmp_path / "dump.cc"), str(obj), "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    run = subprocess.run([str(exe)], capture_output=True)
    assert run.returncode == 0, "g_dlink_model_data is not 16-byte aligned"
    assert hashlib.sha256(run.stdout).hexdigest() == _embeds(exported["manifest"])["sha256"]


def test_without_tflite_micro_the_ops_are_listed_and_the_arena_is_unknown(exported, tmp_path):
    tfl = tmp_path / "embedded.tflite"
    tfl.write_bytes(read_c_array(exported["out"] / "model_data.cc"))
    code = block_imports_snippet("tflite_micro") + (
        "import json\nfrom pathlib import Path\nfrom export import c_array, tflm\n"
        f"plan = tflm.plan(Path({str(tfl)!r}))\n"
        "io = {'input': {'dtype': 'int8', 'scale': 0.1, 'zero_point': 0},\n"
        "      'output': {'dtype': 'int8', 'scale': 0.1, 'zero_point': 0}}\n"
        f"c_array.write_c_array(Path({str(tfl)!r}), Path({str(tmp_path / 'm.h')!r}),\n"
        f"    Path({str(tmp_path / 'm.cc')!r}), sha256='x', n_chans=19, n_times=1000,\n"
        "    class_names=['a', 'b'], io=io, tflm=plan)\n"
        "print(json.dumps(plan))\n")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr.decode()
    plan = json.loads(proc.stdout)
    assert plan["checked"] is False and "pip install 'dlink[mcu]'" in plan["reason"]
    assert plan["ops"] == exported["tflm"]["ops"] and "arena_bytes" not in plan
    header = (tmp_path / "m.h").read_text()
    assert "MicroMutableOpResolver<" in header and "kDlinkTensorArenaSize" not in header
    assert "Tensor arena size unknown: tflite-micro is not installed" in header


# ---------------------------------------------------------------------------------------
# Models TFLM cannot run: one line naming the op


def test_float_op_is_a_one_line_error_naming_it(tmp_path):
    fp32 = tmp_path / "model.fp32.tflite"  # a small float conv net, as litert-torch writes it
    net = torch.nn.Sequential(torch.nn.Conv1d(19, 4, 25, stride=5), torch.nn.ReLU()).eval()
    tflite_export.convert_fp32(net, torch.zeros(1, 19, 1000), fp32)
    with pytest.raises(tflm.TflmError) as info:
        tflm.plan(fp32)
    msg = str(info.value)
    first = tflite_export.float_ops(fp32)[0].split(":")[0]
    assert "\n" not in msg and f"float op {first} " in msg and "full-integer" in msg


def test_op_without_a_tflm_kernel_is_a_one_line_error_naming_it(exported, tmp_path):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data = (exported["out"] / "model.int8.tflite").read_bytes()
    fb = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    code = next(c for c in fb.operatorCodes
                if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.TRANSPOSE)
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.UNIQUE
    builder = flatbuffers.Builder(0)
    builder.Finish(fb.Pack(builder), file_identifier=b"TFL3")
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(bytes(builder.Output()))
    with pytest.raises(tflm.TflmError) as info:
        tflm.plan(broken)  # the real interpreter refuses it; the message names the op
    msg = str(info.value)
    assert "\n" not in msg and "uses op UNIQUE" in msg and "no kernel" in msg


# ---------------------------------------------------------------------------------------
# dlink-edge check on MCU budgets (torch-free)


def test_check_mcu_budget_passes_and_fails_with_todays_exit_codes(exported, tmp_path):
    out = exported["out"]
    t = exported["tflm"]
    proc = run_cli("check", str(out), "--budget", "nrf52840", "--json", block=FORBIDDEN_MODULES)
    assert proc.returncode == 0, proc.stderr.decode()
    rep = json.loads(proc.stdout)
    fp = rep["footprint"]
    assert fp["arena_bytes"] == t["arena_bytes"] and fp["model_bytes"] == t["model_bytes"]
    assert fp["input_buffer_bytes"] == 19 * 1000  # one int8 window
    assert [r["metric"] for r in rep["rows"]] == [
        "RAM: tensor arena + input buffer", "flash: model (C array)",
        "arena + input buffer + model"]
    assert rep["rows"][2]["measured"] == fp["arena_bytes"] + 19_000 + fp["model_bytes"] <= 196_608
    assert rep["estimate"]["measured"] is False and rep["estimate"]["latency_ms"] > 0

    tiny = tmp_path / "tiny.toml"
    tiny.write_text(f'name = "tiny"\nkind = "mcu"\n[limits]\nram_bytes = {t["arena_bytes"]}\n'
                    f'flash_bytes = 1048576\n')
    proc = run_cli("check", str(out), "--budget", str(tiny))
    assert proc.returncode == 3  # arena alone fits, arena + input buffer does not
    assert "over budget tiny: RAM: tensor arena + input buffer" in proc.stderr.decode()
    assert "ESTIMATE" not in proc.stdout.decode()  # no MAC rate stated, no estimate


def test_check_mcu_budget_needs_the_tflm_entry(exported, tmp_path):
    folder = shutil.copytree(exported["out"], tmp_path / "model")
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for art in manifest["artifacts"]:
        art.pop("tflm", None)
    path.write_text(json.dumps(manifest))
    proc = run_cli("check", str(folder), "--budget", "stm32h743")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "has no TFLite Micro arena size" in err and "dlink[mcu]" in err
    assert len(err.strip().splitlines()) == 1


def test_report_shows_the_mcu_check_beside_the_boards(exported, tmp_path):
    from dlink.report import write_report

    out = tmp_path / "run"
    (out / "profile").mkdir(parents=True)
    for name in ("nrf52840", "esp32-s3"):
        proc = run_cli("check", str(exported["out"]), "--budget", name, "--json")
        assert proc.returncode == 0, proc.stderr.decode()
        (out / "profile" / f"budget_{name}.json").write_bytes(proc.stdout)
    text = write_report(out).read_text(encoding="utf-8")
    section = text[text.index("Board and MCU budgets"):]
    assert "Microcontrollers (TensorFlow Lite Micro)" in section
    assert f"{exported['tflm']['arena_bytes']:,} bytes, reference kernels" in section
    assert section.count("ESTIMATE, not measured") == 2
    assert "nrf52840" in section and "esp32-s3" in section
