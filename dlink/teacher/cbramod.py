"""CBraMod: the criss-cross EEG foundation model, with the official parameter names.

Shape legend
------------
B batch, C EEG channels, T samples per window, N patches per channel (T = N * P),
P samples per patch (200: 1 s at 200 Hz), F rFFT bins per patch (P // 2 + 1 = 101),
d model width, K conv channels in the patch encoder (d = K * P // 25), n_outputs classes.

Input units: CBraMod was pre-trained on µV / 100 (``SignalSpec.input_scale = 0.01``) at
200 Hz; feed it windows scaled the same way.

Module and parameter names follow the official release (github.com/wjq-learning/CBraMod,
``models/cbramod.py`` and ``models/criss_cross_transformer.py``) so that its
``pretrained_weights.pth`` and braindecode's ``CBraMod`` backbone load with ``strict=True``:
``patch_embedding.*``, ``encoder.layers.{i}.{self_attn_s,self_attn_t,linear1,linear2,norm1,
norm2}.*`` and ``proj_out.*``. Our task head lives under ``head.*`` and is not part of either.

References
----------
Wang, J., Zhao, S., Luo, Z., Zhou, Y., Jiang, H., Li, S., Li, T., & Pan, G. (2025).
CBraMod: A Criss-Cross Brain Foundation Model for EEG Decoding. ICLR 2025.
https://arxiv.org/abs/2412.07236 (code: MIT licence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from dlink.errors import ConfigError
from dlink.signal import SignalSpec

HEADS = ("mean", "channel", "layers")  # task-head kinds, see CBraMod
PER_ELECTRODE_HEADS = ("channel", "layers")  # pool per electrode: need n_chans
HEAD_PREFIX = "head."  # state_dict keys of our task head; everything else is the backbone

# The first conv of the patch encoder: kernel 49, stride 25, padding 24 (official values).
_CONV_KERNEL, _CONV_STRIDE, _CONV_PADDING = 49, 25, 24


@dataclass(frozen=True)
class CBraModConfig:
    """Architecture of a CBraMod backbone; ``base`` is the released model."""

    patch_size: int = 200  # P, samples per patch; 200 = 1 s at 200 Hz, fixed by pre-training
    d_model: int = 200  # d, token width; must be K * (conv steps per patch), K % norm_groups == 0
    n_layer: int = 12  # criss-cross layers; each one is a distillation target
    nhead: int = 8  # attention heads, split half spatial / half temporal
    dim_feedforward: int = 800  # hidden width of each layer's MLP (4 * d in the release)
    norm_groups: int = 5  # GroupNorm groups in the patch encoder (release: 5 groups of 5)
    dropout: float = 0.1  # attention, MLP and spectral-branch dropout (training only)

    @property
    def conv_steps(self) -> int:
        """Time steps the strided conv leaves per patch (8 for P = 200)."""
        return (self.patch_size + 2 * _CONV_PADDING - _CONV_KERNEL) // _CONV_STRIDE + 1

    @property
    def conv_channels(self) -> int:
        """K, conv channels of the patch encoder (25 for the release)."""
        return self.d_model // self.conv_steps

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field."""
        if self.d_model % self.conv_steps:
            raise ConfigError(
                f"d_model={self.d_model} must be a multiple of {self.conv_steps}, the conv "
                f"steps per patch of {self.patch_size} samples; try d_model="
                f"{self.conv_steps * max(1, self.d_model // self.conv_steps)}."
            )
        if self.conv_channels % self.norm_groups:
            raise ConfigError(
                f"the patch encoder has {self.conv_channels} conv channels, not divisible by "
                f"norm_groups={self.norm_groups}; change d_model or norm_groups."
            )
        if self.d_model % 2 or self.nhead % 2 or (self.d_model // 2) % (self.nhead // 2):
            raise ConfigError(
                f"d_model={self.d_model} and nhead={self.nhead} must be even and d_model/2 "
                f"divisible by nhead/2 (each half of d feeds one attention with nhead/2 heads)."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CBraModConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown CBraMod config fields {unknown}; known: "
                              f"{sorted(cls.__dataclass_fields__)}.")
        return cls(**d)


PRESETS: dict[str, CBraModConfig] = {
    # The released model (~4.9M parameters with proj_out).
    "base": CBraModConfig(),
    # Half the depth of the release, same width: a cheaper teacher for quick experiments.
    "small": CBraModConfig(n_layer=6),
    # For tests: 2 narrow layers. d = 40 keeps the release's GroupNorm(5, K) with K = 5.
    "tiny": CBraModConfig(d_model=40, n_layer=2, nhead=4, dim_feedforward=64),
}


def patchify(x: Tensor, patch_size: int = 200) -> Tensor:
    """Cut windows into 1-s patches.

    Parameters
    ----------
    x : (B, C, T) tensor in CBraMod units (µV / 100) at 200 Hz.
    patch_size : P, samples per patch.

    Returns
    -------
    (B, C, N, P) tensor with N = T // P.
    """
    B, C, T = x.shape
    if T % patch_size:
        raise ConfigError(
            f"window has n_times={T} samples, not a multiple of patch_size={patch_size}; "
            f"use windows of a whole number of seconds at 200 Hz (e.g. {patch_size * 4})."
        )
    return x.reshape(B, C, T // patch_size, patch_size)  # (B, C, N, P)


class PatchEmbedding(nn.Module):
    """Patch tokens = conv branch + spectral branch + conditional positional encoding.

    The conv branch runs a strided conv stack over each patch on its own; the spectral
    branch projects the rFFT magnitude of the patch; the asymmetric conditional positional
    encoding (ACPE) is a depthwise (19 channels x 7 patches) conv over the token grid.
    """

    def __init__(self, cfg: CBraModConfig):
        super().__init__()
        d, K, P = cfg.d_model, cfg.conv_channels, cfg.patch_size
        self.d_model = d
        self.positional_encoding = nn.Sequential(
            nn.Conv2d(d, d, kernel_size=(19, 7), stride=(1, 1), padding=(9, 3), groups=d),
        )
        # Replaces masked patches during pre-training; frozen, kept for weight compatibility.
        self.mask_encoding = nn.Parameter(torch.zeros(P), requires_grad=False)
        self.proj_in = nn.Sequential(  # indices 0/1, 3/4, 6/7 hold parameters (official)
            nn.Conv2d(1, K, kernel_size=(1, _CONV_KERNEL), stride=(1, _CONV_STRIDE),
                      padding=(0, _CONV_PADDING)),
            nn.GroupNorm(cfg.norm_groups, K),
            nn.GELU(),
            nn.Conv2d(K, K, kernel_size=(1, 3), stride=(1, 1), padding=(0, 1)),
            nn.GroupNorm(cfg.norm_groups, K),
            nn.GELU(),
            nn.Conv2d(K, K, kernel_size=(1, 3), stride=(1, 1), padding=(0, 1)),
            nn.GroupNorm(cfg.norm_groups, K),
            nn.GELU(),
        )
        self.spectral_proj = nn.Sequential(
            nn.Linear(P // 2 + 1, d),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, C, N, P) patches in µV / 100, optional (B, C, N) mask of 1s -> (B, C, N, d)."""
        B, C, N, P = x.shape
        if mask is not None:
            x = x.clone()
            x[mask == 1] = self.mask_encoding
        conv = self.proj_in(x.reshape(B, 1, C * N, P))  # (B, K, C*N, P/25)
        conv = conv.permute(0, 2, 1, 3).reshape(B, C, N, self.d_model)  # (B, C, N, d), K-major
        spectrum = torch.fft.rfft(x, dim=-1, norm="forward").abs()  # (B, C, N, F)
        tokens = conv + self.spectral_proj(spectrum)  # (B, C, N, d)
        pos = self.positional_encoding(tokens.permute(0, 3, 1, 2))  # (B, d, C, N)
        return tokens + pos.permute(0, 2, 3, 1)  # (B, C, N, d)


class CrissCrossLayer(nn.Module):
    """Pre-norm transformer layer whose attention is split into two halves of d.

    The first d/2 features attend across channels within each patch (spatial, ``self_attn_s``);
    the last d/2 attend across patches within each channel (temporal, ``self_attn_t``).
    """

    def __init__(self, cfg: CBraModConfig):
        super().__init__()
        half, heads = cfg.d_model // 2, cfg.nhead // 2
        self.self_attn_s = nn.MultiheadAttention(half, heads, dropout=cfg.dropout,
                                                 batch_first=True)
        self.self_attn_t = nn.MultiheadAttention(half, heads, dropout=cfg.dropout,
                                                 batch_first=True)
        self.linear1 = nn.Linear(cfg.d_model, cfg.dim_feedforward)
        self.dropout = nn.Dropout(cfg.dropout)
        self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.activation = nn.GELU()

    def _criss_cross_attention(self, x: Tensor) -> Tensor:
        B, C, N, d = x.shape
        xs = x[..., : d // 2].transpose(1, 2).reshape(B * N, C, d // 2)  # (B*N, C, d/2)
        xt = x[..., d // 2 :].reshape(B * C, N, d // 2)  # (B*C, N, d/2)
        xs = self.self_attn_s(xs, xs, xs, need_weights=False)[0]
        xt = self.self_attn_t(xt, xt, xt, need_weights=False)[0]
        xs = xs.reshape(B, N, C, d // 2).transpose(1, 2)  # (B, C, N, d/2)
        xt = xt.reshape(B, C, N, d // 2)  # (B, C, N, d/2)
        return self.dropout1(torch.cat((xs, xt), dim=3))  # (B, C, N, d)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, N, d) -> (B, C, N, d)."""
        x = x + self._criss_cross_attention(self.norm1(x))
        h = self.linear2(self.dropout(self.activation(self.linear1(self.norm2(x)))))
        return x + self.dropout2(h)


class CrissCrossEncoder(nn.Module):
    """A stack of criss-cross layers (official name ``encoder``; no final norm)."""

    def __init__(self, cfg: CBraModConfig):
        super().__init__()
        self.layers = nn.ModuleList([CrissCrossLayer(cfg) for _ in range(cfg.n_layer)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _init_weights(m: nn.Module) -> None:
    """The release's init: Kaiming-normal (fan_out) linears; other modules keep defaults."""
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class CBraMod(nn.Module):
    """CBraMod backbone with a light pooled task head.

    Parameters
    ----------
    cfg : architecture; see ``PRESETS``.
    n_outputs : number of classes of the task head; 0 gives no head (``forward_head``
        returns the pooled (B, d) features, as timm's ``num_classes=0``).
    head_dropout : dropout before the head's linear layer (training only).

    Notes
    -----
    Task heads (``head``):

    - ``"mean"``: mean over all C x N tokens of the last layer, dropout, ``nn.Linear(d,
      n_outputs)``; the release's ``avgpooling_patch_reps`` classifier. Works for any C
      and N, but averaging over electrodes throws away where on the scalp a feature is:
      on EEGMAT a probe on channel-averaged frozen tokens scores ~0.58 BAcc, on per-channel
      tokens ~0.63.
    - ``"channel"`` (needs ``n_chans``): mean over the N patches of each channel, flattened
      to (B, C*d), BatchNorm, dropout, ``nn.Linear(C*d, n_outputs)``. Keeps the montage,
      still avoids the release's flatten-MLP over C*N*d (``Linear(C*N*d, N*d)`` -> ...),
      which overfits and ties the head to one window length.
    - ``"layers"`` (needs ``n_chans``): the ``channel`` head on a learned mix of the patch
      embedding's and every encoder layer's tokens, weights softmax(``head.mix``) (L + 1
      logits, uniform at first; ELMo's scalar mix). On EEGMAT a linear probe loses task
      information with depth, from the patch embedding to the last layer
      (``bench/teacher_layer_probes.py``), so the head is let read every depth.

    None matches braindecode's ``final_layer``; the head is trained during fine-tuning.

    ``proj_out`` is the pre-training head that reconstructs masked patches; it is kept so
    the released weights load strictly, and is not used by ``forward``.

    This is our re-implementation; its parity with braindecode's ``CBraMod`` (itself adapted
    from the official code) is tested, not verified by the original authors.
    """

    def __init__(self, cfg: CBraModConfig | None = None, n_outputs: int = 0,
                 head_dropout: float = 0.0, head: str = "mean", n_chans: int | None = None):
        super().__init__()
        cfg = cfg or CBraModConfig()
        cfg.validate()
        self.cfg = cfg
        self.signal: SignalSpec | None = None  # the input it was fine-tuned on, if known
        self.patch_embedding = PatchEmbedding(cfg)
        self.encoder = CrissCrossEncoder(cfg)
        self.proj_out = nn.Sequential(nn.Linear(cfg.d_model, cfg.patch_size))
        self.apply(_init_weights)
        self.head_drop = nn.Dropout(head_dropout)
        self.reset_classifier(n_outputs, head, n_chans)

    # --- Teacher protocol -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.cfg.n_layer

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def reset_classifier(self, n_outputs: int, head: str | None = None,
                         n_chans: int | None = None) -> None:
        """Replace the task head by a freshly initialised one with ``n_outputs`` classes
        (``head`` and ``n_chans`` as in the class docstring; None keeps the current kind)."""
        head = head or getattr(self, "head_kind", "mean")
        n_chans = n_chans or getattr(self, "head_chans", None)
        if head not in HEADS:
            raise ConfigError(f"unknown teacher head {head!r}; choose one of {HEADS}.")
        if head in PER_ELECTRODE_HEADS and not n_chans:
            raise ConfigError(f"the {head!r} head needs n_chans (the number of EEG channels).")
        self.n_outputs, self.head_kind = int(n_outputs), head
        self.head_chans = int(n_chans) if head in PER_ELECTRODE_HEADS else None
        if n_outputs <= 0:
            self.head = nn.Identity()
        elif head in PER_ELECTRODE_HEADS:
            width = self.head_chans * self.d_model
            self.head = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, n_outputs))
        else:
            self.head = nn.Linear(self.d_model, n_outputs)
        if head == "layers":  # under head.*: the backbone's keys stay the release's
            self.head.register_parameter("mix", nn.Parameter(torch.zeros(self.n_layers + 1)))

    @property
    def head_config(self) -> dict:
        """What rebuilds the head: ``{"kind": ..., "n_chans": ...}``."""
        return {"kind": self.head_kind, "n_chans": self.head_chans}

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[-1] != self.patch_size:
            raise ConfigError(
                f"CBraMod expects patched input (B, C, N, {self.patch_size}), got "
                f"{tuple(x.shape)}; cut (B, C, T) windows with patchify(x)."
            )

    def forward_layers(self, x: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """Token features after each encoder layer.

        Parameters
        ----------
        x : (B, C, N, P) patches in µV / 100 (see ``patchify``).
        mask : optional (B, C, N) with 1 where a patch is replaced by the mask token.

        Returns
        -------
        list of ``n_layers`` tensors (B, C, N, d); the last is the encoder output.
        """
        self._check_input(x)
        return self._depths(self.patch_embedding(x, mask))[1:]

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, N, P) patches in µV / 100 -> (B, C, N, d) tokens the head reads."""
        self._check_input(x)
        return self.head_tokens(self.patch_embedding(x))

    def layers_and_logits(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """One pass of (B, C, N, P) patches in µV / 100: ``forward_layers(x)`` and the
        (B, n_outputs) logits (what distillation caches)."""
        self._check_input(x)
        depths = self._depths(self.patch_embedding(x))
        return depths[1:], self.forward_head(self._mix(depths))

    def head_tokens(self, h: Tensor) -> Tensor:
        """(B, C, N, d) patch-embedding output -> the (B, C, N, d) tokens the head reads: the
        last layer's, or with the ``layers`` head their softmax(``head.mix``)-weighted sum
        over the embedding and every layer."""
        if getattr(self.head, "mix", None) is None:
            return self.encoder(h)
        return self._mix(self._depths(h))

    def _depths(self, h: Tensor) -> list[Tensor]:
        """[h, layer 1 output, ..., layer L output], each (B, C, N, d), from the embedding h."""
        depths = [h]
        for layer in self.encoder.layers:
            depths.append(layer(depths[-1]))
        return depths

    def _mix(self, depths: list[Tensor]) -> Tensor:
        """The tokens the head reads from `_depths`: the last, or the ``layers`` head's mix."""
        mix = getattr(self.head, "mix", None)
        if mix is None:
            return depths[-1]
        w = torch.softmax(mix, dim=0)  # (L + 1,)
        return sum(w[i] * h for i, h in enumerate(depths))

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, N, d) tokens -> (B, n_outputs) logits, or the pooled features if
        ``pre_logits``: (B, d) for the mean head, (B, C*d) for the channel and layers heads."""
        if self.head_kind in PER_ELECTRODE_HEADS:
            pooled = features.mean(dim=2).flatten(1)  # (B, C*d)
        else:
            pooled = features.mean(dim=(1, 2))  # (B, d)
        if pre_logits:
            return pooled
        return self.head(self.head_drop(pooled))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, N, P) patches in µV / 100 -> (B, n_outputs) logits."""
        return self.forward_head(self.forward_features(x))

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """State dict without the task head: the official / braindecode backbone keys."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(HEAD_PREFIX)}


def cbramod(preset: str = "base", n_outputs: int = 0, **overrides) -> CBraMod:
    """Build a CBraMod from a preset name, optionally overriding config fields.

    Parameters
    ----------
    preset : one of ``PRESETS`` ("base", "small", "tiny").
    n_outputs : classes of the task head (0: no head).
    **overrides : ``CBraModConfig`` fields to change, and ``head_dropout``, ``head`` and
        ``n_chans`` (the task head, see `CBraMod`).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown CBraMod preset {preset!r}; choose from {sorted(PRESETS)}.")
    head_dropout = overrides.pop("head_dropout", 0.0)
    head, n_chans = overrides.pop("head", "mean"), overrides.pop("n_chans", None)
    try:
        cfg = replace(PRESETS[preset], **overrides)
    except TypeError as exc:
        raise ConfigError(f"bad override for preset {preset!r}: {exc}; known fields: "
                          f"{sorted(CBraModConfig.__dataclass_fields__)}.") from exc
    return CBraMod(cfg, n_outputs=n_outputs, head_dropout=head_dropout, head=head, n_chans=n_chans)
