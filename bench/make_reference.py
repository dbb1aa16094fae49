"""Build the committed latency reference model in ``dlink/reference/`` (package data).

    python bench/make_reference.py [--out dlink/reference] [--data eegmat] [--force]

Why: latency in ms depends on the machine and on whatever else it runs, so a CI gate on
milliseconds flickers. `dlink-edge profile --reference dlink/reference` times this fixed
model window by window interleaved with the model under test (same backend, precision and
threads) and reports ``latency_ratio`` = model p50 / reference p50, which `dlink check`
compares with a committed baseline.

What: the ``mic-xs`` student (`dlink.student.build_student`), seeded and untrained, for
EEGMAT windows (19 channels x 1000 samples at 200 Hz, two classes). Its weights do not
matter, only that its compute never changes; it is exported once with `export_student`
(int8 calibration on the data set's training subjects, parity gate measured on its test
subjects but not enforced) as fp32 ONNX, int8 ONNX and int8 TFLite. No C array: the
folder stays small and holds only ``manifest.json`` and the three files it lists, so
`edge_runtime` verifies it by sha256 like any model folder.

Re-running writes a new folder (new file hashes): do it only when the backends change in a
way that makes old and new baselines incomparable, and commit a new baseline with it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "dlink" / "reference"
ARCH = "mic-xs"
SEED = 0
FORMATS = ("onnx", "tflite")
NAME = "reference-mic-xs"  # manifest model.name (the student folder's name)


def build(out: Path, data: str, data_dir: str | None, force: bool) -> dict:
    """Build, save and export the reference; returns the manifest written to ``out``."""
    import torch

    from dlink.data import load_windows
    from dlink.student import build_student, save_student
    from export import GateThresholds, export_student

    torch.set_num_threads(1)
    windows = load_windows(data, data_dir=data_dir)
    torch.manual_seed(SEED)
    model = build_student(ARCH, windows.signal, len(windows.class_names),
                          class_names=windows.class_names).eval()
    with tempfile.TemporaryDirectory() as tmp:
        student_dir = save_student(model, Path(tmp) / NAME)
        return export_student(student_dir, out, data=data, data_dir=data_dir, formats=FORMATS,
                              force=force, gate=GateThresholds(enforce=False), seed=SEED,
                              progress=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write")
    parser.add_argument("--data", default="eegmat", help="data set for calibration and parity")
    parser.add_argument("--data-dir", default=None, help="data root (default $DLINK_DATA_DIR)")
    parser.add_argument("--force", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    from dlink.errors import DLinkError

    try:
        manifest = build(args.out, args.data, args.data_dir, args.force)
    except DLinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    files = ", ".join(f"{a['path']} ({a['bytes']:,} B)" for a in manifest["artifacts"])
    m = manifest["model"]
    print(f"{args.out}: {m['arch']} seed {SEED}, {m['parameters']:,} parameters, "
          f"{m['macs']:,} MACs; {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
