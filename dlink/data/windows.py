"""`Windows`: labelled EEG windows that carry their own metadata (MNE-style)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from dlink.signal import SignalSpec


@dataclass
class Windows:
    """A set of fixed-length EEG windows.

    Attributes
    ----------
    X : (n, C, T) float32, µV.
    y : (n,) int64 class index into ``class_names``.
    subject : (n,) str, the subject each window came from.
    sfreq : sampling rate in Hz.
    ch_names : the C channel names, in the order of ``X``'s axis 1.
    class_names : names of the classes.
    name : data set name (e.g. ``"eegmat"``).
    info : provenance (source files and checksums, preprocessing parameters).
    """

    X: np.ndarray
    y: np.ndarray
    subject: np.ndarray
    sfreq: float
    ch_names: list[str]
    class_names: list[str]
    name: str = "custom"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.X)
        assert self.X.ndim == 3, f"X must be (n, C, T), got shape {self.X.shape}"
        assert len(self.y) == n and len(self.subject) == n, "X, y and subject lengths differ"
        assert self.X.shape[1] == len(self.ch_names), "X's channel axis and ch_names differ"

    def __len__(self) -> int:
        return len(self.X)

    @property
    def n_times(self) -> int:
        return int(self.X.shape[2])

    @property
    def signal(self) -> SignalSpec:
        """The model-input description these windows imply, with the conditioning filters
        they were cut after (``info["params"]["conditioning"]``) as ``sosfilt`` steps."""
        ops = (self.info.get("params", {}).get("conditioning") or {}).get("ops", ())
        return SignalSpec(ch_names=tuple(self.ch_names), sfreq=self.sfreq, n_times=self.n_times,
                          preprocessing=tuple(dict(op) for op in ops))

    @property
    def subjects(self) -> list[str]:
        """Distinct subjects, sorted."""
        return sorted(set(self.subject.tolist()))

    def subset(self, index) -> Windows:
        """Windows selected by a boolean mask or an index array."""
        return Windows(
            X=self.X[index],
            y=self.y[index],
            subject=self.subject[index],
            sfreq=self.sfreq,
            ch_names=list(self.ch_names),
            class_names=list(self.class_names),
            name=self.name,
            info=dict(self.info),
        )

    def of_subjects(self, subjects) -> Windows:
        """Windows of the given subjects only."""
        return self.subset(np.isin(self.subject, list(subjects)))

    def summary(self) -> dict:
        """Counts per class and subject, channels, rate and duration, as plain types."""
        per_class = Counter(self.y.tolist())
        per_subject: dict[str, dict[str, int]] = {}
        for s, label in zip(self.subject.tolist(), self.y.tolist()):
            row = per_subject.setdefault(s, {c: 0 for c in self.class_names})
            row[self.class_names[label]] += 1
        return {
            "name": self.name,
            "n_windows": len(self),
            "windows_per_class": {c: per_class.get(i, 0) for i, c in enumerate(self.class_names)},
            "n_subjects": len(per_subject),
            "windows_per_subject": dict(sorted(per_subject.items())),
            "n_channels": len(self.ch_names),
            "ch_names": list(self.ch_names),
            "sfreq": self.sfreq,
            "window_s": self.n_times / self.sfreq,
            "n_times": self.n_times,
            "total_hours": len(self) * self.n_times / self.sfreq / 3600,
        }
