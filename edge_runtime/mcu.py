"""What a microcontroller needs to run a model folder with TFLite Micro, from its manifest.

`dlink-export` runs ``model_data.cc`` on the TFLite Micro interpreter and records, on the
``c-source`` artifact's ``tflm`` entry, the smallest tensor arena that allocates and the
model bytes (see ``docs/manifest.md``). Nothing here runs the model: the sizes are the
exporter's, read after the usual sha256 check.

Firmware RAM = tensor arena (which holds the input and output tensors) + one input buffer:
the next window of samples, filled while the previous one runs, in the model's input
dtype (1 byte a sample for int8; 4 when a window-local step such as ``demean`` needs the
float window first). Flash = the model bytes (the C array).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edge_runtime.errors import ManifestError
from edge_runtime.manifest import load_manifest

_ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "float32": 4}
_WINDOW_LOCAL = ("demean",)  # steps that need the whole float window before quantising


@dataclass(frozen=True)
class McuFootprint:
    """Bytes a TFLite Micro firmware needs for one model, and its MACs per window."""

    arena_bytes: int  # smallest tensor arena that allocated (TFLM reference kernels)
    input_buffer_bytes: int  # one (C, T) window in the dtype the firmware fills
    model_bytes: int  # the flatbuffer in flash
    macs: int | None  # multiply-accumulates per window (manifest model.macs)
    runtime: str  # TFLM version that measured the arena
    ops: tuple[str, ...]  # builtin ops the firmware registers

    @property
    def ram_bytes(self) -> int:
        return self.arena_bytes + self.input_buffer_bytes

    @property
    def total_bytes(self) -> int:
        return self.ram_bytes + self.model_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "ram_bytes": self.ram_bytes, "total_bytes": self.total_bytes}


def mcu_footprint(model_dir: str | Path) -> McuFootprint:
    """Read the TFLite Micro sizes of a verified model folder.

    Raises
    ------
    ManifestError : no ``c-source`` artifact, or it was exported without the TFLM check.
    ArtifactMissingError, ChecksumError : see `edge_runtime.manifest.load_manifest`.
    """
    manifest = load_manifest(model_dir)
    raw = manifest.raw
    source = next((a for a in raw["artifacts"] if a.get("format") == "c-source"), None)
    if source is None:
        raise ManifestError(f"{manifest.root} has no C array (model_data.cc); export with "
                            "--formats onnx,tflite,c for a microcontroller.")
    tflm = source.get("tflm") or {}
    if not tflm.get("checked"):
        why = tflm.get("reason", "it was exported before the TFLite Micro check existed")
        raise ManifestError(f"{manifest.root}/{source['path']} has no TFLite Micro arena size "
                            f"({why}); re-export with `pip install 'dlink[mcu]'`.")
    spec = manifest.input
    dtype = "float32" if any(op.get("op") in _WINDOW_LOCAL for op in spec.preprocessing) else \
        _input_dtype(raw)
    macs = raw.get("model", {}).get("macs")
    return McuFootprint(arena_bytes=int(tflm["arena_bytes"]),
                        input_buffer_bytes=spec.n_chans * spec.n_times * _ITEMSIZE.get(dtype, 4),
                        model_bytes=int(tflm["model_bytes"]),
                        macs=None if macs is None else int(macs),
                        runtime=str(tflm.get("runtime")), ops=tuple(tflm.get("ops", ())))


def estimate_latency_ms(footprint: McuFootprint, macs_per_s: float | None) -> float | None:
    """MACs / stated MAC rate, in ms: an estimate, never a measurement."""
    if footprint.macs is None or not macs_per_s:
        return None
    return footprint.macs / macs_per_s * 1e3


def _input_dtype(raw: dict) -> str:
    """Input dtype of the int8 TFLite model the C array embeds."""
    tfl = next((a for a in raw["artifacts"]
                if a.get("format") == "tflite" and a.get("precision") == "int8"), {})
    io = tfl.get("io") or {}
    return str((io.get("input") or {}).get("dtype") or io.get("dtype") or "int8")
