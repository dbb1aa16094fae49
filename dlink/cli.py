"""DLink: distil an EEG foundation model into a tiny int8 student.

Data root: --data-dir, else $DLINK_DATA_DIR, else ~/.cache/dlink/data.
Get data with `dlink data fetch eegmat`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dlink.console import run_app

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")  # None: a docstring's single line breaks reflow
data_app = typer.Typer(help="Find, fetch, inspect and verify EEG data sets.", no_args_is_help=True,
                       rich_markup_mode="markdown")
app.add_typer(data_app, name="data")
out = Console()

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data root (default: $DLINK_DATA_DIR, else ~/.cache/dlink/data).",
        show_default=False,
    ),
]
DataName = Annotated[str, typer.Argument(help="Data set name (see `dlink data list`) or .npz path.")]


@data_app.command("list")
def data_list(data_dir: DataDir = None) -> None:
    """List the data sets DLink knows and whether each is present in the data root."""
    from dlink.data import DATASETS, data_root

    root = data_root(data_dir)
    table = Table(title=f"data sets in {root}")
    for col in ("name", "folder", "present", "source"):
        table.add_column(col)
    for name, mod in DATASETS.items():
        present = (root / mod.FOLDER).is_dir()
        table.add_row(name, mod.FOLDER, "yes" if present else "no (dlink data fetch)", mod.URL)
    out.print(table)


@data_app.command("info")
def data_info(
    name: DataName,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Windows per class and subject, channels, sampling rate and duration."""
    from dlink.data import load_windows

    summary = load_windows(name, data_dir=data_dir).summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    out.print(
        f"[bold]{summary['name']}[/]: {summary['n_windows']} windows of "
        f"{summary['window_s']:g} s, {summary['n_subjects']} subjects, "
        f"{summary['n_channels']} channels at {summary['sfreq']:g} Hz, "
        f"{summary['total_hours']:.2f} h"
    )
    out.print("channels: " + " ".join(summary["ch_names"]))
    table = Table(title="windows per subject and class")
    table.add_column("subject")
    classes = list(summary["windows_per_class"])
    for c in classes:
        table.add_column(c, justify="right")
    for subject, row in summary["windows_per_subject"].items():
        table.add_row(subject, *(str(row[c]) for c in classes))
    table.add_row("[bold]total", *(f"[bold]{summary['windows_per_class'][c]}" for c in classes))
    out.print(table)


@data_app.command("verify")
def data_verify(name: DataName, data_dir: DataDir = None) -> None:
    """Check every file of a data set against its official sha256; exit 1 on any problem."""
    from dlink.data import DATASETS, data_root
    from dlink.data.checksums import verify_files
    from dlink.errors import ChecksumError, ConfigError

    if name not in DATASETS:
        raise ConfigError(f"no checksums on record for '{name}': known are {', '.join(DATASETS)}")
    report = verify_files(DATASETS[name].expected_checksums(data_root(data_dir)))
    out.print(
        f"{name}: {len(report['ok'])} files ok, {len(report['missing'])} missing, "
        f"{len(report['bad'])} with a wrong sha256"
    )
    if report["missing"] or report["bad"]:
        listed = ", ".join((report["bad"] + report["missing"])[:5])
        raise ChecksumError(f"{name} does not verify ({listed}...): run `dlink data fetch {name}`")


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="eegmat or eegmmidb.")],
    data_dir: DataDir = None,
    subjects: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated subjects (EEGMAT: 00..35; eegmmidb: 1..109). Default: all "
            "(EEGMAT) or 1 (eegmmidb)."
        ),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="Mirror of the data set's PhysioNet folder (default: physionet.org).")
    ] = None,
) -> None:
    """Download a data set's official files, verifying each file's sha256.

    Files already present and intact are skipped, so an interrupted fetch resumes; a file
    whose checksum does not match is deleted and the command fails.
    """
    from rich.progress import Progress

    from dlink.data import data_root
    from dlink.data.fetch import fetch

    root = data_root(data_dir)
    chosen = None if subjects is None else [s.strip() for s in subjects.split(",") if s.strip()]
    if chosen is not None and name == "eegmmidb":
        chosen = [int(s) for s in chosen]
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"fetching {name}", total=None)
        paths = fetch(
            name,
            root,
            base_url=base_url,
            subjects=chosen,
            on_file=lambda f: bar.update(task, description=f"fetching {f}", advance=1),
        )
    out.print(f"{name}: {len(paths)} files verified in {root}")


@app.command()
def pipeline(
    preset: Annotated[
        str, typer.Option(help="default (about 15 min on 2 cores) or smoke (about 2 min).")
    ] = "default",
    data: Annotated[str | None, typer.Option(help="Data set name or .npz path (default: eegmat).")] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Output folder; re-running skips unchanged stages.")
    ] = Path("runs/pipeline"),
    teacher_weights: Annotated[
        Path | None,
        typer.Option(
            help="Pre-trained backbone (official/braindecode .pth or our folder); default: the committed one."
        ),
    ] = None,
    data_dir: DataDir = None,
    record_failed_gate: Annotated[bool, typer.Option(
        "--record-failed-gate", help="Write int8 files that fail the parity gate (marked failed in "
        "the manifest, the report and metrics.json) and go on, instead of stopping.")] = False,
    conditioning: Annotated[str | None, typer.Option(
        help="Causal input filters applied in training and stated in the manifest for the board: "
        "none (default), mains50 or mains60 (high-pass 0.5 Hz, low-pass 45 Hz, mains notch).")
    ] = None,
) -> None:
    """The main job: fine-tune the teacher, distil the DLink student, export int8 ONNX/TFLite
    with a calibration set, profile on this machine against every board budget, stream the
    held-out recordings of every class through the edge runtime, and write OUT/report.html.

    Every stage is also its own command (dlink finetune, dlink distill, dlink-export,
    dlink-edge); a stage whose inputs and settings are unchanged is skipped.
    """
    from dlink.pipeline import Pipeline, resolve_config

    _threads()
    cfg = resolve_config(preset, data=data, teacher_weights=str(teacher_weights) if teacher_weights else None,
                         enforce_gate=False if record_failed_gate else None, conditioning=conditioning)
    metrics = Pipeline(cfg, out, data_dir).run()
    out_table = Table(title=f"pipeline ({preset}) -> {out}")
    out_table.add_column("what")
    out_table.add_column("value", justify="right")
    rows = {
        "student": metrics["model"].get("arch"),
        "parameters": metrics["model"].get("parameters"),
        "MACs": metrics["model"].get("macs"),
        "teacher test BAcc": metrics.get("teacher_bacc"),
        "student test BAcc (fp32)": metrics["bacc"].get("fp32"),
        **{f"  {k} BAcc": v for k, v in (metrics["bacc"].get("int8") or {}).items()},
        **{f"{k} bytes": v for k, v in metrics["size_bytes"].items()},
        **{f"latency / reference ({k})": v.get("ratio") for k, v in metrics.get("latency", {}).items()},
        **{f"{k} budget (estimate{' on ' + v['measured_on'] if v.get('measured_on') else ''})":
           "within" if v.get("within_limits") else "OVER" for k, v in metrics.get("budgets", {}).items()},
        **{f"{k} parity gate": ("passed" if g["passed"] else f"FAILED ({', '.join(g['failed_checks'])}; "
                                f"SQNR {g['sqnr_db']:.1f} dB, agreement {g['agreement']:.3f})")
           for k, g in metrics.get("parity_gate", {}).items()},
    }
    for key, value in rows.items():
        out_table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console = Console()
    console.print(out_table)
    console.print(f"report: {out / 'report.html'}")


Out = Annotated[Path, typer.Option("--out", help="Output folder (resumes if it holds a checkpoint).")]
Seed = Annotated[int, typer.Option(help="Random seed (data order, masks, initialisation).")]
Subjects = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated subject ids to keep (e.g. 00,01,02,33,34), applied before the "
        "split. Default: all."
    ),
]
BatchSize = "Windows per optimiser step, over all processes (torchrun splits it across them)."


@app.command()
def pretrain(
    data: Annotated[str, typer.Option(help="Data set name or .npz path.")] = "eegmat",
    preset: Annotated[str, typer.Option(help="Teacher size: base, small or tiny.")] = "small",
    out: Out = Path("runs/pretrain"),
    epochs: Annotated[int, typer.Option(help="Passes over the training windows.")] = 10,
    batch_size: Annotated[int, typer.Option(help=BatchSize)] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 5e-4,
    dropout: Annotated[float, typer.Option(help="Dropout of a teacher built from scratch.")] = 0.1,
    teacher_weights: Annotated[
        Path | None, typer.Option(help="Start from these weights (official .pth, braindecode or our folder).")
    ] = None,
    seed: Seed = 0,
    subjects: Subjects = None,
    data_dir: DataDir = None,
) -> None:
    """Self-supervised pre-training (masked-patch reconstruction) of the teacher.

    Trains on the training subjects of the default split; the test subjects are never
    used. Writes config.json + model.safetensors, pretrain.json, loss_curve.png; re-running
    with the same --out resumes from its checkpoint.
    """
    from dlink.pretrain import PretrainConfig
    from dlink.pretrain import pretrain as run

    _writable(out)
    _threads()
    cfg = PretrainConfig(
        preset=preset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, dropout=dropout
    )
    facts = run(_load(data, data_dir, subjects), out, cfg, init_weights=teacher_weights)
    out_msg = (
        f"pretrained {facts['model']} on {facts['train_hours']:.2f} h "
        f"({facts['train_windows']} windows): val MSE {facts['final_val_mse']:.4f} -> {out}"
    )
    from dlink import distributed

    if distributed.is_main():
        typer.echo(out_msg)


@app.command()
def finetune(
    teacher: Annotated[
        Path, typer.Option(help="Pre-trained backbone: our folder, official or braindecode .pth.")
    ] = None,
    data: Annotated[str, typer.Option(help="Data set name or .npz path.")] = "eegmat",
    out: Out = Path("runs/teacher"),
    epochs: Annotated[int, typer.Option(help="Passes over the training windows.")] = 8,
    batch_size: Annotated[int, typer.Option(help=BatchSize)] = 32,
    fold: Annotated[
        int | None, typer.Option(help="Use fold K of the 6-fold subject split instead of the default split.")
    ] = None,
    head: Annotated[str, typer.Option(
        help="Task head: channel (mean over patches per electrode, BatchNorm, Linear), mean "
        "(the release's pooled head) or layers (the channel head on a learned mix of every "
        "layer's tokens, the patch embedding's included; needs --frozen-layers 0).")] = "channel",
    frozen_layers: Annotated[int, typer.Option(
        help="Encoder layers frozen above the (always frozen) patch embedding; their output is "
        "computed once, so an epoch costs only the layers above.")] = 0,
    probe_epochs: Annotated[int, typer.Option(help="Head-only warm start epochs (0: none).")] = 15,
    from_scratch: Annotated[bool, typer.Option(
        "--from-scratch", help="Random initialisation instead of the backbone (same recipe).")] = False,
    seed: Seed = 0,
    subjects: Subjects = None,
    data_dir: DataDir = None,
) -> None:
    """Fine-tune the teacher on labelled windows, select on validation subjects.

    The recipe converges on a CPU (dlink/finetune.py says why each step): per-electrode head,
    frozen cached patch embedding, linear-probe warm start, small learning rates, dropout 0,
    and the two-class decision threshold tuned on the validation subjects. Default teacher:
    the committed self-pretrained CBraMod-small backbone. Writes config.json +
    model.safetensors + metrics.json (val and test) + history.json + loss_curve.png.
    """
    from dlink.finetune import FinetuneConfig
    from dlink.finetune import finetune as run

    _writable(out)  # before importing torch and reading data: a bad --out costs nothing
    _threads()
    windows, split = _windows_and_split(data, data_dir, fold, subjects)
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch_size, seed=seed, head=head,
                         frozen_layers=frozen_layers, probe_epochs=probe_epochs, from_scratch=from_scratch)
    metrics = run(teacher or default_backbone(), windows, split, out, cfg)
    _print_metrics("teacher", metrics)


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option(help="Fine-tuned teacher folder (dlink finetune).")],
    data: Annotated[str, typer.Option(help="Data set name or .npz path.")] = "eegmat",
    out: Out = Path("runs/student"),
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            "--student",
            help="Student preset (mic-xs, mic-s, mic-m) or baseline (eegnet, shallowconvnet, "
            "shallowconvnet-relu6: int8-deployable; baselines take --method no-kd or logit-kd).",
        ),
    ] = "mic-s",
    method: Annotated[
        str, typer.Option(help="dlink (Router + mimic + spectral), dlink-no-spectral, static-weights "
                          "(one learned layer mix for every window), layer-avg, fitnet, logit-kd or no-kd.")
    ] = "dlink",
    epochs: Annotated[int, typer.Option(help="Passes over the training windows.")] = 30,
    batch_size: Annotated[int, typer.Option(help=BatchSize)] = 32,
    fold: Annotated[int | None, typer.Option(help="Use fold K of the 6-fold subject split.")] = None,
    router_tau: Annotated[float, typer.Option(
        help="Router softmax temperature; below 1 sharpens the per-window layer mix.")] = 0.5,
    router_ce: Annotated[float | None, typer.Option(
        help="Weight of the router's target probe: a linear classifier of the routed teacher "
        "target whose CE rewards class-discriminative layer mixes (default: the method's, 0.5; "
        "methods with a router only).", min=0.0, show_default=False)] = None,
    router_mi: Annotated[float | None, typer.Option(
        help="Weight of the router's reward for input-conditioned routing: the mutual "
        "information between the window and the layer it is routed to (0 for one mix for "
        "every window; log L when windows commit to different layers) (default: the "
        "method's, 0.3; dlink and dlink-no-spectral only).", min=0.0, show_default=False)] = None,
    alpha: Annotated[float | None, typer.Option(
        help="Weight of the feature-mimic MSE (default: the method's, 1.0).", show_default=False)] = None,
    lambda_mag: Annotated[float | None, typer.Option(
        help="λ1: spectral magnitude term, L1 of log|rFFT| of each token decoded to its 1-s patch "
        "by the teacher's decoder, 1-45 Hz in 1 Hz bins (default: the method's, 0.5).",
        show_default=False)] = None,
    lambda_phase: Annotated[float | None, typer.Option(
        help="λ2: magnitude-weighted phase term (1 - cos Δφ) on the same 45 bins "
        "(default: the method's, 0.5).", show_default=False)] = None,
    kd_weight: Annotated[float | None, typer.Option(
        help="Weight of Hinton logit KD on the teacher's logits, added to any method "
        "(default: the method's, 1.0 for logit-kd, 0 for the others).", min=0.0,
        show_default=False)] = None,
    qat_epochs: Annotated[int, typer.Option(
        help="Final int8-aware phase: epochs through the simulated int8 deployed graph "
        "(dlink/qat.py); 0 skips it.")] = 0,
    qat_envelope_quantile: Annotated[float | None, typer.Option(
        help="Before the int8-aware phase, clamp EEG-MiC's band amplitudes at this quantile "
        "of theirs on the calibration windows, so their int8 step follows the bulk of the "
        "data and not one artifact (see bench/int8_noise_sources.py).", min=0.5, max=1.0,
        show_default=True)] = 0.9999,
    seed: Seed = 0,
    subjects: Subjects = None,
    data_dir: DataDir = None,
) -> None:
    """Distil a fine-tuned teacher into a small student (Router + mimic + spectral losses).

    The split must be the teacher's (same --data and --fold). Writes the student folder
    (config.json + model.safetensors) that dlink-export takes, metrics.json,
    router_weights.npz and loss_curve.png; re-running with the same --out resumes.
    """
    from dlink.distill import DistillConfig
    from dlink.distill import distill as run

    _writable(out)  # before importing torch and reading data: a bad --out costs nothing
    _threads()
    windows, split = _windows_and_split(data, data_dir, fold, subjects)
    cfg = DistillConfig(student=preset, method=method, epochs=epochs, batch_size=batch_size, seed=seed,
                        router_tau=router_tau, router_ce=router_ce, router_mi=router_mi, alpha=alpha,
                        lambda_mag=lambda_mag, lambda_phase=lambda_phase, kd_weight=kd_weight,
                        qat_epochs=qat_epochs,
                        qat_envelope_quantile=qat_envelope_quantile)
    metrics = run(teacher, windows, split, out, cfg)
    _print_metrics(f"{preset} ({method})", metrics)


def default_backbone() -> Path:
    """The committed self-pretrained CBraMod-small backbone."""
    return Path(__file__).parent / "pretrained" / "cbramod-small-eegmat"


def _load(data, data_dir, subjects: str | None):
    """The data set, restricted to ``subjects`` (comma-separated ids) when given; named data
    sets read only those subjects' recordings."""
    from dlink.data import DATASETS, load_windows
    from dlink.errors import ConfigError

    if subjects is None:
        return load_windows(data, data_dir=data_dir)
    wanted = [s.strip() for s in subjects.split(",") if s.strip()]
    if not wanted:
        raise ConfigError(f"--subjects {subjects!r} names no subject; give comma-separated ids "
                          "(e.g. 00,01,02) or leave it out for all.")
    if data == "eegmmidb":  # numbered 1..109 (S001 accepted)
        try:
            ids = [int(s.upper().removeprefix("S")) for s in wanted]
        except ValueError as exc:
            raise ConfigError(f"--subjects for eegmmidb are numbers 1..109, got {subjects!r}") from exc
        return load_windows(data, data_dir=data_dir, subjects=ids)
    if hasattr(DATASETS.get(data), "subject_ids"):
        known = DATASETS[data].subject_ids()
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise ConfigError(f"--subjects names {', '.join(unknown)}, not a subject of {data} "
                              f"({known[0]}..{known[-1]})")
        return load_windows(data, data_dir=data_dir, subjects=wanted)
    windows = load_windows(data, data_dir=data_dir)
    unknown = sorted(set(wanted) - set(windows.subjects))
    if unknown:
        raise ConfigError(f"--subjects names {', '.join(unknown)}, not in {data} "
                          f"(it has {', '.join(windows.subjects[:8])}...)")
    return windows.of_subjects(wanted)


FOLDS = 6  # --fold K picks fold K of this many subject-wise folds


def _windows_and_split(data, data_dir, fold, subjects=None):
    from dlink.data import kfold_subjects, split_subjects
    from dlink.errors import ConfigError

    if fold is not None and not 0 <= fold < FOLDS:  # before minutes of reading data
        raise ConfigError(f"--fold {fold} does not exist: the subject split has folds 0..{FOLDS - 1}")
    windows = _load(data, data_dir, subjects)
    if fold is None:
        return windows, split_subjects(windows)
    return windows, kfold_subjects(windows, k=FOLDS)[fold]


def _writable(out: Path) -> None:
    """Fail now, in one line, if ``out`` cannot be created or written (not after training).
    Under torchrun only rank 0 writes, so only rank 0 probes (RANK is set before any init)."""
    import os

    from dlink.atomic import check_writable

    if os.environ.get("RANK", "0") == "0":
        check_writable(out, "--out")


def _print_metrics(what: str, metrics: dict) -> None:
    from dlink import distributed

    if not distributed.is_main():
        return
    table = Table(title=f"{what}: selected epoch {metrics['selected_epoch']}")
    for col in ("part", "bacc", "auroc", "auprc", "kappa"):
        table.add_column(col)
    for part in ("val", "test"):
        m = metrics[part]
        table.add_row(part, *(f"{m[k]:.3f}" for k in ("bacc", "auroc", "auprc", "kappa")))
    out.print(table)


def _threads() -> None:
    """Per-process set-up of a training command: under torchrun the process group (gloo on
    CPU, nccl on GPU) and progress bars on rank 0 only; torch threads = cores / processes on
    this machine. ``DLINK_THREADS`` overrides the thread count (1 is fastest when several
    jobs share the cores)."""
    import os

    import torch

    from dlink import distributed
    from dlink.console import enable_progress

    distributed.init()
    enable_progress(distributed.is_main())  # one progress bar, rank 0's
    default = (os.cpu_count() or 1) // distributed.local_world_size()
    torch.set_num_threads(int(os.environ.get("DLINK_THREADS", max(1, default))))


@app.command("check")
def check_cmd(
    current: Annotated[Path, typer.Argument(
        help="Pipeline output folder (its metrics.json, else computed from its files) or a "
        "metrics.json.", show_default=False)],
    baseline: Annotated[Path, typer.Option(
        "--baseline", help="Committed metrics.json of a trusted run (same schema).",
        show_default=False)],
    max_size_growth: Annotated[float, typer.Option(
        help="Percent a model file may grow.")] = 10.0,
    max_latency_growth: Annotated[float, typer.Option(
        help="Percent the latency ratio (model p50 / reference p50) may grow.")] = 25.0,
    max_bacc_drop: Annotated[float | None, typer.Option(
        help="Test balanced accuracy it may lose (absolute, 0.02 = two points). Default: √2 x the "
        "half-width of the baseline's 95% bootstrap interval (subjects, then windows), "
        "else 0.02.", show_default=False)] = None,
    allow_failed_gate: Annotated[bool, typer.Option(
        "--allow-failed-gate", help="Pass a run whose int8 artifacts failed the exporter's "
        "parity gate (default: such a run fails).")] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the result as JSON here ('-' for stdout).",
        show_default=False)] = None,
) -> None:
    """CI regression gate: exit 0 if no metric regressed beyond its tolerance, 3 if one did."""
    import sys

    from dlink.gate import EXIT_REGRESSION, Tolerances, check, result_table

    result = check(current, baseline, Tolerances(max_size_growth, max_latency_growth, max_bacc_drop,
                                                 allow_failed_gate))
    Console(stderr=json_out is not None and str(json_out) == "-").print(result_table(result))
    if json_out is not None:
        text = json.dumps(result.to_dict(), indent=2)
        if str(json_out) == "-":
            print(text)
        else:
            json_out.write_text(text + "\n", encoding="utf-8")
    if not result.passed:
        print(f"dlink check: {result.summary()}", file=sys.stderr)
        raise typer.Exit(EXIT_REGRESSION)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
