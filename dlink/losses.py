"""DLink training losses: CE, feature mimic, spectral (magnitude + phase), logit KD.

``total = CE + alpha * mimic + lambda_mag * mag + lambda_phase * phase + kd_weight * kd
          + router_ce * CE(target probe) - router_mi * I(window; layer)``

The student's mimic representation and the routed teacher target are both (B, C, N, d):
one d-wide token per channel and 1-s patch. Where the spectral terms look
(``spectral_axis``):

- ``"decoded"`` (default): each token is mapped back to the 200 samples (1 s at 200 Hz) of
  its patch by the teacher's own pre-training decoder ``proj_out`` (a frozen Linear d -> P
  that CBraMod learns to reconstruct masked patches with), and the rFFT runs over those P
  samples: bins of fs / P = 1 Hz, of which 1-45 Hz (45 bins: delta to low gamma) are
  compared. Both representations pass through the same fixed linear map, so this is a
  view of the tokens, not a new target; it is the only axis of the token grid on which
  EEG oscillations have a frequency. The magnitude term aligns how much of each rhythm a
  token carries, the magnitude-weighted phase term aligns *when* within the second it
  peaks, which is what temporal jitter and aliasing in compression destroy.
- ``"patch"``: rFFT along N, the patch axis (N = 5 -> 3 bins of 0.2 Hz; kept for ablation:
  it sees feature dynamics across the window, not EEG rhythms).
- ``"feature"``: rFFT along d (ablation; the order of features carries no frequency).

Shape legend
------------
B batch, C channels, N patches, d feature width, P samples per patch, F frequency bins,
K classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from dlink.errors import ConfigError


@dataclass(frozen=True)
class DistillLoss:
    """Weights and options of the DLink objective (untuned defaults; see presets)."""

    alpha: float = 1.0  # weight of the feature-mimic MSE
    lambda_mag: float = 0.5  # weight of the spectral magnitude term (L1 on log1p |X|)
    lambda_phase: float = 0.5  # weight of the magnitude-weighted phase term (1 - cos dphi)
    kd_weight: float = 0.0  # weight of Hinton logit KD; needs teacher logits when > 0
    kd_tau: float = 2.0  # KD temperature; the term is scaled by tau^2
    label_smoothing: float = 0.0  # CE label smoothing in [0, 1)
    mimic_norm: bool = True  # layer-normalise both features over d first (scale-free target)
    spectral_axis: Literal["decoded", "patch", "feature"] = "decoded"  # see the module docstring
    band_hz: tuple[float, float] = (1.0, 45.0)  # bins compared on the decoded axis
    router_ce: float = 0.5  # weight of the routed target's probe CE (learned routers only)
    router_mi: float = 0.3  # weight of the router's input-layer mutual information, a reward
    # (`router_mutual_information`; learned routers only, zero for a static one)
    eps: float = 1e-8  # guards magnitudes and phase cosines against division by zero

    def __post_init__(self):
        for name in ("alpha", "lambda_mag", "lambda_phase", "kd_weight", "router_ce", "router_mi"):
            if getattr(self, name) < 0:
                raise ConfigError(f"DistillLoss.{name} must be >= 0, got {getattr(self, name)}.")
        if self.kd_tau <= 0:
            raise ConfigError(f"DistillLoss.kd_tau must be > 0, got {self.kd_tau}.")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.spectral_axis not in ("decoded", "patch", "feature"):
            raise ConfigError(
                f"spectral_axis must be 'decoded', 'patch' or 'feature', got {self.spectral_axis!r}."
            )

    @property
    def needs_features(self) -> bool:
        return self.alpha > 0 or self.lambda_mag > 0 or self.lambda_phase > 0

    def to_dict(self) -> dict:
        return asdict(self)


LOSSES: dict[str, DistillLoss] = {
    "dlink": DistillLoss(),  # CE + mimic + magnitude + phase
    "dlink-kd": DistillLoss(kd_weight=1.0),  # ... plus logit KD
    "mimic": DistillLoss(lambda_mag=0.0, lambda_phase=0.0),  # ablation: no spectral terms
    "kd": DistillLoss(alpha=0.0, lambda_mag=0.0, lambda_phase=0.0, kd_weight=1.0),
    "ce": DistillLoss(alpha=0.0, lambda_mag=0.0, lambda_phase=0.0),  # no teacher at all
    "dlink-patch": DistillLoss(spectral_axis="patch"),  # ablation: the old 3-bin axis
}


def build_loss(name: str = "dlink", **overrides) -> DistillLoss:
    """A `LOSSES` preset with fields replaced, e.g. ``build_loss("dlink", alpha=2.0)``."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss preset {name!r}; choose one of {sorted(LOSSES)}.")
    try:
        return replace(LOSSES[name], **overrides)
    except TypeError as exc:
        raise ConfigError(f"{exc}; DistillLoss fields are {sorted(asdict(LOSSES[name]))}.") from exc


# ---------------------------------------------------------------------------------------
# Terms


def mimic_loss(
    student: torch.Tensor, teacher: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """MSE between mimic and routed teacher features, both (B, C, N, d).

    With ``normalize`` each token is layer-normalised over d (no affine) first, so the
    target's scale, which differs by an order of magnitude across teacher layers, does not
    set the loss scale.
    """
    _same_shape(student, teacher, "mimic_loss")
    if normalize:
        student, teacher = _token_norm(student), _token_norm(teacher)
    return F.mse_loss(student, teacher)


def spectral_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    dim: int = 2,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude and phase mismatch of the rFFT along ``dim`` (default 2 = N patches).

    Parameters
    ----------
    student, teacher : same shape, e.g. (B, C, N, d).
    dim : axis of the transform (see the module docstring for why N).
    eps : numerical guard.

    Returns
    -------
    mag : L1 distance of ``log1p(|X|)``, averaged over all bins.
    phase : ``sum_f w_f (1 - cos(phi_s - phi_t))`` with ``w_f = |T_f| / sum_f |T_f|``,
        averaged over the other axes; in [0, 2]. Weighting by the teacher's normalised
        magnitude keeps bins where the target has no energy (pure noise, undefined
        phase) from dominating.
    """
    _same_shape(student, teacher, "spectral_loss")
    s = torch.fft.rfft(student.float(), dim=dim)  # (..., F, ...)
    t = torch.fft.rfft(teacher.float(), dim=dim)
    return spectral_terms_from_spectra(s, t, dim, eps)


@dataclass(frozen=True)
class Decoder:
    """The teacher's frozen token -> patch decoder (``proj_out``): weight (P, d), bias (P,).

    ``fs`` is the sampling rate of the decoded patch in Hz (200 for CBraMod).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    fs: float = 200.0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, N, d) tokens -> (B, C, N, P) samples of each 1-s patch."""
        return F.linear(tokens.float(), self.weight.to(tokens.device), self.bias.to(tokens.device))

    def band(self, band_hz: tuple[float, float]) -> slice:
        """rFFT bins of a P-sample patch that lie inside ``band_hz`` (inclusive)."""
        step = self.fs / self.weight.shape[0]  # Hz per bin
        return slice(int(round(band_hz[0] / step)), int(round(band_hz[1] / step)) + 1)

    def freqs(self, band_hz: tuple[float, float]) -> torch.Tensor:
        """(F,) centre frequencies in Hz of the bins `band` keeps."""
        sl = self.band(band_hz)
        return torch.arange(sl.start, sl.stop) * self.fs / self.weight.shape[0]


def decoded_spectra(tokens: torch.Tensor, decoder: Decoder,
                    band_hz: tuple[float, float] = (1.0, 45.0)) -> torch.Tensor:
    """(B, C, N, d) tokens -> (B, C, N, F) complex rFFT of their decoded 1-s patches, F bins
    of ``band_hz``."""
    return torch.fft.rfft(decoder(tokens), dim=-1)[..., decoder.band(band_hz)]


def spectral_terms_from_spectra(s: torch.Tensor, t: torch.Tensor, dim: int,
                                eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude (L1 of log1p |X|) and magnitude-weighted phase (1 - cos dphi) terms of two
    complex spectra of one shape, frequency along ``dim``."""
    s_mag, t_mag = s.abs(), t.abs()
    mag = F.l1_loss(torch.log1p(s_mag), torch.log1p(t_mag))
    # cos(phi_s - phi_t) = Re(s * conj(t)) / (|s| |t|), without atan2 and its gradient spikes
    cross = s.real * t.real + s.imag * t.imag
    cos = cross / torch.sqrt((s_mag.square() + eps) * (t_mag.square() + eps))
    w = t_mag / (t_mag.sum(dim=dim, keepdim=True) + eps)
    phase = (w * (1.0 - cos)).sum(dim=dim).mean()
    return mag, phase


@torch.no_grad()
def spectral_agreement(student: torch.Tensor, teacher: torch.Tensor, decoder: Decoder,
                       band_hz: tuple[float, float] = (1.0, 45.0)) -> dict:
    """Per-frequency agreement of two token grids on the decoded axis (what the report and
    the benchmark show).

    Parameters
    ----------
    student, teacher : (B, C, N, d) tokens, layer-normalised over d as the losses see them.

    Returns
    -------
    dict with ``freqs`` (F,) Hz, ``mag_err_db`` (F,) mean |20 log10 |S| - 20 log10 |T||
    over windows, channels and patches, and ``phase_agreement`` (F,) magnitude-weighted
    mean cos(phi_s - phi_t) (1 = same phase, 0 = unrelated), as numpy arrays.
    """
    s = decoded_spectra(_token_norm(student), decoder, band_hz).flatten(0, 2)  # (B*C*N, F)
    t = decoded_spectra(_token_norm(teacher), decoder, band_hz).flatten(0, 2)
    eps = 1e-8
    err = (20 * torch.log10(s.abs() + eps) - 20 * torch.log10(t.abs() + eps)).abs().mean(0)
    cos = (s.real * t.real + s.imag * t.imag) / (s.abs() * t.abs() + eps)
    w = t.abs() / (t.abs().sum(0, keepdim=True) + eps)  # weights over tokens, per bin
    return {"freqs": decoder.freqs(band_hz).numpy(), "mag_err_db": err.numpy(),
            "phase_agreement": (w * cos).sum(0).numpy()}


def router_mutual_information(weights: torch.Tensor) -> torch.Tensor:
    """Mutual information between the window and the layer a router picks, in nats.

    ``weights`` (B, L) rows on the simplex, read as p(layer | window) for the B windows of a
    batch: ``I = H(mean_b w_b) - mean_b H(w_b)``, between 0 and log L. It is 0 for a static
    router (every row the same, whatever its mix) and log L when every window commits to
    one layer and the batch uses all layers equally: the quantity mixture-of-experts
    gating rewards against gate collapse. As a reward (``router_mi``) it asks the router to
    send different windows to different layers; the target probe still decides which.
    """
    w = weights.clamp_min(1e-12)
    mean = w.mean(dim=0)
    h_mean = -(mean * mean.log()).sum()
    mean_h = -(w * w.log()).sum(dim=1).mean()
    return h_mean - mean_h


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton KD: ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``, batch mean; (B, K)."""
    _same_shape(student_logits, teacher_logits, "kd_loss")
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / tau, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * tau**2


# ---------------------------------------------------------------------------------------
# Objective


def distill_loss(
    cfg: DistillLoss,
    logits: torch.Tensor,
    labels: torch.Tensor,
    student_feats: torch.Tensor | None = None,
    teacher_feats: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    decoder: Decoder | None = None,
    probe_logits: torch.Tensor | None = None,
    router_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All DLink loss terms and their weighted total.

    Parameters
    ----------
    cfg : weights and options.
    logits : (B, K) student logits.
    labels : (B,) int64 class indices.
    student_feats : (B, C, N, d) student mimic representation (``forward_features``).
    teacher_feats : (B, C, N, d) routed teacher target (``RoutedFeatures.features``).
    teacher_logits : (B, K) teacher logits, needed when ``cfg.kd_weight > 0``.
    class_weight : optional (K,) weights of the cross-entropy (imbalanced classes).
    decoder : the teacher's token decoder, needed for ``spectral_axis="decoded"``.
    probe_logits : (B, K) the router's target-probe logits (`RoutedFeatures.probe_logits`).
    router_weights : (B, L) the layer weights of a per-input router (`RoutedFeatures.weights`);
        the ``router_mi`` reward is computed only when they are given.

    Returns
    -------
    dict[str, torch.Tensor]
        Scalars ``ce``, ``mimic``, ``mag``, ``phase``, ``kd``, ``router_ce``, ``router_mi``
        (unweighted; zero when the term is off) and ``total`` (weighted sum; the one to
        backpropagate; ``router_mi`` is a reward and enters it with a minus sign).
    """
    zero = logits.new_zeros(())
    terms = {
        "ce": F.cross_entropy(logits, labels, weight=class_weight,
                              label_smoothing=cfg.label_smoothing),
        "mimic": zero,
        "mag": zero,
        "phase": zero,
        "kd": zero,
        "router_ce": zero,
        "router_mi": zero,
    }
    if cfg.needs_features:
        if student_feats is None or teacher_feats is None:
            raise ConfigError(
                "this loss needs student_feats and teacher_feats (alpha, lambda_mag or "
                "lambda_phase > 0); pass them, or use the 'kd' or 'ce' preset."
            )
        # No detach: the teacher's layers are frozen (cached without gradients), so the only
        # gradient the target carries goes to the router, which is trained jointly with the
        # student to mix the layers the student is asked to mimic.
        s, t = student_feats, teacher_feats
        if cfg.mimic_norm:
            s, t = _token_norm(s), _token_norm(t)
        if cfg.alpha > 0:
            terms["mimic"] = mimic_loss(s, t, normalize=False)
        if cfg.lambda_mag > 0 or cfg.lambda_phase > 0:
            if cfg.spectral_axis == "decoded":
                if decoder is None:
                    raise ConfigError("spectral_axis='decoded' needs the teacher's decoder; pass "
                                      "decoder=, or use spectral_axis='patch'.")
                terms["mag"], terms["phase"] = spectral_terms_from_spectra(
                    decoded_spectra(s, decoder, cfg.band_hz), decoded_spectra(t, decoder, cfg.band_hz),
                    dim=-1, eps=cfg.eps)
            else:
                dim = 2 if cfg.spectral_axis == "patch" else 3
                terms["mag"], terms["phase"] = spectral_loss(s, t, dim=dim, eps=cfg.eps)
    if cfg.kd_weight > 0:
        if teacher_logits is None:
            raise ConfigError("kd_weight > 0 needs teacher_logits; pass them or set kd_weight=0.")
        terms["kd"] = kd_loss(logits, teacher_logits, cfg.kd_tau)
    if cfg.router_ce > 0 and probe_logits is not None:
        terms["router_ce"] = F.cross_entropy(probe_logits, labels, weight=class_weight)
    if cfg.router_mi > 0 and router_weights is not None:
        terms["router_mi"] = router_mutual_information(router_weights)
    terms["total"] = (
        terms["ce"]
        + cfg.router_ce * terms["router_ce"]
        + cfg.alpha * terms["mimic"]
        + cfg.lambda_mag * terms["mag"]
        + cfg.lambda_phase * terms["phase"]
        + cfg.kd_weight * terms["kd"]
        - cfg.router_mi * terms["router_mi"]
    )
    return terms


def _token_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:])  # over d, no affine


def _same_shape(a: torch.Tensor, b: torch.Tensor, who: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{who}: student {tuple(a.shape)} and teacher {tuple(b.shape)} differ; build the "
            "student with d_teacher equal to the teacher width and the same window."
        )
