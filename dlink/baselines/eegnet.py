"""EEGNet (Lawhern et al., 2018), re-implemented for DLink's (B, C, T) input.

Shape legend
------------
B batch, C EEG channels, T samples per window, F1 temporal filters, D depth multiplier,
F2 separable filters, K classes.
"""

from __future__ import annotations

import torch
from torch import nn


def _same_pad(kernel: int) -> nn.ZeroPad2d:
    """Keras-style "same" padding in time for any kernel length (extra zero on the right)."""
    return nn.ZeroPad2d(((kernel - 1) // 2, kernel // 2, 0, 0))


class EEGNet(nn.Module):
    """EEGNet-F1,D: temporal conv, depthwise spatial conv, separable conv, linear head.

    Parameters
    ----------
    n_chans : C, EEG channels.
    n_times : T, samples per window; must be at least ``pool1 * pool2`` (32).
    n_outputs : K, number of classes.
    sfreq : sampling rate in Hz; sets the default temporal kernel to half a second.
    f1 : temporal filters (8 in EEGNet-8,2).
    depth : spatial filters per temporal filter (2 in EEGNet-8,2).
    f2 : separable-conv filters (F1 * D by default).
    kernel_length : temporal kernel in samples; ``None`` -> ``sfreq // 2`` (64 at 128 Hz
        in the paper, 100 at 200 Hz).
    separable_length : kernel of the separable conv's depthwise part (16 in the paper,
        i.e. 500 ms after the first pooling at 128 Hz).
    pool1, pool2 : average-pooling factors in time (4 and 8 in the paper).
    dropout : 0.5 within-subject, 0.25 cross-subject in the paper.

    Notes
    -----
    Our re-implementation; not verified by the original authors. The paper's max-norm
    weight constraints (1 on the spatial filters, 0.25 on the classifier) are not applied.
    ELU is kept as in the paper, so the int8 export keeps ELU in float or approximates it.

    References
    ----------
    V. J. Lawhern et al., "EEGNet: a compact convolutional neural network for EEG-based
    brain-computer interfaces", J. Neural Eng. 15 056013, 2018.
    """

    mimics_teacher = False  # forward_features is EEGNet's own feature map, not (B, C, N, d)

    def __init__(
        self,
        n_chans: int,
        n_times: int,
        n_outputs: int,
        sfreq: float = 200.0,
        *,
        f1: int = 8,
        depth: int = 2,
        f2: int | None = None,
        kernel_length: int | None = None,
        separable_length: int = 16,
        pool1: int = 4,
        pool2: int = 8,
        dropout: float = 0.25,
    ):
        super().__init__()
        if n_times < pool1 * pool2:
            raise ValueError(
                f"EEGNet needs n_times >= pool1 * pool2 = {pool1 * pool2}, got {n_times}; "
                "use a longer window or smaller pooling."
            )
        f2 = f1 * depth if f2 is None else f2
        kernel_length = int(sfreq // 2) if kernel_length is None else kernel_length
        self.n_chans, self.n_times, self.n_outputs = n_chans, n_times, n_outputs

        self.temporal = nn.Sequential(
            _same_pad(kernel_length),
            nn.Conv2d(1, f1, (1, kernel_length), bias=False),
            nn.BatchNorm2d(f1),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(f1, f1 * depth, (n_chans, 1), groups=f1, bias=False),
            nn.BatchNorm2d(f1 * depth),
            nn.ELU(),
            nn.AvgPool2d((1, pool1)),
            nn.Dropout(dropout),
        )
        self.separable = nn.Sequential(
            _same_pad(separable_length),
            nn.Conv2d(f1 * depth, f1 * depth, (1, separable_length), groups=f1 * depth, bias=False),
            nn.Conv2d(f1 * depth, f2, 1, bias=False),
            nn.BatchNorm2d(f2),
            nn.ELU(),
            nn.AvgPool2d((1, pool2)),
            nn.Dropout(dropout),
        )
        self.num_features = f2 * (n_times // pool1 // pool2)
        self.classifier = nn.Linear(self.num_features, n_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) in µV/100 -> (B, F2, 1, T // (pool1 * pool2))."""
        if x.ndim != 3 or x.shape[1:] != (self.n_chans, self.n_times):
            raise ValueError(
                f"EEGNet expects input (B, {self.n_chans}, {self.n_times}), got {tuple(x.shape)}."
            )
        z = x.unsqueeze(1)  # (B, 1, C, T)
        z = self.temporal(z)  # (B, F1, C, T)
        z = self.spatial(z)  # (B, F1*D, 1, T/pool1)
        return self.separable(z)  # (B, F2, 1, T/pool1/pool2)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, F2, 1, T') -> (B, K) logits, or the flattened (B, F2 * T') features."""
        z = feats.flatten(1)  # (B, F2 * T')
        return z if pre_logits else self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, n_outputs: int) -> None:
        self.n_outputs = n_outputs
        self.classifier = nn.Linear(self.num_features, n_outputs)
