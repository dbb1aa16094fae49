"""Supervised fine-tuning of the teacher (`dlink finetune`), made to converge on a CPU.

The recipe, each step measured on EEGMAT's 6 subject-wise folds (results/cv_benchmark.md):

1. **Channel head** (`CBraMod` ``head="channel"``): tokens averaged over patches per
   electrode, BatchNorm, Linear(C*d, K). Averaging over electrodes as well (the release's
   pooled head) loses the montage: a probe on frozen tokens drops from ~0.63 to ~0.58 BAcc.
2. **Frozen, cached patch embedding** (``frozen_layers``): the patch encoder -- and
   optionally the lowest encoder layers -- stay frozen; their output for every window is
   computed once, so an epoch costs only the layers above it.
3. **Linear-probe warm start** (``probe_epochs``): the head is first trained alone on the
   frozen backbone's features (seconds), so fine-tuning starts from a head that already
   separates the classes instead of sending random-head gradients into the backbone
   (LP-FT; Kumar et al., ICLR 2022).
4. **Fine-tuning** of the layers above the frozen ones and the head: AdamW, small peak
   learning rates (5e-5 backbone, 1e-4 head), one warm-up epoch then cosine decay,
   gradient clipping 1.0, class-weighted cross-entropy (EEGMAT is 3:1 rest:task). Dropout
   is 0: with CBraMod's 0.1 our self-pretrained backbone's training loss stayed above
   ln 2 (it did not fit at all); without it, it fits.
5. **Selection on validation subjects with a tuned decision threshold**: each epoch, the
   two-class decision threshold that maximises balanced accuracy on the validation
   subjects is found and the epoch with the best such BAcc is kept, its threshold folded
   into the head's bias. Without it, epochs with a good AUROC (≈0.7) predicted one class
   on unseen subjects (BAcc 0.5): their logits are shifted, not unordered. Test subjects
   are never looked at.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dlink import distributed as dist
from dlink.data import Split, Windows
from dlink.errors import ConfigError
from dlink.metrics import compute_metrics, tune_threshold
from dlink.teacher import create_teacher, load_teacher, patchify, save_teacher
from dlink.training import TrainConfig, class_weights, predict_logits, train_loop


@dataclass
class FinetuneConfig(TrainConfig):
    """Fine-tuning settings (see the module docstring for why each default)."""

    epochs: int = 8  # fine-tuning passes; ~40 s each for CBraMod-small on 1 CPU thread
    lr: float = 5e-5  # peak lr of the fine-tuned backbone layers
    lr_head: float = 1e-4  # peak lr of the (warm-started) head
    warmup_frac: float = 0.125  # one epoch of 8
    dropout: float = 0.0  # attention / MLP / head dropout (0.1 kept the backbone from fitting)
    label_smoothing: float = 0.0
    class_weighted: bool = True  # inverse-frequency CE weights
    head: str = "channel"  # "channel" (per-electrode pooled), "mean" (the release's), "layers"
    lr_mix: float = 1e-2  # peak lr of the "layers" head's L + 1 mixing logits (weight decay as the head's)
    frozen_layers: int = 0  # encoder layers frozen (and cached) above the always-frozen embedding
    probe_epochs: int = 15  # head-only warm start on frozen features (0: none)
    tune_threshold: bool = True  # pick the 2-class threshold on validation (module docstring)
    from_scratch: bool = False  # random initialisation instead of the backbone (the honest baseline)
    input_scale: float = 0.01  # µV -> CBraMod units (µV / 100)


def teacher_input(windows: Windows, input_scale: float = 0.01) -> Tensor:
    """(n, C, T) µV windows -> (n, C, N, 200) patches in µV/100."""
    return patchify(torch.from_numpy(windows.X * input_scale))


class _UpperTeacher(nn.Module):
    """The trainable part: encoder layers from ``start`` on, then the head.

    ``forward`` takes the cached (B, C, N, d) output of the frozen part.
    """

    def __init__(self, teacher, start: int):
        super().__init__()
        self.teacher, self.start = teacher, start

    def tokens(self, h: Tensor) -> Tensor:
        """(B, C, N, d) cached frozen output -> (B, C, N, d) tokens the head reads."""
        if self.start == 0:  # h is the patch embedding's output
            return self.teacher.head_tokens(h)
        for layer in self.teacher.encoder.layers[self.start:]:
            h = layer(h)
        return h

    def forward(self, h: Tensor) -> Tensor:
        return self.teacher.forward_head(self.tokens(h))  # (B, K)


@torch.no_grad()
def _frozen_output(teacher, x: Tensor, n_frozen: int, batch_size: int = 64) -> Tensor:
    """(n, C, N, P) patches -> (n, C, N, d) float16 output of the embedding and the first
    ``n_frozen`` encoder layers (eval mode)."""
    teacher.eval()
    dev = next(teacher.parameters()).device
    outs = []
    for i in range(0, len(x), batch_size):
        h = teacher.patch_embedding(x[i:i + batch_size].to(dev))
        for layer in teacher.encoder.layers[:n_frozen]:
            h = layer(h)
        outs.append(h.half().cpu())
    return torch.cat(outs)


def _set_threshold(teacher, bias: float) -> None:
    """Add ``bias`` to class 1's logit (the head's last Linear), in place."""
    last = teacher.head[-1] if isinstance(teacher.head, nn.Sequential) else teacher.head
    with torch.no_grad():
        last.bias[1] += bias


def _probe(upper: _UpperTeacher, h_train: Tensor, y: Tensor, weight, cfg: FinetuneConfig) -> None:
    """Train the head alone on the frozen model's pooled features (the LP of LP-FT)."""
    teacher = upper.teacher
    with torch.no_grad():
        teacher.eval()
        feats = torch.cat([teacher.forward_head(upper.tokens(h_train[i:i + 64].float()), pre_logits=True)
                           for i in range(0, len(h_train), 64)])  # (n, C*d) or (n, d)
    opt = torch.optim.AdamW(teacher.head.parameters(), lr=3e-4, weight_decay=cfg.weight_decay)
    teacher.head.train()
    for epoch in range(cfg.probe_epochs):
        order = np.random.default_rng([cfg.seed, 10_000 + epoch]).permutation(len(feats))
        for i in range(0, len(order), cfg.batch_size):
            b = order[i:i + cfg.batch_size]
            if len(b) < 2:
                continue
            loss = nn.functional.cross_entropy(teacher.head(feats[b]), y[b], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def finetune(teacher_weights: Path | None, windows: Windows, split: Split, out_dir: Path,
             cfg: FinetuneConfig | None = None) -> dict:
    """Fine-tune a pre-trained backbone on ``split.train``, select on ``split.val``, test on
    ``split.test``. Saves the selected model to ``out_dir`` (config.json, model.safetensors,
    metrics.json, history.json, loss_curve.png) and returns the metrics ``{"val": {...},
    "test": {...}, ...}``. With ``cfg.from_scratch`` the backbone is randomly initialised
    (``teacher_weights`` then only names the architecture, or None for CBraMod-small)."""
    cfg = cfg or FinetuneConfig()
    if cfg.head == "layers" and cfg.frozen_layers:
        raise ConfigError("the 'layers' head reads every layer's tokens; it needs frozen_layers=0.")
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    K = len(windows.class_names)
    train, val, test = (windows.of_subjects(s) for s in (split.train, split.val, split.test))
    model = _initial_teacher(teacher_weights, cfg)
    if not 0 <= cfg.frozen_layers < model.n_layers:
        raise ConfigError(f"frozen_layers={cfg.frozen_layers} must lie in [0, {model.n_layers - 1}] "
                          f"for a {model.n_layers}-layer teacher (at least one layer is fine-tuned).")
    model.reset_classifier(K, cfg.head, windows.signal.n_chans)  # a fresh task head
    model.signal = windows.signal
    for p in model.patch_embedding.parameters():
        p.requires_grad_(False)
    for layer in model.encoder.layers[:cfg.frozen_layers]:
        layer.requires_grad_(False)
    dev = dist.device()
    model.to(dev)
    h_train, h_val, h_test = (_frozen_output(model, teacher_input(w, cfg.input_scale), cfg.frozen_layers)
                              for w in (train, val, test))
    upper = _UpperTeacher(model, cfg.frozen_layers)
    y_train = torch.from_numpy(train.y)
    weight = class_weights(train.y, K).to(dev) if cfg.class_weighted else None
    if cfg.probe_epochs and dist.is_main() and not (out_dir / "checkpoint.pt").is_file():
        _probe(upper, h_train, y_train.to(dev), weight, cfg)  # rank 0; DDP then broadcasts it
    net = dist.wrap(upper)
    threshold = {"bias": 0.0}
    tune = cfg.tune_threshold and K == 2

    def loss_fn(idx: np.ndarray) -> dict[str, Tensor]:
        y = y_train[idx].to(dev)
        loss = nn.functional.cross_entropy(net(h_train[idx].float().to(dev)), y, weight=weight,
                                           label_smoothing=cfg.label_smoothing)
        if weight is not None:  # a weighted mean: normalise by the global sum of weights
            loss = loss * dist.share_of_total(float(weight[y].sum()))
        return {"loss": loss}

    def evaluate() -> dict[str, float]:
        logits = predict_logits(lambda h: upper(h.float()), h_val, device=dev)
        m = compute_metrics(val.y, logits)
        row = {"bacc": m["bacc"], "auroc": m["auroc"], "kappa": m["kappa"]}
        if tune:
            threshold["bias"], row["bacc_tuned"] = tune_threshold(logits, val.y)
        return row

    def save(epoch: int) -> None:
        _set_threshold(model, threshold["bias"]) if tune else None
        save_teacher(model, out_dir, extra_config={
            "class_names": windows.class_names, "split": split.to_dict(), "epoch": epoch,
            "finetune": asdict(cfg), "data": windows.name, "threshold_bias": threshold["bias"]})
        _set_threshold(model, -threshold["bias"]) if tune else None

    trainable = [p for p in model.encoder.layers[cfg.frozen_layers:].parameters()]
    head = dict(model.head.named_parameters())
    groups = [{"params": trainable, "lr": cfg.lr},
              {"params": [p for n, p in head.items() if n != "mix"], "lr": cfg.lr_head}]
    if "mix" in head:  # the "layers" head's mixing logits: few, and far from their optimum
        groups.append({"params": [head["mix"]], "lr": cfg.lr_mix})
    result = train_loop(
        modules={"teacher": net},
        param_groups=groups,
        n_train=len(h_train), cfg=cfg, loss_fn=loss_fn, evaluate=evaluate,
        select="bacc_tuned" if tune else ("auroc" if K == 2 else "bacc"),
        on_best=save, out_dir=out_dir, description="finetune teacher",
    )
    if not dist.is_main():  # rank 0 wrote the selected model; the others receive its metrics
        return dist.broadcast_object(None)
    best = load_teacher(out_dir).to(dev)
    x_val, x_test = teacher_input(val, cfg.input_scale), teacher_input(test, cfg.input_scale)
    metrics = {
        "selected_epoch": result.best_epoch, "selection": "bacc_tuned" if tune else "auroc",
        "threshold_bias": read_threshold(out_dir),
        "val": compute_metrics(val.y, predict_logits(best, x_val, device=dev), windows.class_names),
        "test": compute_metrics(test.y, predict_logits(best, x_test, device=dev), windows.class_names),
        "history": result.history, "split": split.to_dict(), "config": asdict(cfg),
    }
    _write_json(out_dir / "metrics.json", metrics)
    return dist.broadcast_object(metrics)


def _initial_teacher(teacher_weights: Path | None, cfg: FinetuneConfig):
    if cfg.from_scratch:
        preset = "small"
        if teacher_weights is not None:
            from dlink.teacher import read_teacher_config

            preset = read_teacher_config(teacher_weights).get("preset") or "small"
        return create_teacher(preset, dropout=cfg.dropout, head_dropout=cfg.dropout)
    if teacher_weights is None:
        raise ConfigError("fine-tuning needs pre-trained teacher weights (or from_scratch=True).")
    return load_teacher(teacher_weights, head_dropout=cfg.dropout, dropout=cfg.dropout)


def read_threshold(out_dir: Path) -> float:
    from dlink.teacher import read_teacher_config

    return float(read_teacher_config(out_dir).get("extra", {}).get("threshold_bias", 0.0))


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
