"""The calibration set: a few hundred training windows that fix the int8 ranges.

A calibration set is drawn from *training* subjects only, balanced across classes and,
within a class, across subjects, so that no subject or class dominates the activation
ranges. It is stored as one ``.npz`` plus a small JSON manifest beside it:

``calib.npz``
    ``X`` (n, C, T) float32 in **model units** (µV * ``SignalSpec.input_scale``, exactly
    the tensor the model sees), ``y`` (n,) int64, ``subject`` (n,) str, ``index`` (n,)
    int64 (row in the source windows), ``meta`` (JSON string: the fields below).
``calib.json``
    ``schema``, ``source``, ``x_units``, ``signal`` (the `SignalSpec`), ``preprocessing``
    (``SignalSpec.steps()``), ``class_names``, ``n_windows``, ``n_per_class``,
    ``n_per_subject``, ``subjects``, ``excluded_subjects``, ``seed``, ``npz`` and the
    npz's ``sha256`` and ``bytes``.

Shapes: n windows, C channels, T samples per window.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dlink.errors import ChecksumError, ConfigError, DataFormatError
from dlink.signal import SignalSpec

SCHEMA = "dlink-calibration/1"
X_UNITS = "model"  # X = µV * signal.input_scale; the tensor handed to the model
DEFAULT_N_WINDOWS = 256  # enough to settle min/max ranges; quantisation time grows linearly


@dataclass
class CalibrationSet:
    """Windows that calibrate the int8 quantisers, with where they came from.

    Attributes
    ----------
    X : (n, C, T) float32 in model units (µV * ``signal.input_scale``).
    y : (n,) int64 class index into ``class_names``.
    subject : (n,) str, the subject each window came from (all training subjects).
    signal : the model-input description (channels, rate, window, scaling).
    class_names : class names, in label order.
    source : the data set name or file the windows were drawn from.
    seed : seed of the draw.
    excluded_subjects : validation and test subjects the draw was forbidden to touch.
    index : (n,) row of each window in the source windows (provenance only).
    sha256 : sha256 of the ``.npz`` once saved or loaded, else None.
    clip : ``{"percentile", "model_units", "uV"}`` if X was clipped (`clipped`), else None.
    """

    X: np.ndarray
    y: np.ndarray
    subject: np.ndarray
    signal: SignalSpec
    class_names: list[str]
    source: str = "custom"
    seed: int = 0
    excluded_subjects: list[str] = field(default_factory=list)
    index: np.ndarray | None = None
    sha256: str | None = None
    clip: dict | None = None

    def __post_init__(self) -> None:
        n = len(self.X)
        assert self.X.ndim == 3, f"X must be (n, C, T), got shape {self.X.shape}"
        assert len(self.y) == n and len(self.subject) == n, "X, y and subject lengths differ"
        if self.index is None:
            self.index = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.X)

    @property
    def subjects(self) -> list[str]:
        """Distinct subjects, sorted."""
        return sorted(set(self.subject.tolist()))

    def info(self) -> dict:
        """JSON-ready description (everything in ``calib.json`` but the file checksum)."""
        per_class = Counter(self.y.tolist())
        return {
            "schema": SCHEMA,
            "source": self.source,
            "x_units": X_UNITS,
            "x_note": "X is the model input: µV * signal.input_scale",
            "signal": self.signal.to_dict(),
            "preprocessing": self.signal.steps(),
            "class_names": list(self.class_names),
            "n_windows": len(self),
            "n_per_class": {c: per_class.get(i, 0) for i, c in enumerate(self.class_names)},
            "n_per_subject": dict(sorted(Counter(self.subject.tolist()).items())),
            "subjects": self.subjects,
            "excluded_subjects": sorted(self.excluded_subjects),
            "seed": int(self.seed),
            "clip": self.clip,
        }

    def clipped(self, percentile: float) -> CalibrationSet:
        """A copy with X clipped to +-(the ``percentile``-th percentile of |X|).

        With global min/max calibration a handful of artifact samples (hundreds of µV)
        otherwise set the int8 input range, leaving ~3 µV steps for ordinary EEG. Clipping
        the calibration windows narrows every range that follows; on the board, samples
        beyond the clip saturate at the int8 limits. Off unless asked for.
        """
        if self.clip is not None:
            raise ConfigError(f"calibration set is already clipped ({self.clip}).")
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"clip percentile must lie in (50, 100], got {percentile}.")
        bound = float(np.percentile(np.abs(self.X), percentile))
        return replace(
            self,
            X=np.clip(self.X, -bound, bound).astype(np.float32),
            sha256=None,
            clip={"percentile": float(percentile), "model_units": bound,
                  "uV": bound / self.signal.input_scale},
        )


# ---------------------------------------------------------------------------------------
# Drawing


def stratified_indices(
    y: np.ndarray,
    subject: np.ndarray,
    allowed_subjects: Iterable[str],
    n_windows: int = DEFAULT_N_WINDOWS,
    seed: int = 0,
) -> np.ndarray:
    """Rows to calibrate on: balanced across classes, then across subjects in each class.

    Each class gets an equal share of ``n_windows`` (a class with too few windows gives its
    unused share to the others). Inside a class, subjects are visited round-robin in a
    seeded random order, each contributing its next (shuffled) window, so every allowed
    subject appears before any subject appears twice.

    Parameters
    ----------
    y : (n,) class index of every window.
    subject : (n,) subject of every window.
    allowed_subjects : the only subjects that may be drawn (the training subjects).
    n_windows : windows wanted; all eligible windows if fewer exist.
    seed : seed of the draw; the same inputs and seed give the same rows.

    Returns
    -------
    np.ndarray
        (m,) int64 row indices, sorted, m = min(n_windows, eligible windows).
    """
    if n_windows < 1:
        raise ConfigError(f"n_windows must be at least 1, got {n_windows}.")
    allowed = {str(s) for s in allowed_subjects}
    subject = np.asarray(subject).astype(str)
    eligible = np.flatnonzero(np.isin(subject, sorted(allowed)))
    if len(eligible) == 0:
        raise ConfigError(
            f"no window belongs to the allowed subjects {sorted(allowed)[:5]}...; "
            "pass the training subjects of this data set."
        )
    rng = np.random.default_rng(seed)
    queues = _class_queues(y, subject, eligible, rng)  # class -> list of per-subject rows
    quota = _class_quotas({c: sum(map(len, q)) for c, q in queues.items()}, n_windows)
    picked = [row for c, q in queues.items() for row in _round_robin(q, quota[c])]
    chosen = np.sort(np.asarray(picked, dtype=np.int64))
    assert set(subject[chosen].tolist()) <= allowed, "drew a window outside allowed_subjects"
    return chosen


def _class_queues(y, subject, eligible, rng) -> dict[int, list[list[int]]]:
    """class -> [shuffled rows of subject s for s in a shuffled subject order]."""
    queues: dict[int, list[list[int]]] = {}
    for c in np.unique(y[eligible]).tolist():
        rows_c = eligible[y[eligible] == c]
        subs = sorted(set(subject[rows_c].tolist()))
        order = [subs[i] for i in rng.permutation(len(subs))]
        queues[c] = [rng.permutation(rows_c[subject[rows_c] == s]).tolist() for s in order]
    return queues


def _class_quotas(available: dict[int, int], n_windows: int) -> dict[int, int]:
    """Equal shares per class; shares a class cannot fill go to the classes that can."""
    quota = dict.fromkeys(available, 0)
    left = min(n_windows, sum(available.values()))
    while left > 0:
        open_classes = [c for c in sorted(available) if quota[c] < available[c]]
        share, extra = divmod(left, len(open_classes))
        for i, c in enumerate(open_classes):
            take = min(share + (i < extra), available[c] - quota[c])
            quota[c] += take
            left -= take
    return quota


def _round_robin(per_subject: list[list[int]], k: int) -> list[int]:
    """First ``k`` rows taking one from each subject in turn."""
    out: list[int] = []
    depth = 0
    while len(out) < k:
        for rows in per_subject:
            if depth < len(rows) and len(out) < k:
                out.append(rows[depth])
        depth += 1
    return out


def build_calibration_set(
    X_uv: np.ndarray,
    y: np.ndarray,
    subject: np.ndarray,
    *,
    signal: SignalSpec,
    class_names: Sequence[str],
    train_subjects: Iterable[str],
    excluded_subjects: Iterable[str] = (),
    n_windows: int = DEFAULT_N_WINDOWS,
    seed: int = 0,
    source: str = "custom",
) -> CalibrationSet:
    """Draw a calibration set from training windows (see `stratified_indices`).

    Parameters
    ----------
    X_uv : (n, C, T) windows in µV, channels in ``signal.ch_names`` order.
    y : (n,) int class indices.
    subject : (n,) subject ids.
    signal : the model-input description; ``signal.input_scale`` converts µV to model units.
    class_names : class names in label order.
    train_subjects : subjects the set may be drawn from.
    excluded_subjects : validation and test subjects; must not overlap ``train_subjects``.
    n_windows : windows wanted (all eligible ones if fewer).
    seed : seed of the draw.
    source : data set name or file, recorded in the manifest.

    Returns
    -------
    CalibrationSet
        X in model units (µV * ``signal.input_scale``).
    """
    train = sorted({str(s) for s in train_subjects})
    excluded = sorted({str(s) for s in excluded_subjects})
    overlap = sorted(set(train) & set(excluded))
    if overlap:
        raise ConfigError(
            f"subjects {overlap} are both training and validation/test subjects; a "
            "calibration set may only come from training subjects."
        )
    if X_uv.ndim != 3 or X_uv.shape[1:] != (signal.n_chans, signal.n_times):
        raise ConfigError(
            f"windows are {tuple(X_uv.shape[1:])} (C, T), the model expects "
            f"({signal.n_chans}, {signal.n_times}); check channels and window length."
        )
    subject = np.asarray(subject).astype(str)
    rows = stratified_indices(y, subject, train, n_windows, seed)
    assert not set(subject[rows].tolist()) & set(excluded), "drew a held-out subject"
    return CalibrationSet(
        X=to_model_units(X_uv[rows], signal),
        y=np.asarray(y)[rows].astype(np.int64),
        subject=subject[rows],
        signal=signal,
        class_names=[str(c) for c in class_names],
        source=source,
        seed=seed,
        excluded_subjects=excluded,
        index=rows,
    )


def from_windows(
    windows,
    train_subjects: Iterable[str],
    excluded_subjects: Iterable[str] = (),
    *,
    signal: SignalSpec | None = None,
    n_windows: int = DEFAULT_N_WINDOWS,
    seed: int = 0,
) -> CalibrationSet:
    """`build_calibration_set` for a `dlink.data.Windows` (or any object with its fields).

    ``signal`` defaults to ``windows.signal``; pass the student's own `SignalSpec` so the
    set records the scaling the model was trained with.
    """
    return build_calibration_set(
        windows.X,
        windows.y,
        windows.subject,
        signal=signal or windows.signal,
        class_names=windows.class_names,
        train_subjects=train_subjects,
        excluded_subjects=excluded_subjects,
        n_windows=n_windows,
        seed=seed,
        source=getattr(windows, "name", "custom"),
    )


def to_model_units(X_uv: np.ndarray, signal: SignalSpec) -> np.ndarray:
    """µV windows -> model input, float32: the signal's ``clip`` step (if any), then the
    scaling -- what the student saw in training (`SignalSpec.to_model_units`). Streaming
    steps (``sosfilt``) are the data layer's business before windows are cut.
    """
    return signal.to_model_units(X_uv)


# ---------------------------------------------------------------------------------------
# Files


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_path(npz_path: str | Path) -> Path:
    """``calib.npz`` -> ``calib.json``."""
    return Path(npz_path).with_suffix(".json")


def save_calibration_set(cs: CalibrationSet, path: str | Path) -> dict:
    """Write ``path`` (.npz) and its JSON manifest beside it; both atomically.

    Returns
    -------
    dict
        The manifest written (``calib.json``), including the npz's sha256 and bytes.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"calibration file must end in .npz, got {path.name}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    info = cs.info()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(
                f,
                X=cs.X.astype(np.float32),
                y=cs.y.astype(np.int64),
                subject=cs.subject.astype(str),
                index=np.asarray(cs.index, dtype=np.int64),
                meta=np.array(json.dumps(info)),
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    cs.sha256 = sha256_file(path)
    manifest = {**info, "npz": path.name, "sha256": cs.sha256, "bytes": path.stat().st_size}
    tmp_json = manifest_path(path).with_name(manifest_path(path).name + ".tmp")
    tmp_json.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    os.replace(tmp_json, manifest_path(path))
    return manifest


def load_calibration_set(path: str | Path) -> CalibrationSet:
    """Read a calibration ``.npz`` (or its ``.json``); verify the sha256 when the JSON exists.

    Returns
    -------
    CalibrationSet
        With ``sha256`` set to the npz's checksum.

    Raises
    ------
    DataFormatError
        The file is missing, not a readable npz, or its arrays are malformed.
    ChecksumError
        The npz's sha256 differs from the one in its JSON manifest.
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".npz")
    if not path.is_file():
        raise DataFormatError(
            f"calibration file {path} does not exist; build one with "
            "calibration.save_calibration_set or pass --data NAME."
        )
    digest = sha256_file(path)
    _check_sidecar(path, digest)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("X", "y", "subject", "index", "meta") if k in z}
    except Exception as exc:  # zipfile/numpy raise many types on a damaged file
        raise DataFormatError(
            f"calibration file {path} is not a readable .npz ({_first_line(exc)}); rebuild it."
        ) from exc
    cs = _from_arrays(path, arrays)
    cs.sha256 = digest
    return cs


def _check_sidecar(path: Path, digest: str) -> None:
    side = manifest_path(path)
    if not side.is_file():
        return
    try:
        recorded = json.loads(side.read_text(encoding="utf-8")).get("sha256")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise DataFormatError(f"{side} is not valid JSON ({_first_line(exc)}).") from exc
    if recorded and recorded != digest:
        raise ChecksumError(
            f"{path} has sha256 {digest[:16]}…, {side.name} says {str(recorded)[:16]}…; "
            "the file changed after it was written. Rebuild the calibration set."
        )


def _from_arrays(path: Path, a: dict) -> CalibrationSet:
    missing = [k for k in ("X", "y", "subject", "meta") if k not in a]
    if missing:
        raise DataFormatError(
            f"calibration file {path} lacks {missing}; it was not written by "
            "calibration.save_calibration_set."
        )
    try:
        meta = json.loads(str(a["meta"]))
        signal = SignalSpec.from_dict(meta["signal"])
        units = meta["x_units"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(f"calibration file {path} has unreadable metadata: {exc}") from exc
    X, y = a["X"], a["y"]
    if units != X_UNITS:
        raise DataFormatError(f"{path}: x_units is {units!r}, expected {X_UNITS!r}.")
    if X.ndim != 3 or X.dtype != np.float32 or X.shape[1:] != (signal.n_chans, signal.n_times):
        raise DataFormatError(
            f"{path}: X is {X.dtype} {X.shape}, expected float32 (n, {signal.n_chans}, "
            f"{signal.n_times}) from its own signal description."
        )
    if len(X) == 0 or y.shape != (len(X),) or a["subject"].shape != (len(X),):
        raise DataFormatError(f"{path}: X, y and subject must hold the same n >= 1 windows.")
    if not np.isfinite(X).all():
        raise DataFormatError(f"{path}: X has NaN or Inf values.")
    return CalibrationSet(
        X=X,
        y=y.astype(np.int64),
        subject=a["subject"].astype(str),
        signal=signal,
        class_names=list(meta.get("class_names", [])),
        source=str(meta.get("source", "custom")),
        seed=int(meta.get("seed", 0)),
        excluded_subjects=list(meta.get("excluded_subjects", [])),
        clip=meta.get("clip"),
        index=a.get("index"),
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
