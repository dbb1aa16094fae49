"""TFLite: fp32 through litert-torch, then full-integer int8 with ai-edge-quantizer.

int8 settings (`TFLITE_QUANT`): the ``static_wi8_ai8`` recipe (int8 per-channel symmetric
weights, int8 per-tensor asymmetric activations, integer compute) with ranges from a
*global* min/max over every calibration window (``qsv_utils.min_max_update``) instead of
the quantiser's default moving average, so no calibration window is clipped and the
ranges match ONNX Runtime's MinMax calibration.

The logits are 16-bit: the FULLY_CONNECTED layer that computes them runs TFLite's 16x8
kernel (int16 activations, int8 weights; TFLite Micro has it too) after an int8 -> int16
QUANTIZE, and the output tensor is int16. An 8-bit output was the largest logit error on
test subjects whose logits are small next to those of the training subjects that set its
range (`bench/int8_noise_sources.py`); the graph stays full-integer. New subjects' logits
also exceed the training subjects' range (by 1.3x in one EEGMAT fold, saturating 4% of
them), so the logits' calibrated range is widened `LOGITS_HEADROOM` times: at 16 bits that
still leaves steps of ~1e-3 logit units.

I/O (`TFLITE_IO`, default ``"int8"``): the graph input (int8) and output (int16) tensors have
their scale and zero point stored in the model (and copied into the manifest). A float
input would add a QUANTIZE op that runs in float, which TFLite Micro boards without an FPU
emulate slowly and which int8-only accelerators (Ethos-U, CMSIS-NN pipelines) cannot run;
quantising on the host is one multiply-add per sample and folds into the preprocessing's
scale. The numbers are identical either way: the float-I/O graph quantises its input
with the same scale and zero point. ``io="float32"`` keeps float I/O for hosts that
prefer it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from calibration import CalibrationSet, representative_dataset
from dlink.qat import LOGITS_HEADROOM  # the int8 simulation trains with the same range

TFLITE_IO = "int8"
TFLITE_QUANT = {
    "tool": "ai-edge-quantizer",
    "recipe": "static_wi8_ai8",
    "weights": "int8 symmetric per-channel",
    "activations": "int8 asymmetric per-tensor",
    "calibration": "global min/max over all windows (qsv_utils.min_max_update)",
    "logits": "int16 symmetric (FULLY_CONNECTED 16x8), calibrated range x4",
}
# Boundary conversions and pure data movement: not "compute running in float".
_NOT_COMPUTE = frozenset({
    "QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PAD",
    "PADV2", "CONCATENATION", "SLICE", "STRIDED_SLICE", "GATHER", "SPLIT", "PACK", "UNPACK",
})


def convert_fp32(model: torch.nn.Module, sample: torch.Tensor, path: Path) -> None:
    """Convert ``model`` (eval mode) to an fp32 ``.tflite`` with a fixed (1, C, T) input."""
    import litert_torch

    litert_torch.convert(model.eval(), (sample[:1],)).export(str(path))


def quantize_int8(fp32_path: Path, out_path: Path, calib: CalibrationSet,
                  io: str = TFLITE_IO, activation_bits: int = 8) -> dict:
    """Full-integer int8 quantisation of ``fp32_path`` (see module docstring).

    ``activation_bits=16`` keeps the int8 weights but gives every activation 16 bits (the
    ``static_wi8_ai16`` recipe, TFLite's 16x8 kernels): not what the export ships, what
    `bench/a16w8_probe.py` measures against it.

    Returns
    -------
    dict
        The settings used, for the manifest.
    """
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    if io not in ("int8", "float32"):
        raise ValueError(f"io must be 'int8' or 'float32', got {io!r}")
    recipes = {8: recipe.static_wi8_ai8, 16: recipe.static_wi8_ai16}
    if activation_bits not in recipes:
        raise ValueError(f"activation_bits must be 8 or 16, got {activation_bits!r}")
    float_model = Path(fp32_path).read_bytes()
    signature, input_name = _signature(float_model)
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipes[activation_bits]())
    for op in ("FULLY_CONNECTED", "OUTPUT"):  # 16-bit logits (a later config replaces one)
        manager.add_static_config(regex=".*", operation_name=op, activation_num_bits=16,
                                  weight_num_bits=8)
    if io == "float32":  # leave the graph input and output unquantised
        for op in ("INPUT", "OUTPUT"):
            manager.add_quantization_config(".*", op, algorithm_key="no_quantize")
    quant_recipe = manager.get_quantization_recipe()
    calib_run = calibrator.Calibrator(
        float_model, num_threads=1, qsv_update_func=qsv_utils.min_max_update
    )
    calib_run.calibrate(representative_dataset(calib, input_name, signature), manager)
    qsvs = calib_run.get_model_qsvs()
    logits = qsvs[_output_name(float_model)]
    logits["min"], logits["max"] = logits["min"] * LOGITS_HEADROOM, logits["max"] * LOGITS_HEADROOM
    result = quantizer.Quantizer(bytearray(float_model), quant_recipe).quantize(
        qsvs, enable_progress_report=False
    )
    Path(out_path).write_bytes(bytes(result.quantized_model))
    if activation_bits == 16:
        return {**TFLITE_QUANT, "recipe": "static_wi8_ai16",
                "activations": "int16 symmetric per-tensor", "io": io}
    return {**TFLITE_QUANT, "io": io}


def _output_name(model_bytes: bytes) -> str:
    """The name of the single output tensor (the logits)."""
    (out,) = interpreter(model_bytes).get_output_details()
    return out["name"]


def _signature(model_bytes: bytes) -> tuple[str, str]:
    """(signature key, its single input name) of a one-signature, one-input model."""
    signatures = interpreter(model_bytes).get_signature_list()
    assert len(signatures) == 1, f"expected one signature, got {list(signatures)}"
    key, sig = next(iter(signatures.items()))
    assert len(sig["inputs"]) == 1, f"expected one input, got {sig['inputs']}"
    return key, sig["inputs"][0]


def interpreter(model: Path | bytes, delegates: bool = False):
    """A LiteRT interpreter (ai_edge_litert, else tflite_runtime), tensors allocated.

    ``delegates=False`` runs the builtin kernels without the default delegate (XNNPACK);
    ``True`` lets LiteRT apply XNNPACK, as ``dlink-edge`` does.
    """
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            module = importlib.import_module(name)
            break
        except ImportError:
            continue
    else:
        raise ImportError("neither ai_edge_litert nor tflite_runtime is installed")
    kwargs = {"num_threads": 1} if delegates else {  # one thread, as dlink-edge's default
        "num_threads": 1,
        "experimental_op_resolver_type": module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    }
    if isinstance(model, bytes | bytearray):
        interp = module.Interpreter(model_content=bytes(model), **kwargs)
    else:
        interp = module.Interpreter(model_path=str(model), **kwargs)
    interp.allocate_tensors()
    return interp


def io_details(path: Path) -> dict:
    """Input and output dtype, shape, scale and zero point, as plain JSON types."""
    interp = interpreter(path)

    def describe(d: dict) -> dict:
        scale, zero_point = d["quantization"]
        return {
            "name": d["name"],
            "dtype": np.dtype(d["dtype"]).name,
            "shape": [int(s) for s in d["shape"]],
            "scale": float(scale),
            "zero_point": int(zero_point),
        }

    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    return {"input": describe(inp), "output": describe(out)}


def run(path: Path, X: np.ndarray) -> np.ndarray:
    """Float logits (n, K) of a TFLite model on X (n, C, T) in model units, one window a call.

    An int8 input is quantised and an int8 output dequantised with the scale and zero
    point stored in the model, as the board does.
    """
    interp = interpreter(path)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    outs = []
    for x in X:
        interp.set_tensor(inp["index"], _to_input(x[None], inp))
        interp.invoke()
        outs.append(_from_output(interp.get_tensor(out["index"]), out))
    return np.concatenate(outs).astype(np.float32)


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.round(x / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _from_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def _read_model(path: Path):
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(Path(path).read_bytes(), 0))


def float_ops(path: Path) -> list[str]:
    """Compute ops with a float32 input tensor (``"OP_NAME:output_tensor_name"``).

    Read from the flatbuffer itself, so XNNPACK delegation cannot hide anything.
    QUANTIZE/DEQUANTIZE at the boundary and pure data movement are not counted.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = _read_model(path)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    found = []
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            inputs = [graph.tensors[i] for i in op.inputs if i >= 0]
            if name not in _NOT_COMPUTE and any(
                t.type == schema.TensorType.FLOAT32 for t in inputs
            ):
                out = graph.tensors[op.outputs[0]].name
                found.append(f"{name}:{out.decode() if isinstance(out, bytes) else out}")
    return found


def parameter_bytes(path: Path) -> int:
    """Bytes of the constant buffers (weights, biases) in a ``.tflite`` file."""
    model = _read_model(path)
    total = 0
    for buf in model.buffers:
        if buf.data is not None:
            total += len(buf.data)
        elif getattr(buf, "size", 0):
            total += int(buf.size)
    return total
