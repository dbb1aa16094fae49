"""ONNX: fp32 through torch.export (dynamo), simplified; int8 through ONNX Runtime QDQ.

int8 settings (`ORT_QUANT`): QDQ format, per-channel symmetric int8 weights, asymmetric
uint8 activations, global min/max calibration, and ``reduce_range`` chosen per target CPU
(`TARGETS`): on x86 CPUs without VNNI (AVX2 only, as here) u8 x s8 products are summed in
int16 pairs (``vpmaddubsw``), which saturates with full 8-bit weights, so ``x86`` uses
7-bit weights, which cannot saturate; ARM cores (Raspberry Pi, Jetson) accumulate in 32 bits
and keep the full 8 bits (``arm``). The target and the setting are recorded in the manifest.
The graph ONNX Runtime runs is its ``ORT_ENABLE_ALL`` optimisation of this file, which
fuses QDQ groups into QLinear*/QGemm kernels; `float_ops` inspects that optimised graph.

The layer that computes the logits (a Gemm, K x features MACs: 288 for mic-s) is left in
float (`LOGITS_IN_FLOAT`): its 8-bit output was the largest logit error on test subjects
whose logits are small next to the training subjects' that set the range
(`bench/int8_noise_sources.py`), and ONNX Runtime has no 16-bit Gemm to use instead. Its
int8 input is dequantised; every other layer stays int8. (TFLite gets 16-bit logits, which
keep that file full-integer for TFLite Micro; `export.tflite_export`.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from calibration import CalibrationSet, OrtCalibrationReader

INPUT_NAME = "eeg"
OUTPUT_NAME = "logits"
OPSET = 18
ORT_LEVEL = "ORT_ENABLE_ALL"  # the optimisation level the board runs and we check at
TARGETS = {"x86": True, "arm": False}  # target CPU -> reduce_range (7-bit weights)
ORT_QUANT = {
    "format": "QDQ",
    "per_channel": True,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "calibrate_method": "MinMax",
    "pre_process": "onnxruntime.quantization.quant_pre_process",
    "logits_layer": "float",
}
LOGITS_IN_FLOAT = True

# Ops that only move or reshape data: exact in any dtype, never "running in float".
_DATA_MOVEMENT = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape",
    "Constant", "Gather", "Slice", "Concat", "Split", "Expand", "Pad", "Cast",
    "ReorderInput", "ReorderOutput",  # ORT's NCHWc layout changes around float regions
})
# Integer kernels (or the int <-> float boundary) after ONNX Runtime's QDQ fusion.
_INTEGER_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "QGemm", "ConvInteger", "MatMulInteger",
    "DynamicQuantizeLinear", "MatMulIntegerToFloat", "QAttention",
})


def export_fp32(model: torch.nn.Module, sample: torch.Tensor, path: Path) -> dict:
    """Write ``model`` as a simplified fp32 ONNX graph with input ``eeg``, output ``logits``.

    The batch axis is dynamic when torch.export can prove the graph batch-agnostic, else
    fixed to 1. Weights are stored inside the file (no external data).

    Returns
    -------
    dict
        ``{"opset", "batch", "simplified"}``: ``batch`` is ``"dynamic"`` or 1.
    """
    import onnxsim

    try:
        program = _torch_export(model, sample.expand(2, -1, -1).contiguous(), dynamic=True)
        batch = "dynamic"
    except Exception:  # torch.export could not keep the batch axis symbolic
        program = _torch_export(model, sample[:1], dynamic=False)
        batch = 1
    proto = program.model_proto
    simplified, ok = onnxsim.simplify(proto)
    if ok:
        proto = simplified
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return {"opset": OPSET, "batch": batch, "simplified": bool(ok)}


def _torch_export(model, sample, dynamic: bool):
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    return torch.onnx.export(
        model,
        (sample,),
        None,
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes,
        external_data=False,
        optimize=True,
        verbose=False,
    )


def default_target() -> str:
    """The target matching this machine's CPU (``x86`` or ``arm``)."""
    import platform

    return "arm" if platform.machine().lower() in ("aarch64", "arm64", "armv7l") else "x86"


def quantize_int8(fp32_path: Path, out_path: Path, calib: CalibrationSet, target: str = "x86") -> dict:
    """Static int8 QDQ quantisation of ``fp32_path`` (settings in `ORT_QUANT`, ``reduce_range``
    from ``target``, a key of `TARGETS`).

    Returns
    -------
    dict
        The settings used, for the manifest.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # ORT optimisation + shape inference
        graph = onnx.load(str(prepared)).graph
        logits_layer = [n.name for n in graph.node if OUTPUT_NAME in n.output
                        and n.op_type in ("Gemm", "MatMul")] if LOGITS_IN_FLOAT else []
        quantize_static(
            str(prepared),
            str(out_path),
            OrtCalibrationReader(calib, INPUT_NAME),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=TARGETS[target],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=logits_layer,
        )
    return {**ORT_QUANT, "target": target, "reduce_range": TARGETS[target],
            "logits_layer": "float" if logits_layer else "int8"}


def session(path: Path, optimized_model_path: Path | None = None):
    """A CPU `InferenceSession` at `ORT_LEVEL`, single-threaded like the board."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVEL)
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(path: Path, X: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits (n, K) float32 of the ONNX model at ``path`` on X (n, C, T) in model units."""
    sess = session(path)
    dim0 = sess.get_inputs()[0].shape[0]
    step = dim0 if isinstance(dim0, int) else batch
    outs = [
        sess.run(None, {INPUT_NAME: np.ascontiguousarray(X[i : i + step], dtype=np.float32)})[0]
        for i in range(0, len(X), step)
    ]
    return np.concatenate(outs).astype(np.float32)


def float_ops(path: Path) -> list[str]:
    """Compute ops that still run in float once ONNX Runtime has fused the QDQ groups.

    Builds the `ORT_LEVEL`-optimised graph and lists (``"OpType:node_name"``) every node
    that is neither an integer kernel (QLinear*, QGemm, ...), a Quantize/Dequantize at an
    int8 boundary, nor pure data movement (Reshape, Transpose, ...).
    """
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session(path, optimized_model_path=optimized)
        graph = onnx.load(str(optimized)).graph
    return [
        f"{node.op_type}:{node.name}"
        for node in graph.node
        if node.op_type not in _DATA_MOVEMENT
        and node.op_type not in _INTEGER_OPS
        and not node.op_type.startswith("QLinear")
    ]


def parameter_bytes(path: Path) -> int:
    """Bytes of the constant tensors (weights, biases, quantisation parameters) in a file."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))
