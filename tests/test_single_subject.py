"""One subject through the main job: within-subject contiguous blocks, stratified by class.

Fast checks of the split rule on real EEGMAT/PhysioNet-MI windows; the whole smoke pipeline
on one EEGMAT subject's windows as a generic .npz is slow (``-m slow``; .ci/run runs it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dlink.data import load_windows
from dlink.data.splits import block_split, pick_subjects, pipeline_split
from dlink.errors import ConfigError


@pytest.fixture(scope="module")
def one_subject(shared_data):
    return load_windows("eegmat", subjects=["00"])  # 36 rest + 12 task windows, in order


def test_one_subject_is_cut_into_contiguous_stratified_blocks(one_subject):
    w, split, kind = pipeline_split(one_subject)
    assert kind.startswith("within-subject") and "stratified by class" in kind
    assert split.train == [f"block{k:02d}" for k in range(8)]
    assert (split.val, split.test) == (["block08"], ["block09"])
    for b in w.subjects:
        idx = np.flatnonzero(w.subject == b)
        assert set(w.y[idx]) == {0, 1}  # every block holds both classes
        for c in (0, 1):  # ... as one contiguous stretch of that class's trials
            members = np.flatnonzero(w.y == c)
            pos = np.searchsorted(members, idx[w.y[idx] == c])
            assert np.all(np.diff(pos) == 1)
    test = set(np.flatnonzero(w.subject == "block09"))
    assert not test & set(np.flatnonzero(np.isin(w.subject, split.train + split.val)))
    np.testing.assert_array_equal(w.X, one_subject.X)  # windows untouched


def test_physionet_mi_subject_is_block_split_with_four_classes(shared_data):
    w, split, kind = pipeline_split(load_windows("eegmmidb"))
    assert "stratified" in kind and len(split.train) == 8
    assert all(len(set(w.y[w.subject == b])) == 4 for b in w.subjects)


def test_too_few_windows_and_one_class_name_the_minimum(one_subject):
    with pytest.raises(ConfigError, match="at least 3 windows per subject"):
        block_split(one_subject.subset(np.array([0, 40])))
    with pytest.raises(ConfigError, match="one class"):
        pipeline_split(one_subject.subset(one_subject.y == 0))
    w, _, kind = pipeline_split(one_subject.subset(np.r_[0:20, 36:38]))  # 2 task windows
    assert "not stratified" in kind and len(w.subjects) == 10


def test_smoke_picks_subjects_from_any_data_set():
    assert pick_subjects(["a"], 6) == ["a"]
    assert pick_subjects([f"{i:02d}" for i in range(36)], 6) == ["00", "07", "14", "21", "28", "35"]


@pytest.mark.slow
def test_single_subject_npz_through_the_smoke_pipeline(one_subject, tmp_path):
    from dlink.pipeline import Pipeline, resolve_config

    path = tmp_path / "me.npz"
    np.savez(path, X=one_subject.X, y=one_subject.y, sfreq=200.0,
             ch_names=np.array(one_subject.ch_names),
             class_names=np.array(one_subject.class_names))  # no subject array: one subject
    out = tmp_path / "run"
    Pipeline(resolve_config("smoke", data=str(path)), out).run()
    data = json.loads((out / "data.json").read_text())
    assert data["split"]["test"] == ["block09"] and data["split_kind"].startswith("within")
    assert "within-subject" in (out / "report.html").read_text()
    assert (out / "export" / "manifest.json").is_file()
