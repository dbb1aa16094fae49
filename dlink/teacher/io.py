"""Load and save teachers: official ``.pth``, braindecode weights, and our folder format.

Formats
-------
official : ``pretrained_weights.pth`` from github.com/wjq-learning/CBraMod, a plain
    ``state_dict`` of the backbone (``patch_embedding.*``, ``encoder.layers.{i}.*``,
    ``proj_out.*``). Loaded with ``torch.load(weights_only=True)``: pickled objects are refused.
braindecode : ``braindecode.models.CBraMod(...).state_dict()`` (``.pth``), or its Hub folder
    (``config.json`` without our ``format`` tag + ``model.safetensors``). Its backbone keys are
    the official ones (checked by ``tests/data/cbramod_reference_keys.json``); it adds
    ``final_layer.*``, a flatten head over ``proj_out`` tied to one (n_chans, n_times), which
    our pooled head cannot take: those keys are dropped with a warning, see
    ``from_braindecode``.
dlink : a folder with ``config.json`` (``format: "dlink.teacher"``, arch, config, n_outputs,
    signal spec, extras) and ``model.safetensors`` (backbone + head).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from dlink.errors import CheckpointError, ConfigError
from dlink.signal import SignalSpec
from dlink.teacher.cbramod import HEAD_PREFIX, PRESETS, CBraMod, CBraModConfig

FORMAT_TAG = "dlink.teacher"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BRAINDECODE_HEAD_PREFIX = "final_layer."
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # common checkpoint wrappers
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.")


# --- reading state dicts -------------------------------------------------------------------
def _torch_load(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure here means an unusable file
        if "Unsupported global" in str(exc):  # weights_only met a class or function
            found = _UNSAFE_GLOBAL.search(str(exc))
            raise CheckpointError(
                f"{path} holds pickled Python objects ({found.group(1) if found else '?'}), "
                f"which we refuse to unpickle (that could run arbitrary code). Re-save it "
                f"as a plain state_dict: torch.save(model.state_dict(), path)."
            ) from exc
        raise CheckpointError(f"cannot read {path} as a torch checkpoint; the file is "
                              f"probably truncated or corrupted ({exc}).") from exc
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:  # {"state_dict": {...}, "epoch": ...} and the like
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state_dict (a dict of tensors); got "
                              f"{type(obj).__name__}. Save model.state_dict(), not the model.")
    return dict(obj)


def _safetensors_load(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ...
        raise CheckpointError(f"cannot read {path} as safetensors; the file is probably "
                              f"truncated or corrupted ({exc}).") from exc


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return _safetensors_load(path)
    return _torch_load(path)


def from_braindecode(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a braindecode ``CBraMod`` state_dict onto our key names.

    Backbone keys are identical to the official ones and pass unchanged; ``final_layer.*``
    (braindecode's flatten head: ``Flatten`` -> ``Linear(n_chans * n_patches * 200,
    n_outputs)`` over ``proj_out``) has no counterpart in our pooled head and is dropped with
    a warning. Fine-tune our head instead.
    """
    dropped = sorted(k for k in state_dict if k.startswith(BRAINDECODE_HEAD_PREFIX))
    if dropped:
        warnings.warn(
            f"dropping braindecode's task head {dropped}: it is a flatten head over proj_out "
            f"that our pooled head cannot take; the teacher's head starts untrained.",
            stacklevel=2,
        )
    return {k: v for k, v in state_dict.items() if not k.startswith(BRAINDECODE_HEAD_PREFIX)}


# --- building the model --------------------------------------------------------------------
def infer_config(state_dict: dict[str, Tensor], overrides: dict | None = None) -> CBraModConfig:
    """Read the architecture off a backbone state_dict's shapes.

    The number of heads and of GroupNorm groups are not visible in the weights: they come
    from the preset with the same shapes, from ``overrides``, or ``CheckpointError`` asks
    for ``preset=``.
    """
    overrides = overrides or {}
    try:
        d_model, n_bins = state_dict["patch_embedding.spectral_proj.0.weight"].shape
        ff = state_dict["encoder.layers.0.linear1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"the state_dict lacks {exc}; it is not a CBraMod backbone "
                              f"(keys start with {sorted({k.split('.')[0] for k in state_dict})})."
                              ) from exc
    layer_ids = {int(m.group(1)) for m in map(_LAYER_KEY.match, state_dict) if m}
    found = dict(patch_size=2 * (n_bins - 1), d_model=d_model, n_layer=max(layer_ids) + 1,
                 dim_feedforward=ff)
    for cfg in PRESETS.values():
        cfg = CBraModConfig.from_dict({**cfg.to_dict(), **overrides})
        if all(getattr(cfg, k) == v for k, v in found.items()):
            return cfg
    if "nhead" in overrides:
        return CBraModConfig.from_dict({**found, **overrides})
    raise CheckpointError(f"no preset matches the checkpoint's shapes {found}; pass "
                          f"preset= (one of {sorted(PRESETS)}) or nhead= and other overrides.")


def _braindecode_arch(meta: dict) -> dict:
    """Config fields readable from a braindecode Hub ``config.json`` (heads, norm groups)."""
    arch = {k: meta[k] for k in ("nhead",) if k in meta}
    try:
        arch["norm_groups"] = int(meta["channels_kernel_stride_padding_norm"][0][4][0])
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    return arch


def _shorten(keys: list[str], limit: int = 12) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def _load_strict(model: CBraMod, state_dict: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` that reports every problem in one CheckpointError."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict) if state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = [f"{name} ({len(keys)}): {_shorten(keys)}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
                 if keys]
        raise CheckpointError(
            f"{source} does not match CBraMod({model.cfg}, n_outputs={model.n_outputs}): "
            + "; ".join(parts) + ". Check preset= and n_outputs=, or that this is a CBraMod file."
        )
    model.load_state_dict(state_dict, strict=True)


def _build(preset: str | None, overrides: dict, state_dict: dict[str, Tensor],
           n_outputs: int, head_dropout: float) -> CBraMod:
    if preset is None:
        cfg = infer_config(state_dict, overrides)
    elif preset in PRESETS:
        cfg = PRESETS[preset]
    else:
        raise ConfigError(f"unknown CBraMod preset {preset!r}; choose from {sorted(PRESETS)}.")
    cfg = CBraModConfig.from_dict({**cfg.to_dict(), **overrides})
    return CBraMod(cfg, n_outputs=n_outputs, head_dropout=head_dropout)


def _load_backbone(state_dict: dict[str, Tensor], source: str, preset: str | None,
                   n_outputs: int | None, overrides: dict, head_dropout: float) -> CBraMod:
    """Official / braindecode backbone weights into a CBraMod with a fresh head."""
    state_dict = from_braindecode(state_dict)
    model = _build(preset, overrides, state_dict, n_outputs or 0, head_dropout)
    fresh_head = {k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIX)}
    _load_strict(model, {**state_dict, **fresh_head}, source)
    return model


# --- public API ----------------------------------------------------------------------------
def read_teacher_config(path: str | Path) -> dict:
    """The ``config.json`` of a teacher folder written by ``save_teacher``."""
    path = Path(path)
    cfg_path = path / CONFIG_NAME if path.is_dir() else path
    try:
        return json.loads(cfg_path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{cfg_path} not found; a teacher folder holds {CONFIG_NAME} "
                              f"and {WEIGHTS_NAME} (see save_teacher).") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc}).") from exc


def _load_folder(path: Path, preset: str | None, n_outputs: int | None, overrides: dict,
                 head_dropout: float) -> CBraMod:
    meta = read_teacher_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found; a teacher folder holds {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME}.")
    state_dict = _safetensors_load(weights)
    if meta.get("format") != FORMAT_TAG:  # braindecode / Hugging Face Hub folder
        overrides = {**_braindecode_arch(meta), **overrides}
        return _load_backbone(state_dict, str(weights), preset, n_outputs, overrides,
                              head_dropout)
    if meta.get("arch") != "cbramod":
        raise CheckpointError(f"{path} holds a {meta.get('arch')!r} teacher; only 'cbramod' "
                              f"is implemented.")
    saved_outputs = int(meta.get("n_outputs", 0))
    if n_outputs is not None and n_outputs != saved_outputs:
        raise CheckpointError(f"{path} was saved with n_outputs={saved_outputs}, asked for "
                              f"{n_outputs}; load it as saved and call reset_classifier().")
    if preset is not None and preset != meta.get("preset"):
        raise CheckpointError(f"{path} holds preset {meta.get('preset')!r}, asked for "
                              f"{preset!r}; drop preset= to use the saved config.")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path / CONFIG_NAME} has no 'config' object; re-save the "
                              f"teacher with save_teacher.")
    cfg = CBraModConfig.from_dict({**meta["config"], **overrides})
    head = meta.get("head") or {"kind": "mean", "n_chans": None}
    model = CBraMod(cfg, n_outputs=saved_outputs, head_dropout=head_dropout, head=head["kind"],
                    n_chans=head.get("n_chans"))
    _load_strict(model, state_dict, str(weights))
    if meta.get("signal"):
        model.signal = SignalSpec.from_dict(meta["signal"])
    return model


def load_teacher(path: str | Path, preset: str | None = None, n_outputs: int | None = None,
                 head_dropout: float = 0.0, **overrides) -> CBraMod:
    """Load a CBraMod teacher from any supported format.

    Parameters
    ----------
    path : an official / braindecode ``.pth`` (or ``.safetensors``) state_dict, or a folder
        (ours from ``save_teacher``, or braindecode's Hub folder).
    preset : "base", "small" or "tiny"; None infers it from the weights' shapes (state dicts)
        or uses the saved config (our folders).
    n_outputs : classes of the task head. Backbone-only files get a fresh head of this size
        (None or 0: no head). Our folders must match what was saved (None accepts it).
    head_dropout : dropout before the head (training only).
    **overrides : ``CBraModConfig`` fields that differ from the preset.

    Returns
    -------
    CBraMod in eval mode; ``model.signal`` is the saved ``SignalSpec`` or None.

    Raises
    ------
    CheckpointError : missing, unreadable, unsafe (pickled objects) or mismatched weights;
        one error lists every missing, unexpected and mis-shaped key.
    """
    path = Path(path)
    if path.is_dir():
        model = _load_folder(path, preset, n_outputs, overrides, head_dropout)
    elif path.is_file():
        state_dict = _read_state_dict(path)
        if any(k.startswith(HEAD_PREFIX) for k in state_dict):
            raise CheckpointError(f"{path} carries a 'head.*' task head, which only our folder "
                                  f"format records with its config; load the teacher folder.")
        model = _load_backbone(state_dict, str(path), preset, n_outputs, overrides,
                               head_dropout)
    else:
        raise CheckpointError(f"{path} does not exist; pass an official/braindecode .pth or a "
                              f"teacher folder written by save_teacher.")
    return model.eval()


def save_teacher(model: CBraMod, directory: str | Path, extra_config: dict | None = None,
                 signal: SignalSpec | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` so ``load_teacher`` rebuilds the model.

    Parameters
    ----------
    model : the teacher (backbone and head).
    directory : folder to create or overwrite files in.
    extra_config : JSON-serialisable extras (e.g. class names, fine-tuning run), stored
        under ``"extra"``; read them back with ``read_teacher_config``.
    signal : the input description; defaults to ``model.signal`` if set.

    Returns
    -------
    The folder path.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    signal = signal or model.signal
    preset = next((name for name, cfg in PRESETS.items() if cfg == model.cfg), None)
    meta = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "arch": "cbramod",
        "preset": preset,  # informational; "config" is what rebuilds the model
        "config": model.cfg.to_dict(),
        "n_outputs": model.n_outputs,
        "head": model.head_config,
        "signal": signal.to_dict() if signal is not None else None,
        "extra": extra_config or {},
    }
    try:
        text = json.dumps(meta, indent=2)
    except TypeError as exc:
        raise ConfigError(f"extra_config must be JSON-serialisable: {exc}.") from exc
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(text + "\n")
    return directory
