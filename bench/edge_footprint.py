"""Footprint of the on-board runtime: peak RSS, decision/model time, cold start.

Runs ``dlink-edge profile MODEL_DIR --json`` once per backend, each in a fresh process (as
a user would), and once more per backend on a copy of the folder whose manifest gains a
causal 0.5 Hz high-pass (``sosfilt``) in front of its preprocessing: the cost of a model
that needs `scipy.signal`. Writes ``results/NAME.json`` and ``results/NAME.md`` with the
command, and exits 1 if a goal is missed (issue 16):

- peak RSS (VmHWM of the profiling process) <= 60 MB with ONNX Runtime, <= 45 MB with LiteRT;
- decision time / model time <= 1.2 at p50 (timed alternately, window by window);
- cold start of ``dlink-edge run`` (process start -> first decision) <= 1 s (median).

Each measurement runs in two installs (``--installs``):

- ``checkout``: this interpreter, the development checkout (editable install). Its modules
  are byte-compiled first (``compileall``, what ``pip install`` does for an installed
  package): under ``PYTHONDONTWRITEBYTECODE=1`` (this sandbox sets it) every module would
  otherwise be compiled at every start, start-up time (and, measured on an earlier export,
  0.3 MB of peak RSS) that no installed runtime pays. Its interpreter also runs this
  sandbox's site hook (a ``.pth`` file that imports ``certifi``) and the editable install's
  import finder at every start.
- ``board``: a fresh venv holding only ``pip install 'REPO[edge]'`` (not editable, no torch,
  byte-compiled by pip; needs the package index), run from outside the checkout without
  ``PYTHONPATH``: a board-like install on this machine's CPU and Python.

    python bench/edge_footprint.py MODEL_DIR [--allow-failed-gate] [--out results]

Times are medians and ratios from one run on a shared machine; nothing here is a test.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GOALS = {"rss_mb": {"onnx": 60.0, "tflite": 45.0}, "decision_ratio": 1.2, "cold_start_s": 1.0}
HIGHPASS_HZ = 0.5


REPO = Path(__file__).resolve().parents[1]


INSTALLS = ("checkout", "board")
PACKAGES = ("numpy", "onnxruntime", "ai-edge-litert", "scipy", "edfio", "typer", "rich",
            "pydantic")  # what the runtime, its filters and its CLI import


def _env(install: str) -> dict:
    """The measured processes' environment: a board process must not see the checkout."""
    env = dict(os.environ)
    if install == "board":
        env.pop("PYTHONPATH", None)
    return env


def board_python(tmp: Path) -> str:
    """A fresh venv with only ``pip install 'REPO[edge]'`` in it (needs the package index);
    its interpreter."""
    venv = tmp / "board-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    out = subprocess.run([python, "-m", "pip", "install", "-q", f"{REPO}[edge]"],
                         capture_output=True, text=True, env=_env("board"))
    if out.returncode != 0:
        raise SystemExit(f"edge_footprint: the board install failed (use --installs checkout "
                         f"without a package index):\n{out.stderr}")
    return python


def versions(python: str, install: str) -> dict:
    """Versions of the packages the runtime and its CLI import, as ``python`` sees them
    (None: not installed)."""
    code = ("import importlib.metadata as m, json\n"
            "def v(p):\n try:\n  return m.version(p)\n except m.PackageNotFoundError:\n  return None\n"
            f"print(json.dumps({{p: v(p) for p in {PACKAGES!r}}}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=_env(install))
    if out.returncode != 0:
        raise SystemExit(f"edge_footprint: could not read package versions:\n{out.stderr}")
    return json.loads(out.stdout)


def profile(model_dir: Path, backend: str, args, python: str, cwd: Path, install: str) -> dict:
    """`dlink-edge profile --json` in a fresh interpreter; its report as a dict."""
    cmd = [python, "-m", "edge_runtime.cli", "profile", str(model_dir), "--backend",
           backend, "--threads", "1", "--windows", str(args.windows), "--cold-runs",
           str(args.cold_runs), "--json"]
    if args.allow_failed_gate:
        cmd.append("--allow-failed-gate")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_env(install))
    if out.returncode != 0:
        raise SystemExit(f"edge_footprint: {' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


FLOOR_CODE = {  # the least any Python program pays to run the artifact: no edge_runtime
    "onnx": ("import numpy as np, onnxruntime as ort\n"
             "o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1\n"
             "o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL\n"
             "s = ort.InferenceSession(PATH, sess_options=o, providers=['CPUExecutionProvider'])\n"
             "i = s.get_inputs()[0]\n"
             "s.run(None, {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], "
             "np.float32)})\n"),
    "tflite": ("import numpy as np\n"
               "try:\n    from ai_edge_litert.interpreter import Interpreter\n"
               "except ImportError:  # the older package, as edge_runtime.backends falls back\n"
               "    from tflite_runtime.interpreter import Interpreter\n"
               "it = Interpreter(model_path=PATH, num_threads=1); it.allocate_tensors()\n"
               "d = it.get_input_details()[0]\n"
               "it.set_tensor(d['index'], np.zeros(d['shape'], d['dtype'])); it.invoke()\n"),
}


def floor_rss_mb(artifact: Path, backend: str, python: str, cwd: Path, install: str) -> float:
    """VmHWM (MiB) of a fresh interpreter that imports numpy and the backend, loads the
    artifact with the backend's own API and runs one window: the part of the runtime's peak
    RSS that no Python runtime of this backend can avoid here."""
    code = (FLOOR_CODE[backend].replace("PATH", repr(str(artifact)))
            + "print([l.split()[1] for l in open('/proc/self/status') "
              "if l.startswith('VmHWM')][0])")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=cwd,
                         env=_env(install))
    if out.returncode != 0:
        raise SystemExit(f"edge_footprint: the floor measurement failed:\n{out.stderr}")
    return int(out.stdout.split()[-1]) / 1024


def with_highpass(model_dir: Path, dest: Path) -> Path:
    """Copy of the folder whose manifest filters first: 2nd-order Butterworth high-pass."""
    from scipy.signal import butter

    shutil.copytree(model_dir, dest)
    path = dest / "manifest.json"
    manifest = json.loads(path.read_text())
    spec = manifest["input"]
    sos = butter(2, HIGHPASS_HZ, btype="highpass", fs=spec["sfreq"], output="sos")
    spec["preprocessing"] = [{"op": "sosfilt", "sos": sos.tolist()}, *spec["preprocessing"]]
    path.write_text(json.dumps(manifest, indent=2))
    return dest


def summary(rep: dict) -> dict:
    cs = rep["cold_start"] or {}
    return {
        "artifact": rep["artifact"], "backend": rep["backend"],
        "preprocessing": None,  # filled in by the caller
        "peak_rss_mb": rep["peak_rss_mb"],
        "model_p50_ms": rep["latency_ms"]["p50"], "decision_p50_ms": rep["decision_ms"]["p50"],
        "decision_ratio": rep["decision_ratio"],
        "overhead_p50_ms": rep["decision_ms"]["p50"] - rep["latency_ms"]["p50"],
        "load_s": rep["load_s"], "first_inference_ms": rep["first_inference_ms"],
        "cold_start_s": cs.get("median_s"), "cold_start_runs_s": cs.get("runs_s"),
        "cold_start_cpu_s": cs.get("cpu_median_s"), "import_s": cs.get("import_s"),
        "import_cpu_s": cs.get("import_cpu_s"), "run_peak_rss_mb": cs.get("run_peak_rss_mb"),
        "n_windows": rep["n_windows"],
    }


def goals_of(row: dict) -> dict:
    return {
        "peak_rss": row["peak_rss_mb"] <= GOALS["rss_mb"][row["backend"]],
        "decision_ratio": row["decision_ratio"] <= GOALS["decision_ratio"],
        "cold_start": row["cold_start_s"] is not None
        and row["cold_start_s"] <= GOALS["cold_start_s"],
    }


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.0f} ms"


def write_results(report: dict, out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    js.write_text(json.dumps(report, indent=2))
    lines = [
        "# Edge runtime footprint\n",
        f"Written by `{report['command']}` on {report['machine']} (Python {report['python']}, "
        f"one thread; a shared 2-core machine, so times are medians and ratios from one "
        f"run).\n",
        "| install | backend | preprocessing | peak RSS (goal) | of which floor | decision / model p50 "
        "(goal 1.2) | model p50 | decision p50 | cold start (goal 1 s) | its CPU time | imports "
        "(CPU) | `run` RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        rss_goal = GOALS["rss_mb"][row["backend"]]
        lines.append(
            f"| {row['install']} | {row['backend']} | {row['preprocessing']} | {row['peak_rss_mb']:.1f} MB "
            f"({rss_goal:g}) | {row['floor_rss_mb']:.1f} MB | {row['decision_ratio']:.3f} | "
            f"{row['model_p50_ms']:.3f} ms | "
            f"{row['decision_p50_ms']:.3f} ms | {row['cold_start_s'] * 1e3:.0f} ms | "
            f"{_ms(row['cold_start_cpu_s'])} | {row['import_s'] * 1e3:.0f} ms "
            f"({_ms(row['import_cpu_s'])}) | {row['run_peak_rss_mb']:.1f} MB |")
    lines += [
        "",
        "Peak RSS is the VmHWM of the process `dlink-edge profile` starts to measure in "
        "(interpreter, numpy, one backend, the model, the stream buffers, the profiler's "
        "windows); `run` RSS is the VmHWM of a real `dlink-edge run --stdin` at its first "
        "decision, which also holds the CLI's typer (and the pydantic it needs) and rich. "
        "Floor: the VmHWM of a fresh interpreter that imports numpy and the backend, loads "
        "the same artifact with the backend's own API (no `edge_runtime`) and runs one "
        "window of zeros: what any Python program running this file with this backend pays "
        "here; peak RSS minus floor is what the runtime and the profiler add (modules, "
        "stream buffers, the profiler's windows). "
        "Cold start: process start of `dlink-edge run --stdin` to its first decision line "
        f"(median of {report['cold_runs']}), wall clock and the CPU time the process had "
        "used by then (what the wall time would be on an idle core: on this shared machine "
        "other jobs hold the cores and this benchmark runs under `nice`); imports: the "
        "same imports timed alone in a fresh process. The runtime's modules were "
        f"byte-compiled first ({report['bytecode']}), as an installed package is. "
        "Installs: `checkout` is the development checkout's interpreter (editable install; "
        "it also runs this sandbox's site hook, a `.pth` file that imports `certifi`, at "
        "every start); `board` a fresh venv holding only `pip install '.[edge]'`, run from "
        "outside the checkout without PYTHONPATH: board-like. Versions: "
        + "; ".join(f"{i}: " + ", ".join(f"{k} {v}" for k, v in ver.items())
                    for i, ver in report["versions"].items()) + ".",
        "",
        "Goals met (without the filter rows): "
        + ", ".join(f"{i} {ok}" for i, ok in report["goals_met"].items()) + ".",
        "",
    ]
    md.write_text("\n".join(lines))
    return js, md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--backends", nargs="+", default=["onnx", "tflite"])
    p.add_argument("--windows", type=int, default=400, help="windows timed per measure")
    p.add_argument("--cold-runs", type=int, default=5, help="fresh `run` processes timed")
    p.add_argument("--no-filter", action="store_true",
                   help="skip the rows with a causal high-pass added to the manifest")
    p.add_argument("--allow-failed-gate", action="store_true")
    p.add_argument("--installs", default="checkout,board",
                   help="comma-separated: checkout (this interpreter), board (a fresh venv "
                        "with only '.[edge]')")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--name", default="edge_footprint")
    args = p.parse_args(argv)
    installs = [i.strip() for i in args.installs.split(",") if i.strip()]
    if not installs or set(installs) - set(INSTALLS):
        p.error(f"--installs takes a comma-separated subset of {', '.join(INSTALLS)}, "
                f"got {args.installs!r}.")

    import edge_runtime  # its folder, wherever it is installed; this process is not measured

    compiled = compileall.compile_dir(Path(edge_runtime.__file__).parent, quiet=1)
    model_dir = args.model_dir.resolve()
    rows, installed = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folders = [("as exported", model_dir)]
        if not args.no_filter:
            folders.append((f"+ sosfilt {HIGHPASS_HZ:g} Hz high-pass",
                            with_highpass(model_dir, Path(tmp) / "highpass")))
        for install in installs:
            python, cwd = ((sys.executable, Path.cwd()) if install == "checkout"
                           else (board_python(Path(tmp)), Path(tmp)))
            installed[install] = versions(python, install)
            for label, folder in folders:
                for backend in args.backends:
                    rep = profile(folder, backend, args, python, cwd, install)
                    row = {"install": install, **summary(rep)}
                    row["preprocessing"] = label
                    row["floor_rss_mb"] = floor_rss_mb(folder / rep["artifact"], backend,
                                                       python, cwd, install)
                    rows.append(row)
                    print(f"{install:8s} {backend:6s} {label:28s} rss {row['peak_rss_mb']:.1f} "
                          f"MB  ratio {row['decision_ratio']:.3f}  cold "
                          f"{row['cold_start_s']:.3f} s", file=sys.stderr)
    main_rows = [r for r in rows if r["preprocessing"] == "as exported"]
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "model_dir": str(args.model_dir), "machine": f"{platform.machine()} {platform.system()}",
        "python": platform.python_version(), "cold_runs": args.cold_runs, "goals": GOALS,
        "bytecode": "compiled (compileall)" if compiled else "compileall failed",
        "versions": installed, "rows": rows,
        "goals_by_install": {i: {r["backend"]: goals_of(r) for r in main_rows
                                 if r["install"] == i} for i in installed},
    }
    report["goals_met"] = {i: all(all(g.values()) for g in by.values())
                           for i, by in report["goals_by_install"].items()}
    js, md = write_results(report, args.out, args.name)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0 if all(report["goals_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
