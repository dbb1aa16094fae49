"""Subject-wise splits: no subject ever appears in two parts.

* `split_subjects`: the default train/validation/test split. For EEGMAT it is the one used
  by CBraMod and LaBraM: subjects 00-27 train, 28-31 validation, 32-35 test (28/4/4).
  Other data sets: sorted subjects, last ~1/9 test, the ~1/9 before validation.
* `block_split`: for data sets with fewer than 3 subjects (a user's own calibration
  session): every subject's windows, in recording order, are cut into ``n_blocks``
  contiguous blocks of trials, per class when every class has at least ``n_blocks``
  windows (stratified: block k holds the k-th stretch of each class's trials), else over
  all windows. Block k of every subject becomes the pseudo-subject ``block{k:02d}``, and
  `split_subjects` splits those: the last block tests, the one before validates, the rest
  train, so no window of a test block is in training or validation.
* `pipeline_split`: `split_subjects` with 3 or more subjects, else `block_split`.
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


MIN_SUBJECTS = 3  # a subject-wise split needs one for each of train, validation and test
N_BLOCKS = 10  # blocks per subject of a within-subject split (8 train, 1 val, 1 test)


def block_split(windows, n_blocks: int = N_BLOCKS):
    """Within-subject contiguous blocks (see module docstring).

    Returns
    -------
    windows : the same windows, ``subject`` replaced by ``block00``..``block{n-1}``.
    split : the `split_subjects` split of the blocks.
    kind : one line saying which split it is, for data.json and the report.

    Raises
    ------
    ConfigError : a subject has fewer than 3 windows (one per part).
    """
    from dlink.data.windows import Windows

    subjects = np.asarray(windows.subject).astype(str)
    blocks = np.empty(len(windows), dtype=object)
    stratified = True
    for subj in np.unique(subjects):
        idx = np.flatnonzero(subjects == subj)  # recording order
        counts = np.bincount(windows.y[idx])
        counts = counts[counts > 0]
        if len(idx) < MIN_SUBJECTS:
            raise ConfigError(
                f"a within-subject split needs at least {MIN_SUBJECTS} windows per subject "
                f"(train, validation, test); subject {subj} has {len(idx)}")
        k = min(n_blocks, int(counts.min()))
        if k >= MIN_SUBJECTS:  # every class in every block
            for c in np.unique(windows.y[idx]):
                members = idx[windows.y[idx] == c]
                for b, part in enumerate(np.array_split(members, k)):
                    blocks[part] = b
        else:
            stratified = False
            for b, part in enumerate(np.array_split(idx, min(n_blocks, len(idx)))):
                blocks[part] = b
    ids = np.array([f"block{int(b):02d}" for b in blocks])
    relabelled = Windows(X=windows.X, y=windows.y, subject=ids, sfreq=windows.sfreq,
                         ch_names=list(windows.ch_names), class_names=list(windows.class_names),
                         name=windows.name, info=dict(windows.info))
    split = split_subjects(relabelled)
    n_subj = len(np.unique(subjects))
    how = "stratified by class" if stratified else "not stratified: a class has < 3 windows"
    kind = (f"within-subject: {n_subj} subject(s) cut into {len(relabelled.subjects)} contiguous "
            f"blocks of trials ({how}); last block test, the one before validation")
    return relabelled, split, kind


def pipeline_split(windows):
    """(windows, split, kind): subject-wise with >= 3 subjects, else `block_split`.

    Raises `ConfigError` for a data set with a single class."""
    present = np.unique(windows.y)
    if len(present) < 2:
        names = [windows.class_names[int(c)] for c in present]
        raise ConfigError(f"the data set has one class ({', '.join(names) or 'none'}); "
                          "a classifier needs windows of at least 2 classes")
    if len(windows.subjects) >= MIN_SUBJECTS:
        split = split_subjects(windows)
        return windows, split, (f"subject-wise: {len(split.train)} train, {len(split.val)} "
                                f"validation, {len(split.test)} test subjects")
    return block_split(windows)


def pick_subjects(subjects, n: int) -> list[str]:
    """At most ``n`` of ``subjects`` (sorted), evenly spaced, first and last included."""
    subjects = sorted(subjects)
    if len(subjects) <= n:
        return subjects
    return [subjects[i] for i in np.unique(np.linspace(0, len(subjects) - 1, n).round().astype(int))]


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
