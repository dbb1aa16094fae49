"""Does int8 pay off? fp32 vs int8 student and teacher vs student, in ONNX Runtime and LiteRT.

    python bench/int8_latency.py runs/pipeline-default --out results

Reads OUT/export (dlink-export's folder) and OUT/student (the saved student). In one
process, on one thread, batch 1, the runners take turns (interleaved rounds, so a noisy
machine slows all of them alike) and the median of ``--repeats`` runs is reported:

- student fp32 ONNX (``model.fp32.onnx``) and int8 ONNX (``model.int8.onnx``) in ONNX
  Runtime at the optimisation level the board runs;
- student fp32 TFLite (converted here from the student, as dlink-export does) and int8
  TFLite (``model.int8.tflite``) in LiteRT;
- the teacher CBraMod-base (4.9 M parameters, fp32; weights do not change its speed) in
  both runtimes.

Writes OUT/int8_latency.json and OUT/int8_latency.md (ratios and medians; the absolute
milliseconds are this machine's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _ort(path: Path):
    from export import onnx_export

    sess = onnx_export.session(path)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _litert(path: Path):
    """LiteRT as the edge runtime creates it: default delegates (XNNPACK), one thread."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(x):
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])

    return run


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


def measure(run_dir: Path, repeats: int) -> dict:
    import torch

    from dlink.student import load_student
    from export import tflite_export

    torch.set_num_threads(1)
    export = run_dir / "export"
    student = load_student(run_dir / "student")
    sample = np.random.default_rng(0).normal(0, 0.1, (1, student.signal.n_chans, student.signal.n_times))
    sample = np.clip(sample, -0.5, 0.5).astype(np.float32)  # model units after the ±50 µV clip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        deploy = student.deployable() if hasattr(student, "deployable") else student
        tflite_export.convert_fp32(deploy.eval(), torch.from_numpy(sample), tmp / "student.fp32.tflite")
        t_onnx, t_tfl = _teacher_files(tmp, sample)
        runners = {
            "ort/student fp32": _ort(export / "model.fp32.onnx"),
            "ort/student int8": _ort(export / "model.int8.onnx"),
            "ort/teacher fp32 (CBraMod-base)": _ort(t_onnx),
            "litert/student fp32": _litert(tmp / "student.fp32.tflite"),
            "litert/student int8": _litert(export / "model.int8.tflite"),
            "litert/teacher fp32 (CBraMod-base)": _litert(t_tfl),
        }
        times = {k: [] for k in runners}
        for run in runners.values():  # warm-up
            for _ in range(5):
                run(sample)
        for _ in range(repeats):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(sample)
                times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {}
    for rt in ("ort", "litert"):
        ratios[f"{rt}: int8 / fp32 student"] = med[f"{rt}/student int8"] / med[f"{rt}/student fp32"]
        ratios[f"{rt}: teacher fp32 / student int8"] = (med[f"{rt}/teacher fp32 (CBraMod-base)"]
                                                       / med[f"{rt}/student int8"])
    return {"median_ms": med, "ratios": ratios, "repeats": repeats, "threads": 1, "batch": 1,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores"}


def write(result: dict, out: Path, argv: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_latency.json").write_text(json.dumps(result, indent=1))
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in result["median_ms"].items())
    ratios = "\n".join(f"| {k} | {v:.2f} |" for k, v in result["ratios"].items())
    (out / "int8_latency.md").write_text(f"""# int8 vs fp32 latency, teacher vs student

Written by `python bench/int8_latency.py {' '.join(argv)}` on {time.strftime('%Y-%m-%d')}
({result['machine']}): one process, {result['threads']} thread, batch {result['batch']}, runners interleaved,
median of {result['repeats']} runs each. Absolute times are this machine's; compare ratios.

| runner | median ms per window |
|---|---|
{rows}

| ratio | value |
|---|---|
{ratios}

int8 pays off in a runtime where "int8 / fp32 student" is at most 1.
""")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a dlink pipeline output (with export/ and student/)")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    result = measure(args.run_dir, args.repeats)
    write(result, args.out, sys.argv[1:])
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
