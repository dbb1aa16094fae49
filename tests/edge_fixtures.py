"""Small real model folders for the edge-runtime tests.

Until `dlink-export` writes real folders, `build_model_dir` makes one the same way: a tiny
conv net taking (1, 19, 1000) -> (1, 2) is exported with ``torch.onnx.export(dynamo=True)``
(fp32, dynamic batch), quantised with ONNX Runtime (int8 QDQ), converted with
``litert_torch`` (fp32 TFLite, batch 1) and quantised with ``ai_edge_quantizer``
(``static_wi8_ai8``: int8 weights, activations and input/output), and described by a
``manifest.json`` following ``docs/manifest.md`` with real sha256 values.

Building takes ~20 s (torch + LiteRT conversion), so `cached_model_dir` keeps one folder per
version of this file under ``$DLINK_EDGE_FIXTURE_CACHE`` (default
``/tmp/dlink-edge-fixtures``), re-verified on every use. Tests copy it before tampering.
Only the tests import torch; the runtime never does.

What ships is tested on `shipped_dir` (fixture ``shipped``): the **default student preset**
(`dlink.distill.DistillConfig()`'s student, input clip and scaling) trained briefly on real
EEGMAT (six subjects, labels only) and exported by the real ``dlink-export`` command
(calibration on the training subjects, parity gate on the test subject; ``--no-gate`` so a
short-trained model is still written, marked as it scored). It is cached like the fixture
above, keyed also by the training and export code, and takes ~1-2 min to build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CH_NAMES = ("Fp1", "Fp2", "F3", "F4", "F7", "F8", "T3", "T4", "C3", "C4", "T5", "T6",
            "P3", "P4", "O1", "O2", "Fz", "Cz", "Pz")
SFREQ = 200.0
N_TIMES = 1000
CLASS_NAMES = ("rest", "task")
# Found by the project's data-root rule ($DLINK_DATA_DIR, which tests/conftest.py sets).
EEG_FILE = Path(os.environ.get("DLINK_DATA_DIR") or Path.home() / ".cache" / "dlink" / "data") \
    / "eegmat" / "Subject00_1.edf"


def default_preprocessing() -> list[dict]:
    """0.5 Hz causal high-pass (2nd-order Butterworth), window demean, µV/100."""
    from scipy.signal import butter

    sos = butter(2, 0.5, btype="highpass", fs=SFREQ, output="sos")
    return [{"op": "sosfilt", "sos": sos.tolist()}, {"op": "demean"},
            {"op": "scale", "factor": 0.01}]


def _tiny_net():
    import torch

    class TinyNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv1d(len(CH_NAMES), 8, 25, stride=5)
            self.conv2 = torch.nn.Conv1d(8, 8, 9, stride=4)
            self.head = torch.nn.Linear(8, len(CLASS_NAMES))

        def forward(self, x):  # (B, C, T)
            x = torch.relu(self.conv1(x))  # (B, 8, 196)
            x = torch.relu(self.conv2(x))  # (B, 8, 47)
            return self.head(x.mean(-1))  # (B, K)

    torch.manual_seed(0)
    net = TinyNet().eval()
    # Random weights score every window almost alike. Make the logits antisymmetric,
    # (-d/2, d/2), with d varying by ~2 across real EEG windows and centred so that about
    # half go to each class: label agreement tests then mean something.
    with torch.no_grad():
        x = torch.from_numpy(_real_windows())
        w = net.head.weight[1] - net.head.weight[0]
        net.head.weight.copy_(torch.stack([-w, w]) / 2)
        net.head.bias.zero_()
        net.head.weight *= 2.0 / net(x).diff(dim=1).std()
        d = net(x).diff(dim=1).median()
        net.head.bias.copy_(torch.stack([d, -d]) / 2)
    return net


def _real_windows() -> np.ndarray:
    """(B, C, T) float32 windows of the test recording, preprocessed as the manifest says."""
    from scipy.signal import sosfilt

    x = read_eeg()
    ops = default_preprocessing()
    x = sosfilt(np.asarray(ops[0]["sos"]), x, axis=1)
    n = x.shape[1] // N_TIMES
    w = x[:, : n * N_TIMES].reshape(len(CH_NAMES), n, N_TIMES).transpose(1, 0, 2)
    w = (w - w.mean(-1, keepdims=True)) * ops[2]["factor"]
    return w.astype(np.float32)


def _calibration_windows() -> list[np.ndarray]:
    return [w[None] for w in _real_windows()]  # 36 windows of 5 s


def _export_onnx(net, dest: Path) -> tuple[Path, Path]:
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    x = torch.zeros(1, len(CH_NAMES), N_TIMES)
    fp32 = dest / "model.fp32.onnx"
    torch.onnx.export(net, (x,), str(fp32), dynamo=True, external_data=False,
                      input_names=["eeg"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", max=1024)}})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter({"eeg": w} for w in _calibration_windows())

        def get_next(self):
            return next(self._it, None)

    int8 = dest / "model.int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ)
    return fp32, int8


def _export_tflite(net, dest: Path) -> tuple[Path, Path]:
    import litert_torch
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    fp32 = dest / "model.fp32.tflite"
    litert_torch.convert(net, (torch.zeros(1, len(CH_NAMES), N_TIMES),)).export(str(fp32))
    q = quantizer.Quantizer(str(fp32))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    sig = Interpreter(str(fp32)).get_signature_list()
    key = next(iter(sig))
    arg = sig[key]["inputs"][0]
    # Quantizer.calibrate merges windows with a moving average of each tensor's min/max,
    # which understates the range of small tensors (pooled features, logits) and clips
    # them. Calibrate window by window and keep the true min/max instead.
    result: dict = {}
    for w in _calibration_windows():
        for name, qsv in q.calibrate({key: [{arg: w}]}).items():
            old = result.get(name)
            result[name] = qsv if old is None else {
                "min": np.minimum(old["min"], qsv["min"]),
                "max": np.maximum(old["max"], qsv["max"])}
    int8 = dest / "model.int8.tflite"
    q.quantize(result).export_model(str(int8), overwrite=True)
    return fp32, int8


def _artifact(path: Path, fmt: str, precision: str, **extra) -> dict:
    data = path.read_bytes()
    return {"path": path.name, "format": fmt, "precision": precision, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), **extra}


def write_manifest(dest: Path, artifacts: list[dict], *, preprocessing: list[dict] | None = None,
                   hop: int = N_TIMES) -> Path:
    """manifest.json for the files in ``dest`` (artifacts as `_artifact` dicts)."""
    gate = {"passed": True, "agreement": 1.0, "sqnr_db": 30.0, "max_abs_err": 0.01,
            "bacc_change": 0.0, "float_ops": []}
    manifest = {
        "schema": "dlink-manifest/1",
        "model": {"name": "tiny-fixture", "arch": "tiny-fixture"},
        "input": {"name": "eeg", "layout": "NCT", "dtype": "float32",
                  "ch_names": list(CH_NAMES), "sfreq": SFREQ, "n_times": N_TIMES, "hop": hop,
                  "units": "uV",
                  "preprocessing": default_preprocessing() if preprocessing is None
                  else preprocessing},
        "output": {"name": "logits", "kind": "logits", "class_names": list(CLASS_NAMES),
                   "meaning": "unnormalised class scores; softmax gives probabilities"},
        "artifacts": [dict(a, gate=gate) if a["precision"] == "int8" else a
                      for a in artifacts],
        "calibration": {"sha256": "0" * 64, "n_windows": 36, "subjects": ["Subject00"]},
        "toolchain": {"fixture": "tests/edge_fixtures.py"},
    }
    path = dest / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def build_model_dir(dest: Path) -> Path:
    """Export the tiny net into ``dest`` (created) with all four artifacts + manifest."""
    dest.mkdir(parents=True, exist_ok=True)
    net = _tiny_net()
    onnx32, onnx8 = _export_onnx(net, dest)
    tfl32, tfl8 = _export_tflite(net, dest)
    arts = [_artifact(onnx32, "onnx", "fp32"), _artifact(onnx8, "onnx", "int8"),
            _artifact(tfl32, "tflite", "fp32", io={"dtype": "float32"}),
            _artifact(tfl8, "tflite", "int8", io={"dtype": "int8"})]
    write_manifest(dest, arts)
    return dest


def cached_model_dir() -> Path:
    """A verified fixture folder, built once per version of this file."""
    from edge_runtime.errors import EdgeError
    from edge_runtime.manifest import load_manifest

    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("DLINK_EDGE_FIXTURE_CACHE", "/tmp/dlink-edge-fixtures"))
    folder = root / key
    if folder.is_dir():
        try:
            load_manifest(folder)
            return folder
        except EdgeError:
            shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{key}.tmp"))
    build_model_dir(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():  # folders of earlier versions of this file
        if old.is_dir() and len(old.name) == 16 and old.name != key:
            shutil.rmtree(old, ignore_errors=True)
    return folder


SHIPPED_SUBJECTS = ("00", "01", "02", "03", "31", "35")  # split: train 00-03, val 31, test 35
SHIPPED_EPOCHS = 3


def build_shipped_dir(dest: Path) -> Path:
    """``dest/student`` (the default student preset, briefly trained), ``dest/data.npz`` (its
    six subjects) and ``dest/export`` (what ``dlink-export`` writes for it)."""
    import subprocess
    import sys

    import torch

    from dlink.data import load_windows, split_subjects
    from dlink.distill import DistillConfig, distill

    torch.set_num_threads(1)
    windows = load_windows("eegmat", subjects=list(SHIPPED_SUBJECTS))
    split = split_subjects(windows)
    cfg = DistillConfig(method="no-kd", epochs=SHIPPED_EPOCHS)  # the default student preset
    distill(None, windows, split, dest / "student", cfg)
    np.savez(dest / "data.npz", X=windows.X, y=windows.y, subject=windows.subject,
             sfreq=windows.sfreq, ch_names=np.array(windows.ch_names),
             class_names=np.array(windows.class_names))
    proc = subprocess.run(
        [sys.executable, "-m", "export.cli", str(dest / "student"), "--out", str(dest / "export"),
         "--data", str(dest / "data.npz"), "--n-calib", "64", "--no-gate"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"dlink-export failed: {proc.stderr[-3000:]}"
    return dest


def _code_key(*paths: str) -> str:
    """sha256 over this file and the given repository files/folders' Python sources."""
    repo = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(Path(__file__).read_bytes())
    for rel in paths:
        target = repo / rel
        for f in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            h.update(str(f.relative_to(repo)).encode() + f.read_bytes())
    return h.hexdigest()[:16]


def cached_shipped_dir() -> Path:
    """A verified `build_shipped_dir` folder, rebuilt when this file or the training or
    export code changes."""
    from edge_runtime.errors import EdgeError
    from edge_runtime.manifest import load_manifest

    key = "shipped-" + _code_key("dlink/student.py", "dlink/distill.py", "dlink/signal.py",
                                 "dlink/training.py", "dlink/data", "export", "calibration")
    root = Path(os.environ.get("DLINK_EDGE_FIXTURE_CACHE", "/tmp/dlink-edge-fixtures"))
    folder = root / key
    if folder.is_dir():
        try:
            load_manifest(folder / "export")
            return folder
        except EdgeError:
            shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{key}.tmp"))
    build_shipped_dir(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.glob("shipped-*"):  # folders of earlier code
        if old.is_dir() and old.name != key and ".tmp" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def copy_model_dir(src: Path, dest: Path, *, preprocessing: list[dict] | None = None,
                   hop: int | None = None) -> Path:
    """Copy a fixture folder, optionally changing its manifest's preprocessing or hop."""
    shutil.copytree(src, dest)
    if preprocessing is not None or hop is not None:
        path = dest / "manifest.json"
        manifest = json.loads(path.read_text())
        if preprocessing is not None:
            manifest["input"]["preprocessing"] = preprocessing
        if hop is not None:
            manifest["input"]["hop"] = hop
        path.write_text(json.dumps(manifest, indent=2))
    return dest


def read_eeg(seconds: float | None = None) -> np.ndarray:
    """(19, N) µV of ``Subject00_1.edf`` resampled 500 -> 200 Hz (zero-phase, offline)."""
    from edge_runtime.sources import read_edf

    rec = read_edf(EEG_FILE, CH_NAMES, SFREQ)
    n = rec.data.shape[1] if seconds is None else int(seconds * SFREQ)
    return rec.data[:, :n]


# ---------------------------------------------------------------- pytest glue and helpers

FORBIDDEN_MODULES = ("torch", "mne", "dlink", "export", "calibration")


def block_imports_snippet(*roots: str) -> str:
    """Python source that makes importing any of ``roots`` fail, as if not installed."""
    return (
        "import sys\n"
        "class _Blocker:\n"
        f"    roots = {set(roots)!r}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in self.roots:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Blocker())\n"
    )


def run_python(code: str, *, stdin: bytes | None = None, timeout: float = 120,
               env: dict | None = None):
    """Run ``python -c code`` in a fresh interpreter from the repo root."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1], env=env)


def run_cli(*args: str, stdin: bytes | None = None, block: tuple[str, ...] = (),
            timeout: float = 120):
    """``dlink-edge ARGS`` in a fresh interpreter, optionally with imports blocked.

    The block is a ``sitecustomize`` on ``PYTHONPATH``, so the processes the CLI starts
    (``profile`` measures in a fresh one) are blocked too."""
    code = ("import sys\nfrom edge_runtime.cli import main\n"
            f"sys.argv = ['dlink-edge', *{list(map(str, args))!r}]\nmain()\n")
    if not block:
        return run_python(code, stdin=stdin, timeout=timeout)
    with tempfile.TemporaryDirectory() as site:
        (Path(site) / "sitecustomize.py").write_text(block_imports_snippet(*block))
        path = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
        return run_python(code, stdin=stdin, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=path))


try:
    import pytest
except ImportError:  # imported outside pytest (e.g. to build a folder by hand)
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def model_dir() -> Path:
        """The cached fixture folder; copy it (`copy_model_dir`) before changing it."""
        return cached_model_dir()

    @pytest.fixture(scope="session")
    def shipped() -> Path:
        """`cached_shipped_dir`: ``student/``, ``data.npz`` and the ``export/`` folder."""
        return cached_shipped_dir()

    @pytest.fixture(scope="session")
    def eeg() -> np.ndarray:
        """(19, 36400) µV at 200 Hz of Subject00_1 (182 s)."""
        return read_eeg()
