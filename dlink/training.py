"""The training loop every stage shares (pretrain, fine-tune, distil), read top to bottom.

A stage supplies ``loss_fn(batch_indices) -> {"loss": tensor, other terms...}`` and an
``evaluate() -> {metric: value}``; `train_loop` owns the schedule, clipping, checkpoints,
resumption, model selection, the progress bar and the loss curve.

Resumable: after every epoch the full state (modules, optimiser, epoch, history, selection,
RNG, settings) is written to ``OUT/checkpoint.pt`` (atomically) and a re-run with the same
settings continues from it; a re-run with other settings stops with a one-line error naming
them (a changed schedule or model would silently mix two runs).
Distributed (torchrun, see `dlink.distributed`): global batches are drawn from one seeded
permutation; each process takes an equal share (``rank::world``), so N processes x B/N see
the same windows as 1 x B (``batch_size`` is global). The modules are DDP-wrapped by the
stage; rank 0 alone writes, and on resume reads the checkpoint and sends it to the others.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dlink import distributed as dist
from dlink.atomic import write_text_atomic
from dlink.console import LossBar
from dlink.errors import CheckpointError, ConfigError


@dataclass
class TrainConfig:
    """Optimisation settings (CBraMod's fine-tuning recipe as defaults)."""

    epochs: int = 10  # passes over the training windows; more fits better, costs linearly
    batch_size: int = 32  # global batch (split across processes under torchrun)
    lr: float = 1e-4  # peak learning rate of the backbone / student
    lr_head: float = 5e-4  # peak learning rate of freshly initialised heads (and the router)
    weight_decay: float = 5e-2  # AdamW decoupled weight decay
    warmup_frac: float = 0.05  # fraction of steps with linear warm-up before the cosine decay
    clip_grad: float = 1.0  # max global gradient norm
    seed: int = 0  # data order, masks, initialisation


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 0 at ``total`` steps."""
    warmup = max(1, int(total * warmup_frac))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world: int = 1) -> list[np.ndarray]:
    """Global batches of one epoch: a permutation seeded by (seed, epoch).

    For ``world`` processes the last batch is cut to a multiple of ``world`` (every process
    gets an equal share; at most world - 1 windows per epoch are left out) and dropped if a
    share would hold fewer than 2 windows (BatchNorm needs 2). One process: only a last batch
    of 1 window is dropped.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    batches = [b[: len(b) - len(b) % world] for b in batches]
    return [b for b in batches if len(b) >= 2 * world]


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file, then rename (atomic)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint safely (``weights_only=True``: no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}; delete it to start over") from exc


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Loss terms (and validation metrics) per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    train_keys = [k for k in history[0]["train"]]
    val_keys = [k for k in history[0].get("val", {})]
    fig, axes = plt.subplots(1, 2 if val_keys else 1, figsize=(10 if val_keys else 5, 3.5),
                             squeeze=False)
    for k in train_keys:
        axes[0, 0].plot(epochs, [h["train"][k] for h in history], marker="o", label=k)
    axes[0, 0].set(xlabel="epoch", ylabel="training loss", title=title)
    axes[0, 0].legend(fontsize=8)
    if val_keys:
        for k in val_keys:
            axes[0, 1].plot(epochs, [h["val"][k] for h in history], marker="o", label=k)
        axes[0, 1].set(xlabel="epoch", ylabel="validation", title="validation")
        axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class LoopResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = -1
    best_score: float = -math.inf


def train_loop(
    *,
    modules: dict[str, nn.Module],
    param_groups: list[dict],
    n_train: int,
    cfg: TrainConfig,
    loss_fn: Callable[[np.ndarray], dict[str, Tensor]],
    evaluate: Callable[[], dict[str, float]] | None,
    select: str | None,
    on_best: Callable[[int], None],
    out_dir: Path,
    description: str,
    extra_state: dict | None = None,
) -> LoopResult:
    """Optimise ``param_groups`` (each with its peak ``"lr"``) for ``cfg.epochs`` epochs.

    Parameters
    ----------
    modules : the trained modules by name (saved in the checkpoint; DDP-wrapped by the caller).
    param_groups : torch optimiser groups, each with its peak ``lr``.
    n_train : number of training windows (batches index into them).
    loss_fn : batch indices (this process's share; all shares of a step have equal length)
        -> dict of loss terms incl. ``"loss"``.
    evaluate : -> validation metrics; None to skip validation.
    select : metric to maximise for model selection; None keeps the last epoch.
    on_best : called with the epoch when it becomes the selected one (save the model here).
    out_dir : checkpoint.pt, history.json and the loss-curve PNG go here (rank 0 only).
    """
    out_dir = Path(out_dir)
    rank, world = dist.rank(), dist.world_size()
    if world > 1 and cfg.batch_size < 2 * world:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch: with {world} processes "
                          f"it must be at least {2 * world} (2 windows per process)")
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    for g in optimizer.param_groups:
        g["peak_lr"] = g["lr"]
    steps_per_epoch = len(epoch_batches(n_train, cfg.batch_size, cfg.seed, 0, world))
    total_steps = cfg.epochs * steps_per_epoch
    result, start_epoch = LoopResult(), 0

    # Resume: rank 0 reads the checkpoint and sends it to all (other machines lack the file).
    state = dist.broadcast_object(load_checkpoint(ckpt_path)
                                  if dist.is_main() and ckpt_path.is_file() else None)
    if state is not None:
        _check_resume(state.get("config"), asdict(cfg), ckpt_path)
        for name, module in modules.items():
            dist.unwrap(module).load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        result = LoopResult(state["history"], state["best_epoch"], state["best_score"])
        start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["torch_rng"])

    bar = LossBar(total_steps, description, enabled=dist.is_main())
    step = start_epoch * steps_per_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(cfg.seed * 1000 + epoch)
            for m in modules.values():
                m.train()
            sums: dict[str, float] = {}
            for batch in epoch_batches(n_train, cfg.batch_size, cfg.seed, epoch, world):
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(step, total_steps, g["peak_lr"], cfg.warmup_frac)
                terms = loss_fn(batch[rank::world])
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_([p for g in param_groups for p in g["params"]],
                                             cfg.clip_grad)
                optimizer.step()
                step += 1
                logged = dist.mean_over_processes({k: float(v.detach()) for k, v in terms.items()})
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(step, logged, f"{description} epoch {epoch + 1}/{cfg.epochs}")
            row = {"epoch": epoch + 1, "train": {k: v / steps_per_epoch for k, v in sums.items()}}
            for m in modules.values():
                m.eval()
            if evaluate is not None:
                with torch.no_grad():
                    row["val"] = evaluate()
            result.history.append(row)
            bar.log(f"{description} epoch {epoch + 1}: " + " ".join(
                f"{k} {v:.4g}" for part in ("train", "val") for k, v in row.get(part, {}).items()))
            score = row.get("val", {}).get(select, -math.inf) if select else epoch
            if select is None or score > result.best_score:
                result.best_score, result.best_epoch = float(score), epoch + 1
                if dist.is_main():
                    on_best(epoch + 1)
            if dist.is_main():
                save_checkpoint(ckpt_path, {
                    "modules": {n: dist.unwrap(m).state_dict() for n, m in modules.items()},
                    "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "history": result.history, "best_epoch": result.best_epoch,
                    "best_score": result.best_score, "torch_rng": torch.get_rng_state(),
                    "config": asdict(cfg), **(extra_state or {}),
                })
                write_text_atomic(out_dir / "history.json", json.dumps(result.history, indent=1))
                plot_history(result.history, out_dir / "loss_curve.png", description)
            dist.barrier()
    finally:
        bar.close()
    return result


def _check_resume(saved: dict | None, now: dict, path: Path) -> None:
    """Refuse to resume a checkpoint written with other settings, naming them."""
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items()
               if saved is not None and k in saved and saved[k] != v]
    if changed:
        raise ConfigError(f"{path} was written with other settings ({', '.join(changed)}); re-run "
                          f"with those to resume, or give another --out (or delete {path.name}) "
                          "to start over.")


@torch.no_grad()
def predict_logits(forward: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 64,
                   device: torch.device | None = None) -> np.ndarray:
    """Logits (n, K) of ``forward`` over ``x`` in batches (moved to ``device``), as float32 numpy."""
    return torch.cat([forward(x[i : i + batch_size].to(device=device)).cpu()
                      for i in range(0, len(x), batch_size)]).float().numpy()


def class_weights(y: np.ndarray, n_classes: int) -> Tensor:
    """Inverse-frequency class weights, mean 1 (so a 3:1 data set does not teach "always rest")."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = counts.sum() / np.maximum(counts, 1) / n_classes
    return torch.tensor(w, dtype=torch.float32)
