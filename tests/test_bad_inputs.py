"""The bad-input catalogue: every case runs the real CLI (`dlink`, `dlink-export`,
`dlink-edge`) in a subprocess and must give exactly one error line in DLink's words, the
documented exit code (1 for a problem the message explains; 4 for a live stream that
stopped), no traceback, no library warning, and nothing half-written.

The model is the tiny exported fixture (`edge_fixtures.cached_model_dir`); recordings are
real (EEGMAT, PhysioNet-MI) or damaged copies of them. `CASES` is the catalogue; the
README states how many cases it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from edge_fixtures import CH_NAMES, cached_model_dir

DATA = Path(os.environ["DLINK_DATA_DIR"])
EEG = DATA / "eegmat" / "Subject00_2.edf"
TOOLS = {"dlink": "dlink.cli", "dlink-export": "export.cli", "dlink-edge": "edge_runtime.cli"}
ERROR_PREFIXES = ("error:", "dlink-edge: error:")
OUR_PREFIXES = ("dlink-edge:", "error:", "warning:")
LIBRARY_NOISE = ("Traceback", "Warning:", "UserWarning", "RuntimeWarning", "INFO|", "ERR|",
                 "WARNING")


@dataclass
class Case:
    name: str
    tool: str
    args: list  # str or callables of the context (paths made by `ctx`)
    expect: str  # substring of the one error line
    code: int = 1
    stdin: bytes | str | None = None  # bytes, or a context key of a file to feed
    untouched: list = field(default_factory=list)  # context keys of paths that must not appear
    summary_ok: bool = False  # a live run prints its summary table before the error


def _frames(x: np.ndarray) -> bytes:
    """(C, N) µV -> interleaved little-endian float32 frames."""
    return np.ascontiguousarray(x.T, dtype="<f4").tobytes()


RNG = np.random.default_rng(0)
NOISE = RNG.normal(0, 20, (19, 1600))
NAN_RUN = NOISE.copy()
NAN_RUN[:, 300:500] = np.nan


CASES = [
    # --- dlink-edge run: recordings -----------------------------------------------------
    Case("edf-missing-channels", "dlink-edge", ["run", "model", "--edf", "three_ch_edf"],
         "lacks channel(s)"),
    Case("edf-wrong-rate-no-resample", "dlink-edge",
         ["run", "model", "--edf", str(EEG), "--no-resample"], "sampled at 500 Hz"),
    Case("edf-zero-bytes", "dlink-edge", ["run", "model", "--edf", "zero_edf"],
         "not an EDF file (0 bytes"),
    Case("edf-not-edf", "dlink-edge", ["run", "model", "--edf", "text_edf"], "not an EDF file"),
    Case("edf-malformed-header", "dlink-edge", ["run", "model", "--edf", "bad_header_edf"],
         "malformed EDF header"),
    Case("edf-truncated-strict", "dlink-edge",
         ["run", "model", "--edf", "truncated_edf", "--strict"], "s its header promises"),
    Case("edf-flat-channel-strict", "dlink-edge",
         ["run", "model", "--edf", "flat_edf", "--strict"], "are flat"),
    Case("edf-does-not-exist", "dlink-edge", ["run", "model", "--edf", "/nonexistent.edf"],
         "does not exist"),
    Case("edf-too-short-for-a-window", "dlink-edge",
         ["run", "model", "--edf", str(EEG), "--duration", "3"], "before the first window"),
    Case("channel-map-missing", "dlink-edge",
         ["run", "model", "--edf", str(EEG), "--channel-map", "/nonexistent.map"],
         "cannot be read"),
    Case("channel-map-malformed", "dlink-edge",
         ["run", "model", "--edf", str(EEG), "--channel-map", "bad_map"], "line 1"),
    Case("channel-map-unknown-name", "dlink-edge",
         ["run", "model", "--edf", str(EEG), "--channel-map", "unknown_map"],
         "does not use"),
    Case("channel-map-unknown-label", "dlink-edge",
         ["run", "model", "--edf", str(EEG), "--channel-map", "dangling_map"],
         "not a label of the recording"),
    # --- dlink-edge run: stdin ----------------------------------------------------------
    Case("stdin-empty", "dlink-edge", ["run", "model", "--stdin"], "held no samples", stdin=b""),
    Case("stdin-garbage", "dlink-edge", ["run", "model", "--stdin"], "ended mid-frame",
         stdin=b"this is not EEG\n"),
    Case("stdin-stops-mid-frame", "dlink-edge", ["run", "model", "--stdin"],
         "ended mid-frame", stdin=_frames(NOISE[:, :1200]) + b"\x00\x01\x02"),
    Case("stdin-stops-mid-window", "dlink-edge", ["run", "model", "--stdin"],
         "before the first window", stdin=_frames(NOISE[:, :700])),
    Case("stdin-channel-major-partial-block", "dlink-edge",
         ["run", "model", "--stdin", "--layout", "channel-major", "--block", "100"],
         "ended mid-block", stdin=_frames(NOISE[:, :1250])),
    Case("stdin-nan-run-raise", "dlink-edge", ["run", "model", "--stdin", "--nonfinite", "raise"],
         "hold NaN/Inf", stdin=_frames(NAN_RUN)),
    Case("lsl-stream-not-found", "dlink-edge",
         ["run", "model", "--lsl", "no-such-amplifier", "--lsl-wait", "0.5"], "LSL"),
    # --- dlink-edge: model folders ------------------------------------------------------
    Case("model-folder-missing", "dlink-edge", ["info", "/nonexistent-model"], "does not exist"),
    Case("model-file-tampered", "dlink-edge", ["run", "tampered_model", "--edf", str(EEG)],
         "sha256"),
    Case("model-file-missing", "dlink-edge", ["info", "missing_file_model"], "missing"),
    Case("manifest-disagrees-with-files", "dlink-edge", ["info", "wrong_bytes_model"],
         "bytes"),
    Case("manifest-not-json", "dlink-edge", ["info", "not_json_model"], "manifest"),
    Case("manifest-other-schema", "dlink-edge", ["info", "schema_model"], "schema"),
    Case("manifest-unknown-preprocessing-op", "dlink-edge",
         ["run", "unknown_op_model", "--edf", str(EEG)], "unknown to this runtime"),
    Case("manifest-failed-gate", "dlink-edge", ["run", "failed_gate_model", "--edf", str(EEG)],
         "--allow-failed-gate"),
    Case("budget-unknown", "dlink-edge", ["check", "model", "--budget", "no-such-board"],
         "no-such-board"),
    Case("budget-malformed", "dlink-edge", ["check", "model", "--budget", "bad_budget"],
         "bad.toml"),
    # --- dlink: data sets ---------------------------------------------------------------
    Case("data-unknown-name", "dlink", ["data", "info", "no-such-set"], "unknown data set"),
    Case("npz-not-a-zip", "dlink", ["data", "info", "garbage_npz"], "not a readable .npz"),
    Case("npz-missing-arrays", "dlink", ["data", "info", "no_y_npz"], "lacks array(s) y"),
    Case("npz-nan", "dlink", ["data", "info", "nan_npz"], "NaN/Inf"),
    Case("npz-windows-too-short", "dlink", ["data", "info", "short_npz"],
         "the minimum is 1 s"),
    Case("pipeline-one-class", "dlink",
         ["pipeline", "--data", "one_class_npz", "--out", "pipe_out"], "one class",
         untouched=["pipe_out"]),
    Case("pipeline-too-few-windows", "dlink",
         ["pipeline", "--data", "two_windows_npz", "--out", "pipe_out2"],
         "at least 3 windows per subject", untouched=["pipe_out2"]),
    Case("pipeline-unknown-preset", "dlink", ["pipeline", "--preset", "huge", "--out", "pipe3"],
         "unknown preset", untouched=["pipe3"]),
    Case("pickled-teacher-checkpoint", "dlink",
         ["finetune", "--teacher", "pickled_pth", "--data", "three_subjects_npz",
          "--out", "ft_out", "--epochs", "1"], "pickled", untouched=["ft_out/model.safetensors"]),
    Case("check-not-a-pipeline-output", "dlink",
         ["check", "model", "--baseline", "/nonexistent.json"], "not found"),
    # --- dlink-export -------------------------------------------------------------------
    Case("export-student-missing", "dlink-export", ["/nonexistent-student", "--out", "exp1"],
         "nonexistent-student", untouched=["exp1"]),
    Case("export-pickled-student-weights", "dlink-export",
         ["pickled_student", "--out", "exp2", "--data", "three_subjects_npz"], "pickled_student",
         untouched=["exp2"]),
]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> dict:
    """Every damaged file and folder the catalogue names, by key."""
    import edfio

    tmp = tmp_path_factory.mktemp("bad-inputs")
    model = cached_model_dir()
    c = {"model": model}
    raw = EEG.read_bytes()

    def put(key, name, data):
        path = tmp / name
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        c[key] = path

    put("zero_edf", "zero.edf", b"")
    put("text_edf", "notes.edf", "these are my notes, not a recording\n" * 20)
    put("bad_header_edf", "bad_header.edf", raw[:236] + b"lots    " + raw[244:])
    header, n_rec = int(raw[184:192]), int(raw[236:244])
    put("truncated_edf", "cut.edf", raw[: header + 13 * ((len(raw) - header) // n_rec)])
    edf = edfio.read_edf(EEG)
    three = edfio.Edf([s for s in edf.signals if s.label in ("EEG Fp1", "EEG Fp2", "EEG Cz")])
    three.write(tmp / "three.edf")
    c["three_ch_edf"] = tmp / "three.edf"
    flat = edfio.read_edf(EEG)
    cz = next(s for s in flat.signals if s.label == "EEG Cz")
    cz.update_data(np.zeros_like(cz.data))
    flat.write(tmp / "flat.edf")
    c["flat_edf"] = tmp / "flat.edf"
    put("bad_map", "bad.map", "Cz E55\n")
    put("unknown_map", "unknown.map", "Oz = EEG O1\n")
    put("dangling_map", "dangling.map", "Cz = E55\n")

    def model_copy(key, edit):
        dest = tmp / key
        shutil.copytree(model, dest)
        edit(dest)
        c[key] = dest

    def manifest_edit(fn):
        def edit(dest):
            m = json.loads((dest / "manifest.json").read_text())
            fn(m)
            (dest / "manifest.json").write_text(json.dumps(m))
        return edit

    def tamper(dest):
        p = dest / "model.int8.onnx"
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0xFF
        p.write_bytes(bytes(b))

    def first_int8(m):
        return next(a for a in m["artifacts"] if a["precision"] == "int8")

    model_copy("tampered_model", tamper)
    model_copy("missing_file_model", lambda d: (d / "model.int8.onnx").unlink())
    model_copy("wrong_bytes_model", manifest_edit(
        lambda m: first_int8(m).update(bytes=first_int8(m)["bytes"] + 1)))
    model_copy("not_json_model", lambda d: (d / "manifest.json").write_text("{not json"))
    model_copy("schema_model", manifest_edit(lambda m: m.update(schema="other/9")))
    model_copy("unknown_op_model", manifest_edit(
        lambda m: m["input"]["preprocessing"].insert(0, {"op": "wavelet"})))
    model_copy("failed_gate_model", manifest_edit(
        lambda m: [a["gate"].update(passed=False) for a in m["artifacts"] if a.get("gate")]))
    put("bad_budget", "bad.toml", "this is = = not toml\n")

    def npz(key, **arrays):
        path = tmp / f"{key}.npz"
        np.savez(path, **arrays)
        c[key] = path

    X = RNG.normal(0, 20, (12, 19, 400)).astype(np.float32)
    meta = dict(sfreq=200.0, ch_names=np.array(CH_NAMES))
    put("garbage_npz", "garbage.npz", b"PK\x03\x04 not really a zip")
    npz("no_y_npz", X=X, **meta)
    bad = X.copy()
    bad[3, 5, 7] = np.nan
    npz("nan_npz", X=bad, y=np.arange(12) % 2, **meta)
    npz("short_npz", X=X[:, :, :100], y=np.arange(12) % 2, **meta)
    npz("one_class_npz", X=X, y=np.zeros(12, np.int64), **meta)
    npz("two_windows_npz", X=X[:2], y=np.array([0, 1]), **meta)
    npz("three_subjects_npz", X=X, y=np.arange(12) % 2,
        subject=np.repeat(["a", "b", "c"], 4), **meta)
    for key in ("pipe_out", "pipe_out2", "pipe3", "ft_out", "exp1", "exp2"):
        c[key] = tmp / key

    import argparse

    import torch

    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1e-3)}, tmp / "evil.pth")
    c["pickled_pth"] = tmp / "evil.pth"

    from dlink.signal import SignalSpec
    from dlink.student import build_student, save_student

    student = build_student("mic-xs", SignalSpec(tuple(CH_NAMES), 200.0, 400), n_outputs=2)
    save_student(student, tmp / "pickled_student")
    torch.save({"args": argparse.Namespace(lr=1e-3)},
               tmp / "pickled_student" / "model.safetensors")
    c["pickled_student"] = tmp / "pickled_student"
    return c


def _argv(case: Case, c: dict) -> list[str]:
    return [str(c.get(a, a)) if isinstance(a, str) else str(a) for a in case.args]


def _stdin(case: Case, c: dict) -> bytes | None:
    if case.stdin is None:
        return b"" if case.tool != "dlink-edge" else None
    return case.stdin if isinstance(case.stdin, bytes) else Path(c[case.stdin]).read_bytes()


def test_the_catalogue_holds_at_least_30_cases():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.tool for c in CASES} == set(TOOLS)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_with_the_documented_exit_code(case, ctx):
    env = dict(os.environ, OMP_NUM_THREADS="1", DLINK_THREADS="1", COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", TOOLS[case.tool], *_argv(case, ctx)],
                          input=_stdin(case, ctx), capture_output=True, timeout=600, env=env)
    err = proc.stderr.decode(errors="replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == case.code, err[-3000:]
    errors = [ln for ln in lines if ln.startswith(ERROR_PREFIXES)]
    assert len(errors) == 1 and case.expect in errors[0], err[-3000:]
    assert not any(noise in err for noise in LIBRARY_NOISE), err[-3000:]
    if not case.summary_ok:
        assert all(ln.startswith(OUR_PREFIXES) for ln in lines), err[-3000:]
    for key in case.untouched:
        path = Path(ctx[key]) if key in ctx else Path(ctx[key.split("/")[0]]) / key.split("/", 1)[1]
        assert not path.exists() or (path.is_dir() and not any(path.iterdir())), path
