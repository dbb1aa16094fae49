"""``manifest.json``: what `dlink-export` promises the board (``docs/manifest.md``).

Definitions of the numbers this module records:

* ``model.parameters``: trainable tensors of the PyTorch model as trained
  (`dlink.nn_utils.count_parameters`); ``parameter_bytes_fp32`` = 4 bytes each.
* ``model.parameter_bytes_int8``: bytes of the constant tensors inside the int8 model
  (weights int8, biases int32; BatchNorm folded into the convolutions), taken from the
  int8 ONNX file when one is written (the model's own graph), else from the int8 TFLite
  file, whose layout for XNNPACK may add zero taps (its own ``parameter_bytes``). Every artifact's
  ``bytes`` is its whole file, container overhead included.
* ``model.macs``: multiply-accumulates of one (1, C, T) window (`dlink.nn_utils.count_macs`).
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

SCHEMA = "dlink-manifest/1"
MANIFEST_NAME = "manifest.json"
TOOLCHAIN = (
    "dlink", "torch", "numpy", "onnx", "onnxscript", "onnxsim", "onnxruntime",
    "litert-torch", "ai-edge-quantizer", "ai-edge-litert",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_entry(root: Path, rel: str, fmt: str, precision: str, **extra) -> dict:
    """One ``artifacts`` entry: path, format, precision, bytes and sha256 of the file."""
    path = root / rel
    return {
        "path": rel,
        "format": fmt,
        "precision": precision,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        **extra,
    }


def toolchain_versions() -> dict[str, str]:
    """Installed versions of the packages that produced the artifacts."""
    versions = {"python": platform.python_version()}
    for name in TOOLCHAIN:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def input_section(signal, hop: int, input_name: str) -> dict:
    """The ``input`` contract: what the board pushes and how it becomes the model input."""
    return {
        "name": input_name,
        "layout": "NCT",
        "dtype": "float32",
        "ch_names": list(signal.ch_names),
        "sfreq": float(signal.sfreq),
        "n_times": int(signal.n_times),
        "hop": int(hop),
        "units": "uV",
        "preprocessing": signal.steps(),
    }


def output_section(class_names: list[str], output_name: str) -> dict:
    return {
        "name": output_name,
        "kind": "logits",
        "class_names": list(class_names),
        "meaning": "unnormalised class scores in class_names order; softmax gives "
        "probabilities, argmax the decision",
    }
