"""dlink-export: turn a saved student into a verified board-ready model folder.

Writes model.fp32.onnx, model.int8.onnx, model.int8.tflite, model_data.h/.cc and
manifest.json into OUT, atomically: on any error nothing is left behind. Every int8
artifact must pass the parity gate on held-out windows (--data NAME uses its test
subjects), or the export fails with a table saying which check failed.

Example: dlink-export runs/mic-s --out models/mic-s --data eegmat
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dlink.console import run_app

app = typer.Typer(help=__doc__, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")  # None: a docstring's single line breaks reflow
out = Console()


@app.command()
def export(
    student_dir: Annotated[Path, typer.Argument(
        help="Student folder (config.json + model.safetensors) written by save_student.",
        show_default=False)],
    out_dir: Annotated[Path, typer.Option(
        "--out", "-o", help="Model folder to create.", show_default=False)],
    calib: Annotated[Path | None, typer.Option(
        "--calib", help="Calibration .npz (calibration.save_calibration_set).",
        show_default=False)] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Data set name or .npz: calibration from its training subjects, "
        "parity gate on its test subjects.", show_default=False)] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Data root (default: $DLINK_DATA_DIR, else ~/.cache/dlink/data).",
        show_default=False)] = None,
    holdout: Annotated[Path | None, typer.Option(
        "--holdout", help="Held-out windows (.npz in µV, dlink.data format) for the gate.",
        show_default=False)] = None,
    formats: Annotated[str, typer.Option(
        "--formats", help="Comma-separated: onnx, tflite, c.")] = "onnx,tflite,c",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    no_gate: Annotated[bool, typer.Option(
        "--no-gate", help="Write even if the parity gate fails (marked failed).")] = False,
    min_agreement: Annotated[float, typer.Option(help="Gate: argmax agreement.")] = 0.99,
    min_sqnr_db: Annotated[float, typer.Option(help="Gate: logit SQNR in dB.")] = 30.0,
    max_bacc_drop: Annotated[float, typer.Option(help="Gate: balanced-accuracy drop.")] = 0.01,
    n_calib: Annotated[int, typer.Option(help="Calibration windows drawn from --data.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the calibration draw.")] = 0,
    calib_clip: Annotated[float | None, typer.Option(
        "--calib-clip", help="Clip calibration windows at this percentile of |x| (e.g. 99.9) "
        "so artifacts do not set the int8 ranges; inputs beyond it saturate on the board.",
        show_default=False)] = None,
    hop: Annotated[int | None, typer.Option(
        help="Default hop in samples between decisions (default: window length).",
        show_default=False)] = None,
    tflite_io: Annotated[str, typer.Option(
        help="TFLite input/output tensors: int8 (scale and zero point in the model) or "
        "float32.")] = "int8",
    target: Annotated[str | None, typer.Option(
        help="CPU the int8 ONNX file is for: x86 (7-bit weights: x86 CPUs without VNNI "
        "saturate 8-bit ones) or arm (full 8 bits; Raspberry Pi, Jetson). Default: this "
        "machine's. Recorded in the manifest.", show_default=False)] = None,
    save_calib: Annotated[Path | None, typer.Option(
        "--save-calib", help="Also save the calibration set drawn from --data here (.npz).",
        show_default=False)] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Show the converters' own logs.")] = False,
) -> None:
    """Export STUDENT_DIR to int8 ONNX / TFLite / C with a parity-gated manifest."""
    from export.errors import GateError
    from export.parity import GateThresholds, gate_table
    from export.pipeline import export_student

    gate = GateThresholds(min_agreement, min_sqnr_db, max_bacc_drop, enforce=not no_gate)
    err = Console(stderr=True)
    try:
        manifest = export_student(
            student_dir, out_dir, calib=calib, data=data, data_dir=data_dir, holdout=holdout,
            formats=formats, force=force, gate=gate, n_calib=n_calib, seed=seed,
            calib_clip=calib_clip, hop=hop,
            tflite_io=tflite_io, target=target, save_calib=save_calib, progress=True, verbose=verbose,
        )
    except GateError as exc:
        err.print(gate_table(exc.results, gate))
        raise
    _summary(manifest, out_dir)


def _summary(manifest: dict, out_dir: Path) -> None:
    from rich.table import Table

    from export.parity import SQNR_CAP_DB

    table = Table(title=f"{out_dir} ({manifest['model']['arch']}, "
                  f"{manifest['model']['parameters']:,} parameters, "
                  f"{manifest['model']['macs']:,} MACs)")
    for col in ("artifact", "bytes", "agreement", "SQNR dB", "BAcc change", "float ops",
                "worst band NSR dB", "gate"):
        left = col in ("artifact", "float ops")
        table.add_column(col, justify="left" if left else "right", no_wrap=col == "artifact")
    for a in manifest["artifacts"]:
        g = a.get("gate")
        if g is None:
            table.add_row(a["path"], f"{a['bytes']:,}", "", "", "", "", "", "")
            continue
        sqnr = "identical" if g["sqnr_db"] >= SQNR_CAP_DB else f"{g['sqnr_db']:.1f}"
        table.add_row(
            a["path"], f"{a['bytes']:,}", f"{g['agreement']:.4f}", sqnr,
            f"{g['bacc_change']:+.3f}", str(len(g["float_ops"])), _worst_band(a),
            "[green]pass[/]" if g["passed"] else "[bold red]FAIL (not enforced)[/]",
        )
    out.print(table)
    if not manifest["parity"]["data"]["held_out"]:
        out.print("[yellow]note:[/] no held-out windows; parity measured on the calibration set.")


def _worst_band(artifact: dict) -> str:
    """The highest per-band noise-to-signal ratio of the int8 file's first representation."""
    bands = (artifact.get("spectral_fidelity") or {}).get("band_nsr_db")
    if not bands:
        return ""
    band = max(bands, key=bands.get)
    return f"{bands[band]:.1f} ({band})"


def main() -> None:
    """Entry point of the ``dlink-export`` script."""
    run_app(app)


if __name__ == "__main__":
    main()
