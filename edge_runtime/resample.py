"""Stateful rational resampling from a device rate to the manifest rate.

Used when a device streams at another rate than the model's ``sfreq``. The filter is the
one `scipy.signal.resample_poly` designs (Kaiser-windowed FIR, beta 5, 10 zero crossings
per side), applied **causally** in polyphase form with the last input samples carried, so
that resampling in chunks equals resampling the whole stream in one call (the basis of
streaming ≡ offline at a device rate). Polyphase: each output sample is one dot product of
``ceil(len(h) / up)`` input samples with the filter phase it falls on, so the work is
``n_out * len(h) / up`` multiply-adds per channel — never the ``up`` zero-stuffed samples
and the ``down - 1`` discarded outputs a plain filter at the up-sampled rate would compute.
Being causal, it delays the signal by
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
    """Causal polyphase resampler with carried state.

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
        self._k = -(-len(self.h) // self.up)  # input samples under the filter: ceil(len(h) / up)
        self._support = np.ones(len(self.h))
        self._n_chans = n_chans
        self.reset()

    @property
    def delay(self) -> float:
        """Group delay in output samples (divide by the output rate for seconds)."""
        return (len(self.h) - 1) / 2 / self.down

    def reset(self) -> None:
        keep = self._k - 1 + self.down  # enough history for any alignment (below)
        self._hist = np.zeros((self._n_chans, keep))  # the last input samples (zeros before)
        self._hist_bad = np.zeros(keep)
        self._seen = 0  # input samples seen so far

    def process(self, x: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy.signal import upfirdn

        n = x.shape[1]
        if n == 0:
            return x, bad
        # `upfirdn` (polyphase, in C) filters buf = the last H history samples + x and keeps
        # every down-th up-sampled position counted from buf's first sample. H >= K - 1 gives
        # the filter its full support, and H = seen (mod down) puts buf's start on the global
        # output grid (up-sampled positions that are multiples of down; gcd(up, down) = 1).
        hist = self._k - 1 + (self._seen - (self._k - 1)) % self.down
        buf = np.concatenate([self._hist[:, -hist:], x], axis=1)  # (C, H + n)
        buf_bad = np.concatenate([self._hist_bad[-hist:], np.asarray(bad, dtype=float)])
        first = -(-hist * self.up // self.down)  # outputs before it belong to earlier calls
        stop = -(-(hist + n) * self.up // self.down)
        y = upfirdn(self.h, buf, self.up, self.down, axis=1)[:, first:stop]
        out_bad = upfirdn(self._support, buf_bad, self.up, self.down)[first:stop] > 0.5
        keep = self._hist.shape[1]
        self._hist = np.concatenate([self._hist, x], axis=1)[:, -keep:]
        self._hist_bad = np.concatenate([self._hist_bad, buf_bad[hist:]])[-keep:]
        self._seen += n
        return y, out_bad
