"""Training stages end to end on real EEG with the tiny presets: pretrain -> finetune -> distill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dlink.data import Split
from dlink.distill import METHODS, DistillConfig, cache_teacher, distill
from dlink.finetune import FinetuneConfig, finetune
from dlink.pretrain import PretrainConfig, pretrain
from dlink.student import load_student
from dlink.teacher import load_teacher
from dlink.training import epoch_batches, lr_at

SUBJECTS = ["00", "01", "02", "03", "33", "34"]
SPLIT = Split(train=["00", "01", "02", "03"], val=["33"], test=["34"])


@pytest.fixture(scope="module")
def small_windows(eegmat_windows):
    return eegmat_windows.of_subjects(SUBJECTS)


@pytest.fixture(scope="module")
def tiny_teacher(small_windows, tmp_path_factory):
    """A tiny teacher pre-trained for one epoch and fine-tuned for one."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stages")
    facts = pretrain(small_windows, root / "pre", PretrainConfig(preset="tiny", epochs=1, batch_size=16))
    assert facts["excluded_test_subjects"] and not set(facts["excluded_test_subjects"]) & set(
        facts["train_subjects"]
    )
    metrics = finetune(
        root / "pre", small_windows, SPLIT, root / "ft", FinetuneConfig(epochs=1, batch_size=16)
    )
    assert set(metrics["test"]) >= {"bacc", "auroc", "auprc", "kappa", "f1_weighted"}
    return root / "ft"


def test_schedule_and_batches_are_deterministic():
    assert lr_at(0, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 0.1) == pytest.approx(0.0)
    a, b = epoch_batches(100, 32, 0, 3), epoch_batches(100, 32, 0, 3)
    assert all((x == y).all() for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(100))


def test_pretrain_writes_card_facts_and_loss_curve(tiny_teacher):
    pre = tiny_teacher.parent / "pre"
    facts = json.loads((pre / "pretrain.json").read_text())
    assert facts["train_windows"] > 0 and np.isfinite(facts["final_val_mse"])
    assert (pre / "loss_curve.png").stat().st_size > 1000
    assert load_teacher(pre).n_outputs == 0


def test_finetune_saves_a_loadable_teacher_with_metrics(tiny_teacher):
    teacher = load_teacher(tiny_teacher)
    assert teacher.n_outputs == 2
    metrics = json.loads((tiny_teacher / "metrics.json").read_text())
    assert metrics["selection"] == "auroc" and metrics["split"]["test"] == ["34"]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_distils_a_loadable_student(method, tiny_teacher, small_windows, tmp_path):
    cache = cache_teacher(load_teacher(tiny_teacher), small_windows)
    out = tmp_path / method
    m = distill(
        tiny_teacher,
        small_windows,
        SPLIT,
        out,
        DistillConfig(method=method, epochs=1, student="mic-xs"),
        cache=cache,
    )
    student = load_student(out)
    assert student(torch.zeros(2, 19, 1000)).shape == (2, 2)
    assert 0 <= m["test"]["bacc"] <= 1 and m["parameters"] > 0 and m["macs"] > 0
    if METHODS[method].router == "router":
        rw = np.load(out / "router_weights.npz")
        assert rw["weights"].shape == (len(small_windows.of_subjects(["34"])), 2)
        assert np.allclose(rw["weights"].sum(axis=1), 1.0, atol=1e-5)


def test_distill_resumes_from_its_checkpoint(tiny_teacher, small_windows, tmp_path):
    cfg = DistillConfig(method="dlink", epochs=1, student="mic-xs")
    distill(tiny_teacher, small_windows, SPLIT, tmp_path, cfg)
    first = json.loads((tmp_path / "history.json").read_text())
    cfg.epochs = 2  # resuming continues after the saved epoch
    distill(tiny_teacher, small_windows, SPLIT, tmp_path, cfg)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == first[0]


def test_router_is_trained_by_the_distillation_loss():
    """The routed target must carry gradients to the router (the teacher layers are frozen)."""
    from dlink.distill import DistillObjective
    from dlink.router import build_router
    from dlink.signal import SignalSpec
    from dlink.student import build_student

    torch.manual_seed(0)
    signal = SignalSpec(tuple(f"c{i}" for i in range(19)), 200.0, 1000)
    student = build_student("mic-xs", signal, 2, d_teacher=40)
    router = build_router("router", 3, 40)
    objective = DistillObjective(student, router, "dlink", 0.0, None)
    layers = torch.randn(4, 3, 19, 5, 40)
    terms = objective(torch.randn(4, 19, 1000), torch.tensor([0, 1, 0, 1]), layers, None)
    terms["loss"].backward()
    grads = [p.grad for p in router.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
