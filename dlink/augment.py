"""Training-time augmentation of (B, C, T) EEG windows (model units), drawn with torch's RNG.

`gain_jitter` scales each window; `crop_into_next` replaces each window by the window-long
stretch that starts a random number of samples later in the same recording, using the
`successors` of back-to-back windows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dlink.data import Windows


def gain_jitter(x: Tensor, sigma: float) -> Tensor:
    """(B, C, T) windows, each scaled by exp(N(0, sigma^2)) (torch's RNG); sigma 0: as is."""
    if sigma <= 0:
        return x
    return x * torch.exp(sigma * torch.randn(len(x), 1, 1))


def successors(windows: Windows) -> np.ndarray:
    """(n,) index of the window that directly follows each window in its recording, or -1.

    Windows cut back to back from one recording (`dlink.data.edf.cut_windows`) lie in order,
    and a recording is identified by its subject and label (one per subject and class, as
    in EEGMAT)."""
    same = (windows.subject[1:] == windows.subject[:-1]) & (windows.y[1:] == windows.y[:-1])
    nxt = np.full(len(windows), -1)
    nxt[:-1][same] = np.flatnonzero(same) + 1
    return nxt


def crop_into_next(x: Tensor, b: np.ndarray, nxt: np.ndarray) -> Tensor:
    """(B, C, T) windows ``b`` of ``x``, each shifted a random 0..T-1 samples into its
    successor ``nxt[b]`` (torch's RNG); a window without a successor is kept as is."""
    T = x.shape[-1]
    has = nxt[b] >= 0
    shift = torch.randint(0, T, (len(b),)) * torch.from_numpy(has)
    pair = torch.cat([x[b], x[np.where(has, nxt[b], b)]], dim=-1)  # (B, C, 2T)
    at = (torch.arange(T)[None, :] + shift[:, None])[:, None, :].expand(-1, x.shape[1], -1)
    return pair.gather(-1, at)
