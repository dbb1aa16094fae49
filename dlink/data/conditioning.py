"""Conditioning filters: the causal IIR filters a model's input is expected to have passed.

EEGMAT was band-limited and notched before publication (``results/eegmat_spectra.md``,
``bench/eegmat_spectra.py``: channel means of 0.06 µV, power falling 18 dB below alpha at
30-45 Hz and 36 dB above 55 Hz, the 50 Hz line a further 4 dB below that floor), so a model
trained on it expects conditioned EEG; a raw amplifier stream with a DC offset or mains
hum is something else. A conditioning preset names filters applied, in order, to the
continuous recording at the model rate, *after* resampling and *before* windows are cut:

``none``     nothing (the default; the windows `load_windows` returns unchanged)
``mains50``  high-pass 0.5 Hz (Butterworth, order 2), low-pass 45 Hz (Butterworth,
             order 4), notch 50 Hz (Q 30)
``mains60``  the same with a 60 Hz notch

Each filter is a ``{"op": "sosfilt", "sos": [[b0, b1, b2, 1, a1, a2], ...]}`` step, the
runtime's causal ``sosfilt`` op (state from zero at the start of a recording or stream),
so training applies exactly what the manifest tells the board to apply.
"""

from __future__ import annotations

import numpy as np

from dlink.errors import ConfigError

PRESETS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "none": (),
    "mains50": (("highpass", 0.5, 2), ("lowpass", 45.0, 4), ("notch", 50.0, 30.0)),
    "mains60": (("highpass", 0.5, 2), ("lowpass", 45.0, 4), ("notch", 60.0, 30.0)),
}


def conditioning_ops(name: str, sfreq: float) -> list[dict]:
    """The ``sosfilt`` steps of preset ``name`` designed for ``sfreq`` Hz."""
    from scipy.signal import butter, iirnotch, tf2sos

    if name not in PRESETS:
        raise ConfigError(f"unknown conditioning {name!r}; choose from {', '.join(PRESETS)}")
    ops = []
    for kind, freq, param in PRESETS[name]:
        if freq >= sfreq / 2:
            raise ConfigError(f"conditioning {name!r}: {kind} at {freq:g} Hz needs a rate above "
                              f"{2 * freq:g} Hz, the data is at {sfreq:g} Hz")
        if kind == "notch":
            sos = tf2sos(*iirnotch(freq, param, fs=sfreq))
            design = f"notch {freq:g} Hz, Q {param:g}"
        else:
            sos = butter(int(param), freq, btype=kind, fs=sfreq, output="sos")
            design = f"Butterworth {kind} {freq:g} Hz, order {int(param)}"
        ops.append({"op": "sosfilt", "sos": np.asarray(sos).tolist(), "design": design})
    return ops


def apply_conditioning(data: np.ndarray, ops: list[dict]) -> np.ndarray:
    """(C, T) continuous µV -> (C, T) float64, each ``sosfilt`` step causal from zero state
    (what the board's stream stage computes over the same recording)."""
    from scipy.signal import sosfilt

    x = np.asarray(data, dtype=np.float64)
    for op in ops:
        x = sosfilt(np.asarray(op["sos"], dtype=np.float64), x, axis=-1)
    return x
