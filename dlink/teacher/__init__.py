"""Teachers: EEG foundation models the student is distilled from.

Every teacher offers the ``Teacher`` surface, so losses and the router never ask which
foundation model they hold. Only CBraMod is implemented; LaBraM or BIOT would add a file
and a registry entry.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from dlink.errors import ConfigError
from dlink.teacher.cbramod import PRESETS, CBraMod, CBraModConfig, cbramod, patchify
from dlink.teacher.io import load_teacher, read_teacher_config, save_teacher


@runtime_checkable
class Teacher(Protocol):
    """What distillation needs from a foundation model.

    Inputs are patched windows (B, C, N, P) in the teacher's own units (CBraMod: µV / 100).
    """

    n_layers: int  # number of encoder layers, i.e. len(forward_layers(x))
    d_model: int  # d, width of each token feature

    def forward_layers(self, x: Tensor) -> list[Tensor]:
        """(B, C, N, P) -> n_layers tensors (B, C, N, d), one per encoder layer."""
        ...

    def layers_and_logits(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(B, C, N, P) -> (``forward_layers(x)``, (B, n_outputs) logits) in one pass."""
        ...

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, N, P) -> (B, C, N, d), the tokens the head reads (the last layer's, unless
        the head mixes layers)."""
        ...

    def forward_head(self, features: Tensor) -> Tensor:
        """(B, C, N, d) -> (B, n_outputs) logits."""
        ...


# Teacher registry: preset name -> architecture config. The CLI lists these.
TEACHERS: dict[str, CBraModConfig] = {f"cbramod-{name}": cfg for name, cfg in PRESETS.items()}


def list_teachers() -> list[str]:
    """Registered teacher names, e.g. ``["cbramod-base", "cbramod-small", "cbramod-tiny"]``."""
    return sorted(TEACHERS)


def create_teacher(name: str, n_outputs: int = 0, **overrides) -> CBraMod:
    """Build a randomly initialised teacher by registry name (``"cbramod-tiny"``) or preset
    name (``"tiny"``); ``overrides`` change config fields."""
    preset = name.removeprefix("cbramod-")
    if preset not in PRESETS:
        raise ConfigError(f"unknown teacher {name!r}; choose from {list_teachers()}.")
    return cbramod(preset, n_outputs=n_outputs, **overrides)


__all__ = [
    "PRESETS",
    "TEACHERS",
    "CBraMod",
    "CBraModConfig",
    "Teacher",
    "cbramod",
    "create_teacher",
    "list_teachers",
    "load_teacher",
    "patchify",
    "read_teacher_config",
    "save_teacher",
]
