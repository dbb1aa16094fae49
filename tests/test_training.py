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
    assert metrics["selection"] == "bacc_tuned" and metrics["split"]["test"] == ["34"]
    assert teacher.head_kind == "channel" and teacher.head_chans == 19
    assert np.isfinite(metrics["threshold_bias"]) and metrics["history"][0]["val"]["bacc_tuned"] >= 0


def test_finetune_options_frozen_layers_scratch_and_threshold(tiny_teacher, small_windows, tmp_path):
    """The CPU recipe's options on the tiny preset: frozen, cached lower layer; the probe warm
    start; the pooled head; from scratch; the validation threshold folded into the bias."""
    pre = tiny_teacher.parent / "pre"
    frozen_before = {k: v.clone() for k, v in load_teacher(pre).state_dict().items()
                     if k.startswith(("patch_embedding.", "encoder.layers.0."))}
    m = finetune(pre, small_windows, SPLIT, tmp_path / "frozen",
                 FinetuneConfig(epochs=1, batch_size=16, frozen_layers=1, head="mean", probe_epochs=2))
    after = load_teacher(tmp_path / "frozen").state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen_before.items()), "frozen part changed"
    assert load_teacher(tmp_path / "frozen").head_kind == "mean"
    # the saved bias includes the tuned threshold: re-tuning the saved model's validation
    # logits finds (almost) no further shift
    from dlink.finetune import teacher_input, tune_threshold
    from dlink.training import predict_logits

    val = small_windows.of_subjects(SPLIT.val)
    logits = predict_logits(load_teacher(tmp_path / "frozen"), teacher_input(val))
    bias, bacc = tune_threshold(logits, val.y)
    assert bacc == pytest.approx(m["val"]["bacc"], abs=1e-6)
    scratch = finetune(pre, small_windows, SPLIT, tmp_path / "scratch",
                       FinetuneConfig(epochs=1, batch_size=16, from_scratch=True, probe_epochs=0))
    assert scratch["config"]["from_scratch"] and 0 <= scratch["test"]["bacc"] <= 1
    with pytest.raises(Exception, match="frozen_layers"):
        finetune(pre, small_windows, SPLIT, tmp_path / "bad", FinetuneConfig(epochs=1, frozen_layers=2))


def test_tune_threshold_maximises_balanced_accuracy():
    from dlink.finetune import tune_threshold

    y = np.array([0, 0, 0, 0, 1, 1])
    logits = np.stack([np.zeros(6), np.array([-3.0, -2.5, -2.0, -1.8, -1.0, -0.5])], axis=1)
    bias, bacc = tune_threshold(logits, y)  # argmax says class 0 everywhere (BAcc 0.5)
    assert bacc == 1.0 and -1.8 < -bias < -1.0


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


def test_distill_resumes_from_its_checkpoint_and_refuses_changed_settings(tiny_teacher, small_windows,
                                                                          tmp_path):
    from dlink.errors import ConfigError

    cfg = DistillConfig(method="dlink", epochs=1, student="mic-xs")
    distill(tiny_teacher, small_windows, SPLIT, tmp_path, cfg)
    first = json.loads((tmp_path / "history.json").read_text())
    distill(tiny_teacher, small_windows, SPLIT, tmp_path, cfg)  # nothing left to do: same history
    assert json.loads((tmp_path / "history.json").read_text()) == first
    cfg.epochs = 2  # another schedule: a one-line refusal naming the setting
    with pytest.raises(ConfigError, match="epochs 1 -> 2"):
        distill(tiny_teacher, small_windows, SPLIT, tmp_path, cfg)


def test_router_is_trained_by_the_distillation_loss():
    """The routed target must carry gradients to the router (the teacher layers are frozen)."""
    from dlink.distill import DistillObjective
    from dlink.router import build_router
    from dlink.signal import SignalSpec
    from dlink.student import build_student

    torch.manual_seed(0)
    signal = SignalSpec(tuple(f"c{i}" for i in range(19)), 200.0, 1000)
    from dlink.losses import Decoder, build_loss

    student = build_student("mic-xs", signal, 2, d_teacher=40)
    router = build_router("router", 3, 40, n_chans=19, n_outputs=2)
    objective = DistillObjective(student, router, build_loss("dlink", label_smoothing=0.0), None,
                                 decoder=Decoder(torch.randn(200, 40) / 40**0.5, torch.zeros(200)))
    layers = torch.randn(4, 3, 19, 5, 40)
    terms = objective(torch.randn(4, 19, 1000), torch.tensor([0, 1, 0, 1]), layers, None)
    terms["loss"].backward()
    grads = [p.grad for p in router.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_int8_aware_phase_trains_through_the_simulated_deployed_graph(tiny_teacher, small_windows, tmp_path):
    m = distill(tiny_teacher, small_windows, SPLIT, tmp_path,
                DistillConfig(method="no-kd", epochs=1, student="mic-xs", qat_epochs=1, qat_calib=32))
    qat = m["qat"]
    assert qat["epochs"] == 1 and qat["selected_epoch"] == 1
    assert set(qat["ranges"]) >= {"input", "filterbank", "envelope", "residual", "mix", "temporal", "logits"}
    assert qat["ranges"]["input"] == [-0.5, 0.5]  # the ±50 µV clip, in model units
    assert qat["envelope_ceiling"] > 0 and qat["ranges"]["envelope"] == [0.0, pytest.approx(
        qat["envelope_ceiling"], rel=1e-4)]  # the band amplitudes' int8 range is the ceiling
    assert load_student(tmp_path).envelope_ceiling == pytest.approx(qat["envelope_ceiling"])
    assert isinstance(qat["threshold_bias"], float)  # re-tuned on validation after the phase
    history = json.loads((tmp_path / "qat" / "history.json").read_text())
    assert {"int8_mse", "ce"} <= set(history[0]["train"]) and "sqnr_db" in history[0]["val"]
    assert load_student(tmp_path)(torch.zeros(1, 19, 1000)).shape == (1, 2)


def test_distill_tunes_the_two_class_threshold_on_validation(tiny_teacher, small_windows, tmp_path):
    """The tuned student differs from the untuned one only by the recorded shift of class 1's
    logit, and that shift does not lower validation BAcc (it was chosen to raise it)."""
    runs = {}
    for tune in (False, True):
        cfg = DistillConfig(method="no-kd", epochs=1, student="mic-xs", tune_threshold=tune, seed=3)
        runs[tune] = distill(tiny_teacher, small_windows, SPLIT, tmp_path / str(tune), cfg)
    assert runs[False]["threshold_bias"] is None
    bias = runs[True]["threshold_bias"]
    plain, tuned = load_student(tmp_path / "False"), load_student(tmp_path / "True")
    x = torch.randn(4, 19, 1000) * 0.1
    with torch.no_grad():
        shift = tuned(x) - plain(x)
    assert torch.allclose(shift[:, 0], torch.zeros(4), atol=1e-5)
    assert torch.allclose(shift[:, 1], torch.full((4,), bias), atol=1e-5)
    assert runs[True]["val"]["bacc"] >= runs[False]["val"]["bacc"]


@pytest.mark.parametrize("method, option", [("no-kd", "router_mi"), ("fitnet", "router_ce"),
                                            ("static-weights", "router_mi")])
def test_router_weights_for_a_method_without_that_router_are_refused(method, option, small_windows,
                                                                      tmp_path):
    from dlink.errors import ConfigError

    cfg = DistillConfig(method=method, epochs=1, student="mic-xs", **{option: 0.3})
    with pytest.raises(ConfigError, match=f"{option}=0.3 has no effect with method '{method}'"):
        distill(None, small_windows, SPLIT, tmp_path, cfg)
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_crop_jitter_draws_contiguous_stretches_of_the_same_recording(small_windows):
    from dlink.augment import crop_into_next, successors

    nxt = successors(small_windows)
    # one recording per subject and class: every window but each recording's last has a successor
    n_recordings = len({(s, c) for s, c in zip(small_windows.subject, small_windows.y)})
    assert (nxt < 0).sum() == n_recordings
    has = np.flatnonzero(nxt >= 0)
    assert np.all(small_windows.subject[nxt[has]] == small_windows.subject[has])
    x = torch.from_numpy(small_windows.X)
    b = has[:8]
    torch.manual_seed(0)
    crops = crop_into_next(x, b, nxt)
    T = x.shape[-1]
    shifts = []
    for i, c in zip(b, crops):  # each crop is a T-sample stretch of window i then its successor
        pair = torch.cat([x[i], x[nxt[i]]], dim=-1)
        shifts.append(next(s for s in range(T) if torch.equal(pair[:, s:s + T], c)))
    assert len(set(shifts)) > 1 and max(shifts) > 0  # random shifts, not the windows as they are
    assert np.all(small_windows.y[nxt[has]] == small_windows.y[has])  # same recording, same class
    last = np.flatnonzero(nxt < 0)[:2]  # a recording's last window is kept as it is
    assert torch.equal(crop_into_next(x, last, nxt), x[last])


@pytest.mark.parametrize("options, message", [
    ({"method": "dlink"}, "no teacher-shaped representation to mimic"),
    ({"method": "fitnet"}, "no teacher-shaped representation to mimic"),
    ({"method": "static-weights"}, "no teacher-shaped representation to mimic"),
    ({"method": "no-kd", "qat_epochs": 2}, "simulates EEG-MiC's deployed graph"),
])
def test_a_baseline_is_refused_options_it_cannot_take(options, message, small_windows, tmp_path):
    from dlink.errors import ConfigError

    cfg = DistillConfig(epochs=1, student="shallowconvnet-relu6", **options)
    with pytest.raises(ConfigError, match=message):
        distill(None, small_windows, SPLIT, tmp_path, cfg)
    assert not any(tmp_path.iterdir())


def test_crop_jitter_is_refused_for_windows_not_cut_back_to_back(small_windows, tmp_path):
    from dlink.errors import ConfigError

    other = small_windows.subset(np.arange(len(small_windows)))
    other.name = "custom"
    with pytest.raises(ConfigError, match="crop_jitter needs windows cut back to back"):
        distill(None, other, SPLIT, tmp_path, DistillConfig(method="no-kd", epochs=1, crop_jitter=True))


@pytest.mark.parametrize("method, option", [("static-weights", "router_ce"), ("dlink", "router_ce"),
                                            ("dlink", "router_mi"), ("dlink-no-spectral", "router_mi")])
def test_router_weights_for_a_method_with_that_router_are_accepted(method, option, small_windows):
    from dlink.distill import _check_options, build_method_loss

    cfg = DistillConfig(method=method, **{option: 0.3})
    _check_options(cfg, METHODS[method], build_method_loss(cfg, METHODS[method]), small_windows)


def test_kd_weight_adds_the_logit_kd_term_to_any_method():
    from dlink.distill import build_method_loss

    def kd_weight(cfg):
        return build_method_loss(cfg, METHODS[cfg.method]).kd_weight

    assert kd_weight(DistillConfig(method="dlink")) == 0.0
    assert kd_weight(DistillConfig(method="dlink", kd_weight=0.5)) == 0.5
    assert kd_weight(DistillConfig(method="logit-kd")) == 1.0


def test_a_negative_router_weight_is_refused_before_any_work(small_windows, tmp_path):
    from dlink.errors import ConfigError

    with pytest.raises(ConfigError, match="router_mi must be >= 0"):
        distill(None, small_windows, SPLIT, tmp_path, DistillConfig(method="dlink", router_mi=-0.1))
    assert not any(tmp_path.iterdir())
