"""The CV benchmark keeps finished folds' result files in a committed folder and restores
them into a fresh working folder, so a fresh checkout resumes per fold; only under the
same settings (a changed epoch budget or backbone reruns the fold)."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("cv_benchmark", REPO / "bench" / "cv_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**changes) -> Namespace:
    base = dict(backbone=str(REPO / "dlink/pretrained/cbramod-small-eegmat"), teacher_epochs=8,
                student_epochs=12, student="mic-s", qat_epochs=3, seeds=3,
                seeded_rows="dlink,no-kd")
    return Namespace(**{**base, **changes})


def test_a_kept_fold_is_restored_only_under_its_settings(tmp_path):
    cv = _bench()
    out, keep = tmp_path / "out", tmp_path / "keep"
    for run, files in {"teacher": ("metrics.json", "history.json"),
                       "dlink@seed1": ("metrics.json",)}.items():
        (out / "fold2" / run).mkdir(parents=True)
        for name in files:
            (out / "fold2" / run / name).write_text(json.dumps({"run": run, "file": name}))
    (out / "fold2" / "teacher" / "model.safetensors").write_bytes(b"weights stay out")
    (out / "fold2" / "teacher_cache.json").write_text(json.dumps({"seconds": 11.0}))
    cv.keep_fold(out, keep, 2, cv.fold_config(_args()))
    kept = sorted(str(p.relative_to(keep)) for p in keep.rglob("*") if p.is_file())
    assert kept == ["fold2/dlink@seed1/metrics.json", "fold2/fold.json",
                    "fold2/teacher/history.json", "fold2/teacher/metrics.json",
                    "fold2/teacher_cache.json"]
    assert set(json.loads((keep / "fold2/fold.json").read_text())) == {"config", "cpu", "packages"}

    fresh = tmp_path / "fresh"
    assert cv.restore_folds(fresh, keep, [0, 2], cv.fold_config(_args(student_epochs=24))) == []
    assert not fresh.exists()
    assert cv.restore_folds(fresh, keep, [0, 2], cv.fold_config(_args())) == [2]
    assert json.loads((fresh / "fold2/dlink@seed1/metrics.json").read_text())["run"] == "dlink@seed1"
    assert cv.collect(fresh)["teacher"] == {2: [{"run": "teacher", "file": "metrics.json"}]}
    assert (fresh / "fold2/teacher_cache.json").is_file()
    # a fold already (partly) in OUT is never overwritten or mixed with a kept one
    assert cv.restore_folds(fresh, keep, [2], cv.fold_config(_args())) == []
    # a fold.json of another format is not restored, and does not stop the benchmark
    (keep / "fold2/fold.json").write_text(json.dumps({"teacher_epochs": "8"}))
    assert cv.restore_folds(tmp_path / "other", keep, [2], cv.fold_config(_args())) == []
