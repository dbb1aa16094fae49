"""Subject-wise splits: no subject ever appears in two parts.

* `split_subjects`: the default train/validation/test split. For EEGMAT it is the one used
  by CBraMod and LaBraM: subjects 00-27 train, 28-31 validation, 32-35 test (28/4/4).
  Other data sets: sorted subjects, last ~1/9 test, the ~1/9 before validation.
* `kfold_subjects`: k folds by subject (default 6). Sorted subjects are permuted with
  ``numpy.random.default_rng(seed)`` and cut into k nearly equal chunks; fold i tests on
  chunk i, validates on the first ``n_val`` subjects of chunk i+1 (mod k) and trains on
  the rest. Fixed seed -> fixed, documented folds that every benchmark reuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlink.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """Subject ids of each part."""

    train: list[str]
    val: list[str]
    test: list[str]

    def to_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test}


def _subjects(windows_or_subjects) -> list[str]:
    if hasattr(windows_or_subjects, "subjects"):
        return list(windows_or_subjects.subjects)
    return sorted({str(s) for s in windows_or_subjects})


def split_subjects(
    windows_or_subjects, n_val: int | None = None, n_test: int | None = None
) -> Split:
    """The default split (see module docstring)."""
    subjects = _subjects(windows_or_subjects)
    n = len(subjects)
    if n < 3:
        raise ConfigError(
            f"a subject-wise split needs at least 3 subjects, got {n}: "
            "add a 'subject' array to the data set"
        )
    n_test = n_test or max(1, round(n / 9))
    n_val = n_val or max(1, round(n / 9))
    return Split(
        train=subjects[: n - n_val - n_test],
        val=subjects[n - n_val - n_test : n - n_test],
        test=subjects[n - n_test :],
    )


def kfold_subjects(windows_or_subjects, k: int = 6, n_val: int = 4, seed: int = 0) -> list[Split]:
    """k subject-wise folds (see module docstring)."""
    subjects = _subjects(windows_or_subjects)
    if len(subjects) < k:
        raise ConfigError(
            f"{k}-fold cross-validation needs at least {k} subjects, got {len(subjects)}"
        )
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    chunks = [sorted(c.tolist()) for c in np.array_split(np.array(order), k)]
    folds = []
    for i in range(k):
        test = chunks[i]
        val = chunks[(i + 1) % k][: min(n_val, len(chunks[(i + 1) % k]))]
        train = sorted(set(subjects) - set(test) - set(val))
        folds.append(Split(train=train, val=sorted(val), test=test))
    return folds
