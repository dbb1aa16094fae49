"""Budgets: how slow, big and hungry a model may be on a given board or microcontroller.

A budget is a small TOML file (shipped ones live in ``edge_runtime/budgets/``). A board
(Linux, the Python runtime) is checked against a profile measured where it runs::

    name = "rpi4"
    board = "Raspberry Pi 4 Model B ..."
    [limits]
    latency_p95_ms = 50.0   # decision latency (push of one hop -> result), p95
    peak_rss_mb = 200.0     # peak resident set of the whole runtime process
    model_bytes = 1048576   # size of the model file

A microcontroller (``kind = "mcu"``, TFLite Micro firmware) is checked against the sizes
the exporter recorded (`edge_runtime.mcu`); its latency can only be estimated::

    name = "nrf52840"
    board = "Nordic nRF52840 ..."
    kind = "mcu"
    [limits]
    ram_bytes = 196608        # tensor arena + input buffer
    flash_bytes = 786432      # model bytes (the C array)
    footprint_bytes = 196608  # optional: arena + input buffer + model bytes
    [estimate]
    macs_per_s = 32e6         # stated MAC rate; latency estimate = MACs / rate, never a pass/fail

Python 3.11 reads it with `tomllib`; on 3.10 a minimal reader for this flat format is used
(no extra dependency on the board).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import BudgetError
from edge_runtime.profiling import ProfileReport

BUDGET_DIR = Path(__file__).with_name("budgets")
LIMITS = ("latency_p95_ms", "peak_rss_mb", "model_bytes")
MCU_LIMITS = ("ram_bytes", "flash_bytes")


@dataclass(frozen=True)
class Budget:
    name: str
    board: str
    latency_p95_ms: float
    peak_rss_mb: float
    model_bytes: int
    path: str


@dataclass(frozen=True)
class McuBudget:
    """A microcontroller running the C array with TFLite Micro (sizes in bytes)."""

    name: str
    board: str
    ram_bytes: int  # tensor arena + input buffer may use this much RAM
    flash_bytes: int  # the model (C array) may use this much flash
    footprint_bytes: int | None  # arena + input buffer + model bytes, if the budget caps it
    macs_per_s: float | None  # stated MAC rate, only for a labelled latency estimate
    path: str
    kind: str = "mcu"


@dataclass(frozen=True)
class CheckRow:
    metric: str
    measured: float
    limit: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.measured <= self.limit


def _parse_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return _parse_flat_toml(text)
    return tomllib.loads(text)


def _parse_flat_toml(text: str) -> dict:
    """`key = value` lines (numbers, plain strings) under optional `[table]` headers."""
    out: dict = {}
    table = out
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            table = out.setdefault(line[1:].split("]", 1)[0].strip(), {})
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep:
            raise ValueError(f"line {n}: expected `key = value`, got {line!r}")
        if value.startswith('"'):
            table[key] = value[1:value.index('"', 1)]
        else:
            number = value.split("#", 1)[0].strip()
            table[key] = float(number) if any(c in number for c in ".eE") else int(number)
    return out


def list_budgets() -> list[Budget | McuBudget]:
    """The budgets shipped with the runtime, by name."""
    return [load_budget(p) for p in sorted(BUDGET_DIR.glob("*.toml"))]


def load_budget(name_or_path: str | Path) -> Budget | McuBudget:
    """A shipped budget by name (``rpi4``, ``nrf52840``) or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = BUDGET_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(BUDGET_DIR.glob("*.toml")))
            raise BudgetError(f"no budget named {name_or_path!r}; shipped: {known}; or give "
                              f"a .toml file.")
    if not path.is_file():
        raise BudgetError(f"budget file {path} does not exist.")
    mcu = False
    try:
        d = _parse_toml(path.read_text(encoding="utf-8"))
        mcu = d.get("kind", "board") == "mcu"
        limits, name, board = d["limits"], str(d.get("name", path.stem)), str(d.get("board", ""))
        if mcu:
            footprint, rate = limits.get("footprint_bytes"), d.get("estimate", {}).get("macs_per_s")
            return McuBudget(name=name, board=board, ram_bytes=int(limits["ram_bytes"]),
                             flash_bytes=int(limits["flash_bytes"]),
                             footprint_bytes=None if footprint is None else int(footprint),
                             macs_per_s=None if rate is None else float(rate), path=str(path))
        return Budget(name=name, board=board, latency_p95_ms=float(limits["latency_p95_ms"]),
                      peak_rss_mb=float(limits["peak_rss_mb"]),
                      model_bytes=int(limits["model_bytes"]), path=str(path))
    except KeyError as exc:
        need = f'kind = "mcu" and [limits] with {", ".join(MCU_LIMITS)}' if mcu else \
            f"[limits] with {', '.join(LIMITS)}"
        raise BudgetError(f"{path} lacks {exc.args[0]!r}; a budget needs {need}.") from exc
    except (ValueError, TypeError, SyntaxError, AttributeError) as exc:
        raise BudgetError(f"{path} is not a valid budget file: {exc}") from exc


def check_budget(report: ProfileReport, budget: Budget) -> list[CheckRow]:
    """Measured vs allowed, one row per limit."""
    return [
        CheckRow("decision latency p95", report.decision_ms["p95"], budget.latency_p95_ms, "ms"),
        CheckRow("peak RSS", report.peak_rss_mb, budget.peak_rss_mb, "MB"),
        CheckRow("model size", float(report.model_bytes), float(budget.model_bytes), "bytes"),
    ]


def check_mcu(footprint, budget: McuBudget) -> list[CheckRow]:
    """An `edge_runtime.mcu.McuFootprint` vs an MCU budget, one row per limit (bytes)."""
    rows = [
        CheckRow("RAM: tensor arena + input buffer", float(footprint.ram_bytes),
                 float(budget.ram_bytes), "bytes"),
        CheckRow("flash: model (C array)", float(footprint.model_bytes),
                 float(budget.flash_bytes), "bytes"),
    ]
    if budget.footprint_bytes is not None:
        rows.append(CheckRow("arena + input buffer + model", float(footprint.total_bytes),
                             float(budget.footprint_bytes), "bytes"))
    return rows
