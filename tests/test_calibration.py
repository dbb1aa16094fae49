"""Calibration sets: drawn from training subjects only, balanced, saved with a checksum."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from calibration import (
    CalibrationSet,
    OrtCalibrationReader,
    build_calibration_set,
    from_windows,
    iter_windows,
    load_calibration_set,
    representative_dataset,
    save_calibration_set,
    stratified_indices,
)
from dlink.errors import ChecksumError, ConfigError, DataFormatError
from dlink.signal import SignalSpec

SIGNAL = SignalSpec(ch_names=("C3", "C4", "O1"), sfreq=100.0, n_times=50)


def _windows(n_subjects=6, per_class=(10, 4), seed=0):
    """Synthetic µV windows: class c has per_class[c] windows for every subject."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(k, c) for c, k in enumerate(per_class)] * n_subjects)
    subject = np.repeat([f"s{i:02d}" for i in range(n_subjects)], sum(per_class))
    X = rng.normal(0, 20, (len(y), SIGNAL.n_chans, SIGNAL.n_times)).astype(np.float32)
    return X, y.astype(np.int64), subject


TRAIN, HELD = ["s00", "s01", "s02", "s03"], ["s04", "s05"]


def test_draw_is_balanced_by_class_and_subject():
    X, y, subject = _windows()
    rows = stratified_indices(y, subject, TRAIN, n_windows=16, seed=0)
    assert len(rows) == 16
    assert Counter(y[rows].tolist()) == {0: 8, 1: 8}
    for c in (0, 1):  # round robin: every subject twice per class
        assert Counter(subject[rows][y[rows] == c].tolist()) == dict.fromkeys(TRAIN, 2)


def test_short_class_gives_its_share_to_the_others():
    X, y, subject = _windows(per_class=(10, 1))  # only 4 class-1 windows among TRAIN
    rows = stratified_indices(y, subject, TRAIN, n_windows=20, seed=0)
    assert Counter(y[rows].tolist()) == {0: 16, 1: 4}
    assert len(stratified_indices(y, subject, TRAIN, n_windows=10_000)) == 44  # all eligible


def test_draw_is_seeded():
    X, y, subject = _windows()
    a = stratified_indices(y, subject, TRAIN, 12, seed=1)
    assert np.array_equal(a, stratified_indices(y, subject, TRAIN, 12, seed=1))
    assert not np.array_equal(a, stratified_indices(y, subject, TRAIN, 12, seed=2))


def test_never_from_validation_or_test_subjects():
    X, y, subject = _windows()
    cs = build_calibration_set(X, y, subject, signal=SIGNAL, class_names=["a", "b"],
                               train_subjects=TRAIN, excluded_subjects=HELD, n_windows=1000)
    assert set(cs.subjects) == set(TRAIN)
    assert not set(cs.subject.tolist()) & set(HELD)
    assert cs.info()["excluded_subjects"] == HELD
    with pytest.raises(ConfigError, match="both training and validation/test"):
        build_calibration_set(X, y, subject, signal=SIGNAL, class_names=["a", "b"],
                              train_subjects=TRAIN + ["s04"], excluded_subjects=HELD)


def test_x_is_in_model_units():
    X, y, subject = _windows()
    cs = build_calibration_set(X, y, subject, signal=SIGNAL, class_names=["a", "b"],
                               train_subjects=TRAIN, n_windows=8)
    assert cs.X.dtype == np.float32
    np.testing.assert_allclose(cs.X, X[cs.index] * SIGNAL.input_scale, rtol=1e-6)


def test_wrong_window_shape_is_refused():
    X, y, subject = _windows()
    with pytest.raises(ConfigError, match="the model expects"):
        build_calibration_set(X[:, :2], y, subject, signal=SIGNAL, class_names=["a", "b"],
                              train_subjects=TRAIN)


def _saved(tmp_path) -> tuple[CalibrationSet, dict]:
    X, y, subject = _windows()
    cs = build_calibration_set(X, y, subject, signal=SIGNAL, class_names=["a", "b"],
                               train_subjects=TRAIN, excluded_subjects=HELD, n_windows=12,
                               seed=3, source="synthetic")
    return cs, save_calibration_set(cs, tmp_path / "calib.npz")


def test_save_load_round_trip_with_manifest(tmp_path):
    cs, manifest = _saved(tmp_path)
    on_disk = json.loads((tmp_path / "calib.json").read_text())
    assert on_disk == manifest
    assert on_disk["sha256"] == cs.sha256 and on_disk["x_units"] == "model"
    assert on_disk["n_per_class"] == {"a": 6, "b": 6} and on_disk["seed"] == 3
    assert on_disk["signal"]["ch_names"] == list(SIGNAL.ch_names)
    assert on_disk["preprocessing"] == SIGNAL.steps()
    back = load_calibration_set(tmp_path / "calib.npz")
    assert back.sha256 == cs.sha256 and back.signal == SIGNAL
    np.testing.assert_array_equal(back.X, cs.X)
    np.testing.assert_array_equal(back.subject, cs.subject)
    # the same set saved again has the same checksum (np.savez is deterministic)
    save_calibration_set(back, tmp_path / "again.npz")
    assert back.sha256 == cs.sha256


def test_changed_file_fails_its_checksum(tmp_path):
    cs, _ = _saved(tmp_path)
    other = build_calibration_set(*_windows(seed=9), signal=SIGNAL, class_names=["a", "b"],
                                  train_subjects=TRAIN, n_windows=12)
    save_calibration_set(other, tmp_path / "other.npz")
    (tmp_path / "other.npz").replace(tmp_path / "calib.npz")
    with pytest.raises(ChecksumError, match="Rebuild the calibration set"):
        load_calibration_set(tmp_path / "calib.npz")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_file_gives_a_clear_error(tmp_path, damage):
    _saved(tmp_path)
    path = tmp_path / "calib.npz"
    (tmp_path / "calib.json").unlink()
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        path.unlink()
    with pytest.raises(DataFormatError, match="calibration file"):
        load_calibration_set(path)


def test_clipping_bounds_x_and_is_recorded(tmp_path):
    cs, _ = _saved(tmp_path)
    cs.X[0, 0, 0] = 50.0  # an artifact: 5 mV in model units
    clipped = cs.clipped(99.0)
    bound = clipped.clip["model_units"]
    assert bound < 50.0 and np.abs(clipped.X).max() == pytest.approx(bound)
    assert clipped.clip["uV"] == pytest.approx(bound / SIGNAL.input_scale)
    assert clipped.sha256 is None and cs.X[0, 0, 0] == 50.0  # a copy; the original stays
    save_calibration_set(clipped, tmp_path / "clipped.npz")
    assert load_calibration_set(tmp_path / "clipped.npz").clip == clipped.clip
    with pytest.raises(ConfigError, match="already clipped"):
        clipped.clipped(99.0)


def test_ort_reader_and_representative_dataset_yield_the_same_windows():
    X, y, subject = _windows()
    cs = build_calibration_set(X, y, subject, signal=SIGNAL, class_names=["a", "b"],
                               train_subjects=TRAIN, n_windows=5)
    reader = OrtCalibrationReader(cs, input_name="eeg")
    fed = []
    while (item := reader.get_next()) is not None:
        fed.append(item["eeg"])
    assert len(fed) == 5 and all(x.shape == (1, 3, 50) and x.dtype == np.float32 for x in fed)
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["eeg"], fed[0])
    rep = representative_dataset(cs, "args_0", "serving_default")
    assert list(rep) == ["serving_default"] and len(rep["serving_default"]) == 5
    for a, b in zip(fed, rep["serving_default"]):
        np.testing.assert_array_equal(a, b["args_0"])
    assert len(list(iter_windows(cs.X))) == 5


def test_eegmat_calibration_set_uses_training_subjects_only(eegmat_windows):
    from dlink.data import split_subjects

    split = split_subjects(eegmat_windows)
    assert (len(split.train), len(split.val), len(split.test)) == (28, 4, 4)
    cs = from_windows(eegmat_windows, split.train, split.val + split.test, n_windows=256)
    assert set(cs.subjects) <= set(split.train)
    assert not set(cs.subjects) & set(split.val + split.test)
    assert cs.info()["n_per_class"] == {"rest": 128, "task": 128}
    per_subject = Counter(cs.subject.tolist())
    assert len(per_subject) == 28 and max(per_subject.values()) - min(per_subject.values()) <= 2
