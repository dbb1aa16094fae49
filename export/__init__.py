"""Export stage: a saved student in, int8 ONNX / TFLite / C array and manifest.json out.

``export_student(student_dir, out_dir, data="eegmat")`` is the whole pipeline; the
``dlink-export`` command wraps it. See `export.pipeline` for the steps and
``docs/manifest.md`` for the manifest it writes.

Names are imported on first use, so ``dlink-export --help`` does not wait for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ExportError": "export.errors",
    "GateError": "export.errors",
    "OutputExistsError": "export.errors",
    "GateThresholds": "export.parity",
    "ParityResult": "export.parity",
    "FORMATS": "export.pipeline",
    "export_student": "export.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
