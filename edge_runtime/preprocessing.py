"""The manifest's preprocessing ops, split into a causal stream stage and a window stage.

``input.preprocessing`` is an ordered list applied to µV samples. The runtime splits it:

- the **stream stage** is the longest prefix made of ``scale`` and ``sosfilt``. It runs on
  the continuous stream; each ``sosfilt`` is a causal IIR filter whose state starts at
  zero at stream start and is carried across pushes (exactly ``scipy.signal.sosfilt`` over
  the whole recording, so chunking does not change a sample);
- the **window stage** is the rest, made of ``demean`` (per window, per channel) and
  ``scale``, applied to each window on its own.

An ``sosfilt`` after a ``demean`` has no causal streaming meaning and is refused.

Non-finite samples never reach a filter: `hold_fill` replaces each NaN/±Inf by the last
finite value of its channel (0 µV before the first one) and reports which samples were
replaced, so the filter state stays finite and the stream can go on.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.errors import ManifestError

STREAM_OPS = ("scale", "sosfilt")
WINDOW_OPS = ("scale", "demean")


def split_ops(ops: tuple[dict, ...] | list[dict]) -> tuple[list[dict], list[dict]]:
    """(stream ops, window ops) of an ordered op list; see the module docstring."""
    stream: list[dict] = []
    window: list[dict] = []
    for op in ops:
        name = op.get("op")
        if not window and name in STREAM_OPS:
            stream.append(op)
        elif name in WINDOW_OPS:
            window.append(op)
        elif name == "sosfilt":
            raise ManifestError(
                "preprocessing applies 'sosfilt' after a window-local op "
                f"({window[-1]['op']!r}); a causal filter must come first to be streamable."
            )
        else:
            raise ManifestError(f"preprocessing op {name!r} is unknown to this runtime.")
    return stream, window


def validate_ops(ops: tuple[dict, ...] | list[dict], n_chans: int) -> None:
    """ManifestError unless the ops are known, well-formed and streamable."""
    stream, window = split_ops(ops)
    StreamStage(stream, n_chans)
    for op in window:
        if op["op"] == "scale":
            _factor(op)


def _sos_array(op: dict) -> np.ndarray:
    try:
        sos = np.asarray(op["sos"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"sosfilt op needs 'sos' as rows of 6 numbers: {exc}") from exc
    if sos.ndim != 2 or sos.shape[1] != 6 or sos.shape[0] < 1:
        raise ManifestError(f"sosfilt 'sos' must have shape (n_sections, 6), got {sos.shape}.")
    if not np.all(np.isfinite(sos)) or not np.allclose(sos[:, 3], 1.0):
        raise ManifestError("sosfilt 'sos' must be finite with a0 == 1 in every section.")
    return sos


def _factor(op: dict) -> float:
    try:
        factor = float(op["factor"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"scale op needs a numeric 'factor': {exc}") from exc
    if not np.isfinite(factor):
        raise ManifestError(f"scale factor must be finite, got {factor}.")
    return factor


class StreamStage:
    """The causal ops on a (C, n) float64 stream, with per-filter state.

    ``process`` on consecutive chunks equals ``process`` on their concatenation.
    """

    def __init__(self, ops: list[dict], n_chans: int):
        self._steps: list[tuple[str, object]] = []
        for op in ops:
            if op["op"] == "scale":
                self._steps.append(("scale", _factor(op)))
            else:
                self._steps.append(("sosfilt", _sos_array(op)))
        self._n_chans = n_chans
        self._zi: list[np.ndarray | None] = []
        self.reset()

    def reset(self) -> None:
        """Back to the stream-start state (zero filter state)."""
        self._zi = [
            np.zeros((p.shape[0], self._n_chans, 2)) if kind == "sosfilt" else None
            for kind, p in self._steps
        ]

    def process(self, x: np.ndarray) -> np.ndarray:
        """(C, n) finite float64 -> (C, n) float64."""
        if x.shape[1] == 0:
            return x
        for i, (kind, p) in enumerate(self._steps):
            if kind == "scale":
                x = x * p
            else:
                from scipy.signal import sosfilt  # lazy: ~1 s import on a Pi

                x, self._zi[i] = sosfilt(p, x, axis=1, zi=self._zi[i])
        return x


def apply_window_ops(ops: list[dict], w: np.ndarray) -> np.ndarray:
    """Window-local ops on (B, C, T) float64; returns float32 model input."""
    for op in ops:
        if op["op"] == "demean":
            w = w - w.mean(axis=-1, keepdims=True)
        else:
            w = w * _factor(op)
    return w.astype(np.float32)


def hold_fill(x: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace non-finite samples by the channel's last finite value.

    Parameters
    ----------
    x : (C, n) float64 samples.
    last : (C,) last finite value per channel before ``x`` (0.0 at stream start).

    Returns
    -------
    filled : (C, n) float64, finite.
    bad : (n,) bool, True where any channel was non-finite.
    last : (C,) updated last finite values.
    """
    finite = np.isfinite(x)
    if finite.all():
        return x, np.zeros(x.shape[1], bool), (x[:, -1].copy() if x.shape[1] else last)
    n = x.shape[1]
    idx = np.where(finite, np.arange(n), -1)  # (C, n) index of a finite sample or -1
    np.maximum.accumulate(idx, axis=1, out=idx)  # index of the last finite sample so far
    padded = np.concatenate([x, last[:, None]], axis=1)  # column n holds `last`
    filled = np.take_along_axis(padded, np.where(idx < 0, n, idx), axis=1)
    return filled, ~finite.all(axis=0), filled[:, -1].copy()
