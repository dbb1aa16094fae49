"""Stateful rational resampling from a device rate to the manifest rate.

Used when a device streams at another rate than the model's ``sfreq``. The filter is the
one `scipy.signal.resample_poly` designs (Kaiser-windowed FIR, beta 5, 10 zero crossings
per side), applied **causally** with `scipy.signal.lfilter` and its state carried, so that
resampling in chunks equals resampling the whole stream in one call (the basis of
streaming ≡ offline at a device rate). Being causal, it delays the signal by
``(len(h) - 1) / 2`` samples of the up-sampled rate; `resample_poly` over a whole file is
zero-phase instead, so results from a stream resampled here differ slightly from those on a
recording resampled offline — streaming ≡ offline is exact only at the manifest rate, or
when the offline side uses this same resampler (`classify_offline` with ``sfreq=``).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from edge_runtime.errors import SourceError


def rational_ratio(src: float, dst: float, max_den: int = 1000) -> tuple[int, int]:
    """(up, down) with dst/src == up/down exactly (to 1e-9), else SourceError."""
    if src <= 0 or dst <= 0:
        raise SourceError(f"sampling rates must be positive, got {src} Hz -> {dst} Hz.")
    frac = Fraction(dst / src).limit_denominator(max_den)
    if abs(frac.numerator / frac.denominator - dst / src) > 1e-9:
        raise SourceError(
            f"cannot resample {src:g} Hz to {dst:g} Hz with a rational factor "
            f"(denominator <= {max_den}); record at {dst:g} Hz."
        )
    return frac.numerator, frac.denominator


class StreamingResampler:
    """Causal polyphase-equivalent resampler with carried state.

    ``process(x, bad)`` takes (C, n) float64 finite samples at ``src`` Hz and an (n,) bool
    mask of substituted samples; returns the samples at ``dst`` Hz and a mask that is True
    for every output sample whose filter support touched a masked input sample.
    """

    def __init__(self, src: float, dst: float, n_chans: int):
        from scipy.signal import firwin

        self.up, self.down = rational_ratio(src, dst)
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        self.h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        self._support = np.ones(len(self.h))
        self._n_chans = n_chans
        self.reset()

    @property
    def delay(self) -> float:
        """Group delay in output samples (divide by the output rate for seconds)."""
        return (len(self.h) - 1) / 2 / self.down

    def reset(self) -> None:
        self._zi = np.zeros((self._n_chans, len(self.h) - 1))
        self._zi_bad = np.zeros(len(self.h) - 1)
        self._pos = 0  # samples seen so far at the up-sampled rate

    def process(self, x: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.signal import lfilter

        n = x.shape[1]
        if n == 0:
            return x, bad
        xu = np.zeros((x.shape[0], n * self.up))  # (C, n*up) zero-stuffed
        xu[:, :: self.up] = x
        yu, self._zi = lfilter(self.h, [1.0], xu, axis=1, zi=self._zi)
        bu = np.zeros(n * self.up)
        bu[:: self.up] = bad
        mu, self._zi_bad = lfilter(self._support, [1.0], bu, zi=self._zi_bad)
        first = (-self._pos) % self.down  # first local index on the output grid
        self._pos += n * self.up
        return yu[:, first :: self.down], mu[first :: self.down] > 0.5
