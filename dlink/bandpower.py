"""Log-band-power + logistic regression: the classical baseline every table carries.

Features: for each channel, the log of the mean Welch power (1-s Hann segments, 50 %
overlap) in the delta 1-4, theta 4-8, alpha 8-13, beta 13-30 and gamma 30-45 Hz bands,
so C x 5 features; standardised, then L2 logistic regression with balanced class weights.
"""

from __future__ import annotations

import numpy as np

BANDS = {"delta": (1, 4), "theta": (4, 8), "alpha": (8, 13), "beta": (13, 30), "gamma": (30, 45)}


def log_band_power(X: np.ndarray, sfreq: float) -> np.ndarray:
    """(n, C, T) µV -> (n, C * len(BANDS)) log band powers (log µV²/Hz)."""
    from scipy.signal import welch

    freqs, psd = welch(X, fs=sfreq, nperseg=int(sfreq), axis=-1)  # (n, C, F)
    feats = [psd[..., (freqs >= lo) & (freqs < hi)].mean(axis=-1) for lo, hi in BANDS.values()]
    return np.log(np.stack(feats, axis=-1) + 1e-12).reshape(len(X), -1)  # (n, C*5)


class BandPowerLR:
    """``fit(X, y, sfreq)`` / ``predict_proba(X)`` on (n, C, T) µV windows."""

    def __init__(self, C: float = 1.0, seed: int = 0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LogisticRegression(
            C=C, class_weight="balanced", max_iter=2000, random_state=seed))
        self.sfreq = None

    def fit(self, X: np.ndarray, y: np.ndarray, sfreq: float) -> BandPowerLR:
        self.sfreq = sfreq
        self.model.fit(log_band_power(X, sfreq), y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(log_band_power(X, self.sfreq))
