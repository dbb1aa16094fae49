"""Board and MCU budgets: shipped TOML files, the 3.10 fallback reader, the check rows."""

from __future__ import annotations

import pytest

from edge_runtime import BudgetError
from edge_runtime.budgets import (
    BUDGET_DIR,
    McuBudget,
    _parse_flat_toml,
    check_budget,
    check_mcu,
    list_budgets,
    load_budget,
)
from edge_runtime.mcu import McuFootprint, estimate_latency_ms
from edge_runtime.profiling import ProfileReport


def test_shipped_budgets_load_and_explain_their_basis():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    names = {b.name for b in list_budgets()}
    assert names == {"rpi4", "rpi5", "jetson-nano", "jetson-orin-nano",
                     "nrf52840", "stm32h743", "esp32-s3"}
    for path in BUDGET_DIR.glob("*.toml"):
        text = path.read_text()
        assert "Basis" in text, f"{path.name} must say where its numbers come from"
        assert _parse_flat_toml(text) == tomllib.loads(text)  # the 3.10 fallback agrees
    rpi4 = load_budget("rpi4")
    assert rpi4.latency_p95_ms > 0 and rpi4.peak_rss_mb > 0 and rpi4.model_bytes > 0
    assert load_budget(rpi4.path) == rpi4


def test_bad_budgets_are_clear_errors(tmp_path):
    with pytest.raises(BudgetError, match="no budget named 'rpi9'.*rpi4"):
        load_budget("rpi9")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[limits]\nlatency_p95_ms = 3\n')
    with pytest.raises(BudgetError, match="lacks 'peak_rss_mb'"):
        load_budget(bad)
    with pytest.raises(BudgetError, match="does not exist"):
        load_budget(tmp_path / "nope.toml")


def test_check_rows_compare_each_limit():
    rep = ProfileReport(model_dir="m", artifact="a", backend="onnx", precision="int8",
                        threads=1, model_bytes=2_000_000, load_s=0.1, first_inference_ms=1.0,
                        n_windows=10, warmup=1, latency_ms={"p95": 1.0},
                        decision_ms={"p95": 49.0}, decision_ratio=1.0, throughput_wps=1.0,
                        model_ms_per_window=1.0, overhead_ms_per_window=1.0,
                        peak_rss_mb=250.0, machine="x", python="3.11")
    rows = check_budget(rep, load_budget("rpi4"))
    assert [(r.metric, r.ok) for r in rows] == [
        ("decision latency p95", True), ("peak RSS", False), ("model size", False)]


def test_mcu_budgets_state_ram_flash_and_a_mac_rate():
    nrf = load_budget("nrf52840")
    assert isinstance(nrf, McuBudget) and nrf.kind == "mcu"
    assert (nrf.ram_bytes, nrf.flash_bytes, nrf.footprint_bytes) == (196_608, 786_432, 196_608)
    assert nrf.ram_bytes <= 256 * 1024 and nrf.flash_bytes <= 1024 * 1024
    assert load_budget("stm32h743").ram_bytes <= 1024 * 1024
    assert load_budget("stm32h743").flash_bytes <= 2 * 1024 * 1024
    assert load_budget("esp32-s3").ram_bytes <= 512 * 1024
    for name in ("nrf52840", "stm32h743", "esp32-s3"):
        assert "estimate" in (BUDGET_DIR / f"{name}.toml").read_text()
        assert load_budget(name).macs_per_s > 0


def test_mcu_check_rows_and_estimate(tmp_path):
    fp = McuFootprint(arena_bytes=100_000, input_buffer_bytes=19_000, model_bytes=80_000,
                      macs=3_200_000, runtime="tflite-micro x", ops=("CONV_2D",))
    rows = check_mcu(fp, load_budget("nrf52840"))
    assert [(r.metric, r.measured, r.ok) for r in rows] == [
        ("RAM: tensor arena + input buffer", 119_000, True),
        ("flash: model (C array)", 80_000, True),
        ("arena + input buffer + model", 199_000, False)]
    assert rows[0].unit == "bytes"
    assert estimate_latency_ms(fp, 32e6) == pytest.approx(100.0)
    assert estimate_latency_ms(fp, None) is None
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "m"\nkind = "mcu"\n[limits]\nram_bytes = 3\n')
    with pytest.raises(BudgetError, match="lacks 'flash_bytes'.*kind = \"mcu\""):
        load_budget(bad)
