"""dlink-export on a tiny trained student, checked with real ONNX Runtime and LiteRT sessions.

One full export (module fixture) feeds most tests; the error tests fail before any
conversion starts, so they are fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration import from_windows, save_calibration_set
from dlink.data import Windows, split_subjects
from dlink.errors import ConfigError
from dlink.signal import SignalSpec
from dlink.student import build_student, load_student, save_student
from export import GateThresholds, export_student, tflite_export, tflm
from export.errors import ExportError, GateError, OutputExistsError
from export.pipeline import _staging

SIGNAL = SignalSpec(ch_names=("C3", "C4", "O1", "O2"), sfreq=200.0, n_times=400)
CLIPPED = SIGNAL.with_clip(50.0)  # what dlink distill trains on: ±50 µV, then µV/100
CLASSES = ["rest", "task"]


def _synthetic_windows(n_subjects: int = 8, per_subject: int = 24, seed: int = 0) -> Windows:
    """µV windows: 'rest' has 10 Hz alpha over O1/O2, 'task' 20 Hz beta over C3/C4."""
    rng = np.random.default_rng(seed)
    t = np.arange(SIGNAL.n_times) / SIGNAL.sfreq
    X, y, subject = [], [], []
    for s in range(n_subjects):
        for i in range(per_subject):
            label = i % 2
            x = rng.normal(0.0, 8.0, (SIGNAL.n_chans, SIGNAL.n_times))
            freq, chans = (10.0, [2, 3]) if label == 0 else (20.0, [0, 1])
            x[chans] += 30.0 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
            X.append(x)
            y.append(label)
            subject.append(f"{s:02d}")
    return Windows(X=np.asarray(X, np.float32), y=np.asarray(y, np.int64),
                   subject=np.asarray(subject), sfreq=SIGNAL.sfreq,
                   ch_names=list(SIGNAL.ch_names), class_names=CLASSES, name="synthetic")


def _train_tiny_student(windows: Windows, train_subjects, name: str = "mic-xs") -> torch.nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only contend on a shared CPU
    try:
        torch.manual_seed(0)
        # The ±50 µV clamp is a preprocessing step of the signal (manifest "clip" op, applied
        # in float before the input is quantised), so the graph itself is full-integer.
        model = build_student(name, CLIPPED, len(CLASSES), class_names=CLASSES)
        train = windows.of_subjects(train_subjects)
        X = torch.from_numpy(CLIPPED.to_model_units(train.X))
        y = torch.from_numpy(train.y)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(60):
            idx = torch.randint(0, len(X), (32,))
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A saved tiny student, its calibration set and a held-out .npz (dlink.data format)."""
    root = tmp_path_factory.mktemp("export-assets")
    windows = _synthetic_windows()
    split = split_subjects(windows)  # 6 / 1 / 1 subjects
    save_student(_train_tiny_student(windows, split.train), root / "student")
    calib = from_windows(windows, split.train, split.val + split.test, signal=CLIPPED,
                         n_windows=64)
    save_calibration_set(calib, root / "calib.npz")
    test = windows.of_subjects(split.test)
    np.savez(root / "holdout.npz", X=test.X, y=test.y, subject=test.subject,
             sfreq=SIGNAL.sfreq, ch_names=np.array(SIGNAL.ch_names),
             class_names=np.array(CLASSES))
    return {"root": root, "student": root / "student", "calib": root / "calib.npz",
            "holdout": root / "holdout.npz", "test": test, "split": split}


@pytest.fixture(scope="module")
def exported(assets):
    """The full export (ONNX, TFLite, C) of the tiny student, timed in CPU seconds of this
    process and the tools it ran (wall time on the shared machine depends on what else
    runs)."""
    out = assets["root"] / "model"
    t0 = _cpu_seconds()
    manifest = export_student(assets["student"], out, calib=assets["calib"],
                              holdout=assets["holdout"])
    return {"out": out, "manifest": manifest, "seconds": _cpu_seconds() - t0}


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its finished child processes (compilers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(args: list[str], capfd) -> tuple[int, str, str]:
    """Run the real dlink-export entry point in-process: (exit code, stdout, stderr)."""
    from export.cli import main

    argv = sys.argv
    sys.argv = ["dlink-export", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = argv
    out, err = capfd.readouterr()
    return code, out, err


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


# ---------------------------------------------------------------------------------------
# The export and its manifest


def test_tiny_student_exports_in_under_a_minute(exported):
    assert exported["seconds"] < 60, f"export used {exported['seconds']:.1f} s of CPU"
    files = sorted(p.name for p in exported["out"].iterdir())
    assert files == ["manifest.json", "model.fp32.onnx", "model.fp32.tflite", "model.int8.onnx",
                     "model.int8.tflite", "model_data.cc", "model_data.h"]
    assert _leftovers(exported["out"].parent, "model") == []


def test_manifest_checksums_and_sizes_match_the_files(exported):
    out = exported["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == exported["manifest"]
    assert manifest["schema"] == "dlink-manifest/1"
    for art in manifest["artifacts"]:
        path = out / art["path"]
        assert path.stat().st_size == art["bytes"], art["path"]
        assert _sha256(path) == art["sha256"], art["path"]


def test_manifest_describes_the_contract(exported, assets):
    m = exported["manifest"]
    student = load_student(assets["student"])
    inp = m["input"]
    assert inp["name"] == "eeg" and inp["layout"] == "NCT" and inp["units"] == "uV"
    assert inp["ch_names"] == list(SIGNAL.ch_names)
    assert (inp["sfreq"], inp["n_times"], inp["hop"]) == (200.0, 400, 400)
    assert inp["preprocessing"] == CLIPPED.steps() == [{"op": "clip", "uV": 50.0},
                                                        {"op": "scale", "factor": 0.01}]
    assert m["output"]["class_names"] == CLASSES and m["output"]["kind"] == "logits"

    from dlink.nn_utils import count_macs, count_parameters

    model = m["model"]
    assert model["arch"] == "mic-xs" and model["parameters"] == count_parameters(student)
    assert model["parameter_bytes_fp32"] == 4 * model["parameters"]
    assert 0 < model["parameter_bytes_int8"] < model["parameter_bytes_fp32"] / 2
    assert model["macs"] == count_macs(student, torch.zeros(1, 4, 400))

    calib = json.loads(assets["calib"].with_suffix(".json").read_text())
    assert m["calibration"]["sha256"] == calib["sha256"] == _sha256(assets["calib"])
    assert m["calibration"]["subjects"] == assets["split"].train
    assert m["parity"]["data"]["held_out"] and m["parity"]["data"]["subjects"] == ["07"]
    assert m["export"]["onnx"]["opset"] >= 17 and m["export"]["batchnorm_folded"]
    for tool in ("torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-quantizer"):
        assert m["toolchain"][tool][0].isdigit(), tool


def test_every_int8_artifact_passed_the_gate(exported):
    gated = {a["path"]: a["gate"] for a in exported["manifest"]["artifacts"] if "gate" in a}
    assert set(gated) == {"model.int8.onnx", "model.int8.tflite"}
    for path, gate in gated.items():
        assert gate["passed"] and gate["failed_checks"] == [], path
        assert gate["agreement"] >= 0.99 and gate["sqnr_db"] >= 30, path
        assert gate["bacc_change"] >= -0.01, path
    # the ONNX file computes only its logits (K x features MACs) in float, by design
    assert [op.split(":")[0] for op in gated["model.int8.onnx"]["float_ops"]] == ["Gemm"]
    assert gated["model.int8.tflite"]["float_ops"] == []
    assert exported["manifest"]["parity"]["passed"]


# ---------------------------------------------------------------------------------------
# The files, run by real runtimes


def _reference(assets) -> tuple[np.ndarray, np.ndarray]:
    x = assets["test"].X * np.float32(SIGNAL.input_scale)
    with torch.no_grad():
        return x, load_student(assets["student"])(torch.from_numpy(x)).numpy()


def test_onnx_files_run_in_onnx_runtime(exported, assets):
    import onnx
    import onnxruntime as ort

    x, ref = _reference(assets)
    out = exported["out"]
    fp32 = ort.InferenceSession(str(out / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in fp32.get_inputs()] == ["eeg"]
    assert [o.name for o in fp32.get_outputs()] == ["logits"]
    np.testing.assert_allclose(fp32.run(None, {"eeg": x})[0], ref, atol=1e-5, rtol=0)
    assert max(o.version for o in onnx.load(str(out / "model.fp32.onnx")).opset_import
               if o.domain in ("", "ai.onnx")) >= 17

    int8_model = onnx.load(str(out / "model.int8.onnx"))
    ops = {n.op_type for n in int8_model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    int8 = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([int8.run(None, {"eeg": x[i : i + 1]})[0] for i in range(len(x))])
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.99


def _interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    return interp


def test_tflite_is_full_integer_with_int8_input_and_int16_logits(exported, assets):
    x, ref = _reference(assets)
    art = next(a for a in exported["manifest"]["artifacts"]
               if a["format"] == "tflite" and a["precision"] == "int8")
    interp = _interpreter(exported["out"] / "model.int8.tflite")
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int16
    assert list(inp["shape"]) == [1, 4, 400]
    assert art["io"]["output"]["dtype"] == "int16" and out["quantization"][1] == 0
    assert art["io"]["input"]["scale"] == pytest.approx(inp["quantization"][0])
    assert art["io"]["input"]["zero_point"] == inp["quantization"][1]
    assert art["io"]["output"]["scale"] == pytest.approx(out["quantization"][0])
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    logits = []
    for window in x:
        q = np.clip(np.round(window[None] / s_in) + z_in, -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        logits.append((interp.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out)
    logits = np.concatenate(logits)
    assert np.mean(logits.argmax(1) == ref.argmax(1)) >= 0.99
    float_inputs = [t for t in interp.get_tensor_details() if t["dtype"] == np.float32]
    assert float_inputs == [], "a full-integer model has no float32 tensor"


def test_each_format_gets_the_front_end_its_int8_kernels_run_fast(exported):
    """TFLite (XNNPACK) gets the filter bank and the envelope as plain convs, no depthwise
    conv (slow there in int8), the int8 file's filter bank over wider blocks than the fp32
    file's (`dlink.student.NHWC_FILTER_BLOCK`); ONNX Runtime keeps the strided and depthwise convs, which
    the plain ones would slow down with transposes; the int8 gates are the same."""
    import onnx

    ops = set(tflm.model_ops((exported["out"] / "model.int8.tflite").read_bytes()))
    assert "DEPTHWISE_CONV_2D" not in ops and "CONV_2D" in ops
    # each TFLite file's filter bank over the block size its precision runs fast with
    graphs = exported["manifest"]["export"]["tflite"]["graphs"]
    assert "blocks of 8 samples" in graphs["model.fp32.tflite"]
    assert "blocks of 40 samples" in graphs["model.int8.tflite"]
    graph = onnx.load(str(exported["out"] / "model.fp32.onnx")).graph
    first = next(n for n in graph.node if n.op_type == "Conv")
    (strides,) = [list(a.ints) for a in first.attribute if a.name == "strides"]
    assert strides[-1] > 1  # the filter bank's stride, on one input channel
    assert any(a.name == "group" and a.i > 1 for n in graph.node if n.op_type == "Conv"
               for a in n.attribute)


def test_c_array_holds_the_tflite_bytes(exported, tmp_path):
    out = exported["out"]
    source = (out / "model_data.cc").read_text()
    header = (out / "model_data.h").read_text()
    assert "alignas(16) const unsigned char g_dlink_model_data[]" in source
    assert "extern const unsigned int g_dlink_model_data_len;" in header
    body = source.split("{", 1)[1].split("};", 1)[0]
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))
    # EEG-MiC's C array holds the nchw graph (depthwise convs, fewer MACs on an MCU), which
    # computes model.int8.tflite's int8 outputs
    entry = next(a for a in exported["manifest"]["artifacts"] if a["format"] == "c-source")
    assert entry["embeds"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["embeds"]["same_outputs_as"] == "model.int8.tflite" and entry["embeds"]["equal"]
    assert data != (out / "model.int8.tflite").read_bytes()
    x = np.random.default_rng(0).normal(0, 0.2, (8, 4, 400)).astype(np.float32)
    np.testing.assert_array_equal(tflite_export.run(data, x),
                                  tflite_export.run(out / "model.int8.tflite", x))
    assert f"g_dlink_model_data_len = {len(data)};" in source
    if shutil.which("g++"):  # compile it as a board build would
        main = tmp_path / "main.cc"
        main.write_text(
            f'#include "{out / "model_data.h"}"\n#include <cstdint>\n'
            "int main() { return (reinterpret_cast<std::uintptr_t>(g_dlink_model_data) % 16)"
            " != 0 || g_dlink_model_data_len == 0 || kDlinkNumChannels != 4; }\n"
        )
        exe = tmp_path / "main"
        subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", str(main),
                        str(out / "model_data.cc"), "-o", str(exe)], check=True)
        assert subprocess.run([str(exe)]).returncode == 0


# ---------------------------------------------------------------------------------------
# Errors: one line on stderr, exit 1, nothing left behind


def _broken_student(assets, tmp_path, how: str) -> Path:
    student = tmp_path / f"student-{how}"
    shutil.copytree(assets["student"], student)
    weights = student / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        weights.write_bytes(b"\x00garbage" * 100)
    elif how == "missing":
        weights.unlink()
    return student


@pytest.mark.parametrize("how", ["truncated", "corrupted", "missing"])
def test_bad_checkpoint_is_one_clear_line(assets, tmp_path, capfd, how):
    student = _broken_student(assets, tmp_path, how)
    out = tmp_path / "out" / "model"
    code, _, err = _cli([student, "--out", out, "--calib", assets["calib"], "--holdout",
                         assets["holdout"]], capfd)
    assert code == 1
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "model.safetensors" in lines[0]
    assert ("missing" if how == "missing" else "corrupted or truncated") in lines[0]
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder_is_refused(assets, tmp_path, capfd):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the parent folder should be")
    code, _, err = _cli([assets["student"], "--out", blocker / "model", "--calib",
                         assets["calib"], "--holdout", assets["holdout"]], capfd)
    assert code == 1 and "cannot" in err and "writable --out" in err
    assert blocker.read_text().startswith("a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_read_only_folder_is_refused(assets, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="cannot write to output folder"):
            export_student(assets["student"], locked / "model", calib=assets["calib"],
                           holdout=assets["holdout"])
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_existing_output_needs_force(assets, tmp_path, capfd):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code, _, err = _cli([assets["student"], "--out", out, "--calib", assets["calib"]], capfd)
    assert code == 1 and "already exists" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "old"
    with pytest.raises(OutputExistsError):
        export_student(assets["student"], out, calib=assets["calib"])


@pytest.mark.parametrize("damage", ["garbage", "checksum"])
def test_bad_calibration_file_is_one_clear_line(assets, tmp_path, capfd, damage):
    calib = tmp_path / "calib.npz"
    shutil.copy(assets["calib"], calib)
    shutil.copy(assets["calib"].with_suffix(".json"), calib.with_suffix(".json"))
    if damage == "garbage":
        calib.with_suffix(".json").unlink()
        calib.write_bytes(b"PK\x03\x04 broken zip")
    else:
        calib.write_bytes(calib.read_bytes()[:-10] + b"0123456789")
    code, _, err = _cli([assets["student"], "--out", tmp_path / "model", "--calib", calib,
                         "--holdout", assets["holdout"]], capfd)
    assert code == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert ("not a readable .npz" if damage == "garbage" else "sha256") in err
    assert not (tmp_path / "model").exists() and _leftovers(tmp_path, "model") == []


def test_gate_needs_held_out_windows(assets, tmp_path):
    with pytest.raises(Exception, match="needs held-out windows"):
        export_student(assets["student"], tmp_path / "model", calib=assets["calib"])
    assert list(tmp_path.iterdir()) == []


def test_failing_gate_prints_the_table_and_writes_nothing(assets, tmp_path, capfd):
    out = tmp_path / "model"
    code, _, err = _cli([assets["student"], "--out", out, "--calib", assets["calib"],
                         "--holdout", assets["holdout"], "--formats", "onnx",
                         "--min-sqnr-db", "500"], capfd)
    assert code == 1
    assert "int8 parity gate" in err and "FAIL" in err and "model.int8.onnx" in err
    assert "error: int8 parity gate failed for model.int8.onnx (sqnr_db)" in err
    assert list(tmp_path.iterdir()) == []


def test_no_gate_writes_and_marks_the_failure(assets, tmp_path):
    gate = GateThresholds(min_sqnr_db=500.0, enforce=False)
    manifest = export_student(assets["student"], tmp_path / "model", calib=assets["calib"],
                              holdout=assets["holdout"], formats="onnx", gate=gate)
    (art,) = [a for a in manifest["artifacts"] if "gate" in a]
    assert art["gate"]["passed"] is False and art["gate"]["failed_checks"] == ["sqnr_db"]
    assert manifest["parity"]["passed"] is False and manifest["parity"]["enforced"] is False
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "manifest.json", "model.fp32.onnx", "model.int8.onnx"]
    with pytest.raises(GateError):  # the same export, enforced, fails
        export_student(assets["student"], tmp_path / "model2", calib=assets["calib"],
                       holdout=assets["holdout"], formats="onnx",
                       gate=GateThresholds(min_sqnr_db=500.0))
    assert not (tmp_path / "model2").exists()


# ---------------------------------------------------------------------------------------
# The atomic folder swap


def test_force_replaces_the_folder_atomically(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with _staging(out, force=True) as stage:
        (stage / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # untouched until the block succeeds
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failure_inside_the_stage_leaves_the_old_folder_and_no_debris(tmp_path):
    out = tmp_path / "deep" / "er" / "model"
    with pytest.raises(RuntimeError), _staging(out, force=True) as stage:
        (stage / "half.txt").write_text("half")
        raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []  # the parents it created are gone too


def test_input_clip_is_a_runtime_step_and_the_tflite_graph_is_full_integer(exported):
    manifest = exported["manifest"]
    assert manifest["input"]["preprocessing"][0] == {"op": "clip", "uV": 50.0}
    tfl = next(a for a in manifest["artifacts"] if a["path"] == "model.int8.tflite")
    assert tfl["gate"]["float_ops"] == []


def _export_full_integer(model, assets, tmp_path) -> tuple[dict, dict]:
    """Save and export ``model`` (ONNX, TFLite; gate recorded, not enforced); check its fp32
    ONNX against torch and that the int8 TFLite file has no float op. (manifest, artifacts)"""
    save_student(model, tmp_path / "student")
    manifest = export_student(tmp_path / "student", tmp_path / "model", calib=assets["calib"],
                              holdout=assets["holdout"], formats=("onnx", "tflite"),
                              gate=GateThresholds(enforce=False))
    arts = {a["path"]: a for a in manifest["artifacts"]}
    assert arts["model.fp32.onnx"]["parity_vs_torch"]["passed"]
    assert arts["model.int8.tflite"]["gate"]["float_ops"] == []
    return manifest, arts


def test_an_envelope_ceiling_exports_full_integer_and_as_trained(assets, tmp_path):
    """A student whose band amplitudes are clamped (what the int8-aware phase sets) exports
    with no float op in the TFLite file, and its fp32 files compute the clamped model."""
    student = load_student(assets["student"])
    x = torch.from_numpy(CLIPPED.to_model_units(assets["test"].X))
    student.set_envelope_ceiling(student.envelope_quantile(x, 0.9))  # binds on 10% of values
    _, arts = _export_full_integer(student, assets, tmp_path)
    assert arts["model.int8.tflite"]["gate"]["agreement"] >= 0.9


def test_int8_shallowconvnet_keeps_its_logits_at_higher_precision(assets, tmp_path):
    """ShallowConvNet with ReLU6 (the int8-deployable baseline) exports full-integer with its
    classifier as the logits layer the exporters keep at higher precision (float in ONNX,
    16-bit in TFLite): an 8-bit classifier output saturated on new subjects' logits."""
    model = _train_tiny_student(_synthetic_windows(), assets["split"].train,
                                name="shallowconvnet-relu6")
    manifest, arts = _export_full_integer(model, assets, tmp_path)
    assert manifest["export"]["onnx"]["quantization"]["logits_layer"] == "float"
    out = _interpreter(tmp_path / "model" / "model.int8.tflite").get_output_details()[0]
    assert out["dtype"] == np.int16
    for path in ("model.int8.onnx", "model.int8.tflite"):
        assert arts[path]["gate"]["sqnr_db"] >= 30, (path, arts[path]["gate"])


def test_int8_onnx_reports_spectral_fidelity_per_eeg_band(exported):
    onnx_int8 = next(a for a in exported["manifest"]["artifacts"] if a["path"] == "model.int8.onnx")
    fid = onnx_int8["spectral_fidelity"]
    assert fid["fs_hz"] == 50.0 and fid["n_windows"] > 0
    assert set(fid["band_nsr_db"]) == {"delta", "theta", "alpha", "beta"}  # gamma is above 25 Hz
    assert all(v < -10 for v in fid["band_nsr_db"].values()), fid


def test_quantisation_target_is_recorded_and_sets_reduce_range(exported, assets, tmp_path):
    from export import onnx_export

    quant = exported["manifest"]["export"]["onnx"]["quantization"]
    assert quant["target"] == onnx_export.default_target()
    assert quant["reduce_range"] == onnx_export.TARGETS[quant["target"]]
    arm = export_student(assets["student"], tmp_path / "arm", calib=assets["calib"],
                         holdout=assets["holdout"], formats=("onnx",), target="arm",
                         gate=GateThresholds(enforce=False))
    assert arm["export"]["onnx"]["quantization"] == {**quant, "target": "arm", "reduce_range": False}
    with pytest.raises(ConfigError, match="unknown target"):
        export_student(assets["student"], tmp_path / "x", calib=assets["calib"], target="riscv")


def test_manifest_says_which_precision_to_deploy_with_the_numbers(exported):
    """Each runtime's fp32 and int8 files were timed here; the faster one is recommended."""
    d = exported["manifest"]["deployment"]
    assert d["measured_on"]["machine"] and "median of" in d["method"]
    for runtime in ("onnx", "tflite"):
        r = d["runtimes"][runtime]
        ms = r["median_ms"]
        assert set(ms) == {"fp32", "int8"} and all(v > 0 for v in ms.values())
        assert r["int8_over_fp32"] == pytest.approx(ms["int8"] / ms["fp32"], rel=1e-2)
        assert r["use_on_this_cpu"] == min(ms, key=ms.get)
    fp32 = next(a for a in exported["manifest"]["artifacts"] if a["path"] == "model.fp32.tflite")
    assert fp32["precision"] == "fp32" and fp32["parity_vs_torch"]["passed"]


def test_parity_counts_the_windows_int8_noise_can_flip():
    """A window's fp32 top-2 margin against the RMS change int8 makes to it: windows inside
    that noise are the ones whose decision quantisation can flip."""
    from export.parity import compare

    fp32 = np.array([[0.0, 2.0], [0.0, 0.05], [1.0, 0.0], [0.0, 3.0]], np.float32)
    noise = np.array([[0.1, -0.1], [0.1, -0.1], [-0.1, 0.1], [0.1, -0.1]], np.float32)  # margins -0.2
    r = compare("m.int8.onnx", fp32, fp32 + noise, np.array([1, 1, 0, 1]), GateThresholds())
    assert r.margin_noise_rms == pytest.approx(0.2)
    assert r.near_boundary == 1  # only the 0.05 margin lies within 0.2
    assert r.agreement == 0.75 and "agreement" in r.failed  # and it is the one that flipped
    m = r.to_manifest()
    assert m["near_boundary"] == 1 and m["margin_noise_rms"] == pytest.approx(0.2)
