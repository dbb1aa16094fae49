"""The manifest's preprocessing ops, split into a causal filter stage and a window stage.

``input.preprocessing`` is an ordered list applied to µV samples. The runtime splits it at
its last ``sosfilt``:

- the **filter stage** is every op up to and including the last ``sosfilt`` (``clip``,
  ``scale`` and ``sosfilt``). It runs on the continuous stream in float64; each
  ``sosfilt`` is a causal IIR filter whose state starts at zero at stream start and is
  carried across pushes (exactly ``scipy.signal.sosfilt`` over the whole recording, so
  chunking does not change a sample). Only this stage needs ``scipy.signal``, imported when
  a manifest has a filter; a manifest without one never imports scipy;
- the **window stage** is the rest (``clip``, ``scale``, ``demean``), applied in place to
  each float32 window just before the model. ``clip`` and ``scale`` act sample by sample,
  so running them per window equals running them on the stream; ``demean`` is per window
  and channel by definition.

``clip`` (``{"op": "clip", "uV": 50.0}``) clamps every sample to ±``uV`` in the units it
receives (µV when it comes first), in float, before the int8 model quantises its input:
the model was trained on clamped windows, and the int8 input range is set for them.

An ``sosfilt`` after a ``demean`` has no causal streaming meaning and is refused.

Non-finite samples never reach a filter: `hold_fill` replaces each NaN/±Inf by the last
finite value of its channel (0 µV before the first one) and reports which samples were
replaced, so the filter state stays finite and the stream can go on.
"""

from __future__ import annotations

import math

import numpy as np

from edge_runtime.errors import ManifestError

STREAM_OPS = ("clip", "scale", "sosfilt")
WINDOW_OPS = ("clip", "scale", "demean")


def split_ops(ops: tuple[dict, ...] | list[dict]) -> tuple[list[dict], list[dict]]:
    """(filter-stage ops, window-stage ops) of an ordered op list; see the module docstring."""
    ops = list(ops)
    names = [op.get("op") for op in ops]
    for name in names:
        if name not in STREAM_OPS and name not in WINDOW_OPS:
            raise ManifestError(f"preprocessing op {name!r} is unknown to this runtime.")
    last_sos = max((i for i, n in enumerate(names) if n == "sosfilt"), default=-1)
    if "demean" in names[:last_sos]:
        raise ManifestError(
            "preprocessing applies 'sosfilt' after a window-local op ('demean'); a causal "
            "filter must come first to be streamable."
        )
    return ops[:last_sos + 1], ops[last_sos + 1:]


def validate_ops(ops: tuple[dict, ...] | list[dict], n_chans: int) -> None:
    """ManifestError unless the ops are known, well-formed and streamable."""
    stream, window = split_ops(ops)
    StreamStage(stream, n_chans)
    WindowStage(window)


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


def _bound(op: dict) -> float:
    try:
        bound = float(op["uV"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"clip op needs a numeric 'uV' bound: {exc}") from exc
    if not (np.isfinite(bound) and bound > 0):
        raise ManifestError(f"clip bound must be finite and > 0, got {bound}.")
    return bound


def _param(op: dict):
    """The parsed parameter of one op: factor, bound, sos array, or None (demean)."""
    kind = op["op"]
    if kind == "scale":
        return _factor(op)
    if kind == "clip":
        return _bound(op)
    return _sos_array(op) if kind == "sosfilt" else None


class StreamStage:
    """The filter stage on a (C, n) stream, in float64, with per-filter state.

    ``process`` on consecutive chunks equals ``process`` on their concatenation. Without a
    ``sosfilt`` the stage is empty and ``process`` returns its input unchanged.
    """

    def __init__(self, ops: list[dict], n_chans: int):
        self._steps = [(op["op"], _param(op)) for op in ops]
        self._n_chans = n_chans
        self._zi: list[np.ndarray | None] = []
        self.reset()

    @property
    def empty(self) -> bool:
        return not self._steps

    def reset(self) -> None:
        """Back to the stream-start state (zero filter state)."""
        self._zi = [
            np.zeros((p.shape[0], self._n_chans, 2)) if kind == "sosfilt" else None
            for kind, p in self._steps
        ]

    def process(self, x: np.ndarray) -> np.ndarray:
        """(C, n) finite samples -> (C, n) float64 (the input itself if the stage is empty)."""
        if not self._steps or x.shape[1] == 0:
            return x
        x = np.asarray(x, dtype=np.float64)
        for i, (kind, p) in enumerate(self._steps):
            if kind == "scale":
                x = x * p
            elif kind == "clip":
                x = np.clip(x, -p, p)
            else:
                from scipy.signal import sosfilt  # lazy: only a manifest with a filter pays

                x, self._zi[i] = sosfilt(p, x, axis=1, zi=self._zi[i])
        return x


try:  # the clip ufunc itself: np.clip's Python wrapper costs as much as the clip
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    _clip = np.clip


class WindowStage:
    """The window-local ops, parsed once, applied to float32 windows."""

    def __init__(self, ops: list[dict]):
        self._steps = [(op["op"], _param(op)) for op in ops]

    def load_finite(self, dst: np.ndarray, src: np.ndarray) -> bool:
        """``dst = ops(src)`` for one window: (C, T) float32, C-contiguous, out of (C, T)
        samples of any float type (rounded to float32 first, as the stream buffer would).
        Returns False, with ``dst`` undefined, if ``src`` holds a non-finite sample; that
        is checked before a clip could hide an Inf."""
        dst[...] = src
        # x.x is finite iff every sample is (NaN and Inf propagate, squares never cancel);
        # a float32 overflow of huge finite samples only sends the caller down its exact
        # path. One BLAS pass, half the time of a sum.
        flat = dst.reshape(-1)
        if not math.isfinite(np.dot(flat, flat)):
            return False
        self.apply(dst)
        return True

    def fill(self, out: np.ndarray, windows: list[np.ndarray]) -> np.ndarray:
        """Model input from float32 windows: ``out[i] = ops(windows[i])``.

        ``out`` is (B, C, T) float32 and returned; each window a (C, T) float32 array or
        view. The first op, if sample-wise, is applied while copying (one pass less)."""
        first = self._steps[0] if self._steps else ("copy", None)
        for dst, src in zip(out, windows):
            if first[0] == "clip":
                _clip(src, -first[1], first[1], out=dst)
            elif first[0] == "scale":
                np.multiply(src, first[1], out=dst)
            else:
                dst[...] = src
        return self.apply(out, start=0 if first[0] in ("copy", "demean") else 1)

    def apply(self, w: np.ndarray, start: int = 0) -> np.ndarray:
        """(..., C, T) float32, modified in place by the ops from ``start`` on and returned."""
        for kind, p in self._steps[start:]:
            if kind == "demean":  # mean accumulated in float64, result rounded once
                mean = w.mean(axis=-1, keepdims=True, dtype=np.float64)
                np.subtract(w, mean, out=w, casting="same_kind")
            elif kind == "clip":
                _clip(w, -p, p, out=w)
            else:
                np.multiply(w, p, out=w)
        return w


def apply_window_ops(ops: list[dict], w: np.ndarray) -> np.ndarray:
    """Window-local ops on (B, C, T) samples; returns a new float32 array (model input)."""
    w = np.asarray(w, dtype=np.float32)
    return WindowStage(ops).fill(np.empty(w.shape, np.float32), list(w))


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
