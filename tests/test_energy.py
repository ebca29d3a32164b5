"""Energy meter over real Zeus: on this machine no GPU and no RAPL, so energy is NaN, never 0."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainables.training.energy import EnergyMeter, EnergyWindow, energy_source, rapl_readable


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


# -- The GPU path, on a fake NVML counter (this machine has no NVIDIA GPU). -----------------
# Only NVML's device calls are replaced (tests/fake_nvml/pynvml.py); Zeus's real code runs on
# top. Each scenario runs in a fresh interpreter, since Zeus caches the GPUs it found.

FAKE_NVML = Path(__file__).with_name("fake_nvml")
POWER_W = 250.0


def run_with_fake_gpu(code: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(FAKE_NVML), "FAKE_NVML_POWER_W": str(POWER_W), **env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gpu_windows_measure_joules_and_flag_short_windows():
    got = run_with_fake_gpu("""
        import json, time
        from trainables.training.energy import EnergyMeter
        meter = EnergyMeter(gpu_indices=[0])
        meter.start()
        windows = []
        for seconds in (0.25, 1.2, 0.25):
            time.sleep(seconds)
            windows.append(meter.lap())
        windows.append(meter.stop())
        print(json.dumps({"source": meter.source, "windows": [
            [w.time_s, w.gpu_j, w.energy_j, w.below_resolution, w.source] for w in windows]}))
    """)
    assert got["source"] == "gpu"
    (short, long_, short2, last) = got["windows"]
    for time_s, gpu_j, energy_j, below, source in got["windows"]:
        assert source == "gpu" and gpu_j == energy_j
        assert gpu_j == pytest.approx(POWER_W * time_s, abs=POWER_W * 0.1 + 1)  # counter steps: 100 ms
    assert short[3] and short2[3] and last[3] and not long_[3]  # under 1 s: flagged
    # Contiguous windows: per-window joules add up to the counter's advance over all of them.
    total_s = sum(w[0] for w in got["windows"])
    assert sum(w[1] for w in got["windows"]) == pytest.approx(POWER_W * total_s, abs=POWER_W * 0.1 + 1)


def test_zeus_loads_without_scikit_learn_until_a_gpu_without_energy_counter_needs_it():
    """Zeus imports scikit-learn for one function; trial processes skip it (70 MiB) until it is
    called: on a GPU older than Volta, Zeus integrates sampled power with it, and gets joules."""
    got = run_with_fake_gpu("""
        import json, sys, time
        from trainables.training.energy import EnergyMeter
        EnergyMeter(gpu_indices=[]).close()
        loaded_for_cpu = "sklearn" in sys.modules
        import zeus.monitor.power
        meter = EnergyMeter(gpu_indices=[0])
        meter.start()
        time.sleep(1.5)
        window = meter.stop()
        metrics = sys.modules.get("sklearn.metrics")
        print(json.dumps({"loaded_for_cpu": loaded_for_cpu, "time_s": window.time_s, "gpu_j": window.gpu_j,
                          "real_sklearn": hasattr(metrics, "roc_auc_score"),
                          "auc": zeus.monitor.power.auc([0.0, 1.0, 3.0], [2.0, 4.0, 4.0])}))
    """, FAKE_NVML_ARCH="PASCAL")
    assert not got["loaded_for_cpu"]
    assert got["gpu_j"] == pytest.approx(POWER_W * got["time_s"], abs=POWER_W * 0.2)  # 100 ms samples
    assert got["real_sklearn"] and got["auc"] == 11.0


def test_a_zeus_that_needs_more_of_scikit_learn_is_imported_plainly(tmp_path):
    """Should a Zeus release import more of scikit-learn than `auc`, it still loads, for real."""
    monitor = tmp_path / "zeus" / "monitor"
    monitor.mkdir(parents=True)
    (tmp_path / "zeus" / "__init__.py").write_text("")
    (monitor / "__init__.py").write_text(
        "from sklearn.metrics import auc\nfrom sklearn.linear_model import LinearRegression\n"
        "class ZeusMonitor:\n    fit = LinearRegression\n")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json
        from trainables.training.zeus_import import zeus_monitor_class
        monitor = zeus_monitor_class()
        print(json.dumps([monitor.__module__, monitor.fit.__module__]))
    """)], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    module, fit_module = json.loads(out.stdout.strip().splitlines()[-1])
    assert module == "zeus.monitor" and fit_module.startswith("sklearn.linear_model")


def test_training_energy_sums_per_epoch_and_continues_after_a_checkpoint():
    got = run_with_fake_gpu("""
        import json, sys
        sys.path.insert(0, "tests")
        from conftest import blobs
        from trainables.training.config import TrainConfig
        from trainables.training.stop import StopRule
        from trainables.training.energy import EnergyMeter
        from trainables.data.splits import prepare_splits
        from trainables.training.run import TrainingRun
        x, y = blobs(20000, seed=0)
        splits = prepare_splits(x, y, x[:500], y[:500], 0.2, 0)
        config, rule = TrainConfig(batch_size=32), StopRule(threshold=None, max_epochs=4)
        run = TrainingRun(splits, config, rule, meter=EnergyMeter(gpu_indices=[0]))
        first = [run.run_epoch(), run.run_epoch()]
        state = run.state_dict()
        run.close()
        again = TrainingRun(splits, config, rule, meter=EnergyMeter(gpu_indices=[0]))
        again.load_state_dict(state)
        rest = [again.run_epoch(), again.run_epoch()]
        print(json.dumps([[r.epoch, r.epoch_energy_j, r.energy_j, r.gpu_energy_j, r.energy_source,
                           r.time_s, r.overhead_time_s, r.overhead_energy_j] for r in first + rest]))
    """)
    assert [r[0] for r in got] == [1, 2, 3, 4]
    assert all(r[4] == "gpu" and r[1] >= 0 for r in got)
    assert got[1][2] == pytest.approx(got[0][1] + got[1][1])  # cumulative = sum of epochs
    assert got[2][2] == pytest.approx(got[1][2] + got[2][1])  # the retry continues the sum
    assert got[3][2] == pytest.approx(sum(r[1] for r in got))
    assert got[3][2] > 0
    # Between-epoch windows are measured too: time and energy of every window add up.
    assert got[1][7] >= 0 and got[1][6] > 0
    total_s = got[3][5] + got[3][6]
    assert got[3][2] + got[3][7] == pytest.approx(POWER_W * total_s, abs=POWER_W * 0.2 + 1)


def test_trial_without_gpu_on_a_gpu_node_measures_no_gpu():
    """Ray gives a zero-GPU trial CUDA_VISIBLE_DEVICES="": no GPU is measured, nothing fails."""
    got = run_with_fake_gpu("""
        import json
        from trainables.training.energy import EnergyMeter
        meter = EnergyMeter()
        meter.start()
        w = meter.stop()
        print(json.dumps([meter.source, meter.gpu_indices, w.energy_j]))
    """, CUDA_VISIBLE_DEVICES="")
    assert got[0] in ("none", "cpu") and got[1] == []


def test_rapl_readable_says_whether_a_cpu_energy_counter_can_be_read(tmp_path):
    """What `race: energy` checks before a local sweep on CPUs (RAPL files faked; the real ones may exist)."""
    assert rapl_readable(str(tmp_path)) is False  # no RAPL at all
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("not a number\n")
    assert rapl_readable(str(tmp_path)) is False
    (zone / "energy_uj").write_text("123456789\n")
    assert rapl_readable(str(tmp_path)) is True
