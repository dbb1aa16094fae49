"""The int8 parity gate: does an int8 artifact still make the fp32 model's decisions?

Each int8 artifact is run on held-out windows and compared with the fp32 PyTorch model:

* ``agreement``: fraction of windows whose argmax class is the same.
* ``sqnr_db``: logit signal-to-quantisation-noise ratio,
  10 log10(sum(fp32^2) / sum((int8 - fp32)^2)), capped at `SQNR_CAP_DB` (identical logits).
* ``max_abs_err``: largest absolute logit difference.
* ``bacc_change``: balanced accuracy of int8 minus that of fp32 (negative = a drop).
* ``float_ops``: compute ops still running in float (reported, not gated).
* ``margin_noise_rms`` and ``near_boundary`` (reported, not gated): the RMS change that
  int8 makes to each window's fp32 decision margin (top logit minus runner-up, the
  runner-up taken from fp32), and how many held-out windows have an fp32 margin smaller
  than that. Agreement fails when such windows exist in numbers: it is then the density
  of held-out windows at the decision boundary, not a broken artifact, that the
  agreement check sees; a smaller ``margin_noise_rms`` (higher SQNR) is the remedy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from rich.table import Table

SQNR_CAP_DB = 200.0  # JSON has no infinity; identical logits report this


@dataclass(frozen=True)
class GateThresholds:
    """Pass marks for every int8 artifact; ``enforce=False`` records failures but writes."""

    min_agreement: float = 0.99  # argmax agreement with fp32 on held-out windows
    min_sqnr_db: float = 30.0  # logit SQNR; 30 dB ~ 3% RMS logit error
    max_bacc_drop: float = 0.01  # balanced-accuracy points int8 may lose vs fp32
    enforce: bool = True  # False (--no-gate): write anyway, mark failures in the manifest

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ParityResult:
    """One int8 artifact compared with the fp32 model on the held-out windows."""

    artifact: str
    agreement: float
    sqnr_db: float
    max_abs_err: float
    bacc_fp32: float
    bacc_int8: float
    n_windows: int
    float_ops: list[str] = field(default_factory=list)
    margin_noise_rms: float = 0.0  # RMS int8 change of the fp32 top-2 logit margin
    near_boundary: int = 0  # windows whose fp32 margin is below margin_noise_rms
    failed: list[str] = field(default_factory=list)  # names of the checks that failed

    @property
    def bacc_change(self) -> float:
        return self.bacc_int8 - self.bacc_fp32

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_manifest(self) -> dict:
        """The ``gate`` entry of this artifact in manifest.json."""
        return {
            "passed": self.passed,
            "failed_checks": list(self.failed),
            "agreement": round(self.agreement, 6),
            "sqnr_db": round(self.sqnr_db, 3),
            "max_abs_err": float(self.max_abs_err),
            "bacc_fp32": round(self.bacc_fp32, 6),
            "bacc_int8": round(self.bacc_int8, 6),
            "bacc_change": round(self.bacc_change, 6),
            "n_windows": self.n_windows,
            "float_ops": list(self.float_ops),
            "margin_noise_rms": round(self.margin_noise_rms, 6),
            "near_boundary": self.near_boundary,
        }


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y``."""
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else float("nan")


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(signal power / error power) of ``test`` against ``reference``."""
    noise = float(np.sum((test.astype(np.float64) - reference) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10.0 * np.log10(signal / noise)))


def compare(
    artifact: str,
    fp32_logits: np.ndarray,
    int8_logits: np.ndarray,
    y: np.ndarray,
    thresholds: GateThresholds,
    float_ops: list[str] | None = None,
) -> ParityResult:
    """Parity of one artifact's logits (n, K) against the fp32 logits (n, K)."""
    assert fp32_logits.shape == int8_logits.shape, (
        f"logit shapes differ: fp32 {fp32_logits.shape}, int8 {int8_logits.shape}"
    )
    ref_pred, q_pred = fp32_logits.argmax(1), int8_logits.argmax(1)
    margin_noise, near = _boundary(fp32_logits, int8_logits)
    result = ParityResult(
        artifact=artifact,
        agreement=float(np.mean(ref_pred == q_pred)),
        sqnr_db=sqnr_db(fp32_logits, int8_logits),
        max_abs_err=float(np.max(np.abs(int8_logits - fp32_logits))),
        bacc_fp32=balanced_accuracy(y, ref_pred),
        bacc_int8=balanced_accuracy(y, q_pred),
        n_windows=len(y),
        float_ops=list(float_ops or []),
        margin_noise_rms=margin_noise,
        near_boundary=near,
    )
    if not result.agreement >= thresholds.min_agreement:
        result.failed.append("agreement")
    if not result.sqnr_db >= thresholds.min_sqnr_db:
        result.failed.append("sqnr_db")
    if not -result.bacc_change <= thresholds.max_bacc_drop:
        result.failed.append("bacc_change")
    return result


def _boundary(fp32_logits: np.ndarray, int8_logits: np.ndarray) -> tuple[float, int]:
    """(RMS int8 change of the fp32 top-2 margin, windows whose margin is below it); logits
    (n, K), K >= 2."""
    if fp32_logits.shape[1] < 2 or not len(fp32_logits):
        return 0.0, 0
    order = np.argsort(fp32_logits, axis=1)
    top, second = order[:, -1:], order[:, -2:-1]
    margin = (np.take_along_axis(fp32_logits, top, 1) - np.take_along_axis(fp32_logits, second, 1))[:, 0]
    q_margin = (np.take_along_axis(int8_logits, top, 1) - np.take_along_axis(int8_logits, second, 1))[:, 0]
    noise = float(np.sqrt(np.mean((q_margin.astype(np.float64) - margin) ** 2)))
    return noise, int(np.sum(margin < noise))


def gate_table(results: list[ParityResult], thresholds: GateThresholds) -> Table:
    """A rich table: one row per artifact, each check marked pass or FAIL."""

    def cell(ok: bool, text: str) -> str:
        return f"[green]{text}[/]" if ok else f"[bold red]{text} FAIL[/]"

    table = Table(title="int8 parity gate (vs fp32, held-out windows)")
    table.add_column("artifact")
    table.add_column(f"agreement ≥ {thresholds.min_agreement:g}", justify="right")
    table.add_column(f"SQNR ≥ {thresholds.min_sqnr_db:g} dB", justify="right")
    table.add_column("max |err|", justify="right")
    table.add_column(f"BAcc drop ≤ {thresholds.max_bacc_drop:g}", justify="right")
    table.add_column("near boundary", justify="right")
    table.add_column("float ops")
    table.add_column("result")
    for r in results:
        table.add_row(
            r.artifact,
            cell("agreement" not in r.failed, f"{r.agreement:.4f}"),
            cell("sqnr_db" not in r.failed, f"{r.sqnr_db:.1f}"),
            f"{r.max_abs_err:.3g}",
            cell("bacc_change" not in r.failed,
                 f"{r.bacc_fp32:.3f}→{r.bacc_int8:.3f} ({r.bacc_change:+.3f})"),
            f"{r.near_boundary} of {r.n_windows}",
            ", ".join(op.split(":")[0] for op in r.float_ops) or "none",
            "[green]pass[/]" if r.passed else "[bold red]FAIL[/]",
        )
    return table
