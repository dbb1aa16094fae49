"""Calibration sets for int8 quantisation, and the readers both quantisers consume.

``from_windows(windows, split.train, split.val + split.test)`` draws a set balanced by
class and subject from training subjects only; ``save_calibration_set`` writes it as
``.npz`` (X in model units, µV * input_scale) plus a JSON manifest with its sha256.
``OrtCalibrationReader`` feeds ONNX Runtime's ``quantize_static``; ``representative_dataset``
feeds ai-edge-quantizer. Both yield the same (1, C, T) windows in the same order.
"""

from __future__ import annotations

from calibration.dataset import (
    DEFAULT_N_WINDOWS,
    X_UNITS,
    CalibrationSet,
    build_calibration_set,
    from_windows,
    load_calibration_set,
    save_calibration_set,
    stratified_indices,
    to_model_units,
)
from calibration.readers import OrtCalibrationReader, iter_windows, representative_dataset

__all__ = [
    "DEFAULT_N_WINDOWS",
    "X_UNITS",
    "CalibrationSet",
    "OrtCalibrationReader",
    "build_calibration_set",
    "from_windows",
    "iter_windows",
    "load_calibration_set",
    "representative_dataset",
    "save_calibration_set",
    "stratified_indices",
    "to_model_units",
]
