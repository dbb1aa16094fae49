"""Layer routers: per-input weights over the teacher's L layers (training only).

A router turns the teacher's stack of layer outputs into one target for the student's
mimic representation: ``features = sum_l w_l * H_l`` with ``w`` (B, L) on the simplex.
`LayerRouter` learns ``w`` per input; `StaticRouter` learns one ``w`` for every input;
`LayerAverage` and `LastLayer` fix it, for ablations. All take the list that
``teacher.forward_layers(x)`` returns and give a `RoutedFeatures`; none is exported.

What the router is trained for. Trained only through the student's mimic loss, a router
drifts to whichever layer is easiest to imitate, and it does so for every input alike (the
gradient is the same everywhere), which makes it a static weighting. The learned routers
here therefore also carry a *target probe*: a linear classifier (BatchNorm + Linear over
the routed target pooled over patches, per channel) trained with cross-entropy on the
labels (``DistillLoss.router_ce``). Its gradient flows into the weights, so the router is
rewarded for mixes that make *this input's* target class-discriminative: a task-relevant
layer, chosen per input. The probe is part of the router and is never deployed.

The probe alone did not keep the mix input-conditioned: in about a third of the runs the
router still collapsed onto one layer for every window (weight >= 0.95 on layer 2 of 6,
per-layer standard deviation across test windows below 0.02, a saturated softmax that no
input moves; 7 of the 18 dlink runs of the CV benchmark, 4 with the reward below). So the
learned router is also rewarded with the mutual information between the window and the
layer it is sent to (``DistillLoss.router_mi``, `dlink.losses.router_mutual_information`):
``H(batch-mean mix) - mean H(mix)``, zero for any mix shared by every window, log L when
the windows of a batch commit to different layers and use all L equally. It is
mixture-of-experts gating's answer to gate collapse; its first part also pushes the
batch-mean mix towards uniform (load balancing), so it is not neutral about which layers
are used. Its weight is 0.3: at 0.1 the router still collapsed in 5 of the 18 dlink runs
of the CV benchmark (with band-pass initialised student filters), at 0.3 in none, at a
BAcc change within fold noise (`bench/router_variants.py`, `results/router_variants.md`).
`StaticRouter` is not given the term (mathematically zero for it, but its float
residue moved Adam's steps), so the "static learned weights" row trains exactly as before.

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
    probe_logits : (B, K) the target probe's logits (learned routers only), else None.
    """

    weights: torch.Tensor
    features: torch.Tensor
    probe_logits: torch.Tensor | None = None

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


def _mix(weights: torch.Tensor, stacked: torch.Tensor, probe: nn.Module | None = None) -> RoutedFeatures:
    features = torch.einsum("bl,blcnd->bcnd", weights, stacked)  # (B, C, N, d)
    logits = probe(features) if probe is not None else None  # (B, K)
    return RoutedFeatures(weights=weights, features=features, probe_logits=logits)


class TargetProbe(nn.Module):
    """Linear classifier of a routed target: (B, C, N, d) -> mean over N -> (B, C*d) ->
    BatchNorm -> Linear -> (B, K). Training-only; rewards class-discriminative targets."""

    def __init__(self, n_chans: int, d_model: int, n_outputs: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(n_chans * d_model)
        self.linear = nn.Linear(n_chans * d_model, n_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=2).flatten(1)  # (B, C*d)
        return self.linear(self.norm(pooled))  # (B, K)


class LayerRouter(nn.Module):
    """Input-conditioned softmax weights over the teacher's layers.

    The router reads a summary of the teacher's *shallow* output ``H_cond`` (first layer by
    default): the mean and the standard deviation of every feature over channels and
    patches, (B, C, N, d) -> (B, 2d), standardised per feature across windows (BatchNorm).
    The mean says what the window contains, the standard deviation how unevenly it is spread
    over the scalp and the 5 s, which is what distinguishes, say, a focal artifact from
    diffuse alpha. Why a shallow layer: it is
    already computed (the teacher runs anyway), lives in the teacher's normalised space,
    does not depend on the montage or window length after pooling, and describes the
    *input* rather than the candidate targets being weighted.

    Parameters
    ----------
    n_layers : L, number of teacher layer outputs.
    d_model : d, teacher width.
    hidden : m, hidden width of the MLP.
    tau : softmax temperature; below 1 sharpens the weights towards one layer.
    cond_layer : index of the layer the router is conditioned on (0 = shallowest).
    n_chans, n_outputs : C and K of the target probe (module docstring); 0 leaves it out.

    Notes
    -----
    The last linear layer starts at zero, so training starts from uniform weights
    (`LayerAverage`) and moves away only as the losses ask it to.
    """

    def __init__(
        self, n_layers: int, d_model: int, hidden: int = 64, tau: float = 1.0, cond_layer: int = 0,
        n_chans: int = 0, n_outputs: int = 0,
    ):
        super().__init__()
        if tau <= 0:
            raise ConfigError(f"router tau must be > 0, got {tau}.")
        if not -n_layers <= cond_layer < n_layers:
            raise ConfigError(f"cond_layer={cond_layer} is out of range for {n_layers} layers.")
        self.n_layers, self.tau, self.cond_layer = n_layers, tau, cond_layer
        self.mlp = nn.Sequential(
            # BatchNorm, not LayerNorm: the summaries of two windows differ by little next to
            # what every window shares, and normalising each one on its own kept that little
            # (measured: per-layer weight sd ~1e-7 across test windows, a static mix).
            # Standardising each feature across windows makes the differences the input.
            nn.BatchNorm1d(2 * d_model),
            nn.Linear(2 * d_model, hidden),
            nn.GELU(),
            nn.Linear(hidden, n_layers),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.probe = TargetProbe(n_chans, d_model, n_outputs) if n_chans and n_outputs else None

    def forward(self, layers: Sequence[torch.Tensor]) -> RoutedFeatures:
        """Route L teacher outputs, each (B, C, N, d), to one (B, C, N, d) target."""
        stacked = _stack(layers, self.n_layers, type(self).__name__)  # (B, L, C, N, d)
        h = layers[self.cond_layer]  # (B, C, N, d)
        cond = torch.cat([h.mean(dim=(1, 2)), h.std(dim=(1, 2))], dim=1)  # (B, 2d)
        weights = torch.softmax(self.mlp(cond) / self.tau, dim=1)  # (B, L)
        return _mix(weights, stacked, self.probe)


class StaticRouter(nn.Module):
    """One learned weight vector for every input (ablation: routing without conditioning).

    Trained exactly like `LayerRouter` (same losses, same target probe), so the difference
    between the two rows measures what per-input routing adds.
    """

    def __init__(self, n_layers: int, d_model: int, tau: float = 1.0, n_chans: int = 0,
                 n_outputs: int = 0, **_):
        super().__init__()
        if tau <= 0:
            raise ConfigError(f"router tau must be > 0, got {tau}.")
        self.n_layers, self.tau = n_layers, tau
        self.logits = nn.Parameter(torch.zeros(n_layers))  # (L,), uniform at start
        self.probe = TargetProbe(n_chans, d_model, n_outputs) if n_chans and n_outputs else None

    def forward(self, layers: Sequence[torch.Tensor]) -> RoutedFeatures:
        stacked = _stack(layers, self.n_layers, type(self).__name__)  # (B, L, C, N, d)
        w = torch.softmax(self.logits / self.tau, dim=0)  # (L,)
        return _mix(w.expand(stacked.shape[0], -1), stacked, self.probe)  # (B, L) weights


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
    "static": StaticRouter,
    "average": LayerAverage,
    "last": LastLayer,
}


def build_router(name: str, n_layers: int, d_model: int, **kwargs) -> nn.Module:
    """Build a router by registry name (``"router"``, ``"static"``, ``"average"``, ``"last"``).

    Parameters
    ----------
    name : a key of `ROUTERS`.
    n_layers : L, ``len(teacher.forward_layers(x))``.
    d_model : d, teacher width.
    **kwargs : options of `LayerRouter` (``hidden``, ``tau``, ``cond_layer``, ``n_chans``,
        ``n_outputs``) or `StaticRouter` (``tau``, ``n_chans``, ``n_outputs``).
    """
    if name not in ROUTERS:
        raise ConfigError(f"unknown router {name!r}; choose one of {sorted(ROUTERS)}.")
    if kwargs and name not in ("router", "static"):
        raise ConfigError(f"router {name!r} takes no options, got {sorted(kwargs)}.")
    return ROUTERS[name](n_layers, d_model, **kwargs)
