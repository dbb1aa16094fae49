"""Data layer on the real recordings: counts, channels, splits, npz validation, cache, bad EDFs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dlink.data import eegmat, kfold_subjects, load_windows, split_subjects
from dlink.data.paths import cache_dir
from dlink.errors import ConfigError, DataFormatError, DataNotFoundError

TEN_TWENTY = "Fp1 Fp2 F3 F4 F7 F8 T3 T4 C3 C4 T5 T6 P3 P4 O1 O2 Fz Cz Pz".split()


def test_eegmat_gives_exactly_1707_windows(eegmat_windows):
    w = eegmat_windows
    assert len(w) == 1707
    assert (w.y == 0).sum() == 1275 and (w.y == 1).sum() == 432
    assert w.X.shape == (1707, 19, 1000) and w.X.dtype == np.float32
    assert w.ch_names == TEN_TWENTY and w.sfreq == 200.0 and w.class_names == ["rest", "task"]
    assert len(w.subjects) == 36
    # µV scale: scalp EEG has a standard deviation of a few to tens of µV
    assert 1.0 < float(np.median(w.X.std(axis=-1))) < 200.0


def test_eegmat_labels_follow_file_suffix(eegmat_windows):
    one = eegmat_windows.of_subjects(["00"])
    assert (one.y == 0).sum() == 36  # 182 s of rest -> 36 windows of 5 s
    assert (one.y == 1).sum() == 12  # 62 s of arithmetic -> 12 windows


def test_eegmmidb_motor_imagery_trials(shared_data):
    w = load_windows("eegmmidb")
    assert w.X.shape == (90, 64, 800) and w.sfreq == 200.0
    left_right = np.isin(w.y, [0, 1]).sum()
    fists_feet = np.isin(w.y, [2, 3]).sum()
    assert left_right == 45 and fists_feet == 45


def test_default_split_is_28_4_4_and_disjoint(eegmat_windows):
    s = split_subjects(eegmat_windows)
    assert (len(s.train), len(s.val), len(s.test)) == (28, 4, 4)
    assert s.test == ["32", "33", "34", "35"] and s.val == ["28", "29", "30", "31"]
    assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))


def test_kfold_no_subject_in_two_parts_and_each_tested_once(eegmat_windows):
    folds = kfold_subjects(eegmat_windows, k=6)
    assert len(folds) == 6
    tested = []
    for f in folds:
        parts = [set(f.train), set(f.val), set(f.test)]
        assert sum(map(len, parts)) == 36 and len(set.union(*parts)) == 36
        tested += f.test
    assert sorted(tested) == eegmat_windows.subjects
    assert kfold_subjects(eegmat_windows, k=6) == folds  # deterministic


def _write_npz(path: Path, **over):
    rng = np.random.default_rng(0)
    arrays = dict(X=rng.normal(0, 20, (12, 3, 500)).astype(np.float32),
                  y=np.array([0, 1, 2] * 4), sfreq=250.0, ch_names=np.array(["C3", "Cz", "C4"]),
                  subject=np.array(list("aabbccddeeff")), class_names=np.array(["l", "r", "f"]))
    arrays.update(over)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_dataset_is_resampled_and_cropped(tmp_path):
    w = load_windows(_write_npz(tmp_path / "mine.npz"))
    # 500 samples at 250 Hz = 2 s -> 400 samples at 200 Hz
    assert w.X.shape == (12, 3, 400) and w.sfreq == 200.0 and w.class_names == ["l", "r", "f"]
    assert w.subjects == list("abcdef")


@pytest.mark.parametrize("over, words", [
    ({"X": np.zeros((12, 500), np.float32)}, "shape"),
    ({"X": np.zeros((12, 3, 500), np.int16)}, "dtype"),
    ({"y": np.array([0, 1, 2] * 3)}, "y must be"),
    ({"y": np.array([0, 1, 5] * 4)}, "labels must lie"),
    ({"ch_names": np.array(["C3", "Cz"])}, "ch_names"),
    ({"sfreq": None}, "lacks"),
    ({"subject": np.array(list("ab"))}, "subject has"),
])
def test_npz_validation_errors(tmp_path, over, words):
    with pytest.raises(DataFormatError, match=words):
        load_windows(_write_npz(tmp_path / "bad.npz", **over))


def test_npz_nan_names_the_channel(tmp_path):
    X = np.zeros((12, 3, 500), np.float32)
    X[4, 2, 10] = np.nan
    with pytest.raises(DataFormatError, match="C4"):
        load_windows(_write_npz(tmp_path / "nan.npz", X=X))


def test_cache_is_keyed_by_parameters_and_source_checksums(tmp_path):
    path = _write_npz(tmp_path / "c.npz")
    load_windows(path)
    n_entries = len(list(cache_dir().glob("*.npz")))
    load_windows(path)  # hit: nothing new
    assert len(list(cache_dir().glob("*.npz"))) == n_entries
    load_windows(path, sfreq=125.0)  # changed parameter -> new entry
    assert len(list(cache_dir().glob("*.npz"))) == n_entries + 1
    X = np.ones((12, 3, 500), np.float32)
    _write_npz(path, X=X)  # changed source file -> new entry with the new content
    w = load_windows(path)
    assert len(list(cache_dir().glob("*.npz"))) == n_entries + 2
    assert np.allclose(w.X, 1.0, atol=1e-4)


def test_unknown_name_and_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="eegmat"):
        load_windows("nope")
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        load_windows("eegmat", data_dir=tmp_path)


def _eegmat_copy(tmp_path: Path, shared_data: Path, subject: str = "00") -> Path:
    root = tmp_path / "root"
    (root / "eegmat").mkdir(parents=True)
    for k in (1, 2):
        shutil.copy(shared_data / "eegmat" / f"Subject{subject}_{k}.edf", root / "eegmat")
    return root


def test_truncated_edf_is_a_clear_error_when_strict(tmp_path, shared_data):
    """A file cut short is read up to where it ends (one DLink line says how much is missing,
    tests/test_bad_inputs.py checks the line); strict=True makes it an error."""
    root = _eegmat_copy(tmp_path, shared_data)
    f = root / "eegmat" / "Subject00_2.edf"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DataFormatError, match="truncated"):
        load_windows("eegmat", data_dir=root, subjects=["00"], strict=True)


def _write_edf(path: Path, labels: list[str], sfreq: float, seconds: int = 10):
    from edfio import Edf, EdfSignal

    rng = np.random.default_rng(1)
    sigs = [EdfSignal(rng.normal(0, 20, int(sfreq * seconds)), sampling_frequency=sfreq,
                      label=lab, physical_dimension="uV", physical_range=(-500, 500))
            for lab in labels]
    Edf(sigs).write(path)


def test_edf_missing_channel_names_the_channels(tmp_path, shared_data):
    root = _eegmat_copy(tmp_path, shared_data)
    labels = [f"EEG {c}" for c in TEN_TWENTY if c not in ("Fp1", "O2")]
    _write_edf(root / "eegmat" / "Subject00_1.edf", labels, 500.0)
    with pytest.raises(DataFormatError, match=r"lacks channel\(s\) \['Fp1', 'O2'\]"):
        load_windows("eegmat", data_dir=root, subjects=["00"])


def test_edf_wrong_sampling_rate(tmp_path, shared_data):
    root = _eegmat_copy(tmp_path, shared_data)
    _write_edf(root / "eegmat" / "Subject00_1.edf", [f"EEG {c}" for c in TEN_TWENTY], 256.0)
    with pytest.raises(DataFormatError, match="256 Hz"):
        load_windows("eegmat", data_dir=root, subjects=["00"])


def test_eegmat_registry_matches_the_shipped_files(shared_data):
    from dlink.data.checksums import verify_files

    report = verify_files(eegmat.expected_checksums(shared_data))
    assert not report["bad"] and not report["missing"] and len(report["ok"]) == 75


def test_edf_with_nan_samples_names_file_and_channel(tmp_path, shared_data):
    root = _eegmat_copy(tmp_path, shared_data)
    f = root / "eegmat" / "Subject00_2.edf"
    raw = bytearray(f.read_bytes())
    n_signals = int(raw[252:256])
    phys_max = 256 + n_signals * (16 + 80 + 8 + 8)  # first signal's physical-maximum field
    raw[phys_max : phys_max + 8] = b"nan     "  # MNE then scales Fp1's samples to NaN
    f.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"Subject00_2\.edf.*Fp1"):
        load_windows("eegmat", data_dir=root, subjects=["00"])
