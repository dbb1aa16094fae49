"""Layer routers: per-input weights over the teacher's L layers (training only).

A router turns the teacher's stack of layer outputs into one target for the student's
mimic representation: ``features = sum_l w_l * H_l`` with ``w`` (B, L) on the simplex.
`LayerRouter` learns ``w`` per input; `LayerAverage` and `LastLayer` fix it, for ablations.
All three take the list that ``teacher.forward_layers(x)`` returns and give a
`RoutedFeatures`; none of them is exported.

Shape legend
------------
B batch, L teacher layers, C EEG channels, N patches, d teacher width, m router hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dlink.errors import ConfigError


@dataclass
class RoutedFeatures:
    """What a router returns.

    Attributes
    ----------
    weights : (B, L) layer weights, non-negative, summing to one per sample.
    features : (B, C, N, d) the weighted sum of the teacher's layer outputs.
    """

    weights: torch.Tensor
    features: torch.Tensor

    def entropy(self) -> torch.Tensor:
        """Mean entropy of the weights in nats (0 = one layer, log L = uniform).

        Useful for logging, or as a regulariser against the router collapsing onto the
        layer that is simply easiest to mimic.
        """
        w = self.weights.clamp_min(1e-12)
        return -(w * w.log()).sum(dim=1).mean()


def _stack(layers: Sequence[torch.Tensor], n_layers: int, who: str) -> torch.Tensor:
    """Check and stack L tensors (B, C, N, d) into (B, L, C, N, d)."""
    if len(layers) != n_layers:
        raise ConfigError(
            f"{who} was built for n_layers={n_layers} but got {len(layers)} layer outputs; "
            "build it with n_layers=len(teacher.forward_layers(x))."
        )
    shape = layers[0].shape
    if len(shape) != 4 or any(h.shape != shape for h in layers):
        raise ValueError(
            f"{who} expects L tensors of one shape (B, C, N, d), got "
            f"{[tuple(h.shape) for h in layers]}."
        )
    return torch.stack(list(layers), dim=1)  # (B, L, C, N, d)


def _mix(weights: torch.Tensor, stacked: torch.Tensor) -> RoutedFeatures:
    features = torch.einsum("bl,blcnd->bcnd", weights, stacked)  # (B, C, N, d)
    return RoutedFeatures(weights=weights, features=features)


class LayerRouter(nn.Module):
    """Input-conditioned softmax weights over the teacher's layers.

    The router reads the teacher's *shallow* output ``H_cond`` (first layer by default),
    averaged over channels and patches: (B, C, N, d) -> (B, d). Why this and not the raw
    patches: (i) it is already computed -- the teacher runs anyway -- so the router is a
    two-layer MLP of ~d*m parameters instead of a second signal encoder; (ii) it lives
    in the teacher's normalised embedding space, so the router does not have to learn
    µV scaling or filtering; (iii) after pooling it does not depend on the montage (C) or
    window length (N), so one router serves every dataset; (iv) it describes the *input*
    (a shallow layer is close to the signal) rather than the deep layers being weighted,
    which keeps the routing input-conditioned instead of judging candidate targets by
    their own content.

    Parameters
    ----------
    n_layers : L, number of teacher layer outputs.
    d_model : d, teacher width.
    hidden : m, hidden width of the MLP.
    tau : softmax temperature; below 1 sharpens the weights towards one layer.
    cond_layer : index of the layer the router is conditioned on (0 = shallowest).

    Notes
    -----
    The last linear layer starts at zero, so training starts from uniform weights
    (`LayerAverage`) and moves away only as the losses ask it to.
    """

    def __init__(
        self, n_layers: int, d_model: int, hidden: int = 64, tau: float = 1.0, cond_layer: int = 0
    ):
        super().__init__()
        if tau <= 0:
            raise ConfigError(f"router tau must be > 0, got {tau}.")
        if not -n_layers <= cond_layer < n_layers:
            raise ConfigError(f"cond_layer={cond_layer} is out of range for {n_layers} layers.")
        self.n_layers, self.tau, self.cond_layer = n_layers, tau, cond_layer
        self.mlp = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, hidden),
            nn.GELU(),
            nn.Linear(hidden, n_layers),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, layers: Sequence[torch.Tensor]) -> RoutedFeatures:
        """Route L teacher outputs, each (B, C, N, d), to one (B, C, N, d) target."""
        stacked = _stack(layers, self.n_layers, type(self).__name__)  # (B, L, C, N, d)
        cond = layers[self.cond_layer].mean(dim=(1, 2))  # (B, d)
        logits = self.mlp(cond)  # (B, L)
        weights = torch.softmax(logits / self.tau, dim=1)  # (B, L)
        return _mix(weights, stacked)


class LayerAverage(nn.Module):
    """Fixed uniform weights 1/L over all layers (ablation: no routing)."""

    def __init__(self, n_layers: int, d_model: int | None = None):
        super().__init__()
        self.n_layers = n_layers

    def forward(self, layers: Sequence[torch.Tensor]) -> RoutedFeatures:
        stacked = _stack(layers, self.n_layers, type(self).__name__)  # (B, L, C, N, d)
        b = stacked.shape[0]
        weights = stacked.new_full((b, self.n_layers), 1.0 / self.n_layers)  # (B, L)
        return _mix(weights, stacked)


class LastLayer(nn.Module):
    """All weight on the last layer (ablation: classic final-feature distillation)."""

    def __init__(self, n_layers: int, d_model: int | None = None):
        super().__init__()
        self.n_layers = n_layers

    def forward(self, layers: Sequence[torch.Tensor]) -> RoutedFeatures:
        _stack(layers, self.n_layers, type(self).__name__)  # validate only
        last = layers[-1]  # (B, C, N, d)
        weights = last.new_zeros((last.shape[0], self.n_layers))  # (B, L)
        weights[:, -1] = 1.0
        return RoutedFeatures(weights=weights, features=last)


ROUTERS: dict[str, type[nn.Module]] = {
    "router": LayerRouter,
    "average": LayerAverage,
    "last": LastLayer,
}


def build_router(name: str, n_layers: int, d_model: int, **kwargs) -> nn.Module:
    """Build a router by registry name (``"router"``, ``"average"`` or ``"last"``).

    Parameters
    ----------
    name : a key of `ROUTERS`.
    n_layers : L, ``len(teacher.forward_layers(x))``.
    d_model : d, teacher width.
    **kwargs : options of `LayerRouter` (``hidden``, ``tau``, ``cond_layer``).
    """
    if name not in ROUTERS:
        raise ConfigError(f"unknown router {name!r}; choose one of {sorted(ROUTERS)}.")
    if kwargs and name != "router":
        raise ConfigError(f"router {name!r} takes no options, got {sorted(kwargs)}.")
    return ROUTERS[name](n_layers, d_model, **kwargs)
