"""DLink distillation (`dlink distill`): Router + EEG-MiC student + spectral losses.

One epoch, read top to bottom:
1. the frozen teacher's per-layer tokens of every window are computed once and cached in
   memory as float16 (`cache_teacher`), with its logits (for logit KD);
2. per batch, the router (or a fixed selector, for ablations) mixes the cached layers into
   a target (B, C, N, d); the student maps the raw window to its mimic representation
   (B, C, N, d) and to logits;
3. loss = CE + α·mimic + λ1·|FFT| + λ2·phase (+ KD), see `dlink.losses`.
Teacher and router exist only here; the saved student folder is all that export needs.

Methods (`METHODS`) name a router and a loss preset, so every benchmark row is the same
code with different settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dlink import distributed as dist
from dlink.atomic import savez_atomic, write_text_atomic
from dlink.augment import crop_into_next, gain_jitter, successors
from dlink.data import Split, Windows
from dlink.errors import ConfigError
from dlink.losses import Decoder, DistillLoss, build_loss, distill_loss
from dlink.metrics import compute_metrics, selection_metric, tune_threshold
from dlink.nn_utils import lookup
from dlink.router import LayerRouter, build_router
from dlink.student import available_models, build_student, load_student, save_student
from dlink.teacher import load_teacher, patchify
from dlink.training import TrainConfig, class_weights, predict_logits, train_loop

# After the int8-aware phase the tuned threshold moves only if that gains this much
# validation BAcc: a smaller gain is a window or two of 4 subjects, and a threshold among
# near-tied margins makes int8 flip decisions for nothing.
RETUNE_MIN_GAIN = 0.02


@dataclass(frozen=True)
class Method:
    """A benchmark row: which router builds the target and which loss preset is used."""

    router: str | None  # "router", "average", "last" or None (no feature target)
    loss: str  # a `dlink.losses.LOSSES` preset
    description: str


METHODS: dict[str, Method] = {
    "dlink": Method("router", "dlink", "Router + mimic + spectral magnitude/phase (full DLink)"),
    "dlink-no-spectral": Method("router", "mimic", "Router + mimic, no spectral terms"),
    "static-weights": Method("static", "dlink", "one learned layer mix for every input (no conditioning)"),
    "layer-avg": Method("average", "dlink", "uniform layer average instead of the Router"),
    "fitnet": Method("last", "mimic", "FitNet-style feature KD on the last layer"),
    "logit-kd": Method(None, "kd", "Hinton logit KD, no feature target"),
    "no-kd": Method(None, "ce", "the student trained on labels only"),
}


@dataclass
class DistillConfig(TrainConfig):
    """Distillation settings."""

    student: str = "mic-s"  # a student preset or a baseline (eegnet, shallowconvnet, shallowconvnet-relu6)
    method: str = "dlink"  # a key of METHODS
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3  # students are small and start from scratch
    lr_head: float = 2e-3  # router learning rate
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    class_weighted: bool = True  # inverse-frequency CE weights (EEGMAT is 3:1)
    router_tau: float = 0.5  # softmax temperature of the router (below 1: sharper mixes)
    alpha: float | None = None  # feature-mimic weight (None: the method's preset)
    lambda_mag: float | None = None  # λ1, spectral magnitude weight (None: preset)
    lambda_phase: float | None = None  # λ2, spectral phase weight (None: preset)
    router_ce: float | None = None  # weight of the router's target-probe CE (None: preset)
    router_mi: float | None = None  # weight of the router's input-layer mutual information,
    # a reward against a router that gives every window the same mix (None: preset)
    kd_weight: float | None = None  # weight of Hinton logit KD on the teacher's logits
    # (None: preset; 0 for every method but logit-kd)
    gain_jitter: float = 0.0  # training windows are scaled by exp(N(0, gain_jitter^2)): amplitude
    # differences between people (skull, impedance) should not decide the class; 0: off
    crop_jitter: bool = False  # each training window is replaced, every time it is drawn, by
    # the window-long stretch that starts a random 0..T-1 samples later in the same recording
    # (running into the next window): new phases of the same EEG, at no extra cost. Feature-
    # mimic methods keep their cached teacher targets of the unshifted window
    tune_threshold: bool = True  # two classes: shift class 1's logit (the classifier bias) by
    # the amount that maximises validation BAcc, as the teacher's fine-tuning does; a model
    # selected on AUROC can rank well and still predict one class on unseen subjects
    qat_epochs: int = 0  # final quantisation-aware phase (dlink.qat): epochs through int8
    # simulation, starting from the selected float student; 0 skips it
    qat_lr: float = 1e-4  # peak learning rate of that phase (a gentle fine-tune)
    qat_reduce_range: bool = False  # simulate 7-bit weights (ONNX Runtime on x86 w/o VNNI)
    qat_calib: int = 256  # training windows that set the simulated activation ranges
    qat_match: float = 30.0  # weight of ||int8 logits - float logits||^2 / ||float logits||^2
    # (the inverse of the logit SQNR the export gate measures), the float model of the
    # same weights being the int8 model's teacher
    qat_envelope_quantile: float | None = 0.9999  # EEG-MiC: before that phase, clamp the
    # band amplitudes at this quantile of theirs on the calibration windows (the int8 range
    # then follows the bulk of the data, not one artifact); None: no clamp
    input_scale: float = 0.01  # µV -> model units (µV / 100), the teacher's and student's
    input_clip_uv: float | None = 50.0  # student input clamped to ±this µV (a preprocessing
    # step in the manifest, applied in float before int8 quantisation: EEGMAT peaks at
    # 583 µV while 99.9 % of samples lie within ±52 µV, so an unclipped int8 input range
    # leaves ~4.6 µV steps for ordinary EEG); None: no clamp


@dataclass
class TeacherCache:
    """The frozen teacher's outputs for every window, computed once.

    layers : (n, L, C, N, d) float16 per-layer tokens.
    logits : (n, K) float32.
    seconds : wall time it took (the cost a non-cached epoch would pay again).
    decoder : the teacher's token -> patch decoder (spectral terms on the decoded axis).
    """

    layers: Tensor
    logits: Tensor
    seconds: float
    decoder: Decoder | None = None


@torch.no_grad()
def cache_teacher(teacher, windows: Windows, input_scale: float = 0.01,
                  batch_size: int = 64) -> TeacherCache:
    """Run the teacher once over all windows and keep its layers (fp16) and logits."""
    from dlink.console import track

    t0 = time.perf_counter()
    x = patchify(torch.from_numpy(windows.X * input_scale))  # (n, C, N, P)
    dev = next(teacher.parameters()).device  # the cache itself stays on the CPU
    layers, logits = [], []
    starts = range(0, len(x), batch_size)
    for i in track(starts, "teacher features", total=len(starts)):
        xb = x[i : i + batch_size].to(dev)
        hs, out = teacher.layers_and_logits(xb)
        layers.append(torch.stack(hs, dim=1).half().cpu())  # (b, L, C, N, d)
        logits.append(out.float().cpu())
    proj = teacher.proj_out[0]  # Linear(d, P), CBraMod's pre-training decoder
    decoder = Decoder(proj.weight.detach().float().cpu(), proj.bias.detach().float().cpu(),
                      fs=float(windows.sfreq))
    return TeacherCache(torch.cat(layers), torch.cat(logits), time.perf_counter() - t0, decoder)


class DistillObjective(torch.nn.Module):
    """Student + router + loss as one module (so DDP can wrap the whole step)."""

    def __init__(self, student, router, loss: DistillLoss, class_weight: Tensor | None,
                 decoder: Decoder | None = None):
        super().__init__()
        self.student, self.router, self.loss, self.decoder = student, router, loss, decoder
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(self, x: Tensor, y: Tensor, layers: Tensor, t_logits: Tensor) -> dict[str, Tensor]:
        """x (B, C, T) model units, y (B,), layers (B, L, C, N, d), t_logits (B, K)."""
        needs_target = self.router is not None and self.loss.needs_features
        feats = self.student.forward_features(x) if needs_target else None  # (B, C, N, d)
        logits = self.student.forward_head(feats) if needs_target else self.student(x)
        routed = self.router(list(layers.float().unbind(1))) if needs_target else None
        terms = distill_loss(self.loss, logits, y, feats, routed.features if routed else None, t_logits,
                             class_weight=self.class_weight, decoder=self.decoder,
                             probe_logits=routed.probe_logits if routed else None,
                             # only a per-input router has a window-layer information to
                             # reward; a static mix's is zero, and its float residue would
                             # still move Adam's steps
                             router_weights=routed.weights
                             if isinstance(self.router, LayerRouter) else None)
        terms["loss"] = terms.pop("total")
        return terms


def _check_options(cfg: DistillConfig, method: Method, loss: DistillLoss, windows: Windows) -> None:
    """One-line errors, before any work, for options the method, student or data cannot take
    (negative loss weights are `DistillLoss`'s own error, raised when ``loss`` was built)."""
    # a router weight the method's router would not use is an error, not a silent no-op: the
    # target probe needs a router (learned or static), the mutual-information reward a learned one
    for name, kinds in (("router_ce", ("router", "static")), ("router_mi", ("router",))):
        value = getattr(cfg, name)
        if value and method.router not in kinds:
            users = ", ".join(k for k, m in METHODS.items() if m.router in kinds)
            raise ConfigError(f"{name}={value} has no effect with method {cfg.method!r}, which has "
                              f"no {'learned ' if kinds == ('router',) else ''}router; use it with "
                              f"{users}, or leave it out.")
    cls = lookup(available_models(), cfg.student, "student").cls
    if method.router and loss.needs_features and not cls.mimics_teacher:
        raise ConfigError(f"{cfg.student} has no teacher-shaped representation to mimic, which method "
                          f"{cfg.method!r} trains; use method no-kd or logit-kd with it, or an EEG-MiC "
                          "student (mic-xs, mic-s, mic-m).")
    if cfg.qat_epochs and not hasattr(cls, "deployed_weights"):
        raise ConfigError(f"qat_epochs={cfg.qat_epochs}: the int8-aware phase simulates EEG-MiC's "
                          f"deployed graph, which {cfg.student} lacks; set it to 0 or use mic-xs/s/m.")
    if cfg.crop_jitter and windows.name != "eegmat":
        raise ConfigError(f"crop_jitter needs windows cut back to back from one recording per "
                          f"subject and class (EEGMAT); {windows.name!r} windows may join unrelated "
                          "trials. Leave it off for these data.")


def build_method_loss(cfg: DistillConfig, method: Method) -> DistillLoss:
    """The method's loss preset with the fields ``cfg`` sets (None fields keep the preset)."""
    fields = {"alpha": cfg.alpha, "lambda_mag": cfg.lambda_mag, "lambda_phase": cfg.lambda_phase,
              "router_ce": cfg.router_ce, "router_mi": cfg.router_mi, "kd_weight": cfg.kd_weight}
    return build_loss(method.loss, label_smoothing=cfg.label_smoothing,
                      **{k: v for k, v in fields.items() if v is not None})


def router_weights(router, cache: TeacherCache, index: np.ndarray,
                   device: torch.device | None = None) -> np.ndarray:
    """(n, L) router weights of the given windows (the report shows means per class)."""
    with torch.no_grad():
        return torch.cat([
            router(list(cache.layers[index[i:i + 256]].to(device=device).float().unbind(1))).weights.cpu()
            for i in range(0, len(index), 256)]).numpy()


def distill(teacher_dir: Path, windows: Windows, split: Split, out_dir: Path,
            cfg: DistillConfig | None = None, cache: TeacherCache | None = None) -> dict:
    """Distil the fine-tuned teacher in ``teacher_dir`` into a student saved in ``out_dir``.

    Parameters
    ----------
    teacher_dir : a fine-tuned teacher folder (``dlink finetune`` output).
    windows, split : the data and its subject-wise split (train / select on val / test).
    out_dir : receives the student (config.json, model.safetensors), metrics.json,
        router_weights.npz, history and loss curve; a checkpoint makes it resumable.
    cache : teacher outputs for ``windows`` if already computed (the benchmark reuses one
        per fold across methods).

    Returns
    -------
    metrics: ``{"val": {...}, "test": {...}, "parameters": ..., ...}``.
    """
    cfg = cfg or DistillConfig()
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown method {cfg.method!r}; choose from {', '.join(METHODS)}")
    method = METHODS[cfg.method]
    loss = build_method_loss(cfg, method)
    _check_options(cfg, method, loss, windows)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    K = len(windows.class_names)
    needs_teacher = method.router is not None or loss.kd_weight > 0
    dev = dist.device()
    if needs_teacher and cache is None:
        cache = cache_teacher(load_teacher(teacher_dir).to(dev), windows, cfg.input_scale)
    idx = {part: np.flatnonzero(np.isin(windows.subject, subjects))
           for part, subjects in split.to_dict().items()}
    signal = windows.signal.with_clip(cfg.input_clip_uv)
    x = torch.from_numpy(signal.to_model_units(windows.X))  # (n, C, T) model units
    y = torch.from_numpy(windows.y)
    d_teacher = cache.layers.shape[-1] if cache is not None else 200
    student = build_student(cfg.student, signal, K, d_teacher=d_teacher,
                            class_names=windows.class_names)
    router_kw = ({"tau": cfg.router_tau, "n_chans": windows.signal.n_chans, "n_outputs": K}
                 if method.router in ("router", "static") else {})
    router = (build_router(method.router, cache.layers.shape[1], d_teacher, **router_kw)
              if method.router else None)
    weight = class_weights(windows.y[idx["train"]], K) if cfg.class_weighted else None
    objective = dist.wrap(
        DistillObjective(student, router, loss, weight,
                         decoder=cache.decoder if cache is not None else None).to(dev))
    empty = torch.zeros(len(x), 0)
    nxt = successors(windows) if cfg.crop_jitter else None

    def loss_fn(batch: np.ndarray) -> dict[str, Tensor]:
        b = idx["train"][batch]
        layers = cache.layers[b] if cache is not None and method.router else empty[b]
        t_logits = cache.logits[b].to(dev) if cache is not None else None
        xb = crop_into_next(x, b, nxt) if cfg.crop_jitter else x[b]
        terms = objective(gain_jitter(xb, cfg.gain_jitter).to(dev), y[b].to(dev), layers.to(dev), t_logits)
        if weight is not None:  # the CE is a weighted mean: normalise by the global sum of weights
            f = dist.share_of_total(float(weight[y[b]].sum()))
            if f != 1.0:
                terms["loss"] = terms["loss"] + (f - 1.0) * terms["ce"]
                terms["ce"] = terms["ce"] * f
        return terms

    def evaluate() -> dict[str, float]:
        m = compute_metrics(y[idx["val"]].numpy(), predict_logits(student, x[idx["val"]], device=dev))
        return {k: m[k] for k in ("bacc", "auroc", "kappa")}

    def save(epoch: int) -> None:
        save_student(student, out_dir, class_names=windows.class_names)
        if method.router in ("router", "static"):  # per-window layer weights of the selected router
            savez_atomic(out_dir / "router_weights.npz",
                         weights=router_weights(router, cache, idx["test"], device=dev),
                         y=windows.y[idx["test"]], class_names=np.array(windows.class_names))

    router_params = list(router.parameters()) if router is not None else []
    groups = [{"params": list(student.parameters()), "lr": cfg.lr}]
    if router_params:
        groups.append({"params": router_params, "lr": cfg.lr_head, "weight_decay": 0.0})
    result = train_loop(
        modules={"objective": objective}, param_groups=groups, n_train=len(idx["train"]), cfg=cfg,
        loss_fn=loss_fn, evaluate=evaluate, select=selection_metric(K), on_best=save,
        out_dir=out_dir, description=f"distill {cfg.student} ({cfg.method})",
    )
    best = load_student(out_dir)  # every process: rank 0 wrote it when it was selected
    tune = cfg.tune_threshold and K == 2
    val = (x[idx["val"]], windows.y[idx["val"]], out_dir, windows.class_names)
    threshold_bias = _shift_threshold(best, *val)[0] if tune else None
    qat = None
    if cfg.qat_epochs > 0:
        qat = _qat_phase(best, cfg, weight, x, y, idx, windows, out_dir, dev)
        best = load_student(out_dir)  # the int8-aware phase saved its selected epoch over it
        if tune:  # its CE moves the threshold back: tune it again
            qat["threshold_bias"], qat["threshold_retune_gain"] = _shift_threshold(
                best, *val, min_gain=RETUNE_MIN_GAIN)
    if not dist.is_main():  # rank 0 wrote the selected student; the others receive its metrics
        return dist.broadcast_object(None)
    from dlink.nn_utils import count_macs, count_parameters

    metrics = {
        "method": cfg.method, "student": cfg.student, "selected_epoch": result.best_epoch,
        "val": compute_metrics(y[idx["val"]].numpy(), predict_logits(best, x[idx["val"]]),
                               windows.class_names),
        "test": compute_metrics(y[idx["test"]].numpy(), predict_logits(best, x[idx["test"]]),
                                windows.class_names),
        "parameters": count_parameters(best),
        "macs": count_macs(best, x[:1]),
        "threshold_bias": threshold_bias,
        "teacher_cache_seconds": cache.seconds if cache is not None else None,
        "qat": qat,
        "split": split.to_dict(), "config": asdict(cfg),
    }
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return dist.broadcast_object(metrics)


def _shift_threshold(student, x_val: Tensor, y_val: np.ndarray, out_dir: Path, class_names,
                     min_gain: float = -np.inf) -> tuple[float, float]:
    """Tune a two-class student's decision threshold on validation windows (a shift of class
    1's logit, `tune_threshold`) and, if it gains at least ``min_gain`` validation BAcc,
    apply it and save the student. Returns (the shift applied, 0.0 if none; the gain)."""
    logits = predict_logits(student, x_val)
    shift, tuned = tune_threshold(logits, y_val)
    gain = float(tuned - compute_metrics(y_val, logits)["bacc"])
    if gain < min_gain:
        return 0.0, gain
    with torch.no_grad():
        student.classifier.bias[1] += shift
    if dist.is_main():
        save_student(student, out_dir, class_names=class_names)
    return shift, gain


class _Int8Objective(torch.nn.Module):
    """The int8-aware phase's loss: CE of the simulated int8 logits plus ``match`` times
    ||int8 - float||^2 / ||float||^2 (the inverse logit SQNR the export gate measures), the
    float deployed graph of the same weights being the int8 graph's teacher. BatchNorm
    stays at its running statistics (the export folds those), whatever ``train()`` says."""

    def __init__(self, student, sim, match: float, label_smoothing: float, class_weight):
        super().__init__()
        self.student, self.sim, self.match = student, sim, match
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weight", class_weight, persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.student.eval()
        return self

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        logits = self.sim(x)
        terms = {"ce": torch.nn.functional.cross_entropy(
            logits, y, weight=self.class_weight, label_smoothing=self.label_smoothing)}
        reference = self.sim.float_logits(x)
        terms["int8_mse"] = ((logits - reference) ** 2).sum() / (reference ** 2).sum().clamp_min(1e-12)
        terms["loss"] = terms["ce"] + self.match * terms["int8_mse"]
        return terms


def _qat_phase(student, cfg: DistillConfig, weight, x: Tensor, y: Tensor, idx: dict,
               windows: Windows, out_dir: Path, dev) -> dict:
    """Int8-aware distillation: continue from the selected float student through the
    simulated int8 deployed graph (`dlink.qat.Int8Sim`; ranges from ``cfg.qat_calib``
    training windows, re-measured after every epoch as the exporters would) for
    ``cfg.qat_epochs`` epochs at ``cfg.qat_lr``; select the epoch whose simulated int8
    logits are closest to its float ones on the validation windows (logit SQNR, what the
    export gate measures; the simulated BAcc is logged beside it); save the selected
    (float) weights over the student in ``out_dir``."""
    from dlink.qat import Int8Sim

    student = student.to(dev).eval()
    sim = Int8Sim(student, reduce_range=cfg.qat_reduce_range)
    rng = np.random.default_rng(cfg.seed)
    calib = idx["train"][rng.permutation(len(idx["train"]))[: cfg.qat_calib]]
    ceiling = None
    if cfg.qat_envelope_quantile is not None and hasattr(student, "set_envelope_ceiling"):
        ceiling = student.envelope_quantile(x[calib].to(dev), cfg.qat_envelope_quantile)
        student.set_envelope_ceiling(ceiling)

    def evaluate() -> dict[str, float]:
        # the exporters calibrate the weights they get: ranges follow the weights each epoch
        sim.calibrate(x[calib].to(dev))
        logits = predict_logits(sim, x[idx["val"]], device=dev)
        ref = predict_logits(sim.float_logits, x[idx["val"]], device=dev)
        m = compute_metrics(y[idx["val"]].numpy(), logits)
        sqnr = 10 * np.log10((ref ** 2).sum() / max(((logits - ref) ** 2).sum(), 1e-20))
        return {"bacc": m["bacc"], "auroc": m["auroc"], "sqnr_db": float(sqnr),
                "agreement": float((logits.argmax(1) == ref.argmax(1)).mean())}

    before = evaluate()
    objective = dist.wrap(_Int8Objective(student, sim, cfg.qat_match, cfg.label_smoothing, weight).to(dev))

    def loss_fn(batch: np.ndarray) -> dict[str, Tensor]:
        b = idx["train"][batch]
        return objective(x[b].to(dev), y[b].to(dev))

    phase_cfg = TrainConfig(epochs=cfg.qat_epochs, batch_size=cfg.batch_size, lr=cfg.qat_lr,
                            weight_decay=0.0, warmup_frac=0.0, clip_grad=cfg.clip_grad,
                            seed=cfg.seed + 1)
    result = train_loop(
        modules={"objective": objective}, param_groups=[{"params": list(student.parameters()),
                                                         "lr": cfg.qat_lr}],
        n_train=len(idx["train"]), cfg=phase_cfg, loss_fn=loss_fn, evaluate=evaluate,
        select="sqnr_db", on_best=lambda _e: save_student(student, out_dir, class_names=windows.class_names),
        out_dir=out_dir / "qat", description=f"int8-aware {cfg.student} ({cfg.method})",
    )
    return {"epochs": cfg.qat_epochs, "selected_epoch": result.best_epoch,
            "val_int8_sim_before": before,
            "val_int8_sim_selected": result.history[result.best_epoch - 1]["val"],
            "reduce_range": cfg.qat_reduce_range, "calibration_windows": len(calib),
            "envelope_ceiling": ceiling, "envelope_quantile": cfg.qat_envelope_quantile,
            "ranges": {k: [round(v, 5) for v in r] for k, r in sim.ranges.items()}}
