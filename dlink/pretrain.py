"""Self-supervised pre-training of the CBraMod-architecture teacher (`dlink pretrain`).

CBraMod's objective: each 1-s patch is masked with probability 0.5 (Bernoulli), the
masked patches are replaced by the (frozen) mask token, and ``proj_out`` reconstructs them
from the last layer's tokens; the loss is the MSE on masked patches only. Inputs are
200 Hz windows in µV/100. By default it trains on the training subjects of the data set's
default split and reports the reconstruction loss on its validation subjects, so the
test subjects are never seen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlink import distributed as dist
from dlink.atomic import write_text_atomic
from dlink.data import Windows, split_subjects
from dlink.teacher import create_teacher, load_teacher, patchify, save_teacher
from dlink.training import TrainConfig, epoch_batches, train_loop


@dataclass
class PretrainConfig(TrainConfig):
    """Pre-training settings (CBraMod: lr 5e-4, weight decay 5e-2, mask ratio 0.5)."""

    preset: str = "small"  # teacher size: base (12 layers), small (6), tiny (tests)
    mask_ratio: float = 0.5  # probability that a patch is masked
    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-4
    input_scale: float = 0.01  # µV -> CBraMod units (µV / 100)
    dropout: float = 0.1  # attention / MLP dropout of a teacher built from scratch (CBraMod: 0.1)


class MaskedPatchObjective(torch.nn.Module):
    """The pre-training loss as a module, so torchrun's DDP can wrap it whole."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """MSE on masked patches. x (B, C, N, P) in µV/100, mask (B, C, N) of 0/1."""
        tokens = self.teacher.forward_layers(x, mask)[-1]  # (B, C, N, d)
        recon = self.teacher.proj_out(tokens)  # (B, C, N, P)
        m = mask.bool()
        return torch.nn.functional.mse_loss(recon[m], x[m])


def pretrain(windows: Windows, out_dir: Path, cfg: PretrainConfig | None = None,
             init_weights: Path | None = None) -> dict:
    """Pre-train a teacher on ``windows`` (train subjects of the default split).

    Returns the model card facts (data, hours, steps, final losses) also written to
    ``out_dir/pretrain.json``; the backbone is saved as ``out_dir/config.json`` +
    ``model.safetensors``.
    """
    cfg = cfg or PretrainConfig()
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    split = split_subjects(windows)
    train, val = windows.of_subjects(split.train), windows.of_subjects(split.val)
    to_x = lambda w: patchify(torch.from_numpy(w.X * cfg.input_scale))  # noqa: E731 (B,C,N,P)
    x_train, x_val = to_x(train), to_x(val)
    model = (load_teacher(init_weights) if init_weights
             else create_teacher(cfg.preset, dropout=cfg.dropout))
    model.signal = windows.signal
    dev, rank, world = dist.device(), dist.rank(), dist.world_size()
    objective = dist.wrap(MaskedPatchObjective(model).to(dev))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    val_mask = torch.bernoulli(torch.full(x_val.shape[:3], cfg.mask_ratio), generator=gen)

    def loss_fn(idx: np.ndarray) -> dict[str, Tensor]:
        x = x_train[idx].to(dev)
        # the mask of the global batch (same draw as one process), this process's rows
        mask = torch.bernoulli(torch.full((len(idx) * world, *x.shape[1:3]), cfg.mask_ratio))
        mask = mask[rank::world].to(dev)  # (B/world, C, N)
        loss = objective(x, mask) * dist.share_of_total(float(mask.sum()))  # mean over all masked
        return {"loss": loss}

    def evaluate() -> dict[str, float]:
        bare = dist.unwrap(objective)
        losses = [float(bare(x_val[i:i + 64].to(dev), val_mask[i:i + 64].to(dev)))
                  for i in range(0, len(x_val), 64)]
        return {"val_mse": float(np.mean(losses))}

    def save(epoch: int) -> None:
        save_teacher(model, out_dir, extra_config={"pretrain": asdict(cfg), "epoch": epoch})

    trainable = [p for p in model.parameters() if p.requires_grad]
    result = train_loop(
        modules={"teacher": objective}, param_groups=[{"params": trainable, "lr": cfg.lr}],
        n_train=len(x_train), cfg=cfg, loss_fn=loss_fn, evaluate=evaluate, select=None,
        on_best=save, out_dir=out_dir, description=f"pretrain cbramod-{cfg.preset}",
    )
    last = result.history[-1]
    facts = {
        "model": f"cbramod-{cfg.preset}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": windows.name,
        "train_subjects": split.train, "val_subjects": split.val,
        "excluded_test_subjects": split.test,
        "train_windows": len(train),
        "train_hours": round(len(train) * windows.n_times / windows.sfreq / 3600, 3),
        "epochs": cfg.epochs,
        "steps": cfg.epochs * len(epoch_batches(len(train), cfg.batch_size, cfg.seed, 0, world)),
        "final_train_mse": last["train"]["loss"], "final_val_mse": last["val"]["val_mse"],
        "val_mse_predicting_zero": float(x_val[val_mask.bool()].pow(2).mean()),
        "config": asdict(cfg),
    }
    if dist.is_main():
        write_text_atomic(out_dir / "pretrain.json", json.dumps(facts, indent=2))
        write_text_atomic(out_dir / "MODEL_CARD.md", model_card(facts))
    return facts


def model_card(facts: dict) -> str:
    """A short model card, generated from what the pre-training run saw."""
    cfg = facts["config"]
    return f"""# {facts['model']}, self-pretrained on {facts['train_hours']:.2f} hours of EEG

CBraMod-architecture, self-pretrained on {facts['train_hours']:.2f} hours of EEG. This is **not**
the published CBraMod (pre-trained on ~27,000 hours of TUEG); it is the same architecture
({facts['parameters']:,} parameters) trained by `dlink pretrain` on far less data.

- Data: {facts['data']}, {facts['train_windows']} windows of 5 s at 200 Hz, 19 channels, in µV/100,
  from the training subjects {', '.join(facts['train_subjects'])} of the default split.
- Never seen: the test subjects {', '.join(facts['excluded_test_subjects'])}; the validation
  subjects {', '.join(facts['val_subjects'])} only scored the reconstruction loss.
- Objective: CBraMod's masked-patch reconstruction (Bernoulli {cfg['mask_ratio']:.0%} patch mask,
  MSE on masked patches), AdamW lr {cfg['lr']:g}, weight decay {cfg['weight_decay']:g}, cosine
  schedule, batch {cfg['batch_size']}, {facts['epochs']} epochs = {facts['steps']} optimiser steps,
  seed {cfg['seed']}.
- Final masked-patch MSE: training {facts['final_train_mse']:.4f} (mean over the last epoch),
  validation {facts['final_val_mse']:.4f} (fixed masks); predicting zero for every masked patch
  would score {facts['val_mse_predicting_zero']:.4f} on the same validation patches.
- Files: `config.json` + `model.safetensors` (load with `dlink.teacher.load_teacher`),
  `pretrain.json` (these facts), `loss_curve.png`.
"""
