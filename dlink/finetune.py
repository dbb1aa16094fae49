"""Supervised fine-tuning of the teacher (`dlink finetune`), CBraMod's recipe as defaults.

AdamW, lr 1e-4 (backbone) / 5e-4 (head), weight decay 5e-2, cosine schedule with warm-up,
gradient clipping 1.0, dropout 0.1, label smoothing 0.1, model selection on the validation
subjects (AUROC for two classes, balanced accuracy otherwise). One addition: the
cross-entropy is class-weighted by inverse frequency (``class_weighted``), since EEGMAT is
3:1 rest:task and balanced accuracy is what we report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlink import distributed as dist
from dlink.data import Split, Windows
from dlink.metrics import compute_metrics, selection_metric
from dlink.teacher import load_teacher, patchify, save_teacher
from dlink.training import TrainConfig, class_weights, predict_logits, train_loop


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning settings; TrainConfig's defaults are CBraMod's recipe."""

    epochs: int = 5  # CBraMod uses 50; on 2 CPU cores we state what we can afford
    dropout: float = 0.1  # attention / MLP / head dropout
    label_smoothing: float = 0.1
    class_weighted: bool = True  # inverse-frequency CE weights
    input_scale: float = 0.01  # µV -> CBraMod units (µV / 100)


def teacher_input(windows: Windows, input_scale: float = 0.01) -> Tensor:
    """(n, C, T) µV windows -> (n, C, N, 200) patches in µV/100."""
    return patchify(torch.from_numpy(windows.X * input_scale))


def finetune(teacher_weights: Path, windows: Windows, split: Split, out_dir: Path,
             cfg: FinetuneConfig | None = None) -> dict:
    """Fine-tune a pre-trained backbone on ``split.train``, select on ``split.val``, test on
    ``split.test``. Saves the selected model to ``out_dir`` (config.json, model.safetensors,
    metrics.json) and returns the metrics ``{"val": {...}, "test": {...}, ...}``."""
    cfg = cfg or FinetuneConfig()
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    K = len(windows.class_names)
    train, val, test = (windows.of_subjects(s) for s in (split.train, split.val, split.test))
    x_train, x_val, x_test = (teacher_input(w, cfg.input_scale) for w in (train, val, test))
    y_train = torch.from_numpy(train.y)
    model = load_teacher(teacher_weights, head_dropout=cfg.dropout, dropout=cfg.dropout)
    model.reset_classifier(K)  # a fresh task head on the pre-trained backbone
    model.signal = windows.signal
    dev = dist.device()
    net = dist.wrap(model.to(dev))
    weight = class_weights(train.y, K).to(dev) if cfg.class_weighted else None
    select = selection_metric(K)

    def loss_fn(idx: np.ndarray) -> dict[str, Tensor]:
        y = y_train[idx].to(dev)
        loss = torch.nn.functional.cross_entropy(
            net(x_train[idx].to(dev)), y, weight=weight, label_smoothing=cfg.label_smoothing)
        if weight is not None:  # a weighted mean: normalise by the global sum of weights
            loss = loss * dist.share_of_total(float(weight[y].sum()))
        return {"loss": loss}

    def evaluate() -> dict[str, float]:
        m = compute_metrics(val.y, predict_logits(model, x_val, device=dev))
        return {k: m[k] for k in ("bacc", "auroc", "kappa")}

    def save(epoch: int) -> None:
        save_teacher(model, out_dir, extra_config={
            "class_names": windows.class_names, "split": split.to_dict(), "epoch": epoch,
            "finetune": asdict(cfg), "data": windows.name})

    head = list(model.head.parameters())
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    result = train_loop(
        modules={"teacher": net},
        param_groups=[{"params": backbone, "lr": cfg.lr}, {"params": head, "lr": cfg.lr_head}],
        n_train=len(x_train), cfg=cfg, loss_fn=loss_fn, evaluate=evaluate, select=select,
        on_best=save, out_dir=out_dir, description="finetune teacher",
    )
    if not dist.is_main():  # rank 0 wrote the selected model; the others receive its metrics
        return dist.broadcast_object(None)
    best = load_teacher(out_dir).to(dev)
    metrics = {
        "selected_epoch": result.best_epoch, "selection": select,
        "val": compute_metrics(val.y, predict_logits(best, x_val, device=dev), windows.class_names),
        "test": compute_metrics(test.y, predict_logits(best, x_test, device=dev), windows.class_names),
        "split": split.to_dict(), "config": asdict(cfg),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return dist.broadcast_object(metrics)
