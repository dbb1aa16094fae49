"""`SignalSpec`: the one description of the model input, from data layer to manifest.

The same object travels into the student config, the calibration set and the export
manifest, so nobody re-derives channel order, rate or scaling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
        plain dicts (e.g. ``{"op": "scale", "factor": 0.01}``); written into the manifest.
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
