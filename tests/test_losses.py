"""Distillation losses: zero when matched, growing with phase error, weighted total."""

import math

import pytest
import torch

from dlink.errors import ConfigError
from dlink.losses import (
    LOSSES,
    Decoder,
    DistillLoss,
    build_loss,
    decoded_spectra,
    distill_loss,
    kd_loss,
    mimic_loss,
    router_mutual_information,
    spectral_agreement,
    spectral_loss,
    spectral_terms_from_spectra,
)

B, C, N, D, K = 2, 3, 9, 8, 2  # odd N: rFFT has no Nyquist bin, every non-DC bin rotates


def _feats(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, C, N, D, generator=torch.Generator().manual_seed(seed))


def _rotate_phase(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate the phase of every non-DC bin along N by ``angle``; magnitudes unchanged."""
    spec = torch.fft.rfft(x, dim=2)
    rot = torch.ones(spec.shape[2], dtype=spec.dtype)
    rot[1:] = complex(math.cos(angle), math.sin(angle))
    return torch.fft.irfft(spec * rot[:, None], n=x.shape[2], dim=2)


def test_identical_features_cost_nothing():
    t = _feats()
    mag, phase = spectral_loss(t.clone(), t)
    assert mag.item() == 0.0
    assert phase.item() == pytest.approx(0.0, abs=1e-6)
    assert mimic_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-10)


def test_phase_term_grows_monotonically_with_phase_rotation():
    t = _feats()
    angles = [0.0, 0.25, 0.5, 1.0, 2.0, math.pi]
    mags, phases = zip(*(spectral_loss(_rotate_phase(t, a), t) for a in angles), strict=True)
    assert all(m.item() < 1e-5 for m in mags), "a pure phase rotation keeps magnitudes"
    values = [p.item() for p in phases]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] > 0.5


def test_circular_shift_along_patches_is_seen_by_phase_only():
    t = _feats()
    shifted = torch.roll(t, shifts=1, dims=2)
    mag, phase = spectral_loss(shifted, t)
    assert mag.item() < 1e-5 and phase.item() > 0.1
    assert spectral_loss(torch.roll(t, 1, dims=3), t, dim=2)[0] > 0.01  # d is not time


def test_spectral_gradient_is_finite_at_zero_student():
    s = torch.zeros(B, C, N, D, requires_grad=True)
    mag, phase = spectral_loss(s, _feats())
    (mag + phase).backward()
    assert torch.isfinite(s.grad).all()


def test_kd_is_zero_for_identical_logits_and_scaled_by_tau_squared():
    logits = torch.randn(4, K)
    assert kd_loss(logits, logits.clone(), tau=2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(4, K)
    ratio = kd_loss(logits, other, tau=1.0) / kd_loss(logits / 3, other / 3, tau=1.0 / 3)
    assert ratio.item() == pytest.approx(9.0, rel=1e-4)


def test_total_is_the_weighted_sum_of_named_terms():
    logits, labels = torch.randn(B, K, requires_grad=True), torch.tensor([0, 1])
    s = _feats(1).requires_grad_()
    cfg = build_loss("dlink-kd", alpha=2.0, lambda_mag=0.3, lambda_phase=0.7, label_smoothing=0.1,
                     router_mi=0.4)
    weights = torch.softmax(torch.randn(B, 6), dim=1)
    terms = distill_loss(cfg, logits, labels, s, _feats(2), teacher_logits=torch.randn(B, K),
                         decoder=_decoder(D), router_weights=weights)
    assert set(terms) == {"ce", "mimic", "mag", "phase", "kd", "router_ce", "router_mi", "total"}
    assert terms["router_mi"].item() > 0
    expected = (
        terms["ce"] + 2.0 * terms["mimic"] + 0.3 * terms["mag"] + 0.7 * terms["phase"] + terms["kd"]
        - 0.4 * terms["router_mi"]
    )
    torch.testing.assert_close(terms["total"], expected)
    terms["total"].backward()
    assert s.grad is not None and logits.grad is not None


def test_router_mutual_information_is_zero_for_one_mix_and_log_l_for_committed_windows():
    L = 6
    static = torch.softmax(torch.randn(L), dim=0).expand(8, L)  # any mix, the same for all
    assert router_mutual_information(static).item() == pytest.approx(0.0, abs=1e-6)
    committed = torch.eye(L)  # each window on its own layer, every layer used once
    assert router_mutual_information(committed).item() == pytest.approx(math.log(L), rel=1e-5)
    # in between: the same windows, softened, carry less information about their layer
    soft = 0.7 * committed + 0.3 / L
    assert 0 < router_mutual_information(soft).item() < math.log(L)


def test_ce_preset_needs_no_teacher_and_missing_inputs_are_explained():
    logits, labels = torch.randn(B, K), torch.tensor([0, 1])
    terms = distill_loss(LOSSES["ce"], logits, labels)
    assert terms["total"].item() == pytest.approx(terms["ce"].item())
    with pytest.raises(ConfigError, match="student_feats and teacher_feats"):
        distill_loss(DistillLoss(), logits, labels)
    with pytest.raises(ConfigError, match="teacher_logits"):
        distill_loss(LOSSES["kd"], logits, labels)
    with pytest.raises(ConfigError, match="unknown loss preset"):
        build_loss("nope")
    with pytest.raises(ConfigError, match="alpha"):
        DistillLoss(alpha=-1)


# --- the decoded axis: 1-s patches at 200 Hz, 1 Hz bins ------------------------------------

P, FS = 200, 200.0


def _decoder(d: int = P) -> Decoder:
    """Identity decoder when d == P (tokens are their own 1-s patches), else a fixed random map."""
    g = torch.Generator().manual_seed(7)
    weight = torch.eye(P) if d == P else torch.randn(P, d, generator=g) / d**0.5
    return Decoder(weight, torch.zeros(P), fs=FS)


def _oscillation(hz: float, phase: float) -> torch.Tensor:
    """(B, C, N, P) tokens whose decoded patches are an alpha-band sine plus broadband noise."""
    t = torch.arange(P) / FS
    g = torch.Generator().manual_seed(3)
    noise = 0.2 * torch.randn(B, C, N, P, generator=g)
    return torch.sin(2 * math.pi * hz * t + phase) + noise


def test_decoded_axis_has_45_eeg_bins_of_1_hz():
    dec = _decoder()
    spec = decoded_spectra(_oscillation(10.0, 0.0), dec, (1.0, 45.0))
    assert spec.shape[-1] == 45
    assert dec.freqs((1.0, 45.0))[[0, -1]].tolist() == [1.0, 45.0]
    assert spec.abs().mean(dim=(0, 1, 2)).argmax().item() == 9  # the 10 Hz bin


def test_decoded_spectral_loss_is_zero_for_identical_inputs_and_grows_with_a_10hz_phase_shift():
    cfg = build_loss("dlink", alpha=0.0, router_ce=0.0)
    logits, labels = torch.zeros(B, K), torch.tensor([0, 1])
    target = _oscillation(10.0, 0.0)
    same = distill_loss(cfg, logits, labels, target.clone(), target, decoder=_decoder())
    assert same["mag"].item() == pytest.approx(0.0, abs=1e-6)
    assert same["phase"].item() == pytest.approx(0.0, abs=1e-5)
    phases = [distill_loss(cfg, logits, labels, _oscillation(10.0, a), target,
                           decoder=_decoder())["phase"].item() for a in (0.0, 0.3, 0.8, 1.6, 3.0)]
    assert all(a < b for a, b in zip(phases, phases[1:])), phases
    assert phases[-1] > 0.5


def test_spectral_agreement_reports_phase_per_frequency():
    dec = _decoder()
    target = _oscillation(10.0, 0.0)
    same = spectral_agreement(target, target, dec)
    shifted = spectral_agreement(_oscillation(10.0, math.pi / 2), target, dec)
    assert same["freqs"].shape == same["phase_agreement"].shape == (45,)
    assert same["phase_agreement"][9] == pytest.approx(1.0, abs=1e-4)
    assert shifted["phase_agreement"][9] < 0.2  # 90 degrees apart at 10 Hz
    assert same["mag_err_db"].max() < 1e-3


def test_decoded_spectral_terms_have_finite_gradients():
    s = torch.zeros(B, C, N, P, requires_grad=True)
    mag, phase = spectral_terms_from_spectra(decoded_spectra(s, _decoder()),
                                             decoded_spectra(_oscillation(10.0, 0.0), _decoder()), dim=-1)
    (mag + phase).backward()
    assert torch.isfinite(s.grad).all()
