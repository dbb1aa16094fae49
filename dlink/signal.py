"""`SignalSpec`: the one description of the model input, from data layer to manifest.

The same object travels into the student config, the calibration set and the export
manifest, so nobody re-derives channel order, rate or scaling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

ELEMENTWISE_OPS = ("clip",)  # sample-wise steps the model units are computed with


@dataclass(frozen=True)
class SignalSpec:
    """What one model input window is.

    Parameters
    ----------
    ch_names : channel names in the order the model expects them.
    sfreq : sampling rate in Hz of the window.
    n_times : samples per window (window length = n_times / sfreq seconds).
    units : units of the raw samples handed to preprocessing ("uV").
    input_scale : model input = samples (µV) * input_scale. 0.01 gives CBraMod's µV/100.
    preprocessing : ordered, window-local or causal steps applied before the model, as
        plain dicts (e.g. ``{"op": "clip", "uV": 50.0}``: clamp every sample to ±50 µV);
        written into the manifest, applied in float on the board before the input is
        quantised, and applied by `to_model_units` in training.
    """

    ch_names: tuple[str, ...]
    sfreq: float
    n_times: int
    units: str = "uV"
    input_scale: float = 0.01
    preprocessing: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def n_chans(self) -> int:
        return len(self.ch_names)

    @property
    def window_s(self) -> float:
        return self.n_times / self.sfreq

    def steps(self) -> list[dict]:
        """Preprocessing steps the board must apply, ending with the input scaling."""
        return [*map(dict, self.preprocessing), {"op": "scale", "factor": self.input_scale}]

    @property
    def clip_uv(self) -> float | None:
        """The ±bound in µV of the ``clip`` step, if there is one."""
        bounds = [float(p["uV"]) for p in self.preprocessing if p.get("op") == "clip"]
        return min(bounds) if bounds else None

    def with_clip(self, uv: float | None) -> SignalSpec:
        """This spec with its ``clip`` step set to ±``uv`` µV (None removes it)."""
        kept = tuple(p for p in self.preprocessing if p.get("op") != "clip")
        if uv is None:
            return replace(self, preprocessing=kept)
        if not uv > 0:
            raise ValueError(f"clip bound must be > 0 µV, got {uv}.")
        return replace(self, preprocessing=(*kept, {"op": "clip", "uV": float(uv)}))

    def to_model_units(self, X_uv: np.ndarray) -> np.ndarray:
        """(n, C, T) µV windows -> float32 model input: the ``clip`` step, then the scale.

        This is the model's view of a window in training, calibration and evaluation; the
        board applies the same steps from the manifest. Filtering steps (``sosfilt``) run
        on the continuous recording before windows are cut, not here.
        """
        X = np.asarray(X_uv, dtype=np.float32)
        if self.clip_uv is not None:
            X = np.clip(X, -self.clip_uv, self.clip_uv)
        return (X * np.float32(self.input_scale)).astype(np.float32)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_names"] = list(self.ch_names)
        d["preprocessing"] = [dict(p) for p in self.preprocessing]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SignalSpec:
        return cls(
            ch_names=tuple(d["ch_names"]),
            sfreq=float(d["sfreq"]),
            n_times=int(d["n_times"]),
            units=d.get("units", "uV"),
            input_scale=float(d.get("input_scale", 0.01)),
            preprocessing=tuple(d.get("preprocessing", ())),
        )
