"""EEG-MiC, the DLink student ("mimic, then compress"), and the student API.

The student first *mimics*: it cuts the window into the teacher's grid of 1-s patches and
projects every patch to the teacher's width, giving a (B, C, N, d) representation that is
trained to match the routed teacher features. It then *compresses*: a 1x1 conv mixes the
C electrodes down to a few virtual channels, another squeezes the d features, a strided
conv runs over the N patches, and global pooling feeds a small linear classifier -- no
flatten-MLP head. Only the compressed branch and the projection are deployed; the teacher
and the router never leave training.

Every op in `forward` is int8-friendly: Reshape, Linear (MatMul + Add), Conv, BatchNorm
directly after a conv (folds), ReLU, Add, Transpose, GlobalAveragePool, Flatten, Gemm.

The module also holds the API shared by all deployable models (students and baselines):
`build_student`, `save_student`, `load_student`, and the `STUDENTS` registry.

Shape legend
------------
B batch, C EEG channels, T samples per window, N patches (T // P), P samples per patch,
r patch code width, d teacher width (the mimic width), S virtual channels after spatial
compression, h compressed feature width, K classes (n_outputs).

References
----------
Wang et al., "DLink: Distilling Layer-wise and Dominant Knowledge from EEG Foundation
Models", arXiv:2604.15016, 2026.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dlink.baselines import BASELINES
from dlink.errors import CheckpointError, ConfigError
from dlink.nn_utils import (
    ModelEntry,
    load_safetensors,
    load_state_dict_checked,
    lookup,
    read_json,
    save_safetensors,
    write_json,
)
from dlink.signal import SignalSpec

CONFIG_FORMAT = "dlink-model/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_CONFIG_KEYS = ("arch", "kwargs", "n_outputs", "class_names", "signal")
LAYOUTS = ("nchw", "nhwc")  # `EEGMiC.deployable`: ONNX Runtime, TFLite
# most samples per filter-bank block of the nhwc graph, per precision: XNNPACK's int8 convs
# run wide blocks (mic-s: 10 phases, 160 output channels) fastest despite their zero taps,
# its fp32 convs are fastest with blocks of two strides and slow down with more zeros
# (`bench/int8_latency.py --filter-blocks` measures both)
NHWC_FILTER_BLOCK = {"fp32": 8, "int8": 40}


def _conv_bn(
    c_in: int, c_out: int, kernel, stride=1, padding=0, relu: bool = True, groups: int = 1
) -> nn.Sequential:
    """Conv2d (no bias) -> BatchNorm2d [-> ReLU6]; the BatchNorm folds into the conv at export.

    ReLU6, not ReLU: the BatchNorm puts typical activations at ~1, so the bound at 6 only
    cuts artifacts, and it gives every int8 activation the fixed range [0, 6] (both
    runtimes fuse it into the conv) instead of one set by the rarest calibration window.
    """
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False, groups=groups),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


def bandpass_edges(n_bands: int, n_taps: int, sfreq: float, lo_hz: float = 1.0,
                   hi_hz: float = 45.0) -> np.ndarray:
    """(n_bands, 2) band edges in Hz: [lo_hz, hi_hz] split geometrically (equal width in
    octaves), each band widened about its centre to at least 2 * sfreq / n_taps, half the
    main lobe of an n_taps Hamming window (narrower bands than that a filter of n_taps
    cannot resolve: at 25 taps and 200 Hz the lower half of 16 bands become one 1-17 Hz
    band), and shifted to lie within [lo_hz, hi_hz]."""
    hi_hz = min(hi_hz, 0.45 * sfreq)
    geometric = np.geomspace(lo_hz, hi_hz, n_bands + 1)
    centre = np.sqrt(geometric[:-1] * geometric[1:])
    width = np.minimum(np.maximum(np.diff(geometric), 2.0 * sfreq / n_taps), hi_hz - lo_hz)
    low = np.clip(centre - width / 2, lo_hz, hi_hz - width)
    return np.stack([low, low + width], axis=1)


def bandpass_bank(n_bands: int, n_taps: int, sfreq: float) -> torch.Tensor:
    """(n_bands, 1, 1, n_taps) Hamming-windowed sinc band-pass filters (`scipy.signal.firwin`)
    over `bandpass_edges`, each with zero DC gain and unit L2 norm."""
    from scipy.signal import firwin

    taps = np.stack([firwin(n_taps, [a, b], pass_zero=False, fs=sfreq)
                     for a, b in bandpass_edges(n_bands, n_taps, sfreq)])
    taps -= taps.mean(axis=1, keepdims=True)  # no DC: a band-pass passes no offset
    taps /= np.linalg.norm(taps, axis=1, keepdims=True)
    return torch.from_numpy(taps.astype(np.float32))[:, None, None, :]


class EEGMiC(nn.Module):
    """EEG-MiC: band envelopes per 1-s patch, projected to the teacher width, then compressed.

    Parameters
    ----------
    n_chans : C, EEG channels, in `SignalSpec.ch_names` order.
    n_times : T, samples per window; must be a multiple of ``patch_size``.
    n_outputs : K, number of classes.
    d_teacher : d, width of the teacher features the mimic representation is matched to.
    patch_size : P, samples per patch; 200 = 1 s at 200 Hz, the teacher's patch.
    n_bands : F, learned band-pass filters applied to every channel (the filter bank).
    filter_length : taps of each filter (25 = 125 ms at 200 Hz: theta/alpha/beta separate).
    filter_stride : the filter bank's output is kept every ``filter_stride`` samples. The
        envelope that follows averages a rectified oscillation over a whole patch, which a
        sub-sampled sequence estimates as well as the full one, at 1/stride of the MACs.
    compress_hidden : hidden units per band of a learned element-wise function applied to
        each band amplitude (a grouped 1x1 conv -> ReLU -> grouped 1x1 conv, added to the
        amplitude): a piecewise-linear stand-in for the log that band-power models use, which
        int8 graphs cannot run; 0 leaves it out.
    context_kernel : patches seen by the context conv that mixes all C channels (odd).
    n_virtual : S, virtual channels left after spatial compression.
    width : h, feature width after compressing d.
    temporal_kernel : kernel over the N patches in the temporal compression (odd).
    temporal_stride : stride over N in the temporal compression.
    dropout : dropout before the classifier (training only).
    input_mix : start with a learned C -> C spatial filter of the raw window (1x1 conv,
        initialised to the identity), so that band amplitudes can be taken of electrode
        combinations (as CSP, ShallowConvNet and FBCNet filter space before power) rather
        than of each electrode alone; False leaves it out. Measured in
        `bench/student_variants.py` (variants ``im``, ``im-xs``): no gain on EEGMAT.
    envelope_ceiling : clamp the band amplitudes to [0, this] (model units), or None. Their int8
        range is set by the largest calibration value (an artifact's), so a few extreme
        windows make the quantisation step of every window coarse; the band amplitudes are
        where the int8 graph's logit error comes from (`bench/int8_noise_sources.py`). The
        int8-aware phase of `dlink distill` sets it from the training windows
        (`set_envelope_ceiling`) and then trains through it; None leaves the graph unclamped.
    sfreq : sampling rate in Hz (from the `SignalSpec`); sets the band edges of
        ``filter_init="bandpass"``.
    filter_init : ``"bandpass"`` (the ``mic-s`` preset): filter f starts as a band-pass
        filter (`bandpass_bank`) of the f-th of F bands splitting 1-45 Hz geometrically, so
        that the bank separates EEG bands from the first step rather than after the head has
        fitted random filters (students are often selected after 1-2 epochs); ``"random"``
        (default, and ``mic-xs`` / ``mic-m``, where it was not measured): PyTorch's default
        for a conv. A band is never narrower than the filter can resolve
        (`bandpass_edges`): 16 Hz at 25 taps (125 ms), 8 Hz at 49, 4 Hz at 99, so only
        longer filters start with theta and alpha apart. Trained alone on the 6 EEGMAT
        folds, ``"bandpass"`` scores +0.029 BAcc over ``"random"`` (4 seeds per fold, 19
        of 24 runs higher; +0.028 and 9 of 12 on the two seeds run after it was chosen;
        `results/student_variants.md`, variant ``bp``).
    time_shared_head : classify the mean over the N' time steps of the compressed features
        (one weight per feature, as a power feature averaged over the window) instead of
        every (feature, time step): h * K classifier weights instead of h * N' * K. Exported
        as the same fully connected layer with the weight repeated over time / N' (no pool
        op). Measured in `bench/student_variants.py` (variant ``tsh``).

    Notes
    -----
    Input is (B, C, T) float32 in model units (µV * `SignalSpec.input_scale`, i.e. µV/100),
    the teacher's scaling. Amplitude clipping (±50 µV by default) is a preprocessing step
    of the `SignalSpec` applied before the model, not an op of this graph, so the exported
    graph is full-integer. The front end is ShallowConvNet's band-power idea made int8-
    friendly: a temporal conv filter bank, half-wave rectification (ReLU) and an average
    over each patch give the band *amplitude* of every channel and patch -- the quantity
    the teacher's spectral patch embedding sees -- without square or log, which do not
    quantise. The architecture is our reading of the paper's "mimic-then-compress"
    description, not the authors' code.
    """

    mimics_teacher = True  # forward_features returns (B, C, N, d_teacher) for the mimic loss

    def __init__(
        self,
        n_chans: int,
        n_times: int,
        n_outputs: int,
        *,
        d_teacher: int = 200,
        patch_size: int = 200,
        n_bands: int = 16,
        filter_length: int = 25,
        filter_stride: int = 4,
        compress_hidden: int = 0,
        context_kernel: int = 3,
        n_virtual: int = 4,
        width: int = 32,
        temporal_kernel: int = 3,
        temporal_stride: int = 2,
        dropout: float = 0.25,
        input_mix: bool = False,
        envelope_ceiling: float | None = None,
        sfreq: float = 200.0,
        filter_init: str = "random",
        time_shared_head: bool = False,
    ):
        super().__init__()
        if n_times % patch_size:
            raise ConfigError(
                f"n_times={n_times} is not a multiple of patch_size={patch_size}; "
                f"use a window of {max(1, n_times // patch_size) * patch_size} samples."
            )
        if context_kernel % 2 == 0 or temporal_kernel % 2 == 0:
            raise ConfigError(
                f"context_kernel={context_kernel} and temporal_kernel={temporal_kernel} "
                "must be odd so the patch grid stays centred."
            )
        if patch_size % filter_stride:
            raise ConfigError(
                f"filter_stride={filter_stride} must divide patch_size={patch_size} so every "
                "patch gets the same number of filter outputs."
            )
        self.n_chans, self.n_times, self.n_outputs = n_chans, n_times, n_outputs
        self.patch_size, self.d_teacher = patch_size, d_teacher
        self.n_patches = n_times // patch_size
        self.envelope_ceiling = envelope_ceiling

        # (1) mimic: (spatial filter) -> filter bank -> rectify -> mean per patch -> (context) -> d
        self.input_mix = None
        if input_mix:
            self.input_mix = nn.Conv1d(n_chans, n_chans, 1, bias=False)
            with torch.no_grad():
                self.input_mix.weight.copy_(torch.eye(n_chans)[:, :, None])
        self.filterbank = _conv_bn(1, n_bands, (1, filter_length), stride=(1, filter_stride),
                                   padding=(0, filter_length // 2))  # Conv -> BN -> ReLU
        if filter_init == "bandpass":
            with torch.no_grad():
                self.filterbank[0].weight.copy_(bandpass_bank(n_bands, filter_length, sfreq))
        elif filter_init != "random":
            raise ConfigError(f"filter_init must be 'random' or 'bandpass', got {filter_init!r}.")
        # one value per patch: a learned average (depthwise conv, initialised to the mean)
        # rather than an AveragePool, because int8 runtimes give a pool's output its input's
        # scale -- the rectified signal's, ~10x too coarse for its patch means
        per_patch = patch_size // filter_stride
        self.envelope = nn.Conv2d(n_bands, n_bands, (1, per_patch), stride=(1, per_patch),
                                  groups=n_bands, bias=False)
        nn.init.constant_(self.envelope.weight, 1.0 / per_patch)
        self.compress = nn.Sequential(
            nn.Conv2d(n_bands, n_bands * compress_hidden, 1, groups=n_bands),
            nn.ReLU(),
            nn.Conv2d(n_bands * compress_hidden, n_bands, 1, groups=n_bands),
        ) if compress_hidden else None
        self.context = _conv_bn(n_chans, n_chans, (context_kernel, 1),
                                padding=(context_kernel // 2, 0))
        self.to_mimic = nn.Linear(n_bands, d_teacher)

        # (2) compress: channels C -> S, features d -> h, patches N -> N' -> pooled
        self.spatial = _conv_bn(n_chans, n_virtual, 1, relu=False)
        self.feature = _conv_bn(d_teacher, width, 1)
        self.temporal = _conv_bn(
            width,
            width,
            (n_virtual, temporal_kernel),
            stride=(1, temporal_stride),
            padding=(0, temporal_kernel // 2),
        )
        pad = temporal_kernel // 2
        n_out = (self.n_patches + 2 * pad - temporal_kernel) // temporal_stride + 1  # N'
        self.drop = nn.Dropout(dropout)
        self.n_steps, self.time_shared_head = n_out, time_shared_head
        # the classifier reads every (feature, time step), or each feature's mean over time
        self.num_features = width if time_shared_head else width * n_out
        self.classifier = nn.Linear(self.num_features, n_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Mimic representation, matched to the routed teacher features during training.

        Parameters
        ----------
        x : (B, C, T) float32 in model units (µV/100).

        Returns
        -------
        torch.Tensor
            (B, C, N, d_teacher).
        """
        _check_input(x, self.n_chans, self.n_times, type(self).__name__)
        z = self._band_amplitudes(x)  # (B, F, C, N)
        if self.envelope_ceiling is not None:
            z = z.clamp(0.0, self.envelope_ceiling)
        if self.compress is not None:
            z = z + self.compress(z)  # (B, F, C, N), a learned per-band compression
        code = z.permute(0, 2, 3, 1)  # (B, C, N, F)
        code = code + self.context(code)  # (B, C, N, F), C acts as conv channels
        return self.to_mimic(code)  # (B, C, N, d)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Compress the mimic representation and classify.

        Parameters
        ----------
        feats : (B, C, N, d) from `forward_features`.
        pre_logits : return the classifier's input instead of logits: (B, h * N'), or (B, h)
            with ``time_shared_head``.

        Returns
        -------
        torch.Tensor
            (B, K) logits, or the classifier's input when ``pre_logits``.
        """
        z = self.spatial(feats)  # (B, S, N, d)
        z = z.permute(0, 3, 1, 2)  # (B, d, S, N)
        z = self.feature(z)  # (B, h, S, N)
        z = self.temporal(z)  # (B, h, 1, N')
        # no pooling layer in the shipped graph (int8 pools keep their input's scale): a
        # time-shared head is exported as a fully connected layer over (B, h * N')
        z = z.mean(dim=(2, 3)) if self.time_shared_head else z.flatten(1)  # (B, h) | (B, h * N')
        if pre_logits:
            return z
        return self.classifier(self.drop(z))  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) in µV/100 -> (B, K) logits. This is the exported graph."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, n_outputs: int) -> None:
        """Replace the classifier with a fresh one for ``n_outputs`` classes."""
        self.n_outputs = n_outputs
        self.classifier = nn.Linear(self.num_features, n_outputs)

    def deployable(self, layout: str = "nchw", precision: str = "fp32",
                   filter_block: int | None = None) -> nn.Module:
        """The graph to export: same logits, the mimic projection folded away.

        ``layout`` is the runtime's tensor layout: ``"nchw"`` (ONNX Runtime) or ``"nhwc"``
        (TFLite), which writes the filter bank and the envelope as the convs XNNPACK's int8
        kernels run fast (`deployed_forward`); same sums, same int8 products.
        In "nhwc" the filter bank runs over space-to-depth blocks of a whole number of
        strides, the most that fit in ``filter_block`` samples and divide the filter outputs
        the envelope reads (`_filter_phases`; ``filter_block`` defaults to
        `NHWC_FILTER_BLOCK` of the ``precision`` the graph will run in): bigger blocks mean
        more output phases, wider convs and more zero taps. Both are ignored in "nchw".

        ``to_mimic`` (F -> d per token), ``spatial`` (C -> S, BatchNorm, no activation) and
        ``feature`` (d -> h, BatchNorm, then ReLU6) are linear up to that ReLU6, so they
        compose into one conv over (F features x C electrodes) -> (h x S); every other
        BatchNorm folds into its conv. The (B, C, N, d) token grid, which exists to be
        matched to the teacher in training, is never built on the board, and two int8
        requantisations of wide, unbounded tensors disappear. Eval-mode BatchNorm
        statistics; `dlink-export` checks the logits against this model's.
        """
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
        if precision not in NHWC_FILTER_BLOCK:
            raise ConfigError(f"precision must be one of {tuple(NHWC_FILTER_BLOCK)}, got {precision!r}.")
        if filter_block is not None and filter_block < 1:
            raise ConfigError(f"filter_block must be >= 1 sample, got {filter_block}.")
        geometry = {**self.deployed_geometry(), "layout": layout}
        if layout == "nhwc":
            stride = geometry["filter_stride"][1]
            geometry["filter_phases"] = _filter_phases(self.n_times // stride, stride,
                                                       filter_block or NHWC_FILTER_BLOCK[precision])
        with torch.no_grad():
            return _DeployedMiC(self.deployed_weights(), geometry)

    def deployed_weights(self) -> dict[str, torch.Tensor]:
        """The deployed graph's weights (`deployed_forward`), differentiable functions of this
        model's parameters with BatchNorm at its running statistics (folded)."""
        w = {}
        for name in ("filterbank", "context", "temporal"):
            conv, bn = getattr(self, name)[0], getattr(self, name)[1]
            scale, shift = _bn_affine(bn)
            w[f"{name}.weight"] = conv.weight * scale[:, None, None, None]
            w[f"{name}.bias"] = shift
        w["envelope.weight"] = self.envelope.weight
        if self.input_mix is not None:
            w["input_mix.weight"] = self.input_mix.weight
        ws_scale, ws_shift = _bn_affine(self.spatial[1])
        ws = self.spatial[0].weight[:, :, 0, 0] * ws_scale[:, None]  # (S, C)
        f_scale, f_shift = _bn_affine(self.feature[1])
        wf = self.feature[0].weight[:, :, 0, 0] * f_scale[:, None]  # (h, d)
        wm, bm = self.to_mimic.weight, self.to_mimic.bias  # (d, F), (d,)
        wfm = wf @ wm  # (h, F): to_mimic, then feature
        h, n_s = wf.shape[0], ws.shape[0]
        # output channel h * S + s of the mixing conv: weight wfm[h, f] * ws[s, c]
        w["mix.weight"] = (wfm[:, None, :, None] * ws[None, :, None, :]).reshape(h * n_s, -1, ws.shape[1], 1)
        token_bias = bm[None, :] * ws.sum(1)[:, None] + ws_shift[:, None]  # (S, d)
        w["mix.bias"] = (token_bias @ wf.T + f_shift[None, :]).T.reshape(-1)  # (h*S,)
        w["classifier.weight"], w["classifier.bias"] = self.classifier.weight, self.classifier.bias
        if self.time_shared_head:  # mean over N' then (K, h) == (K, h * N') with W / N' repeated
            wc = self.classifier.weight / self.n_steps
            w["classifier.weight"] = wc[:, :, None].expand(-1, -1, self.n_steps).reshape(wc.shape[0], -1)
        if self.compress is not None:
            for i in (0, 2):
                w[f"compress.{i}.weight"] = self.compress[i].weight
                w[f"compress.{i}.bias"] = self.compress[i].bias
        return w

    def deployed_geometry(self) -> dict:
        """Strides, paddings and sizes `deployed_forward` needs besides the weights."""
        fb, ctx, tmp = self.filterbank[0], self.context[0], self.temporal[0]
        return {"filter_stride": fb.stride, "filter_padding": fb.padding,
                "per_patch": self.envelope.stride, "n_bands": self.envelope.out_channels,
                "context_padding": ctx.padding, "temporal_stride": tmp.stride,
                "temporal_padding": tmp.padding, "width": self.feature[0].out_channels,
                "n_virtual": self.spatial[0].out_channels, "compress": self.compress is not None,
                "input_mix": self.input_mix is not None, "n_chans": self.n_chans, "n_times": self.n_times,
                "envelope_ceiling": self.envelope_ceiling}

    def set_envelope_ceiling(self, value: float | None) -> None:
        """Clamp the band amplitudes at ``value`` from now on (recorded in ``.config``, so
        `save_student` keeps it)."""
        if value is not None and not value > 0:
            raise ConfigError(f"envelope_ceiling must be > 0, got {value}.")
        self.envelope_ceiling = None if value is None else float(value)
        self.config = dict(self.config, kwargs=dict(self.config["kwargs"],
                                                    envelope_ceiling=self.envelope_ceiling))

    def _band_amplitudes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, F, C, N) band amplitude per channel and patch, unclamped."""
        if self.input_mix is not None:
            x = self.input_mix(x)  # (B, C, T), electrode combinations
        z = self.filterbank(x.unsqueeze(1))  # (B, F, C, T/stride), rectified band signals
        return self.envelope(z)

    @torch.no_grad()
    def envelope_quantile(self, x: torch.Tensor, q: float) -> float:
        """The ``q`` quantile (0..1) of the unclamped band amplitudes of (B, C, T) windows."""
        z = self._band_amplitudes(x).flatten()
        k = max(1, int(round((1 - q) * z.numel())))  # the k-th largest value
        return float(z.topk(k).values[-1])


def deployed_forward(x: torch.Tensor, w: dict, g: dict, q=None, wq=None) -> torch.Tensor:
    """The graph `dlink-export` ships for EEG-MiC, (B, C, T) model units -> (B, K) logits.

    ``q(name, tensor)`` is applied to every tensor the int8 graph stores (input, each
    activation after its fused ReLU6, the residual sum, the logits) and ``wq(tensor)`` to
    every conv/linear weight; both default to the identity (the float graph). `dlink.qat`
    passes fake quantisers, so training sees exactly the deployed graph's rounding points.
    """
    q = q or (lambda _name, t: t)
    wq = wq or (lambda t: t)
    F = nn.functional
    x = q("input", x)
    if g.get("input_mix"):
        x = q("input_mix", F.conv1d(x, wq(w["input_mix.weight"])))  # (B, C, T)
    blocks = g.get("layout") == "nhwc"  # weights in `_DeployedMiC`'s nhwc form
    if blocks:
        z = _filterbank(x, wq(w["filterbank.weight"]), w["filterbank.bias"], g)
    else:
        z = F.conv2d(x.unsqueeze(1), wq(w["filterbank.weight"]), w["filterbank.bias"],
                     stride=g["filter_stride"], padding=g["filter_padding"])  # (B, F, C, T/stride)
    z = q("filterbank", z.clamp(0.0, 6.0))

    def envelope(z, weight):  # (B, F, C, T/stride) -> (B, F, C, N)
        if blocks:
            return _envelope(z, weight, g)
        return F.conv2d(z, weight, None, stride=g["per_patch"], groups=g["n_bands"])

    ceiling = g.get("envelope_ceiling")
    if ceiling is None:
        z = q("envelope", envelope(z, wq(w["envelope.weight"])))  # (B, F, C, N)
    else:  # clamp(0, ceiling) as a ReLU6 fused into the conv: int8 runtimes lack a fused
        # clamp at any other bound (TFLite's MINIMUM does not quantise); the gain is undone
        # by a multiply whose int8 output lies on the same grid as its input (exact)
        gain = 6.0 / ceiling
        z = envelope(z, wq(w["envelope.weight"] * gain))
        z = q("envelope", q("envelope_relu6", z.clamp(0.0, 6.0)) * (1.0 / gain))  # (B, F, C, N)
    if g["compress"]:
        h = q("compress", F.relu(F.conv2d(z, wq(w["compress.0.weight"]), w["compress.0.bias"],
                                          groups=g["n_bands"])))
        z = q("compressed", z + F.conv2d(h, wq(w["compress.2.weight"]), w["compress.2.bias"],
                                         groups=g["n_bands"]))
    code = z.permute(0, 2, 3, 1)  # (B, C, N, F)
    ctx = q("context", F.conv2d(code, wq(w["context.weight"]), w["context.bias"],
                                padding=g["context_padding"]).clamp(0.0, 6.0))
    code = q("residual", code + ctx)  # (B, C, N, F)
    z = F.conv2d(code.permute(0, 3, 1, 2), wq(w["mix.weight"]), w["mix.bias"])  # (B, h*S, 1, N)
    z = q("mix", z.clamp(0.0, 6.0))  # the ReLU6 before the reshape, so the conv fuses it
    z = z.reshape(z.shape[0], g["width"], g["n_virtual"], -1)  # (B, h, S, N)
    z = F.conv2d(z, wq(w["temporal.weight"]), w["temporal.bias"], stride=g["temporal_stride"],
                 padding=g["temporal_padding"])  # (B, h, 1, N')
    z = q("temporal", z.clamp(0.0, 6.0))
    return q("logits", F.linear(z.flatten(1), wq(w["classifier.weight"]), w["classifier.bias"]))


# The "nhwc" layout (TFLite). There a conv with one input channel and stride s (the filter
# bank) becomes a depthwise conv with a depth multiplier, and the envelope a depthwise conv
# over 50 samples at stride 50; XNNPACK runs both slowly in int8 (measured on the default
# student: 0.65 ms int8 against 0.13 ms fp32, almost all of it in these two). The same sums
# as a stride-1 conv over blocks of s samples, and as a dense 1x1 conv over a patch's
# (sample, band) pairs, are ordinary convs (int8 0.15 ms, fp32 0.08 ms); over blocks of
# several strides, one output channel per (phase, band), the int8 conv is wider and faster
# still (`NHWC_FILTER_BLOCK`, `results/int8_latency.md`). The extra weights are zeros, so
# the per-channel int8 scales and every int8 product stay the same. In ONNX
# Runtime (NCHW) the reshapes cost transposes and the zeros real work (fp32 0.076 -> 0.120
# ms), so the "nchw" layout keeps the strided and depthwise convs.

def _filter_phases(n_out: int, stride: int, max_block: int) -> int:
    """Output phases of the nhwc filter bank (`_filterbank`): the largest p that divides the
    ``n_out`` filter outputs with blocks of p * ``stride`` <= ``max_block`` samples; 1 (blocks
    of one stride) when not even two strides fit."""
    return max(p for p in range(1, max(1, max_block // stride) + 1) if n_out % p == 0)


def _space_to_depth_filter(weight: torch.Tensor, stride: int, phases: int = 1) -> torch.Tensor:
    """(F, 1, 1, k) filter of a stride-s conv -> (phases * F, b, 1, J) filter of the stride-1
    conv over blocks of b = phases * s samples (`_filterbank`). Output channel p * F + f is
    filter f delayed by p * s samples (phase p of the block); taps outside the filter are
    zero, so every channel keeps filter f's largest |tap| and its per-channel int8 scale."""
    n_f, k = weight.shape[0], weight.shape[-1]
    block = phases * stride
    n_blocks = -(-((phases - 1) * stride + k) // block)  # J
    taps = weight.reshape(n_f, k)
    out = weight.new_zeros(phases, n_f, n_blocks * block)
    for p in range(phases):  # phase p: taps start p * s samples into the block row
        out[p, :, p * stride:p * stride + k] = taps
    out = out.reshape(phases * n_f, n_blocks, block).permute(0, 2, 1)  # (pF, b, J)
    return out[:, :, None, :]  # (phases * F, b, 1, J)


def _filterbank(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, g: dict) -> torch.Tensor:
    """(B, C, T) -> (B, F, C, T') the stride-s filter bank, as a conv over space-to-depth
    blocks of b = phases * s samples: (B, C, T) padded -> (B, b, C, blocks) -> conv with
    ``weight`` (phases * F, b, 1, J) and ``bias`` (phases * F,) -> (B, phases * F, C, T' /
    phases), whose channel p * F + f at block u is output t = u * phases + p. In the
    channels-last layout the last step is a reshape (C, T'/phases, phases * F) -> (C, T', F),
    no data movement."""
    s, p = g["filter_stride"][1], g["filter_padding"][1]
    phases = g.get("filter_phases", 1)
    block = phases * s
    n_b, n_c, n_t = x.shape
    # the envelope reads T / s outputs (N patches of P / s); an even filter length gives the
    # strided conv one more, after the last patch, which nothing reads
    n_out = n_t // s
    n_u = n_out // phases  # block positions
    n_blocks = n_u + weight.shape[-1] - 1  # output u reads blocks u .. u + J - 1
    extra = n_blocks * block - (n_t + 2 * p)  # > 0: zeros that only zero taps reach; < 0: unread
    xp = nn.functional.pad(x, (p, p + extra)) if extra >= 0 else \
        nn.functional.pad(x, (p, p))[..., :n_blocks * block]
    xb = xp.reshape(n_b, n_c, n_blocks, block).permute(0, 3, 1, 2)  # (B, b, C, blocks)
    z = nn.functional.conv2d(xb, weight, bias)  # (B, phases * F, C, n_u)
    if phases == 1:
        return z
    n_f = weight.shape[0] // phases
    # written channels-last, so that the converter's layout pass sees the plain reshape
    z = z.permute(0, 2, 3, 1).reshape(n_b, n_c, n_out, n_f)  # (B, C, T', F): t = u * phases + p
    return z.permute(0, 3, 1, 2)  # (B, F, C, T')


def _dense_envelope(weight: torch.Tensor) -> torch.Tensor:
    """(F, 1, 1, P) per-band patch weights -> (F, P * F, 1, 1) block-diagonal 1x1 conv over
    the (sample k, band f) pairs of a patch, input channel k * F + f (`_envelope`)."""
    n_f, per_patch = weight.shape[0], weight.shape[-1]
    eye = torch.eye(n_f, dtype=weight.dtype, device=weight.device)
    dense = weight.reshape(n_f, per_patch, 1) * eye[:, None, :]  # (F, P, F)
    return dense.reshape(n_f, per_patch * n_f, 1, 1)


def _envelope(z: torch.Tensor, weight: torch.Tensor, g: dict) -> torch.Tensor:
    """(B, F, C, T') band signals -> (B, F, C, N) per-patch weighted sums: the patch's P
    samples of all F bands become P * F channels (a reshape in the channels-last layout the
    int8 runtimes use), then ``weight`` (F, P * F, 1, 1)."""
    n_b, n_f, n_c, n_t = z.shape
    per_patch = g["per_patch"][1]
    n = n_t // per_patch
    blocks = z[..., :n * per_patch].permute(0, 2, 3, 1).reshape(n_b, n_c, n, per_patch * n_f)
    return nn.functional.conv2d(blocks.permute(0, 3, 1, 2), weight)  # (B, F, C, N)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of an eval-mode BatchNorm: y = x * scale + shift."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class _DeployedMiC(nn.Module):
    """EEG-MiC as shipped (see `EEGMiC.deployable`); (B, C, T) -> (B, K)."""

    def __init__(self, weights: dict, geometry: dict):
        super().__init__()
        self.geometry = geometry
        self.n_chans, self.n_times = geometry["n_chans"], geometry["n_times"]
        if geometry.get("layout") == "nhwc":
            phases = geometry["filter_phases"]
            weights = {**weights, "envelope.weight": _dense_envelope(weights["envelope.weight"]),
                       "filterbank.weight": _space_to_depth_filter(
                           weights["filterbank.weight"], geometry["filter_stride"][1], phases),
                       "filterbank.bias": weights["filterbank.bias"].repeat(phases)}
        for name, t in weights.items():  # dots are not allowed in parameter names
            self.register_parameter(name.replace(".", "_"), nn.Parameter(t.detach().clone()))
        self._names = list(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = {n: getattr(self, n.replace(".", "_")) for n in self._names}
        return deployed_forward(x, w, self.geometry)


def _check_input(x: torch.Tensor, n_chans: int, n_times: int, name: str) -> None:
    if x.ndim != 3 or x.shape[1] != n_chans or x.shape[2] != n_times:
        raise ValueError(
            f"{name} expects input (B, {n_chans}, {n_times}) in µV/100, got {tuple(x.shape)}; "
            "check the channel order and window length against the model's SignalSpec."
        )


# ---------------------------------------------------------------------------------------
# Registry: presets are data (class + kwargs), so a checkpoint stores resolved kwargs.

STUDENTS: dict[str, ModelEntry] = {}
DEFAULT_STUDENT = "mic-s"


def register_student(name: str, cls: type[nn.Module], description: str, **defaults) -> None:
    """Record a student preset under ``name`` (used by `build_student` and the CLI)."""
    if name in STUDENTS or name in BASELINES:
        raise ConfigError(f"model name {name!r} is already registered; pick another.")
    STUDENTS[name] = ModelEntry(name, cls, defaults, "student", description)


register_student("mic-xs", EEGMiC, "EEG-MiC, smallest", n_bands=8, n_virtual=2, width=16)
register_student("mic-s", EEGMiC, "EEG-MiC, default (<100K params)", n_bands=16, n_virtual=4, width=48,
                 filter_init="bandpass")
register_student("mic-m", EEGMiC, "EEG-MiC, larger", n_bands=32, n_virtual=8, width=48)


def available_models() -> dict[str, ModelEntry]:
    """Every name `build_student` and `load_student` accept: students, then baselines."""
    return {**STUDENTS, **BASELINES}


# ---------------------------------------------------------------------------------------
# Build, save, load


def build_student(
    name: str,
    signal: SignalSpec,
    n_outputs: int,
    d_teacher: int = 200,
    *,
    class_names: Sequence[str] | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered student or baseline for ``signal``.

    Parameters
    ----------
    name : a key of `available_models()`, e.g. ``"mic-s"`` or ``"eegnet"``.
    signal : the input description; gives C (``n_chans``), T (``n_times``) and ``sfreq``.
    n_outputs : K, number of classes.
    d_teacher : teacher width the mimic representation matches (students only; baselines
        have no mimic representation and ignore it).
    class_names : K names, in logit order; default ``class_0 .. class_{K-1}``.
    **overrides : constructor options replacing the preset's, e.g. ``width=64``.

    Returns
    -------
    nn.Module
        The model with ``.signal``, ``.class_names`` and ``.config`` (what `save_student`
        writes) set.
    """
    entry = lookup(available_models(), name, "student")
    if entry.family == "student":
        overrides = {"d_teacher": d_teacher, **overrides}
    kwargs = entry.resolve(overrides)
    config = {
        "format": CONFIG_FORMAT,
        "arch": name,
        "family": entry.family,
        "kwargs": kwargs,
        "n_outputs": int(n_outputs),
        "class_names": _class_names(class_names, n_outputs),
        "signal": signal.to_dict(),
    }
    return _instantiate(entry, config, signal)


def _instantiate(entry: ModelEntry, config: dict, signal: SignalSpec) -> nn.Module:
    args = entry.signal_args(signal.n_chans, signal.n_times, signal.sfreq, config["n_outputs"])
    model = entry.cls(**args, **config["kwargs"])
    model.signal = signal
    model.class_names = list(config["class_names"])
    model.config = config
    return model


def _class_names(class_names: Sequence[str] | None, n_outputs: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(n_outputs)]
    names = [str(c) for c in class_names]
    if len(names) != n_outputs:
        raise ConfigError(f"got {len(names)} class_names {names} for n_outputs={n_outputs}.")
    return names


def save_student(
    model: nn.Module, directory: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created).

    Parameters
    ----------
    model : a model made by `build_student` or `load_student` (it carries ``.config``).
    directory : output folder; existing files of the same names are replaced.
    class_names : replace the model's class names (length must equal n_outputs).

    Returns
    -------
    Path
        The folder written.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "arch" not in config:
        raise ConfigError(
            f"{type(model).__name__} has no .config; build it with dlink.student.build_student."
        )
    config = dict(config, n_outputs=int(getattr(model, "n_outputs", config["n_outputs"])))
    if class_names is not None:
        config["class_names"] = _class_names(class_names, config["n_outputs"])
        model.class_names = list(config["class_names"])
    if len(config["class_names"]) != config["n_outputs"]:
        raise ConfigError(
            f"model has n_outputs={config['n_outputs']} but {len(config['class_names'])} "
            "class_names; pass class_names= to save_student."
        )
    model.config = config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_safetensors(model.state_dict(), tmp)
    os.replace(tmp, directory / WEIGHTS_FILE)
    write_json(directory / CONFIG_FILE, config)
    return directory


def load_student(directory: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_student`, in eval mode, on CPU.

    Raises
    ------
    CheckpointError
        If the folder, ``config.json`` or ``model.safetensors`` is missing, corrupted,
        truncated, or does not match the architecture the config names.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder; pass the folder save_student wrote.")
    config = read_json(directory / CONFIG_FILE)
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{directory / CONFIG_FILE} lacks {missing}; re-save the model.")
    models = available_models()
    if config["arch"] not in models:
        raise CheckpointError(
            f"{directory / CONFIG_FILE} names unknown arch {config['arch']!r}; "
            f"known: {sorted(models)}. Is this DLink version older than the checkpoint?"
        )
    try:
        signal = SignalSpec.from_dict(config["signal"])
        model = _instantiate(models[config["arch"]], config, signal)
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(
            f"{directory / CONFIG_FILE} cannot rebuild {config['arch']!r} "
            f"({type(exc).__name__}: {exc}); re-save the model."
        ) from exc
    state = load_safetensors(directory / WEIGHTS_FILE)
    load_state_dict_checked(model, state, directory / WEIGHTS_FILE)
    return model.eval()
