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

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Find, fetch, inspect and verify EEG data sets.", no_args_is_help=True)
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
    data: Annotated[str, typer.Option(help="Data set name or .npz path.")] = "eegmat",
    data_dir: DataDir = None,
) -> None:
    """The main job. For now: load the data set and summarise it with its default split."""
    from dlink.data import load_windows, split_subjects

    windows = load_windows(data, data_dir=data_dir)
    summary = windows.summary()
    split = split_subjects(windows)
    out.print(
        f"[bold]{summary['name']}[/]: {summary['n_windows']} windows "
        f"({', '.join(f'{k} {v}' for k, v in summary['windows_per_class'].items())}), "
        f"{summary['n_channels']} channels at {summary['sfreq']:g} Hz, "
        f"{summary['window_s']:g} s windows, {summary['n_subjects']} subjects"
    )
    for part, subjects in split.to_dict().items():
        n = len(windows.of_subjects(subjects))
        out.print(f"  {part:5s}: {len(subjects):2d} subjects, {n:4d} windows ({', '.join(subjects)})")


Out = Annotated[Path, typer.Option("--out", help="Output folder (resumes if it holds a checkpoint).")]
Seed = Annotated[int, typer.Option(help="Random seed (data order, masks, initialisation).")]


@app.command()
def pretrain(
    data: Annotated[str, typer.Option(help="Data set name or .npz path.")] = "eegmat",
    preset: Annotated[str, typer.Option(help="Teacher size: base, small or tiny.")] = "small",
    out: Out = Path("runs/pretrain"),
    epochs: Annotated[int, typer.Option(help="Passes over the training windows.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Windows per optimiser step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 5e-4,
    teacher_weights: Annotated[
        Path | None, typer.Option(help="Start from these weights (official .pth, braindecode or our folder).")
    ] = None,
    seed: Seed = 0,
    data_dir: DataDir = None,
) -> None:
    """Self-supervised pre-training (masked-patch reconstruction) of the teacher.

    Trains on the training subjects of the default split; the test subjects are never
    used. Writes config.json + model.safetensors, pretrain.json, loss_curve.png; re-running
    with the same --out resumes from its checkpoint.
    """
    from dlink.data import load_windows
    from dlink.pretrain import PretrainConfig
    from dlink.pretrain import pretrain as run

    _threads()
    cfg = PretrainConfig(preset=preset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    facts = run(load_windows(data, data_dir=data_dir), out, cfg, init_weights=teacher_weights)
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
    epochs: Annotated[int, typer.Option(help="Passes over the training windows.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Windows per optimiser step.")] = 32,
    fold: Annotated[
        int | None, typer.Option(help="Use fold K of the 6-fold subject split instead of the default split.")
    ] = None,
    seed: Seed = 0,
    data_dir: DataDir = None,
) -> None:
    """Fine-tune the teacher on labelled windows (CBraMod's recipe), select on validation.

    Default teacher: the committed self-pretrained CBraMod-small backbone. Writes
    config.json + model.safetensors + metrics.json (val and test) + loss_curve.png.
    """
    from dlink.finetune import FinetuneConfig
    from dlink.finetune import finetune as run

    _threads()
    windows, split = _windows_and_split(data, data_dir, fold)
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch_size, seed=seed)
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
            help="Student preset (mic-xs, mic-s, mic-m) or baseline (eegnet, shallowconvnet).",
        ),
    ] = "mic-s",
    method: Annotated[
        str, typer.Option(help="dlink, dlink-no-spectral, layer-avg, fitnet, logit-kd or no-kd.")
    ] = "dlink",
    epochs: Annotated[int, typer.Option(help="Passes over the training windows.")] = 30,
    fold: Annotated[int | None, typer.Option(help="Use fold K of the 6-fold subject split.")] = None,
    seed: Seed = 0,
    data_dir: DataDir = None,
) -> None:
    """Distil a fine-tuned teacher into a small student (Router + mimic + spectral losses).

    The split must be the teacher's (same --data and --fold). Writes the student folder
    (config.json + model.safetensors) that dlink-export takes, metrics.json,
    router_weights.npz and loss_curve.png; re-running with the same --out resumes.
    """
    from dlink.distill import DistillConfig
    from dlink.distill import distill as run

    _threads()
    windows, split = _windows_and_split(data, data_dir, fold)
    cfg = DistillConfig(student=preset, method=method, epochs=epochs, seed=seed)
    metrics = run(teacher, windows, split, out, cfg)
    _print_metrics(f"{preset} ({method})", metrics)


def default_backbone() -> Path:
    """The committed self-pretrained CBraMod-small backbone."""
    return Path(__file__).parent / "pretrained" / "cbramod-small-eegmat"


def _windows_and_split(data, data_dir, fold):
    from dlink.data import kfold_subjects, load_windows, split_subjects

    windows = load_windows(data, data_dir=data_dir)
    split = split_subjects(windows) if fold is None else kfold_subjects(windows)[fold]
    return windows, split


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
    """Per-process set-up of a training command: torch threads and, under torchrun, the
    process group (gloo on CPU, nccl on GPU). ``DLINK_THREADS`` overrides the thread count
    (1 is fastest when several jobs share the cores)."""
    import os

    import torch

    from dlink import distributed

    distributed.init()
    default = (os.cpu_count() or 1) // distributed.world_size()
    torch.set_num_threads(int(os.environ.get("DLINK_THREADS", max(1, default))))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
