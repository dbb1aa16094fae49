"""Bring-your-own EEG: a generic ``.npz`` data set, validated with clear errors.

Required arrays: ``X`` (n, channels, samples) in µV, ``y`` (n,) integer labels 0..K-1,
``sfreq`` (scalar, Hz), ``ch_names`` (channels,). Optional: ``subject`` (n,) and
``class_names`` (K,). Windows are resampled to ``sfreq`` (default 200 Hz) with MNE and
cropped to a whole number of seconds (the models tokenise 1-s patches).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlink.data.cache import cached
from dlink.data.windows import Windows
from dlink.errors import DataFormatError, DataNotFoundError

REQUIRED = ("X", "y", "sfreq", "ch_names")


def _validate(path: Path, z) -> tuple[np.ndarray, np.ndarray, float, list[str]]:
    missing = [k for k in REQUIRED if k not in z]
    if missing:
        raise DataFormatError(
            f"{path.name} lacks array(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}"
        )
    X, y = z["X"], z["y"]
    if X.ndim != 3:
        raise DataFormatError(f"{path.name}: X must be (n, channels, samples), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise DataFormatError(f"{path.name}: X must be floating point µV, got dtype {X.dtype}")
    if y.ndim != 1 or len(y) != len(X):
        raise DataFormatError(f"{path.name}: y must be (n,) = ({len(X)},), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{path.name}: y must be integer class indices, got {y.dtype}")
    ch_names = [str(c) for c in np.atleast_1d(z["ch_names"])]
    if len(ch_names) != X.shape[1]:
        raise DataFormatError(f"{path.name}: {len(ch_names)} ch_names for {X.shape[1]} channels")
    sfreq = float(z["sfreq"])
    if not sfreq > 0:
        raise DataFormatError(f"{path.name}: sfreq must be a positive rate in Hz, got {sfreq}")
    bad = ~np.isfinite(X).all(axis=(0, 2))
    if bad.any():
        names = [ch_names[i] for i in np.flatnonzero(bad)]
        raise DataFormatError(f"{path.name}: X has NaN/Inf in channel(s) {', '.join(names)}")
    return X, y, sfreq, ch_names


def load(path: Path, sfreq: float = 200.0, use_cache: bool = True) -> Windows:
    """Windows from a generic ``.npz``; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"data file {path} does not exist")
    return cached(path.stem, {"sfreq": sfreq}, [path], lambda: _read(path, sfreq), use_cache)


def _read(path: Path, sfreq: float) -> Windows:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataFormatError(f"{path} is not a readable .npz: {exc}") from exc
    with z:
        X, y, src_sfreq, ch_names = _validate(path, z)
        subject = z["subject"].astype(str) if "subject" in z else np.full(len(X), "all")
        n_classes = int(y.max()) + 1 if len(y) else 0
        class_names = (
            [str(c) for c in z["class_names"]]
            if "class_names" in z
            else [str(i) for i in range(n_classes)]
        )
    if len(subject) != len(X):
        raise DataFormatError(
            f"{path.name}: subject has {len(subject)} entries for {len(X)} windows"
        )
    if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
        raise DataFormatError(
            f"{path.name}: labels must lie in 0..{len(class_names) - 1}, got {y.min()}..{y.max()}"
        )
    X = X.astype(np.float64)
    if abs(src_sfreq - sfreq) > 1e-6:
        from mne.filter import resample

        X = resample(X, up=sfreq, down=src_sfreq, axis=-1, verbose="error")
    n_times = int(X.shape[-1] // sfreq * sfreq)
    if n_times == 0:
        raise DataFormatError(
            f"{path.name}: windows are {X.shape[-1] / sfreq:g} s long; the minimum is 1 s "
            f"({int(sfreq)} samples at {sfreq:g} Hz, one teacher patch)")
    return Windows(
        X=X[..., :n_times].astype(np.float32),
        y=y.astype(np.int64),
        subject=subject,
        sfreq=sfreq,
        ch_names=ch_names,
        class_names=class_names,
        name=path.stem,
        info={"files": [path.name], "params": {"sfreq": sfreq, "source_sfreq": src_sfreq}},
    )
