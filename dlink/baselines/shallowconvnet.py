"""ShallowConvNet (Schirrmeister et al., 2017), re-implemented for DLink's (B, C, T) input.

Shape legend
------------
B batch, C EEG channels, T samples per window, F filters, T' pooled time steps, K classes.
"""

from __future__ import annotations

import torch
from torch import nn

POWERS = ("square-log", "relu6")


class ShallowConvNet(nn.Module):
    """Temporal conv, spatial conv, square, mean-pool, log, then a conv classifier.

    With ``power="relu6"`` the square and log become one ReLU6 after the spatial conv's
    BatchNorm (the pooled value is then a band amplitude, not a log power): every op is one
    int8 runtimes run, so the model can ship as an int8 file; what that costs on EEGMAT is
    the ``shallowconvnet-relu6`` row of `results/cv_benchmark.md`.

    The paper works at 250 Hz with a 25-sample filter and a 75-sample pool every 15
    samples (100 ms, 300 ms, 60 ms); left as ``None`` the lengths keep those durations at
    ``sfreq`` (20, 60 and 12 samples at 200 Hz).

    Parameters
    ----------
    n_chans : C, EEG channels.
    n_times : T, samples per window; must exceed the filter plus the pool length.
    n_outputs : K, number of classes.
    sfreq : sampling rate in Hz.
    n_filters : F, temporal and spatial filters (40 in the paper).
    filter_length, pool_length, pool_stride : in samples; ``None`` -> scaled from 250 Hz.
    dropout : before the classifier (0.5 in the paper).
    power : ``"square-log"`` (the paper) or ``"relu6"`` (int8-friendly, see above).

    Notes
    -----
    Our re-implementation; not verified by the original authors. The paper's max-norm
    weight constraints are not applied. Square and log do not quantise well to int8, so
    the paper's variant is meant for float comparison; ``power="relu6"`` is the one to ship.

    References
    ----------
    R. T. Schirrmeister et al., "Deep learning with convolutional neural networks for EEG
    decoding and visualization", Human Brain Mapping 38(11):5391-5420, 2017.
    """

    mimics_teacher = False  # forward_features is the log-power map, not (B, C, N, d)

    def __init__(
        self,
        n_chans: int,
        n_times: int,
        n_outputs: int,
        sfreq: float = 200.0,
        *,
        n_filters: int = 40,
        filter_length: int | None = None,
        pool_length: int | None = None,
        pool_stride: int | None = None,
        dropout: float = 0.5,
        power: str = "square-log",
    ):
        super().__init__()
        if power not in POWERS:
            raise ValueError(f"power must be one of {POWERS}, got {power!r}.")
        self.power = power
        scale = sfreq / 250.0
        filter_length = round(25 * scale) if filter_length is None else filter_length
        pool_length = round(75 * scale) if pool_length is None else pool_length
        pool_stride = round(15 * scale) if pool_stride is None else pool_stride
        n_pooled = (n_times - filter_length + 1 - pool_length) // pool_stride + 1
        if n_pooled < 1:
            raise ValueError(
                f"ShallowConvNet needs n_times >= filter_length + pool_length - 1 = "
                f"{filter_length + pool_length - 1}, got {n_times}; use a longer window."
            )
        self.n_chans, self.n_times, self.n_outputs = n_chans, n_times, n_outputs
        self.temporal = nn.Conv2d(1, n_filters, (1, filter_length))
        self.spatial = nn.Sequential(  # conv -> BN in one Sequential so export can fold it
            nn.Conv2d(n_filters, n_filters, (n_chans, 1), bias=False),
            nn.BatchNorm2d(n_filters),
        )
        self.pool = nn.AvgPool2d((1, pool_length), stride=(1, pool_stride))
        # relu6: the same mean as a depthwise conv of fixed weights 1/pool_length, which int8
        # runtimes give its own output scale (a pool keeps its input's, [0, 6] in 255 steps,
        # coarse for means of a rectified oscillation); not a parameter, so not trained
        if power == "relu6":
            self.register_buffer("pool_weight", torch.full((n_filters, 1, 1, pool_length), 1 / pool_length),
                                 persistent=False)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(n_filters, n_outputs, (1, n_pooled))
        self.n_filters, self.n_pooled = n_filters, n_pooled

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) in µV/100 -> (B, F, 1, T') log band power (``relu6``: band amplitude)."""
        if x.ndim != 3 or x.shape[1:] != (self.n_chans, self.n_times):
            raise ValueError(
                f"ShallowConvNet expects input (B, {self.n_chans}, {self.n_times}), "
                f"got {tuple(x.shape)}."
            )
        z = x.unsqueeze(1)  # (B, 1, C, T)
        z = self.temporal(z)  # (B, F, C, T - filter + 1)
        z = self.spatial(z)  # (B, F, 1, T - filter + 1)
        if self.power == "relu6":
            return nn.functional.conv2d(nn.functional.relu6(z), self.pool_weight,
                                        stride=self.pool.stride, groups=self.n_filters)  # (B, F, 1, T')
        z = self.pool(z * z)  # (B, F, 1, T')
        return torch.log(torch.clamp(z, min=1e-6))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, F, 1, T') -> (B, K) logits, or the flattened (B, F * T') features."""
        if pre_logits:
            return feats.flatten(1)  # (B, F * T')
        if self.power == "relu6":  # the same sums as one fully connected layer: exported as
            # the Gemm that the int8 exporters keep at higher precision for the logits
            w = self.classifier.weight.flatten(1)  # (K, F * T')
            return nn.functional.linear(self.drop(feats).flatten(1), w, self.classifier.bias)
        return self.classifier(self.drop(feats)).flatten(1)  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, n_outputs: int) -> None:
        self.n_outputs = n_outputs
        self.classifier = nn.Conv2d(self.n_filters, n_outputs, (1, self.n_pooled))
