"""The runtime stays board-sized: no torch, MNE or training-side packages, ever."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from edge_fixtures import EEG_FILE, FORBIDDEN_MODULES, model_dir, run_python  # noqa: F401

import edge_runtime

ALLOWED_THIRD_PARTY = {"numpy", "scipy", "edfio", "onnxruntime", "ai_edge_litert",
                       "tflite_runtime", "typer", "rich", "edge_runtime"}
OPTIONAL_BY_FILE = {"lsl.py": {"mne_lsl"}}  # live input, the `lsl` extra (torch-free)


def test_import_cli_and_a_streaming_run_load_no_training_packages(model_dir):  # noqa: F811
    code = f"""
import json, sys
import edge_runtime
import edge_runtime.cli
from edge_runtime import open_model, StreamingClassifier
from edge_runtime.sources import read_edf
for backend in ("onnx", "tflite"):
    model = open_model({str(model_dir)!r}, backend=backend)
    spec = model.manifest.input
    rec = read_edf({str(EEG_FILE)!r}, spec.ch_names, spec.sfreq)
    clf = StreamingClassifier(model)
    n = sum(len(clf.push(rec.data[:, i:i + 777])) for i in range(0, 20000, 777))
    assert n == 20, n
bad = sorted(m for m in sys.modules
             if m.split(".")[0] in {set(FORBIDDEN_MODULES)!r} or m.startswith("litert_torch"))
print(json.dumps(bad))
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout.decode().strip().splitlines()[-1]) == []


def test_source_imports_only_the_allowed_packages():
    stdlib = set(sys.stdlib_module_names)
    root = Path(edge_runtime.__file__).parent
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == \
                    "import_module" and isinstance(node.args[0], ast.Constant):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = ALLOWED_THIRD_PARTY | OPTIONAL_BY_FILE.get(path.name, set())
                assert top in stdlib or top in allowed, f"{path.name}: {name}"
                if top == "scipy":
                    assert name == "scipy.signal", f"{path.name}: {name}"
