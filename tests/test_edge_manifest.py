"""Opening a model folder: sha256 verification, manifest checks, artifact selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from edge_fixtures import copy_model_dir, model_dir  # noqa: F401  (pytest fixture)

from edge_runtime import (
    ArtifactMissingError,
    ChecksumError,
    GateError,
    ManifestError,
    load_manifest,
    open_model,
)


def _edit_manifest(folder, fn):
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_manifest_is_parsed(model_dir):  # noqa: F811
    m = load_manifest(model_dir)
    assert m.input.n_chans == 19 and m.input.n_times == 1000 and m.input.sfreq == 200.0
    assert m.output.class_names == ("rest", "task")
    assert {(a.format, a.precision) for a in m.artifacts} == {
        ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")}


def test_tampered_file_is_refused_before_loading_anything(model_dir, tmp_path):  # noqa: F811
    folder = copy_model_dir(model_dir, tmp_path / "m")
    blob = bytearray((folder / "model.int8.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (folder / "model.int8.onnx").write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="model.int8.onnx has sha256"):
        open_model(folder, backend="onnx")
    # every artifact is verified, not only the one being opened
    with pytest.raises(ChecksumError, match="model.int8.onnx"):
        open_model(folder, backend="tflite", precision="fp32")


def test_missing_file_is_refused(model_dir, tmp_path):  # noqa: F811
    folder = copy_model_dir(model_dir, tmp_path / "m")
    (folder / "model.fp32.tflite").unlink()
    with pytest.raises(ArtifactMissingError, match="model.fp32.tflite is listed"):
        open_model(folder, backend="onnx")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(schema="dlink-manifest/2"), "schema 'dlink-manifest/2'"),
    (lambda m: m["input"].pop("sfreq"), "lacks the field 'sfreq'"),
    (lambda m: m["input"]["preprocessing"].append({"op": "notch"}), "'notch' is unknown"),
    (lambda m: m["input"]["preprocessing"].insert(0, {"op": "demean"}),
     "'sosfilt' after a window-local op"),
    (lambda m: m["artifacts"][0].update(path="../model.fp32.onnx"), "must be relative"),
    (lambda m: m["input"].update(n_times=999), r"takes input \('batch', 19, 1000\)"),
    (lambda m: m["input"].update(units="mV"), "units"),
])
def test_malformed_manifest_is_a_clear_error(model_dir, tmp_path, edit, match):  # noqa: F811
    folder = copy_model_dir(model_dir, tmp_path / "m")
    _edit_manifest(folder, edit)
    with pytest.raises(ManifestError, match=match):
        open_model(folder, backend="onnx", precision="fp32")


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        open_model(tmp_path / "nope")
    with pytest.raises(ManifestError, match="manifest.json is missing"):
        open_model(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not readable JSON"):
        open_model(tmp_path)


def test_artifact_is_chosen_by_backend_and_precision(model_dir, tmp_path):  # noqa: F811
    assert open_model(model_dir).artifact.path == "model.int8.onnx"  # auto + int8 default
    assert open_model(model_dir, backend="tflite").artifact.path == "model.int8.tflite"
    got = open_model(model_dir, backend="tflite", precision="fp32")
    assert got.artifact.path == "model.fp32.tflite" and got.precision == "fp32"
    folder = copy_model_dir(model_dir, tmp_path / "m")
    _edit_manifest(folder, lambda m: m.update(
        artifacts=[a for a in m["artifacts"] if a["path"] != "model.int8.tflite"]))
    with pytest.raises(ManifestError, match="no tflite artifact with precision 'int8'.*"
                                            "onnx/fp32, onnx/int8, tflite/fp32"):
        open_model(folder, backend="tflite")


def test_failed_quality_gate_needs_explicit_consent(model_dir, tmp_path):  # noqa: F811
    folder = copy_model_dir(model_dir, tmp_path / "m")
    _edit_manifest(folder, lambda m: m["artifacts"][1]["gate"].update(passed=False))
    with pytest.raises(GateError, match="--allow-failed-gate"):
        open_model(folder, backend="onnx", precision="int8")
    model = open_model(folder, backend="onnx", precision="int8", allow_failed_gate=True)
    assert model.predict(np.zeros((1, 19, 1000), np.float32)).shape == (1, 2)
