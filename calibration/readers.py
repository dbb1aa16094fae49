"""One calibration stream, two consumers: ONNX Runtime and the LiteRT (TFLite) quantiser.

Both quantisers see the same windows, one at a time, as (1, C, T) float32 in model units,
in the same order. ONNX Runtime pulls them through its one-method protocol,
`CalibrationDataReader.get_next`; ai-edge-quantizer takes a dict ``{signature_key:
[{input_name: array}, ...]}``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from calibration.dataset import CalibrationSet


def iter_windows(data: CalibrationSet | np.ndarray) -> Iterator[np.ndarray]:
    """Yield each window as a contiguous (1, C, T) float32 array in model units."""
    X = data.X if isinstance(data, CalibrationSet) else np.asarray(data)
    assert X.ndim == 3, f"calibration windows must be (n, C, T), got shape {X.shape}"
    for x in X:
        yield np.ascontiguousarray(x[None], dtype=np.float32)  # (1, C, T)


class OrtCalibrationReader(CalibrationDataReader):
    """ONNX Runtime calibration reader: ``get_next()`` -> ``{input_name: (1, C, T)}``.

    Parameters
    ----------
    data : a `CalibrationSet` or an (n, C, T) float32 array in model units.
    input_name : the ONNX graph input name (``"eeg"`` for DLink exports).
    """

    def __init__(self, data: CalibrationSet | np.ndarray, input_name: str = "eeg"):
        self._data = data
        self.input_name = input_name
        self._it = iter_windows(data)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        """Start again from the first window."""
        self._it = iter_windows(self._data)


def representative_dataset(
    data: CalibrationSet | np.ndarray,
    input_name: str,
    signature_key: str = "serving_default",
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration data in ai-edge-quantizer's format.

    Parameters
    ----------
    data : a `CalibrationSet` or an (n, C, T) float32 array in model units.
    input_name : the signature's input name in the float TFLite model (litert-torch
        names it after the forward argument, e.g. ``"args_0"``).
    signature_key : the TFLite signature to calibrate.

    Returns
    -------
    dict
        ``{signature_key: [{input_name: (1, C, T) float32}, ...]}``.
    """
    return {signature_key: [{input_name: x} for x in iter_windows(data)]}
