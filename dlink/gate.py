"""The CI regression gate (`dlink check`): a fresh pipeline output against a committed baseline.

`write_gate_metrics` condenses a `dlink pipeline` output folder into ``OUT/metrics.json``
(schema `METRICS_SCHEMA`); `compare` holds two such files side by side and fails when

* a model file grows by more than ``max_size_growth_pct`` percent (per artifact),
* the latency ratio (model p50 / reference p50, both timed in one process by
  ``dlink-edge profile --reference``) grows by more than ``max_latency_growth_pct``
  percent (per backend), or
* a test balanced accuracy (fp32, and each int8 artifact) falls by more than the test
  set's own uncertainty: √2 × the half-width of the baseline's 95 % bootstrap interval of
  the student's test BAcc (`bacc_interval`: subjects resampled, then windows within each;
  see `bacc_tolerance`), or ``max_bacc_drop`` when given (0.02 when the baseline has no
  interval), or
* an int8 artifact of the current run failed the exporter's parity gate (agreement, SQNR,
  BAcc change against fp32), unless ``allow_failed_gate``.

A gated metric the baseline has and the current run lacks fails too (a measurement that
disappears is not a pass), as does a latency ratio measured against a different reference
model. Parameters, MACs, raw milliseconds and board budgets are shown for information only:
raw milliseconds depend on the machine, the ratio does not (much). Everything timed is
labelled with the machine it was timed on (``measured_on``); a board budget checked on
another CPU than the board's is an *estimate*, never a pass.

Refresh the baseline by copying a trusted run's ``metrics.json`` over it; its numbers are
then generated, never typed.

Inputs read from OUT (any may be missing; what is missing is simply not measured):
``export/manifest.json`` (sizes, sha256, parity-gate BAcc on the held-out test subjects),
``student/metrics.json`` (test BAcc if the manifest has none, parameters, MACs),
``teacher/metrics.json`` (teacher test BAcc, information), ``profile/{onnx,tflite}.json``
(``dlink-edge profile --json``; or the ``check --json`` output, whose ``profile`` is used),
``profile/budget_<board>.json`` (``dlink-edge check --json``), ``test_predictions.npz``
(``y``, ``pred``, ``subject`` of the fp32 student on the test windows; for the interval).
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dlink.atomic import write_text_atomic
from dlink.errors import DLinkError

METRICS_SCHEMA = "dlink-gate-metrics/1"
RESULT_SCHEMA = "dlink-gate-result/1"
METRICS_FILE = "metrics.json"
EXIT_REGRESSION = 3  # `dlink check`: 0 pass, 1 error (one line), 2 usage, 3 regression
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"  # latency reference, package data
PREDICTIONS_FILE = "test_predictions.npz"
DEFAULT_BACC_DROP = 0.02  # when neither --max-bacc-drop nor the baseline's interval is there
MODEL_FORMATS = ("onnx", "tflite")  # artifacts whose bytes are gated (C arrays embed the tflite)
BACKENDS = ("onnx", "tflite")


class GateInputError(DLinkError):
    """A metrics file, baseline or pipeline folder is missing or malformed."""


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the baseline the current run may be."""

    max_size_growth_pct: float = 10.0  # per model file, percent of the baseline's bytes
    max_latency_growth_pct: float = 25.0  # latency ratio, percent of the baseline's ratio
    max_bacc_drop: float | None = None  # BAcc, absolute; None: the baseline's 95 % half-width
    allow_failed_gate: bool = False  # pass a run whose int8 artifacts failed the parity gate

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# metrics.json


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GateInputError(f"{path} is not valid JSON ({exc}); re-run the stage that "
                             f"wrote it.") from exc


def _profile(out_dir: Path, backend: str) -> dict | None:
    rep = _read_json(out_dir / "profile" / f"{backend}.json")
    if rep is not None and "profile" in rep and "latency_ms" not in rep:  # `check --json`
        rep = rep["profile"]
    return rep


def gate_metrics(out_dir: str | Path) -> dict:
    """The gate metrics of a pipeline output folder (see the module docstring), not written.

    Raises
    ------
    GateInputError : ``OUT/export/manifest.json`` is missing (nothing to gate) or a file
        is not valid JSON.
    """
    out_dir = Path(out_dir)
    manifest = _read_json(out_dir / "export" / "manifest.json")
    if manifest is None:
        raise GateInputError(
            f"{out_dir / 'export' / 'manifest.json'} not found; give a `dlink pipeline` output "
            f"folder (or its metrics.json) that went through the export stage.")
    student = _read_json(out_dir / "student" / "metrics.json") or {}
    teacher = _read_json(out_dir / "teacher" / "metrics.json") or {}
    model = manifest.get("model", {})
    arts = [a for a in manifest.get("artifacts", []) if a.get("format") in MODEL_FORMATS]
    return {
        "schema": METRICS_SCHEMA,
        "model": {
            "name": model.get("name"), "arch": model.get("arch"),
            "parameters": model.get("parameters", student.get("parameters")),
            "macs": model.get("macs", student.get("macs")),
        },
        "size_bytes": {a["path"]: int(a["bytes"]) for a in arts},
        "sha256": {a["path"]: a.get("sha256") for a in arts},
        "bacc": {**_bacc(manifest, student), "interval": _interval(out_dir)},
        "parity_gate": {a["path"]: {k: a["gate"].get(k) for k in ("passed", "agreement", "sqnr_db",
                                                                  "bacc_change", "failed_checks")}
                        for a in manifest.get("artifacts", []) if isinstance(a.get("gate"), dict)},
        "teacher_bacc": (teacher.get("test") or {}).get("bacc"),
        "measured_on": _machine(out_dir),
        "latency": {b: lat for b in BACKENDS if (lat := _latency(_profile(out_dir, b)))},
        "budgets": _budgets(out_dir),
    }


def write_gate_metrics(out_dir: str | Path) -> dict:
    """Write ``OUT/metrics.json`` from the other files of a pipeline output; return it."""
    metrics = gate_metrics(out_dir)
    write_text_atomic(Path(out_dir) / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return metrics


def bacc_interval(y, pred, subject, n_boot: int = 2000, level: float = 0.95,
                  seed: int = 0) -> dict:
    """Bootstrap interval of balanced accuracy over subjects, then windows within each.

    Parameters
    ----------
    y, pred : (n,) true and predicted class indices of the test windows.
    subject : (n,) subject id of each window. Subjects are resampled with replacement and
        then each drawn subject's windows with replacement, so the interval holds both the
        spread between subjects and the finite number of windows (with one subject, only
        the latter).

    Returns
    -------
    dict with ``bacc`` (the point estimate), ``low``/``high`` (the ``level`` percentile
    interval), ``half_width`` ((high - low) / 2, the gate's default BAcc tolerance),
    ``n_boot``, ``level``, ``seed``, ``n_windows``, ``n_subjects`` and ``method``.
    """
    y, pred, subject = np.asarray(y), np.asarray(pred), np.asarray(subject).astype(str)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(subject == s) for s in np.unique(subject)]
    stats = np.empty(n_boot)
    for i in range(n_boot):
        drawn = rng.integers(len(groups), size=len(groups))
        idx = np.concatenate([rng.choice(groups[g], size=len(groups[g])) for g in drawn])
        stats[i] = _balanced_accuracy(y[idx], pred[idx])
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"bacc": round(_balanced_accuracy(y, pred), 6), "low": round(float(low), 6),
            "high": round(float(high), 6), "half_width": round(float(high - low) / 2, 6),
            "level": level, "n_boot": n_boot, "seed": seed, "n_windows": int(len(y)),
            "n_subjects": len(groups),
            "method": "bootstrap: subjects with replacement, then windows within each subject"}


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y``."""
    return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))


def _interval(out_dir: Path) -> dict | None:
    path = out_dir / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path) as f:
        out = bacc_interval(f["y"], f["pred"], f["subject"])
    return {**out, "of": "fp32 student on the test subjects (" + PREDICTIONS_FILE + ")"}


def _machine(out_dir: Path) -> dict:
    """Where the timings were taken: the profile's own label, plus this CPU's model name
    (the metrics are written by the run that profiled, on the same machine)."""
    prof = _profile(out_dir, "onnx") or _profile(out_dir, "tflite") or {}
    return {"machine": prof.get("machine") or f"{platform.machine()} {platform.system()}",
            "cpu": _cpu_model(), "cores": os.cpu_count()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _bacc(manifest: dict, student: dict) -> dict:
    """Test balanced accuracy: fp32 and each int8 artifact, from the export's parity gate
    on held-out subjects, else (fp32 only) from the student's own test metrics."""
    parity = manifest.get("parity", {})
    held = (parity.get("data") or {}).get("held_out", False)
    gates = {a["path"]: a["gate"] for a in manifest.get("artifacts", [])
             if isinstance(a.get("gate"), dict) and "bacc_int8" in a["gate"]}
    out: dict = {"fp32": None, "int8": {}, "source": None, "n_windows": None, "subjects": None,
                 "interval": None}
    if held and gates:
        first = next(iter(gates.values()))
        out.update(fp32=first.get("bacc_fp32"), int8={p: g["bacc_int8"] for p, g in gates.items()},
                   source="export/manifest.json parity gate (held-out test subjects)",
                   n_windows=first.get("n_windows"), subjects=parity["data"].get("subjects"))
    elif (student.get("test") or {}).get("bacc") is not None:
        out.update(fp32=student["test"]["bacc"], source="student/metrics.json test")
    return out


def _latency(rep: dict | None) -> dict | None:
    if rep is None:
        return None
    ref = rep.get("reference") or {}
    return {
        "ratio": rep.get("latency_ratio"),
        "p50_ms": rep["latency_ms"]["p50"],
        "reference_p50_ms": ref.get("p50_ms"),
        "reference": ref.get("name"),
        "reference_sha256": ref.get("sha256"),
        "backend": rep.get("backend"),
        "precision": rep.get("precision"),
        "threads": rep.get("threads"),
        "machine": rep.get("machine"),
    }


def _budgets(out_dir: Path) -> dict:
    """Per board: within its limits as timed here; always an estimate, since the pipeline
    times on its own machine and never on the board (a pass needs `dlink-edge check` run
    on the board itself)."""
    out = {}
    for path in sorted((out_dir / "profile").glob("budget_*.json")):
        rep = _read_json(path)
        prof = rep.get("profile") or {}
        out[path.stem.removeprefix("budget_")] = {
            "within_limits": bool(rep.get("ok")), "verdict": "estimate",
            "board": (rep.get("budget") or {}).get("board"),
            "measured_on": prof.get("machine")}
    return out


def load_metrics(path: str | Path) -> dict:
    """A metrics file, or a pipeline folder (its metrics.json, else computed from its files)."""
    path = Path(path)
    if path.is_dir():
        found = _read_json(path / METRICS_FILE)
        metrics = found if found is not None else gate_metrics(path)
    elif path.is_file():
        metrics = _read_json(path)
    else:
        raise GateInputError(f"{path} does not exist; give a pipeline output folder or a "
                             f"{METRICS_FILE} written by write_gate_metrics.")
    if not isinstance(metrics, dict) or metrics.get("schema") != METRICS_SCHEMA:
        schema = metrics.get("schema") if isinstance(metrics, dict) else type(metrics).__name__
        raise GateInputError(f"{path} has schema {schema!r}, expected {METRICS_SCHEMA!r}; "
                             f"make it with write_gate_metrics (dlink pipeline writes one).")
    return metrics


# ---------------------------------------------------------------------------------------
# Comparison


@dataclass
class GateRow:
    """One metric, baseline against current."""

    metric: str
    kind: str  # "size", "latency", "bacc" (gated) or "info"
    unit: str
    baseline: float | None
    current: float | None
    change: float | None  # current vs baseline in ``change_unit``; None if undefined
    change_unit: str  # "%" (growth in percent of the baseline) or "abs" (difference)
    limit: float | None  # the tolerance this row is held to (None: not gated)
    status: str  # "pass", "fail", "info" or "new" (only in the current run)
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass
class GateResult:
    """Every row of a comparison; ``passed`` when no gated row failed."""

    rows: list[GateRow]
    tolerances: Tolerances
    current: str = ""
    baseline: str = ""
    failed: list[str] = field(init=False)

    def __post_init__(self):
        self.failed = [r.metric for r in self.rows if r.failed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line: what regressed and by how much."""
        if self.passed:
            return f"no regression in {sum(r.kind != 'info' for r in self.rows)} gated metrics"
        parts = [f"{r.metric} {_fmt_change(r)} (limit {_fmt_limit(r)})" if not r.note
                 else f"{r.metric} ({r.note})" for r in self.rows if r.failed]
        return f"{len(parts)} regression(s): " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "schema": RESULT_SCHEMA,
            "passed": self.passed,
            "current": self.current,
            "baseline": self.baseline,
            "tolerances": self.tolerances.to_dict(),
            "failed": list(self.failed),
            "rows": [_finite(asdict(r)) for r in self.rows],
        }


def _finite(row: dict) -> dict:
    """JSON has no infinity: a growth from zero bytes is written as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in row.items()}


def _growth_pct(base: float, cur: float) -> float:
    if base == 0:
        return 0.0 if cur == 0 else math.inf
    return (cur / base - 1.0) * 100.0


def _gated(metric: str, kind: str, unit: str, base, cur, limit: float,
           note: str = "") -> GateRow:
    """A gated row; ``base`` None means the baseline never measured it (new)."""
    change_unit = "abs" if kind == "bacc" else "%"
    if base is None:
        return GateRow(metric, kind, unit, None, cur, None, change_unit, limit, "new",
                       note or "not in the baseline")
    if cur is None or (isinstance(cur, float) and math.isnan(cur)):
        return GateRow(metric, kind, unit, base, None, None, change_unit, limit, "fail",
                       note or "missing in the current run")
    if kind == "bacc":
        change = cur - base
        ok = -change <= limit + 1e-12
    else:
        change = _growth_pct(base, cur)
        ok = change <= limit + 1e-9
    if note:  # measured, but not comparable (e.g. another reference model)
        ok = False
    return GateRow(metric, kind, unit, base, cur, change, change_unit, limit,
                   "pass" if ok else "fail", note)


def _info(metric: str, unit: str, base, cur, note: str = "", absolute: bool = False) -> GateRow:
    change = None
    if isinstance(base, int | float) and isinstance(cur, int | float):
        change = cur - base if absolute else _growth_pct(base, cur)
    return GateRow(metric, "info", unit, base, cur, change, "abs" if absolute else "%", None,
                   "info", note)


def compare(current: dict, baseline: dict, tolerances: Tolerances | None = None) -> GateResult:
    """Hold ``current`` against ``baseline`` (both `METRICS_SCHEMA` dicts)."""
    tol = tolerances or Tolerances()
    cur, base = current, baseline
    rows: list[GateRow] = []
    for path in _keys(base.get("size_bytes"), cur.get("size_bytes")):
        rows.append(_gated(f"bytes {path}", "size", "bytes", _get(base, "size_bytes", path),
                           _get(cur, "size_bytes", path), tol.max_size_growth_pct))
    for backend in _keys(base.get("latency"), cur.get("latency")):
        b, c = (base.get("latency") or {}).get(backend), (cur.get("latency") or {}).get(backend)
        note = ""
        if b and c and b.get("ratio") is not None and c.get("ratio") is not None and \
                b.get("reference_sha256") != c.get("reference_sha256"):
            note = (f"timed against another reference ({c.get('reference')}, not the "
                    f"baseline's {b.get('reference')}); refresh the baseline")
        rows.append(_gated(f"latency ratio {backend}", "latency", "x",
                           (b or {}).get("ratio"), (c or {}).get("ratio"),
                           tol.max_latency_growth_pct, note))
    bb, cb = base.get("bacc") or {}, cur.get("bacc") or {}
    bacc_drop = bacc_tolerance(base, tol)
    rows.append(_gated("BAcc fp32", "bacc", "", bb.get("fp32"), cb.get("fp32"), bacc_drop))
    for path in _keys(bb.get("int8"), cb.get("int8")):
        rows.append(_gated(f"BAcc {path}", "bacc", "", (bb.get("int8") or {}).get(path),
                           (cb.get("int8") or {}).get(path), bacc_drop))
    for path, gate in (cur.get("parity_gate") or {}).items():
        rows.append(_parity_row(path, gate, tol.allow_failed_gate))
    rows = [r for r in rows if not (r.baseline is None and r.current is None)]
    rows += _info_rows(base, cur)
    return GateResult(rows, replace(tol, max_bacc_drop=bacc_drop))


def bacc_tolerance(baseline: dict, tol: Tolerances) -> float:
    """The BAcc drop allowed: ``tol.max_bacc_drop`` if set, else √2 × the half-width h of
    the baseline's 95 % bootstrap interval, else `DEFAULT_BACC_DROP`.

    Two runs scored on this test set each carry an uncertainty of about ±h, so their
    difference carries about ±√2·h (95 %): a drop within it is not evidence of a regression.
    """
    if tol.max_bacc_drop is not None:
        return tol.max_bacc_drop
    half = ((baseline.get("bacc") or {}).get("interval") or {}).get("half_width")
    return round(math.sqrt(2) * half, 4) if half else DEFAULT_BACC_DROP


def _parity_row(path: str, gate: dict, allowed: bool) -> GateRow:
    """The current run's int8 parity gate for one artifact: a failure fails the check."""
    passed = bool(gate.get("passed"))
    note = "" if passed else (f"failed the int8 parity gate ({', '.join(gate.get('failed_checks') or [])}"
                              f"; agreement {gate.get('agreement')}, SQNR {gate.get('sqnr_db')} dB)"
                              + ("; allowed by --allow-failed-gate" if allowed else ""))
    status = "pass" if passed else ("info" if allowed else "fail")
    return GateRow(f"parity gate {path}", "parity", "", None, passed, None, "", None, status, note)


def _keys(a: dict | None, b: dict | None) -> list[str]:
    return list(dict.fromkeys([*(a or {}), *(b or {})]))


def _get(metrics: dict, section: str, key: str):
    return (metrics.get(section) or {}).get(key)


def _info_rows(base: dict, cur: dict) -> list[GateRow]:
    bm, cm = base.get("model") or {}, cur.get("model") or {}
    rows = [_info("parameters", "", bm.get("parameters"), cm.get("parameters")),
            _info("MACs", "", bm.get("macs"), cm.get("macs")),
            _info("BAcc teacher", "", base.get("teacher_bacc"), cur.get("teacher_bacc"),
                  absolute=True)]
    for backend in _keys(base.get("latency"), cur.get("latency")):
        b, c = (base.get("latency") or {}).get(backend), (cur.get("latency") or {}).get(backend)
        rows.append(_info(f"latency p50 {backend}", "ms", (b or {}).get("p50_ms"),
                          (c or {}).get("p50_ms")))
    for board in _keys(base.get("budgets"), cur.get("budgets")):
        b, c = _get(base, "budgets", board), _get(cur, "budgets", board)
        where = c.get("measured_on") if isinstance(c, dict) else None
        rows.append(GateRow(f"budget {board}", "info", "", b, c, None, "", None, "info",
                            f"estimate: timed on {where}, not on the board" if where else ""))
    return [r for r in rows if not (r.baseline is None and r.current is None)]


# ---------------------------------------------------------------------------------------
# Presentation


def _fmt_value(row: GateRow, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) and row.kind == "parity":
        return "passed" if v else "FAILED"
    if isinstance(v, bool):  # a baseline written before budgets were labelled estimates
        return "within" if v else "OVER"
    if isinstance(v, dict):  # a board budget
        return f"{'within' if v.get('within_limits') else 'OVER'} ({v.get('verdict', 'estimate')})"
    if row.kind == "size" or row.metric in ("parameters", "MACs"):
        return f"{int(v):,}"
    if row.unit == "ms":
        return f"{v:.3f} ms"
    return f"{v:.3f}"


def _fmt_change(row: GateRow) -> str:
    if row.change is None:
        return "-"
    if row.change_unit == "abs":
        return f"{row.change:+.3f}"
    return f"{row.change:+.1f}%"


def _fmt_limit(row: GateRow) -> str:
    if row.limit is None:
        return "-"
    return f"≥ -{row.limit:g}" if row.kind == "bacc" else f"≤ +{row.limit:g}%"


def result_table(result: GateResult):
    """A rich table: metric, baseline, current, change, limit, status (notes as caption)."""
    from rich import box
    from rich.table import Table

    style = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "info": "[dim]info[/]",
             "new": "[yellow]new[/]"}
    verdict = "[green]passed[/]" if result.passed else "[bold red]FAILED[/]"
    notes = [f"{r.metric}: {r.note}" for r in result.rows if r.note and r.kind != "info"]
    notes += [f"board budgets: {n}" for n in dict.fromkeys(
        r.note for r in result.rows if r.metric.startswith("budget ") and r.note)]
    table = Table(title=f"regression gate: {verdict}", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="\n".join(notes) or None, caption_justify="left")
    for col in ("metric", "baseline", "current", "change", "limit", "status"):
        table.add_column(col, justify="left" if col in ("metric", "limit", "status") else "right",
                         no_wrap=True)
    for r in result.rows:
        table.add_row(r.metric, _fmt_value(r, r.baseline), _fmt_value(r, r.current),
                      _fmt_change(r), _fmt_limit(r), style[r.status])
    return table


def check(current: str | Path, baseline: str | Path, tolerances: Tolerances | None = None,
          ) -> GateResult:
    """`compare` two metrics files or pipeline folders (see `load_metrics`)."""
    result = compare(load_metrics(current), load_metrics(baseline), tolerances)
    result.current, result.baseline = str(current), str(baseline)
    return result
