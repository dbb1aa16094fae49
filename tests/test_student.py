"""EEG-MiC students: shapes, budget, save/load round trip, exact counting, export ops."""

import pytest
import torch
from torch import nn

from dlink.errors import CheckpointError, ConfigError
from dlink.nn_utils import count_macs, count_parameters
from dlink.signal import SignalSpec
from dlink.student import (
    DEFAULT_STUDENT,
    STUDENTS,
    available_models,
    build_student,
    load_student,
    save_student,
)

SMALL = SignalSpec(ch_names=("Fz", "Cz", "Pz", "Oz"), sfreq=200.0, n_times=400)  # N = 2
EEGMAT = SignalSpec(ch_names=tuple(f"E{i}" for i in range(19)), sfreq=200.0, n_times=1000)
D_TEACHER = 200

# ONNX ops an int8 deployment handles without float islands (BatchNormalization only if
# it was not folded into the preceding Conv).
INT8_FRIENDLY = {
    "Conv", "Gemm", "MatMul", "Add", "Relu", "Clip", "BatchNormalization", "Reshape",
    "Transpose", "Flatten", "AveragePool", "GlobalAveragePool", "MaxPool", "Concat",
    "Squeeze", "Unsqueeze", "Identity", "Constant", "Pad",
}  # fmt: skip


def _warm(model: nn.Module, signal: SignalSpec) -> nn.Module:
    """One train-mode pass so BatchNorm running stats are not the identity, then eval."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, signal.n_chans, signal.n_times))
    return model.eval()


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_shapes(name):
    model = build_student(name, SMALL, n_outputs=3, d_teacher=D_TEACHER).eval()
    x = torch.randn(2, SMALL.n_chans, SMALL.n_times)
    feats = model.forward_features(x)
    assert feats.shape == (2, SMALL.n_chans, 2, D_TEACHER)  # (B, C, N, d)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model(x).shape == (2, 3)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


def test_default_student_fits_the_budget():
    model = build_student(DEFAULT_STUDENT, EEGMAT, n_outputs=2)
    assert count_parameters(model) <= 100_000  # <= 1/50 of CBraMod base (4.9M)
    assert model.mimics_teacher


# one non-default option per architecture, to check that overrides survive the round trip
OVERRIDE = {"eegnet": {"f1": 4}, "shallowconvnet": {"n_filters": 8}, "shallowconvnet-relu6": {"n_filters": 8}}


@pytest.mark.parametrize("name", sorted(available_models()))
def test_save_load_round_trip_is_exact(tmp_path, name):
    option = OVERRIDE.get(name, {"width": 8})
    model = _warm(build_student(name, SMALL, 2, class_names=["rest", "task"], **option), SMALL)
    save_student(model, tmp_path / name)
    loaded = load_student(tmp_path / name)
    x = torch.randn(3, SMALL.n_chans, SMALL.n_times)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.signal == SMALL and loaded.class_names == ["rest", "task"]
    assert loaded.config == model.config
    assert option.items() <= loaded.config["kwargs"].items()


@pytest.fixture
def saved(tmp_path):
    return save_student(build_student("mic-xs", SMALL, 2), tmp_path / "m")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "model.safetensors").unlink(), "missing"),
        (lambda d: (d / "config.json").unlink(), "missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: _truncate(d / "model.safetensors"), "corrupted or truncated"),
        (lambda d: _edit_config(d, arch="mic-xxl"), "unknown arch"),
        (lambda d: _edit_config(d, kwargs={"n_bands": 7}), "does not match"),
    ],
)
def test_damaged_checkpoint_raises_one_line_checkpoint_error(saved, damage, message):
    damage(saved)
    with pytest.raises(CheckpointError, match=message) as info:
        load_student(saved)
    assert "\n" not in str(info.value)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _edit_config(directory, **changes):
    import json

    cfg = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    (directory / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("sfreq, n_taps", [(200.0, 25), (200.0, 99), (250.0, 49)])
def test_bandpass_filter_init_passes_each_band(sfreq, n_taps):
    import numpy as np

    from dlink.student import bandpass_edges

    signal = SignalSpec(ch_names=EEGMAT.ch_names, sfreq=sfreq, n_times=1000)
    model = build_student("mic-s", signal, 2, filter_init="bandpass", filter_length=n_taps)
    taps = model.filterbank[0].weight[:, 0, 0].detach().double().numpy()  # (F, taps)
    edges = bandpass_edges(16, n_taps, sfreq)  # (F, 2) Hz
    assert np.all(edges[:, 1] - edges[:, 0] >= 2 * sfreq / n_taps - 1e-9)  # resolvable
    assert np.all(np.diff(edges, axis=0) >= 0) and edges[0, 0] >= 1.0 and edges[-1, 1] <= 45.0
    np.testing.assert_allclose(np.linalg.norm(taps, axis=1), 1.0, rtol=1e-6)
    spectrum = np.abs(np.fft.rfft(taps, n=4000, axis=1))  # sfreq / 4000 Hz bins
    peak_hz = spectrum.argmax(axis=1) * sfreq / 4000
    assert np.all((peak_hz >= edges[:, 0] - 0.5) & (peak_hz <= edges[:, 1] + 0.5))
    assert spectrum[:, 0].max() < 1e-5  # no DC
    # an alpha oscillation (10 Hz) excites the bands holding it more than a 40 Hz band
    ten = int(10 * 4000 / sfreq)
    holds_ten = (edges[:, 0] <= 10) & (edges[:, 1] >= 10)
    assert spectrum[holds_ten, ten].min() > 5 * spectrum[-1, ten]


def test_default_student_starts_from_band_pass_filters():
    # mic-s, the shipped preset, starts band-pass (the measured gain); the others at random
    from dlink.student import bandpass_bank

    filters = build_student("mic-s", EEGMAT, 2).filterbank[0].weight
    assert torch.equal(filters, bandpass_bank(16, 25, EEGMAT.sfreq))
    assert not torch.equal(build_student("mic-m", EEGMAT, 2).filterbank[0].weight[:16], filters)


def test_filter_init_is_checked():
    with pytest.raises(ConfigError, match="filter_init"):
        build_student("mic-s", EEGMAT, 2, filter_init="gabor")


def test_bad_names_options_and_inputs_say_what_to_do():
    with pytest.raises(ConfigError, match="unknown student 'mic-xxl'"):
        build_student("mic-xxl", SMALL, 2)
    with pytest.raises(ConfigError, match="no option"):
        build_student("mic-s", SMALL, 2, depth=3)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        build_student("mic-s", SignalSpec(("Cz",), 200.0, 450), 2)
    with pytest.raises(ValueError, match=r"expects input \(B, 4, 400\)"):
        build_student("mic-s", SMALL, 2)(torch.randn(1, 3, 400))


def test_macs_are_counted_exactly():
    conv = nn.Conv1d(4, 6, kernel_size=5, stride=2, groups=2)  # out (1, 6, 48)
    assert count_macs(conv, torch.randn(1, 4, 100)) == 6 * 48 * (4 // 2) * 5
    lin = nn.Linear(10, 7)
    assert count_macs(lin, torch.randn(3, 10)) == 3 * 10 * 7
    assert count_parameters(lin) == 77
    model = build_student("mic-xs", SMALL, 2)
    assert count_macs(model, torch.randn(1, 4, 400)) > 0
    assert model.training, "count_macs restores the training mode"


def test_default_student_exports_to_int8_friendly_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _warm(build_student(DEFAULT_STUDENT, EEGMAT, 2), EEGMAT)
    x = torch.randn(1, EEGMAT.n_chans, EEGMAT.n_times)
    path = tmp_path / "student.onnx"
    torch.onnx.export(model, (x,), path, dynamo=True, input_names=["eeg"], verbose=False)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert ops <= INT8_FRIENDLY, f"float-only ops in the graph: {ops - INT8_FRIENDLY}"
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"eeg": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), model(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_default_student_converts_with_litert(tmp_path):
    litert_torch = pytest.importorskip("litert_torch")
    model = _warm(build_student(DEFAULT_STUDENT, EEGMAT, 2), EEGMAT)
    x = torch.randn(1, EEGMAT.n_chans, EEGMAT.n_times)
    edge = litert_torch.convert(model, (x,))
    torch.testing.assert_close(torch.as_tensor(edge(x)), model(x).detach(), rtol=1e-5, atol=1e-5)


def test_envelope_ceiling_clamps_the_band_amplitudes_in_both_graphs(tmp_path):
    """With a ceiling the band amplitudes stay in [0, ceiling], the deployed graph (a fused
    ReLU6 and a multiply) still computes the training graph, and a saved model keeps it."""
    model = _warm(build_student("mic-xs", SMALL, 2), SMALL)
    x = torch.randn(3, SMALL.n_chans, SMALL.n_times) * 0.2
    free = model(x)
    ceiling = model.envelope_quantile(x, 0.5)  # half the amplitudes lie above it
    model.set_envelope_ceiling(ceiling)
    clamped = model(x)
    assert not torch.allclose(free, clamped)
    torch.testing.assert_close(model.deployable()(x), clamped, rtol=1e-4, atol=1e-5)
    save_student(model, tmp_path)
    torch.testing.assert_close(load_student(tmp_path)(x), clamped)
    with pytest.raises(ConfigError):
        model.set_envelope_ceiling(0.0)


@pytest.mark.parametrize("kwargs", [{}, {"filter_length": 24}, {"filter_length": 99},
                                    {"envelope_ceiling": 0.5}, {"compress_hidden": 2}])
def test_nhwc_layout_computes_the_same_logits_with_plain_convs(kwargs):
    """`deployable("nhwc")` (the TFLite graph) writes the filter bank as a stride-1 conv over
    space-to-depth blocks of p strides (p output phases: 2 for fp32, 10 for int8 here, 1 when
    the block holds one stride) and the envelope as a dense 1x1 conv: the same logits as the
    training graph for odd, even and long filters (which need extra or fewer padded
    samples), and no grouped or strided conv left in the front end."""
    from dlink.student import EEGMiC, _filter_phases

    model = _warm(EEGMiC(SMALL.n_chans, SMALL.n_times, 2, n_bands=4, n_virtual=2, width=8,
                         **kwargs), SMALL)
    with torch.no_grad():  # a weight per envelope tap: a filter output out of order shows
        model.envelope.weight.copy_(torch.rand_like(model.envelope.weight) / 50)
    x = torch.randn(3, SMALL.n_chans, SMALL.n_times) * 0.2
    n_f, stride = 4, model.filterbank[0].stride[1]
    for precision, block, phases in (("fp32", None, 2), ("int8", None, 10), ("fp32", 4, 1)):
        nhwc = model.deployable("nhwc", precision=precision, filter_block=block)
        torch.testing.assert_close(nhwc(x), model(x), rtol=1e-4, atol=1e-5)
        assert nhwc.geometry["filter_phases"] == phases  # 100 outputs read, even filters too
        assert nhwc.filterbank_weight.shape[:3] == (phases * n_f, phases * stride, 1)  # (pF, b, 1, J)
    assert nhwc.envelope_weight.shape == (n_f, model.envelope.kernel_size[1] * n_f, 1, 1)
    assert (_filter_phases(101, 4, 40), _filter_phases(100, 4, 40), _filter_phases(100, 8, 4)) == (1, 10, 1)
    with pytest.raises(ConfigError):
        model.deployable("nwhc")
    with pytest.raises(ConfigError):
        model.deployable("nhwc", filter_block=0)


@pytest.mark.parametrize("kwargs", [{}, {"input_mix": True}, {"compress_hidden": 2},
                                    {"time_shared_head": True}])
def test_deployed_graph_gives_the_training_graphs_logits(kwargs):
    """`deployable()` (what dlink-export ships: BatchNorm and the mimic projection folded)
    computes the same function as the training graph, for every architecture option."""
    from dlink.student import EEGMiC

    model = _warm(EEGMiC(SMALL.n_chans, SMALL.n_times, 2, n_bands=4, n_virtual=2, width=8,
                         **kwargs), SMALL)
    x = torch.randn(3, SMALL.n_chans, SMALL.n_times) * 0.2
    torch.testing.assert_close(model.deployable()(x), model(x), rtol=1e-4, atol=1e-5)
    if kwargs.get("input_mix"):  # starts as the identity: the same band amplitudes as without it
        torch.testing.assert_close(model.input_mix.weight[:, :, 0], torch.eye(SMALL.n_chans))
