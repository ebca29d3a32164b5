"""Energy meter over real Zeus: on this machine no GPU and no RAPL, so energy is NaN, never 0."""

import math

import pytest

from trainables.energy import EnergyMeter, EnergyWindow, energy_source


def _has_measurable_energy() -> bool:
    return EnergyMeter().source != "none"


@pytest.mark.skipif(_has_measurable_energy(), reason="this machine measures energy")
def test_without_gpu_or_rapl_energy_is_missing_and_time_is_measured():
    meter = EnergyMeter()
    assert meter.source == "none" and meter.gpu_indices == []
    meter.start()
    sum(range(200_000))
    first = meter.lap()
    second = meter.stop()
    for window in (first, second):
        assert window.source == "none"
        assert math.isnan(window.energy_j) and math.isnan(window.gpu_j) and math.isnan(window.cpu_j)
        assert window.time_s > 0
        assert not window.below_resolution  # nothing measured, nothing to flag


def test_window_sums_and_flags():
    w = EnergyWindow(time_s=0.5, gpu_j=10.0, cpu_j=float("nan"), source="gpu", below_resolution=True)
    assert w.energy_j == 10.0
    both = EnergyWindow(time_s=2.0, gpu_j=10.0, cpu_j=2.5, source="gpu+cpu", below_resolution=False)
    assert both.energy_j == 12.5
    assert [energy_source(g, c) for g, c in [(1, 1), (1, 0), (0, 1), (0, 0)]] == [
        "gpu+cpu", "gpu", "cpu", "none"]


def test_lap_windows_are_contiguous():
    """Back-to-back windows: their times add up to the wall time across them."""
    import time

    meter = EnergyMeter()
    t0 = time.perf_counter()
    meter.start()
    laps = []
    for _ in range(5):
        time.sleep(0.02)
        laps.append(meter.lap())
    laps.append(meter.stop())
    wall = time.perf_counter() - t0
    assert sum(w.time_s for w in laps) == pytest.approx(wall, abs=0.01)


def test_stop_without_start_is_an_error():
    with pytest.raises(RuntimeError, match="no window"):
        EnergyMeter().stop()
