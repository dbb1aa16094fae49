"""EEGNet and ShallowConvNet: shapes, paper sizes, shared build/save/load."""

import pytest
import torch

from dlink.baselines import BASELINES, EEGNet, ShallowConvNet
from dlink.nn_utils import count_parameters
from dlink.signal import SignalSpec
from dlink.student import build_student, load_student, save_student

SIGNAL = SignalSpec(ch_names=("Fz", "Cz", "Pz", "Oz"), sfreq=200.0, n_times=400)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_shapes(name):
    model = build_student(name, SIGNAL, n_outputs=3, d_teacher=200).eval()
    assert not model.mimics_teacher
    x = torch.randn(2, SIGNAL.n_chans, SIGNAL.n_times)
    feats = model.forward_features(x)
    assert feats.ndim == 4 and feats.shape[0] == 2
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model(x).shape == (2, 3)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)


def test_eegnet_matches_the_paper_layout():
    # EEGNet-8,2 at 128 Hz, C=22, T=256: parameters as in Lawhern et al. Table 2 layout
    model = EEGNet(n_chans=22, n_times=256, n_outputs=4, sfreq=128.0)
    expected = (
        8 * 64 + 2 * 8  # temporal conv + BN
        + 16 * 22 + 2 * 16  # depthwise spatial + BN
        + 16 * 16 + 16 * 16 + 2 * 16  # separable (depthwise + pointwise) + BN
        + 16 * (256 // 32) * 4 + 4  # classifier
    )  # fmt: skip
    assert count_parameters(model) == expected
    assert model.forward_features(torch.randn(1, 22, 256)).shape == (1, 16, 1, 8)


def test_shallowconvnet_keeps_paper_durations_at_other_rates():
    m250 = ShallowConvNet(n_chans=4, n_times=1000, n_outputs=2, sfreq=250.0)
    m200 = ShallowConvNet(n_chans=4, n_times=1000, n_outputs=2, sfreq=200.0)
    assert m250.temporal.kernel_size == (1, 25) and m250.pool.kernel_size == (1, 75)
    assert m200.temporal.kernel_size == (1, 20) and m200.pool.stride == (1, 12)
    with pytest.raises(ValueError, match="longer window"):
        ShallowConvNet(n_chans=4, n_times=50, n_outputs=2)


def test_baseline_saved_folder_records_arch_and_signal(tmp_path):
    model = build_student("eegnet", SIGNAL, 2, class_names=["a", "b"])
    save_student(model, tmp_path)
    loaded = load_student(tmp_path)
    assert isinstance(loaded, EEGNet) and loaded.config["arch"] == "eegnet"
    assert loaded.config["family"] == "baseline" and "d_teacher" not in loaded.config["kwargs"]


def test_shallowconvnet_relu6_replaces_square_and_log_with_an_int8_op():
    """The int8-deployable variant: the same layers and parameters, a ReLU6 amplitude
    instead of the log power (bounded in [0, 6], what an int8 activation range holds)."""
    paper = build_student("shallowconvnet", SIGNAL, 2)
    relu6 = build_student("shallowconvnet-relu6", SIGNAL, 2)
    assert relu6.power == "relu6" and relu6.config["kwargs"]["power"] == "relu6"
    assert count_parameters(relu6) == count_parameters(paper)
    relu6.load_state_dict(paper.state_dict())
    x = 10 * torch.randn(3, SIGNAL.n_chans, SIGNAL.n_times)
    feats = relu6.eval().forward_features(x)
    assert feats.min() >= 0 and feats.max() <= 6
    z = paper.eval().spatial(paper.temporal(x.unsqueeze(1)))  # the same band signals
    torch.testing.assert_close(feats, paper.pool(z.clamp(0, 6)))
    torch.testing.assert_close(paper.forward_features(x), paper.pool(z * z).clamp_min(1e-6).log())
    # its classifier is the paper's conv over all (F, T') written as one fully connected layer
    torch.testing.assert_close(relu6.forward_head(feats), relu6.classifier(feats).flatten(1))
    with pytest.raises(ValueError, match="power must be one of"):
        ShallowConvNet(n_chans=4, n_times=1000, n_outputs=2, power="abs")
