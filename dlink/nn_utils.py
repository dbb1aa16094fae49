"""Small helpers shared by every model family: counting, registries, checked file I/O.

Counting is exact, never estimated: `count_macs` runs one forward pass under
`torch.utils.flop_counter.FlopCounterMode`, which records every matrix product and
convolution PyTorch dispatches (Conv1d/Conv2d, Linear, matmul, bmm, einsum), and halves
the flop count (one multiply-accumulate = two flops). Element-wise work (BatchNorm, which
folds into the preceding conv at export, ReLU, adds, pooling) is not counted; for the
models here it is under 1% of the total.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dlink.errors import CheckpointError, ConfigError

# ---------------------------------------------------------------------------------------
# Counting


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running stats are not counted).

    Parameters
    ----------
    model : the module to count.
    trainable_only : count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, example_input: torch.Tensor | tuple) -> int:
    """Multiply-accumulates of one forward pass on ``example_input``, counted exactly.

    Parameters
    ----------
    model : the module; run in eval mode for the count, its mode is restored after.
    example_input : a tensor, or a tuple of positional arguments, e.g. ``(1, C, T)``.

    Returns
    -------
    int
        MACs for the whole input (divide by the batch size for a per-window figure).
    """
    from torch.utils.flop_counter import FlopCounterMode

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        model.train(was_training)
    flops = counter.get_total_flops()
    assert flops % 2 == 0, f"flop count {flops} is odd; FlopCounterMode counts 2 per MAC"
    return flops // 2


# ---------------------------------------------------------------------------------------
# Registries


@dataclass(frozen=True)
class ModelEntry:
    """One registered preset: a model class plus the keyword arguments that define it.

    Presets are data, so the resolved keyword arguments written beside a checkpoint
    rebuild the exact model even if the preset's defaults change later.
    """

    name: str
    cls: type[nn.Module]
    defaults: dict = field(default_factory=dict)
    family: str = ""  # "student" or "baseline"
    description: str = ""

    def resolve(self, overrides: dict) -> dict:
        """Full keyword arguments of ``cls`` (preset defaults < overrides < class defaults).

        Arguments taken from the signal (``n_chans``, ``n_times``, ``sfreq``) and
        ``n_outputs`` are left out: they are stored separately in the config.
        """
        params = inspect.signature(self.cls).parameters
        kwargs = {**self.defaults, **overrides}
        unknown = sorted((set(kwargs) - set(params)) | (set(kwargs) & _SIGNAL_ARGS))
        if unknown:
            valid = sorted(set(params) - _SIGNAL_ARGS)
            raise ConfigError(
                f"{self.name!r} has no option(s) {unknown}; valid options are {valid}."
            )
        resolved = {
            k: p.default
            for k, p in params.items()
            if k not in _SIGNAL_ARGS and p.default is not inspect.Parameter.empty
        }
        resolved.update(kwargs)
        return resolved

    def signal_args(self, n_chans: int, n_times: int, sfreq: float, n_outputs: int) -> dict:
        """The signal-derived constructor arguments this class accepts."""
        params = inspect.signature(self.cls).parameters
        given = {"n_chans": n_chans, "n_times": n_times, "sfreq": sfreq, "n_outputs": n_outputs}
        return {k: v for k, v in given.items() if k in params}


_SIGNAL_ARGS = frozenset({"n_chans", "n_times", "sfreq", "n_outputs"})


def lookup(registry: dict[str, ModelEntry], name: str, what: str = "model") -> ModelEntry:
    """``registry[name]``, or a `ConfigError` that lists what exists."""
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {sorted(registry)}.") from None


# ---------------------------------------------------------------------------------------
# Checked file I/O: every failure becomes a one-line CheckpointError naming the file.


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON (UTF-8, trailing newline)."""
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> dict:
    """Read a JSON object, raising `CheckpointError` if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; expected a folder written by save_student.")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({_one_line(exc)}); re-save it.") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a JSON object.")
    return obj


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save a state dict as safetensors (tensors made contiguous and detached first)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(path))


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, raising `CheckpointError` if missing, truncated or corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint folder is incomplete.")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise CheckpointError(
            f"{path} is corrupted or truncated ({_one_line(exc)}); re-save or re-download it."
        ) from exc


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line `CheckpointError`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if bad:
            k = sorted(bad)[0]
            parts.append(
                f"{len(bad)} shape mismatch(es), e.g. {k}: file {tuple(state[k].shape)} "
                f"vs model {tuple(own[k].shape)}"
            )
        raise CheckpointError(
            f"{path} does not match the model in config.json ({'; '.join(parts)}); "
            "was config.json edited or written for another model?"
        )
    model.load_state_dict(state, strict=True)


def _few(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
