"""Does int8 pay off? fp32 vs int8 student and teacher vs student, in ONNX Runtime and LiteRT.

    python bench/int8_latency.py runs/pipeline-default --out results

Reads OUT/export (dlink-export's folder). One process, one thread, batch 1:

- **students**: per runtime, ``model.fp32.*`` and ``model.int8.*`` of the export timed
  window by window interleaved, in alternating order, median of ``--repeats`` runs after a
  warm-up: exactly the measurement `export.deployment.measure` makes at export (and records
  in the manifest's ``deployment`` section), so the two agree. ONNX Runtime at the
  optimisation level the board runs, LiteRT with its default delegates (XNNPACK), as
  ``dlink-edge`` opens them; LiteRT's int8 file is also timed with its builtin kernels only
  (no XNNPACK), for comparison;
- **teacher**: CBraMod-base (4.9 M parameters, fp32; weights do not change its speed) in
  both runtimes, timed on its own (median of ``--teacher-repeats`` runs): interleaving a
  12-ms model window by window with a 0.1-ms one evicts the small one's weights from the
  caches every time and times it cold (the previous version of this script did that, and
  its student medians were 3-5x the warm ones). The ratio teacher / int8 student divides
  two warm medians from this process.

With ``--filter-blocks 4,8,20,40,100`` it also converts the student (OUT/student) to the
TFLite nhwc graph with the filter bank over blocks of each size (`EEGMiC.deployable`'s
``filter_block``), quantises each with the export's calibration windows
(OUT/calibration.npz) and times every fp32 and int8 file interleaved in one loop: the
measurement behind `dlink.student.NHWC_FILTER_BLOCK`.

Writes OUT/int8_latency.json and OUT/int8_latency.md (ratios and medians; the absolute
milliseconds are this machine's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _teacher_files(folder: Path, sample: np.ndarray) -> tuple[Path, Path]:
    """CBraMod-base (randomly initialised, 2 classes) as fp32 ONNX and fp32 TFLite."""
    import torch

    from dlink.teacher import create_teacher
    from export import onnx_export, tflite_export

    class Windowed(torch.nn.Module):  # (1, C, T) µV/100 -> logits, patches cut inside
        def __init__(self, t):
            super().__init__()
            self.t = t

        def forward(self, x):
            return self.t(x.reshape(x.shape[0], x.shape[1], -1, 200))

    model = Windowed(create_teacher("base", n_outputs=2)).eval()
    x = torch.from_numpy(sample)
    onnx_path, tfl_path = folder / "teacher.onnx", folder / "teacher.tflite"
    onnx_export.export_fp32(model, x, onnx_path)
    # LiteRT's RFFT2D needs a power-of-two length and CBraMod's patch spectrum is a 200-point
    # rFFT: for LiteRT the |rFFT| is computed as the DFT it is (two matmuls, ~2% of the MACs)
    _dft_spectrum(model.t.patch_embedding)
    tflite_export.convert_fp32(model, x, tfl_path)
    return onnx_path, tfl_path


def _dft_spectrum(embedding) -> None:
    """Make ``embedding`` (a CBraMod PatchEmbedding) compute its |rFFT| / P with DFT matrices."""
    import types

    import torch

    P = embedding.spectral_proj[0].in_features * 2 - 2
    k = torch.arange(P // 2 + 1)[:, None] * torch.arange(P)[None, :] * (2 * torch.pi / P)
    cos, sin = torch.cos(k).T.contiguous() / P, torch.sin(k).T.contiguous() / P  # (P, F)
    original = type(embedding).forward

    def forward(self, x, mask=None):
        real, imag = x @ cos, x @ sin
        spectrum = torch.sqrt(real * real + imag * imag)  # (B, C, N, F) = |rfft(x)| / P
        conv = self.proj_in(x.reshape(x.shape[0], 1, -1, x.shape[-1]))
        B, C, N, _ = x.shape
        conv = conv.permute(0, 2, 1, 3).reshape(B, C, N, self.d_model)
        tokens = conv + self.spectral_proj(spectrum)
        pos = self.positional_encoding(tokens.permute(0, 3, 1, 2))
        return tokens + pos.permute(0, 2, 3, 1)

    assert original is not None
    embedding.forward = types.MethodType(forward, embedding)


def measure(run_dir: Path, repeats: int, teacher_repeats: int) -> dict:
    import torch

    from export import deployment

    torch.set_num_threads(1)
    export = run_dir / "export"
    spec = json.loads((export / "manifest.json").read_text())["input"]
    sample = np.random.default_rng(0).normal(0, 0.1, (1, len(spec["ch_names"]), spec["n_times"]))
    sample = np.clip(sample, -0.5, 0.5).astype(np.float32)  # model units after the ±50 µV clip
    files = {rt: {p: export / f"model.{p}.{ext}" for p in ("fp32", "int8")}
             for rt, ext in (("onnx", "onnx"), ("tflite", "tflite"))}
    students = deployment.measure(files, sample, repeats=repeats)["runtimes"]
    med = {f"{rt}/student {p}": v for rt, r in (("ort", students["onnx"]), ("litert", students["tflite"]))
           for p, v in r["median_ms"].items()}
    builtin = deployment._tflite_runner(files["tflite"]["int8"], sample, delegates=False)
    med["litert/student int8, builtin kernels (no XNNPACK)"] = deployment._median_ms(
        {"builtin": builtin}, repeats)["builtin"]
    with tempfile.TemporaryDirectory() as tmp:
        t_onnx, t_tfl = _teacher_files(Path(tmp), sample)
        teachers = {"ort": deployment._onnx_runner(t_onnx, sample),
                    "litert": deployment._tflite_runner(t_tfl, sample)}
        for rt, run in teachers.items():  # each on its own (see the module docstring)
            med[f"{rt}/teacher fp32 (CBraMod-base)"] = deployment._median_ms({rt: run}, teacher_repeats)[rt]
    ratios = {}
    for rt in ("ort", "litert"):
        ratios[f"{rt}: int8 / fp32 student"] = med[f"{rt}/student int8"] / med[f"{rt}/student fp32"]
        for p in ("int8", "fp32"):
            ratios[f"{rt}: teacher fp32 / student {p}"] = (med[f"{rt}/teacher fp32 (CBraMod-base)"]
                                                           / med[f"{rt}/student {p}"])
    ratios["litert: int8 builtin / fp32 student"] = (
        med["litert/student int8, builtin kernels (no XNNPACK)"] / med["litert/student fp32"])
    return {"median_ms": med, "ratios": ratios, "repeats": repeats,
            "teacher_repeats": teacher_repeats, "threads": 1, "batch": 1,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
            "int8_dot_product": deployment.cpu_description()["int8_dot_product"]}


def filter_blocks(run_dir: Path, blocks: list[int], repeats: int) -> dict:
    """LiteRT median ms of the student's nhwc graph per filter-bank block size and precision,
    all files timed interleaved in one loop; and whether every int8 file gives the same
    outputs (they should: the extra taps are zeros)."""
    import torch

    from calibration.dataset import load_calibration_set
    from dlink.student import NHWC_FILTER_BLOCK, load_student
    from export import deployment, tflite_export

    torch.set_num_threads(1)
    model = load_student(run_dir / "student").eval()
    calib = load_calibration_set(run_dir / "calibration.npz")
    x = calib.X[:1]
    runners, outputs, phases = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for b in blocks:
            graph = model.deployable(layout="nhwc", filter_block=b)
            phases[b] = graph.geometry["filter_phases"]
            stride = graph.geometry["filter_stride"][1]
            fp32, int8 = Path(tmp) / f"fp32-{b}.tflite", Path(tmp) / f"int8-{b}.tflite"
            tflite_export.convert_fp32(graph, torch.from_numpy(x), fp32)
            tflite_export.quantize_int8(fp32, int8, calib)
            runners[(b, "fp32")] = deployment._tflite_runner(fp32, x)
            runners[(b, "int8")] = deployment._tflite_runner(int8, x)
            outputs[b] = tflite_export.run(int8, calib.X[:64])
        med = deployment._median_ms(runners, repeats)
    same = all(np.array_equal(outputs[b], outputs[blocks[0]]) for b in blocks)
    return {"blocks": {str(b): {"phases": phases[b], "block": phases[b] * stride,
                                "fp32_ms": med[(b, "fp32")],
                                "int8_ms": med[(b, "int8")]} for b in blocks},
            "int8_outputs_identical": same, "chosen": NHWC_FILTER_BLOCK, "repeats": repeats}


def write(result: dict, out: Path, argv: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_latency.json").write_text(json.dumps(result, indent=1))
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in result["median_ms"].items())
    ratios = "\n".join(f"| {k} | {v:.2f} |" for k, v in result["ratios"].items())
    (out / "int8_latency.md").write_text(f"""# int8 vs fp32 latency, teacher vs student

Written by `python bench/int8_latency.py {' '.join(argv)}` on {time.strftime('%Y-%m-%d')}
({result['machine']}; int8 dot-product instructions: {', '.join(result['int8_dot_product']) or 'none'}):
one process, {result['threads']} thread, batch {result['batch']}. Students: fp32 and int8 file of a runtime
interleaved window by window, alternating order, median of {result['repeats']} runs (the export's own
`deployment` measurement); teacher: timed on its own, median of {result['teacher_repeats']} runs.
Absolute times are this machine's; compare ratios.

| runner | median ms per window |
|---|---|
{rows}

| ratio | value |
|---|---|
{ratios}

int8 pays off in a runtime where "int8 / fp32 student" is at most 1.
{_blocks_table(result.get("filter_blocks"))}""")


def _blocks_table(fb: dict | None) -> str:
    if not fb:
        return ""
    rows = "\n".join(f"| {b} | {v['block']} | {v['phases']} | {v['fp32_ms']:.3f} | {v['int8_ms']:.3f} |"
                     for b, v in fb["blocks"].items())
    return f"""
## Filter-bank block size of the TFLite (nhwc) graph

The student's filter bank runs as a stride-1 conv over blocks of p strides with p output
phases, p the most that fit in the requested block and divide the filter outputs
(`EEGMiC.deployable`); LiteRT (XNNPACK), one thread, every file below timed interleaved in
one loop, median of {fb['repeats']} runs (ten files take turns in the caches, so compare
times within this table, not with the one above). int8 files give identical outputs at
every block size: {fb['int8_outputs_identical']}. The exporter asks for blocks of up to
{fb['chosen']['fp32']} samples for the fp32 file and {fb['chosen']['int8']} for the int8 file
(`dlink.student.NHWC_FILTER_BLOCK`).

| requested block (samples) | block | phases | fp32 ms | int8 ms |
|---|---|---|---|---|
{rows}
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a dlink pipeline output (with export/)")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--repeats", type=int, default=200, help="runs per student file")
    p.add_argument("--teacher-repeats", type=int, default=50, help="runs per teacher")
    p.add_argument("--filter-blocks", default="",
                   help="comma-separated filter-bank block sizes (samples) to time, e.g. 4,8,20,40")
    args = p.parse_args()
    result = measure(args.run_dir, args.repeats, args.teacher_repeats)
    if args.filter_blocks:
        blocks = [int(b) for b in args.filter_blocks.split(",")]
        result["filter_blocks"] = filter_blocks(args.run_dir, blocks, args.repeats)
    write(result, args.out, sys.argv[1:])
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
