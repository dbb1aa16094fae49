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


def _conv_bn(
    c_in: int, c_out: int, kernel, stride=1, padding=0, relu: bool = True
) -> nn.Sequential:
    """Conv2d (no bias) -> BatchNorm2d [-> ReLU]; the BatchNorm folds into the conv at export."""
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class EEGMiC(nn.Module):
    """EEG-MiC: project every 1-s patch to the teacher width, then compress and classify.

    Parameters
    ----------
    n_chans : C, EEG channels, in `SignalSpec.ch_names` order.
    n_times : T, samples per window; must be a multiple of ``patch_size``.
    n_outputs : K, number of classes.
    d_teacher : d, width of the teacher features the mimic representation is matched to.
    patch_size : P, samples per patch; 200 = 1 s at 200 Hz, the teacher's patch.
    rank : r, width of the per-patch code; the P -> d projection is factorised P -> r -> d
        (r = 64 keeps 2 x 13K parameters instead of 40K for a full P x d map).
    context_kernel : patches seen by the context conv that mixes all C channels (odd).
    n_virtual : S, virtual channels left after spatial compression.
    width : h, feature width after compressing d.
    temporal_kernel : kernel over the N patches in the temporal compression (odd).
    temporal_stride : stride over N in the temporal compression.
    dropout : dropout before the classifier (training only).
    input_clip : the input is clamped to ±input_clip model units (0.5 = ±50 µV at µV/100)
        before anything else. Designed for int8: a per-tensor int8 input range set by rare
        artifacts (EEGMAT peaks at 583 µV, 99.9 % of samples lie within ±52 µV) leaves
        ~4.6 µV steps for ordinary EEG and fails the parity gate; clamped, the steps are
        ~0.4 µV. Training sees the same clamp, so the model and its int8 copy agree.
        Trade-off: the quantizers keep this clamp in float (ONNX ``Clip``, TFLite
        ``MINIMUM``/``MAXIMUM`` on the input), one cheap element-wise float op that the
        export lists in ``float_ops``; None gives a strictly full-integer graph (TFLite
        Micro) at a cost in int8 fidelity (on EEGMAT about 13 dB logit SQNR instead of ~20).

    Notes
    -----
    Input is (B, C, T) float32 in model units (µV * `SignalSpec.input_scale`, i.e. µV/100),
    the same scaling as the teacher's patches. The architecture is our reading of the
    paper's "mimic-then-compress" description, not the authors' code.
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
        rank: int = 64,
        context_kernel: int = 3,
        n_virtual: int = 4,
        width: int = 32,
        temporal_kernel: int = 3,
        temporal_stride: int = 2,
        dropout: float = 0.25,
        input_clip: float | None = 0.5,
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
        self.n_chans, self.n_times, self.n_outputs = n_chans, n_times, n_outputs
        self.patch_size, self.d_teacher = patch_size, d_teacher
        self.n_patches = n_times // patch_size
        self.input_clip = input_clip

        # (1) mimic: patch -> r -> (context over channels and neighbouring patches) -> d
        self.patch_embed = nn.Linear(patch_size, rank)
        self.context = _conv_bn(
            n_chans, n_chans, (context_kernel, 1), padding=(context_kernel // 2, 0)
        )
        self.to_mimic = nn.Linear(rank, d_teacher)

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
        self.pool = nn.AvgPool2d((1, n_out))  # static global average over N' (AveragePool op)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, n_outputs)
        self.num_features = width

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
        b = x.shape[0]
        if self.input_clip is not None:
            x = x.clamp(-self.input_clip, self.input_clip)  # (B, C, T), exported as Clip
        patches = x.reshape(b, self.n_chans, self.n_patches, self.patch_size)  # (B, C, N, P)
        code = self.patch_embed(patches)  # (B, C, N, r)
        code = code + self.context(code)  # (B, C, N, r), C acts as conv channels
        return self.to_mimic(code)  # (B, C, N, d)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Compress the mimic representation and classify.

        Parameters
        ----------
        feats : (B, C, N, d) from `forward_features`.
        pre_logits : return the pooled (B, h) features instead of logits.

        Returns
        -------
        torch.Tensor
            (B, K) logits, or (B, h) when ``pre_logits``.
        """
        z = self.spatial(feats)  # (B, S, N, d)
        z = z.permute(0, 3, 1, 2)  # (B, d, S, N)
        z = self.feature(z)  # (B, h, S, N)
        z = self.temporal(z)  # (B, h, 1, N')
        z = self.pool(z).reshape(z.shape[0], -1)  # (B, h)
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


register_student("mic-xs", EEGMiC, "EEG-MiC, smallest", rank=32, n_virtual=2, width=16)
register_student("mic-s", EEGMiC, "EEG-MiC, default (<100K params)", rank=64, n_virtual=4, width=48)
register_student("mic-m", EEGMiC, "EEG-MiC, larger", rank=128, n_virtual=8, width=48)


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
