"""TensorFlow Lite Micro check of the C array: ops, smallest tensor arena, outputs vs LiteRT.

Firmware runs ``model_data.cc`` with TFLite Micro (TFLM). This module runs the same bytes
with TFLM's reference interpreter (PyPI ``tflite-micro``, the ``dlink[mcu]`` extra) and
records what the firmware needs in the manifest:

- ``ops``: the builtin ops, as `MicroMutableOpResolver` ``Add*()`` calls for ``model_data.h``;
- ``arena_bytes``: the smallest tensor arena that allocates, found by bisection on real
  allocations (to the byte). It is measured with TFLM's reference kernels and its
  recording allocator (a few dozen bytes of bookkeeping more than the plain allocator);
  optimised kernels (CMSIS-NN, ESP-NN) may ask for a little more scratch;
- ``parity``: TFLM's integer outputs against LiteRT's on the same quantised windows (the
  gate's held-out windows): equal, or at most 1 LSB apart with the count that differ. The
  LSB is one step of an 8-bit output over the output's range: for the int16 logits, 256
  int16 steps (the two runtimes' 16x8 FULLY_CONNECTED kernels round differently by a few
  dozen int16 steps); ``max_abs_diff_steps`` gives the difference in the output's own steps.

A model TFLM cannot run (a float compute op, an op without a TFLM kernel) raises
`TflmError` naming the op. Without ``tflite-micro`` installed, only the op list and the
float-op check are recorded (``checked: false``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from export import c_array, tflite_export
from export.errors import ExportError

PACKAGE = "tflite-micro"
MAX_ARENA = 64 << 20  # bytes; a model that does not allocate in 64 MiB is no MCU model
MAX_LSB = 1  # largest |TFLM - LiteRT| output difference allowed, in 8-bit output steps
# Op names whose resolver method is not the CamelCase of the op name.
_METHOD_NAMES = {"PADV2": "PadV2", "CUMSUM": "CumSum", "BATCH_MATMUL": "BatchMatMul",
                 "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM"}


class TflmError(ExportError):
    """TFLite Micro cannot run the model (the message names the op) or disagrees with LiteRT."""


def resolver_method(op: str) -> str:
    """``MicroMutableOpResolver`` method registering builtin ``op`` (``CONV_2D`` -> ``AddConv2D``)."""
    camel = "".join(w if w[:1].isdigit() else w.capitalize() for w in op.split("_"))
    return "Add" + _METHOD_NAMES.get(op, camel)


def model_ops(model: bytes) -> list[str]:
    """Builtin op names of a ``.tflite`` flatbuffer, sorted, each once (``CUSTOM:name`` for custom ops)."""
    from ai_edge_litert import schema_py_generated as schema

    fb = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = set()
    for code in fb.operatorCodes:
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
        if name == "CUSTOM":
            custom = code.customCode
            name = f"CUSTOM:{custom.decode() if isinstance(custom, bytes) else custom}"
        ops.add(name)
    return sorted(ops)


def available() -> bool:
    """Whether the TFLM interpreter (``tflite-micro``) is installed."""
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        return False
    return True


def plan(tflite_path: Path) -> dict:
    """Ops and smallest arena of ``tflite_path`` for ``model_data.h`` and the manifest.

    Returns
    -------
    dict
        ``checked`` (TFLM ran), ``runtime``, ``ops``, ``resolver`` (``Add*`` calls),
        ``model_bytes`` and, when checked, ``arena_bytes``.

    Raises
    ------
    TflmError
        A float compute op or an op TFLM has no kernel for (named in the message).
    """
    path = Path(tflite_path)
    model = path.read_bytes()
    ops = model_ops(model)
    floats = tflite_export.float_ops(path)
    if floats:
        op, _, tensor = floats[0].partition(":")
        raise TflmError(
            f"{path.name} has float op {op} (output {tensor!r}; {len(floats)} float op(s) in "
            f"all); TFLite Micro targets need a full-integer int8 model. Keep the op out of "
            f"the graph (e.g. as a preprocessing step) or drop 'c' from --formats."
        )
    custom = [op for op in ops if op.startswith("CUSTOM:")]
    if custom:
        raise TflmError(f"{path.name} uses custom op {custom[0][7:]!r}, which TFLite Micro has "
                        f"no kernel for; drop 'c' from --formats.")
    out = {"checked": False, "runtime": None, "ops": ops,
           "resolver": [resolver_method(op) for op in ops], "model_bytes": len(model)}
    if not available():
        out["reason"] = f"{PACKAGE} is not installed (pip install 'dlink[mcu]')"
        return out
    _require_runs(model, path.name)
    out.update(checked=True, runtime=f"{PACKAGE} {importlib.metadata.version(PACKAGE)}",
               arena_bytes=smallest_arena(model))
    return out


def verify(source_path: Path, tflite_path: Path, X: np.ndarray, planned: dict, *,
           enforce: bool = True) -> dict:
    """Run the bytes of ``model_data.cc`` on TFLM and LiteRT; ``planned`` plus ``parity``.

    Parameters
    ----------
    source_path : ``model_data.cc``; its array must equal ``tflite_path`` byte for byte.
    tflite_path : the int8 ``.tflite`` LiteRT runs.
    X : (n, C, T) float32 windows in model units (the gate's held-out windows).
    planned : what `plan` returned; TFLM runs in exactly ``arena_bytes``.
    enforce : raise `TflmError` if outputs differ by more than `MAX_LSB` (else only record it).
    """
    model = c_array.read_c_array(source_path)
    if model != Path(tflite_path).read_bytes():
        raise ExportError(f"{Path(source_path).name} does not embed {Path(tflite_path).name} "
                          "byte for byte; the C array writer is broken.")
    if not planned["checked"]:
        return planned
    parity = compare_with_litert(model, tflite_path, X, planned["arena_bytes"])
    if enforce and not parity["passed"]:
        raise TflmError(
            f"TFLite Micro and LiteRT outputs of {Path(tflite_path).name} differ by up to "
            f"{parity['max_abs_diff_lsb']} LSB (> {MAX_LSB}) in {parity['n_differing']} of "
            f"{parity['n_values']} values; use --no-gate to write it anyway."
        )
    return {**planned, "parity": parity}


def smallest_arena(model: bytes) -> int:
    """Smallest tensor arena (bytes) in which TFLM allocates ``model``, by bisection."""
    lo, hi = 0, MAX_ARENA  # lo fails, hi allocates (checked by `_require_runs`)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _allocates(model, mid) else (mid, hi)
    return hi


def compare_with_litert(model: bytes, tflite_path: Path, X: np.ndarray, arena: int) -> dict:
    """TFLM (in ``arena`` bytes) vs LiteRT (reference builtin kernels) outputs on ``X``.

    Both get the same quantised input window; outputs are compared as integers, in steps
    of the output quantisation (LSB). Returns counts and the largest difference.
    """
    from tflite_micro import runtime

    micro = runtime.Interpreter.from_bytes(model, arena_size=arena)
    lite = tflite_export.interpreter(Path(tflite_path))
    (inp,), (out,) = lite.get_input_details(), lite.get_output_details()
    step, steps_per_lsb = _output_step(model)
    diffs = []
    for x in np.asarray(X, np.float32):
        q = _quantize(x[None], inp)
        lite.set_tensor(inp["index"], q)
        lite.invoke()
        micro.set_input(q, 0)
        micro.invoke()
        a = lite.get_tensor(out["index"]).astype(np.float64)
        b = np.asarray(micro.get_output(0)).astype(np.float64)
        diffs.append(np.abs(a - b).ravel() / step)
    steps = np.round(np.concatenate(diffs)) if diffs else np.zeros(0)
    d = np.round(steps / steps_per_lsb)
    worst = int(d.max()) if d.size else 0
    return {"n_windows": len(diffs), "n_values": int(d.size), "n_differing": int((steps > 0).sum()),
            "max_abs_diff_lsb": worst, "max_abs_diff_steps": int(steps.max()) if steps.size else 0,
            "equal": not steps.any(), "tolerance_lsb": MAX_LSB, "passed": worst <= MAX_LSB}


# ---------------------------------------------------------------------------------------
# Helpers


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float model-unit input -> the model's input dtype, as the board does."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x, np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / np.float32(scale)) + zero_point, info.min, info.max).astype(dtype)


def _output_step(model: bytes) -> tuple[float, int]:
    """(one quantisation step of the output in the units compared, how many such steps make
    one 8-bit step over the same range). An integer output is compared as integers (step 1);
    a float output in the scale of the integer tensor it is dequantised from. 16-bit logits:
    256 steps per 8-bit step."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0)).subgraphs[0]
    tensor = graph.tensors[graph.outputs[0]]
    step = 1.0
    if tensor.type == schema.TensorType.FLOAT32:
        producer = next(op for op in graph.operators if graph.outputs[0] in list(op.outputs))
        tensor = graph.tensors[producer.inputs[0]]
        quant = tensor.quantization
        if quant is None or quant.scale is None:
            return 1.0, 1
        step = float(quant.scale[0])
    bits = 16 if tensor.type == schema.TensorType.INT16 else 8
    return step, 2 ** (bits - 8)


def _allocates(model: bytes, arena: int) -> bool:
    from tflite_micro import runtime

    with _captured_stderr():  # TFLM prints every failed allocation
        try:
            runtime.Interpreter.from_bytes(model, arena_size=arena)
        except RuntimeError:
            return False
    return True


def _require_runs(model: bytes, name: str) -> None:
    """Allocate in `MAX_ARENA`; a failure names the op TFLM reported, else its first line."""
    from tflite_micro import runtime

    with _captured_stderr() as log:
        try:
            runtime.Interpreter.from_bytes(model, arena_size=MAX_ARENA)
            return
        except RuntimeError as exc:
            error = exc
    text = log[0] if log else ""
    missing = re.search(r"Didn't find op for builtin opcode '([^']+)'", text)
    if missing:
        raise TflmError(f"{name} uses op {missing.group(1)}, which TFLite Micro has no kernel "
                        f"for; change the model or drop 'c' from --formats.") from error
    detail = next((ln.strip() for ln in text.splitlines() if ln.strip()), str(error))
    raise TflmError(f"TFLite Micro cannot run {name}: {detail}") from error


@contextlib.contextmanager
def _captured_stderr():
    """Redirect file descriptor 2 (C++ prints there); yields a list that gets the text."""
    sys.stderr.flush()
    saved = os.dup(2)
    log: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.append(tmp.read().decode("utf-8", "replace"))
