"""Board budgets: how slow, big and hungry a model may be on a given board.

A budget is a small TOML file (shipped ones live in ``edge_runtime/budgets/``)::

    name = "rpi4"
    board = "Raspberry Pi 4 Model B ..."
    [limits]
    latency_p95_ms = 50.0   # decision latency (push of one hop -> result), p95
    peak_rss_mb = 200.0     # peak resident set of the whole runtime process
    model_bytes = 1048576   # size of the model file

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


@dataclass(frozen=True)
class Budget:
    name: str
    board: str
    latency_p95_ms: float
    peak_rss_mb: float
    model_bytes: int
    path: str


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


def list_budgets() -> list[Budget]:
    """The budgets shipped with the runtime, by name."""
    return [load_budget(p) for p in sorted(BUDGET_DIR.glob("*.toml"))]


def load_budget(name_or_path: str | Path) -> Budget:
    """A shipped budget by name (``rpi4``) or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = BUDGET_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(BUDGET_DIR.glob("*.toml")))
            raise BudgetError(f"no budget named {name_or_path!r}; shipped: {known}; or give "
                              f"a .toml file.")
    if not path.is_file():
        raise BudgetError(f"budget file {path} does not exist.")
    try:
        d = _parse_toml(path.read_text(encoding="utf-8"))
        limits = d["limits"]
        return Budget(name=str(d.get("name", path.stem)), board=str(d.get("board", "")),
                      latency_p95_ms=float(limits["latency_p95_ms"]),
                      peak_rss_mb=float(limits["peak_rss_mb"]),
                      model_bytes=int(limits["model_bytes"]), path=str(path))
    except KeyError as exc:
        raise BudgetError(f"{path} lacks {exc.args[0]!r}; a budget needs [limits] with "
                          f"{', '.join(LIMITS)}.") from exc
    except (ValueError, TypeError, SyntaxError) as exc:
        raise BudgetError(f"{path} is not a valid budget file: {exc}") from exc


def check_budget(report: ProfileReport, budget: Budget) -> list[CheckRow]:
    """Measured vs allowed, one row per limit."""
    return [
        CheckRow("decision latency p95", report.decision_ms["p95"], budget.latency_p95_ms, "ms"),
        CheckRow("peak RSS", report.peak_rss_mb, budget.peak_rss_mb, "MB"),
        CheckRow("model size", float(report.model_bytes), float(budget.model_bytes), "bytes"),
    ]
