"""Inference backends: ONNX Runtime and the LiteRT (TFLite) interpreter.

Both take a float32 batch ``(B, C, T)`` and return float32 scores ``(B, K)``. Each backend's
package is imported only when a model is opened with it, so a board needs only one of them;
a missing one is a `BackendUnavailableError` that names the pip package to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.errors import BackendError, BackendUnavailableError

BACKENDS = ("onnx", "tflite")


class Backend(Protocol):
    name: str
    max_batch: int  # largest batch one `run` call accepts (1 for fixed-shape graphs)
    input_shape: tuple  # (B, C, T); a non-int entry means "any"

    def run(self, x: np.ndarray) -> np.ndarray:
        """(B, C, T) float32 -> (B, K) float32, B <= max_batch."""
        ...


def _import_onnxruntime():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'onnx' needs ONNX Runtime, which is not installed: "
            "pip install onnxruntime (or use --backend tflite)."
        ) from exc


def _import_interpreter():
    """`Interpreter` from ai_edge_litert, else from tflite_runtime (same API)."""
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(module).Interpreter
        except ImportError:
            continue
    raise BackendUnavailableError(
        "backend 'tflite' needs the LiteRT interpreter, which is not installed: "
        "pip install ai-edge-litert (or tflite-runtime on older boards; or use --backend onnx)."
    )


def available_backends() -> list[str]:
    """Backends whose package imports here (imports them, so call it only when asked)."""
    found = []
    for name, probe in (("onnx", _import_onnxruntime), ("tflite", _import_interpreter)):
        try:
            probe()
        except BackendUnavailableError:
            continue
        found.append(name)
    return found


class OnnxBackend:
    """ONNX Runtime CPU session; ``threads`` sets intra-op parallelism."""

    name = "onnx"

    def __init__(self, path: Path, input_name: str, threads: int = 1):
        ort = _import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts,
                                              providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own untyped exceptions
            raise BackendError(f"ONNX Runtime could not load {path}: {exc}") from exc
        inputs = {i.name: i for i in self._sess.get_inputs()}
        if input_name not in inputs:
            raise BackendError(
                f"{path} has inputs {sorted(inputs)}, the manifest names {input_name!r}."
            )
        if len(inputs) != 1:
            raise BackendError(f"{path} has {len(inputs)} inputs; the runtime feeds one.")
        self._input = input_name
        self._outputs = [o.name for o in self._sess.get_outputs()[:1]]
        self.input_shape = tuple(inputs[input_name].shape)
        batch = self.input_shape[0] if self.input_shape else 1
        self.max_batch = batch if isinstance(batch, int) and batch > 0 else 64

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self._sess.run(self._outputs,
                                 {self._input: np.ascontiguousarray(x, np.float32)})
        except Exception as exc:  # ORT raises its own untyped exceptions
            raise BackendError(f"ONNX Runtime failed on a batch of shape {x.shape}: {exc}") \
                from exc
        return np.asarray(out[0], dtype=np.float32)


class LiteRTBackend:
    """LiteRT / TFLite interpreter. An int8 (or uint8) input is quantised, and an int8
    output dequantised, with the scale and zero point stored in the model."""

    name = "tflite"

    def __init__(self, path: Path, threads: int = 1):
        interpreter_cls = _import_interpreter()
        try:
            self._it = interpreter_cls(model_path=str(path), num_threads=int(threads))
            self._it.allocate_tensors()
        except Exception as exc:  # the interpreter raises plain ValueError/RuntimeError
            raise BackendError(f"LiteRT could not load {path}: {exc}") from exc
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise BackendError(
                f"{path} has {len(ins)} inputs and {len(outs)} outputs; expected 1 and 1."
            )
        self._in, self._out = ins[0], outs[0]
        sig = tuple(int(d) for d in self._in.get("shape_signature", self._in["shape"]))
        self.input_shape = tuple("B" if d < 0 else d for d in sig)
        self.max_batch = 64 if sig[0] < 0 else sig[0]
        self._batch = int(self._in["shape"][0])
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        for role, det in (("input", self._in), ("output", self._out)):
            dt = np.dtype(det["dtype"])
            if dt.kind in "iu" and det["quantization"][0] == 0.0:
                raise BackendError(f"{path}: {dt} {role} has no quantisation scale.")

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dt = self.input_dtype
        if dt.kind not in "iu":
            return x.astype(dt, copy=False)
        scale, zero = self._in["quantization"]
        info = np.iinfo(dt)
        q = np.divide(x, np.float32(scale), dtype=np.float32)  # one temporary, then in place
        np.rint(q, out=q)
        q += np.float32(zero)
        np.clip(q, info.min, info.max, out=q)
        return q.astype(dt)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self.output_dtype.kind not in "iu":
            return y.astype(np.float32, copy=False)
        scale, zero = self._out["quantization"]
        return ((y.astype(np.float32) - np.float32(zero)) * np.float32(scale)).astype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            if x.shape[0] != self._batch:
                self._it.resize_tensor_input(self._in["index"], list(x.shape))
                self._it.allocate_tensors()
                self._batch = x.shape[0]
            self._it.set_tensor(self._in["index"], self._quantize(x))
            self._it.invoke()
            y = self._it.get_tensor(self._out["index"])
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"LiteRT failed on a batch of shape {x.shape}: {exc}") from exc
        return self._dequantize(y)
