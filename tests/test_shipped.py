"""What ships, tested: the default student preset, briefly trained on real EEGMAT and
exported by the real `dlink-export` command (fixture ``shipped``, `edge_fixtures`), through
the int8 parity gate, the integer-only check, streaming ≡ offline on a real recording and
the `dlink check` CI gate. The fixture takes ~1-2 min to build once, then is cached.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from edge_fixtures import shipped  # noqa: F401  (pytest fixture)

from edge_runtime import StreamingClassifier, classify_offline, open_model
from edge_runtime.preprocessing import apply_window_ops, split_ops
from edge_runtime.sources import read_edf


def _manifest(shipped) -> dict:  # noqa: F811
    return json.loads((shipped / "export" / "manifest.json").read_text())


def _held_out(shipped):  # noqa: F811
    """The export's parity-gate windows: the test subjects of data.npz, as model input."""
    from dlink.data import load_windows, split_subjects

    w = load_windows(str(shipped / "data.npz"))
    held = w.of_subjects(split_subjects(w).test)
    spec = open_model(shipped / "export", backend="onnx", precision="fp32").manifest.input
    stream_ops, window_ops = split_ops(spec.preprocessing)
    assert not stream_ops, "the default preset's preprocessing is window-local"
    return apply_window_ops(window_ops, held.X.astype(np.float32)), held.y


def test_the_default_preset_ships_with_its_input_contract(shipped):  # noqa: F811
    from dlink.distill import DistillConfig

    m = _manifest(shipped)
    assert m["model"]["arch"] == DistillConfig().student
    assert m["input"]["ch_names"][0] == "Fp1" and m["input"]["sfreq"] == 200.0
    assert {a["path"] for a in m["artifacts"]} >= {"model.fp32.onnx", "model.int8.onnx",
                                                  "model.int8.tflite", "model_data.h"}


@pytest.mark.parametrize("backend", ["onnx", "tflite"])
def test_parity_gate_in_the_manifest_is_what_the_runtime_measures(shipped, backend):  # noqa: F811
    art = next(a for a in _manifest(shipped)["artifacts"]
               if a["format"] == backend and a["precision"] == "int8")
    gate = art["gate"]
    assert gate["passed"] == (not gate["failed_checks"]) and gate["n_windows"] > 0
    x, y = _held_out(shipped)
    assert len(x) == gate["n_windows"]
    fp32 = open_model(shipped / "export", backend="onnx", precision="fp32").predict(x)
    int8 = open_model(shipped / "export", backend=backend, precision="int8",
                      allow_failed_gate=True).predict(x)
    agreement = float(np.mean(int8.argmax(1) == fp32.argmax(1)))
    # The exporter compares with the torch model; here ONNX fp32 stands in (equal to 1e-5).
    assert abs(agreement - gate["agreement"]) <= 1 / len(x) + 1e-9, (agreement, gate)


def test_int8_tflite_is_integer_only(shipped):  # noqa: F811
    from ai_edge_litert.interpreter import Interpreter

    art = next(a for a in _manifest(shipped)["artifacts"] if a["path"] == "model.int8.tflite")
    assert art["gate"]["float_ops"] == []
    interp = Interpreter(model_path=str(shipped / "export" / "model.int8.tflite"))
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int16  # 16-bit logits
    floats = [t["name"] for t in interp.get_tensor_details() if t["dtype"] == np.float32]
    assert floats == [], f"float32 tensors in the shipped int8 model: {floats[:5]}"


@pytest.mark.parametrize("backend", ["onnx", "tflite"])
def test_streaming_equals_offline_on_a_real_recording(shipped, shared_data, backend):  # noqa: F811
    model = open_model(shipped / "export", backend=backend, precision="int8",
                       allow_failed_gate=True)
    spec = model.manifest.input
    x = read_edf(shared_data / "eegmat" / "Subject35_2.edf", spec.ch_names, spec.sfreq).data
    offline = classify_offline(model, x, hop=500)
    rng = np.random.default_rng(0)
    clf, streamed, pos = StreamingClassifier(model, hop=500), [], 0
    while pos < x.shape[1]:
        k = int(rng.choice([1, int(rng.integers(2, 300)), int(rng.integers(300, 4000))]))
        streamed += clf.push(x[:, pos:pos + k])
        pos += k
    assert len(streamed) == len(offline) > 20
    for s, o in zip(streamed, offline):
        assert (s.index, s.start, s.stop, s.label) == (o.index, o.start, o.stop, o.label)
        np.testing.assert_array_equal(s.logits, o.logits)  # int8: bit for bit


def test_dlink_check_gates_the_shipped_export(shipped, tmp_path):  # noqa: F811
    from dlink.gate import Tolerances, compare, gate_metrics

    run = tmp_path / "run"
    run.mkdir()
    (run / "export").symlink_to(shipped / "export")
    metrics = gate_metrics(run)
    manifest = _manifest(shipped)
    passed = {a["path"]: a["gate"]["passed"] for a in manifest["artifacts"] if a.get("gate")}
    assert {p: g["passed"] for p, g in metrics["parity_gate"].items()} == passed
    assert compare(metrics, metrics).passed == all(passed.values())
    # The same export with its TFLite artifact marked failed (as --no-gate writes it) fails
    # the check, unless --allow-failed-gate.
    failed = json.loads(json.dumps(metrics))
    failed["parity_gate"]["model.int8.tflite"].update(passed=False, failed_checks=["sqnr_db"])
    result = compare(failed, metrics)
    assert "parity gate model.int8.tflite" in result.failed
    assert compare(failed, metrics, Tolerances(allow_failed_gate=True)).passed  # else identical
