"""What a GPU's energy counter can resolve, measured: its update period, idle power, power cap.

    from trainables.training.gpu_counter import probe_gpu
    monitor = zeus_monitor([gpu])                          # trainables.training.gpus
    probe = probe_gpu(monitor.gpus, monitor.gpu_indices[0])  # GpuProbe(update_period_s=0.1, idle_w=68.2, ...)

Through Zeus's device layer, on the GPU list `zeus_monitor` sets up. NVML's
cumulative energy counter (mJ, Volta and newer) does
not advance continuously: it jumps about every 100 ms, so any window boundary can
be off by up to one step of energy. The period is measured, not assumed; one
probe per GPU per process is cached (`probe_gpu`), taken before the process's
first trial on that GPU while nothing of ours runs on it: a trial retried on
another GPU probes that one.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass

NAN = float("nan")
POLL_S = 0.0005  # between counter reads while probing
MIN_IDLE_PERIODS = 10  # idle power averages at least this many counter periods


@dataclass(frozen=True)
class GpuProbe:
    """One GPU's counter, measured. Seconds, watts; NaN where the GPU has no energy counter."""

    index: int  # Zeus's index of the GPU (see trainables.training.gpus.zeus_monitor)
    name: str
    update_period_s: float  # median time between counter changes
    idle_w: float  # mean power over >= MIN_IDLE_PERIODS periods, between counter changes
    idle_err_w: float  # uncertainty of idle_w: how late changes were seen, against the time spanned
    max_power_w: float  # the highest power limit NVML allows (Zeus's MaxPower), NaN where unknown


def counter_changes(read_mj, n_changes: int, timeout_s: float) -> list[tuple[float, int]]:
    """(time, value) at the first read after each of `n_changes` counter changes; [] on timeout."""
    deadline = time.monotonic() + timeout_s
    last = read_mj()
    changes: list[tuple[float, int]] = []
    while len(changes) < n_changes and time.monotonic() < deadline:
        value = read_mj()
        if value != last:
            changes.append((time.monotonic(), value))
            last = value
        else:
            time.sleep(POLL_S)
    return changes if len(changes) == n_changes else []


def measure_counter(read_mj, timeout_s: float = 5.0) -> tuple[float, float, float]:
    """(update period s, mean power W, its error W) of an energy counter read by `read_mj`,
    over MIN_IDLE_PERIODS periods (about 1.2 s at 100 ms); NaNs where it did not change."""
    changes = counter_changes(read_mj, MIN_IDLE_PERIODS + 2, timeout_s)
    if not changes:
        return NAN, NAN, NAN
    intervals = [b[0] - a[0] for a, b in zip(changes, changes[1:])]
    (t0, e0), (t1, e1) = changes[1], changes[-1]  # the first change only aligns the clock
    power_w = (e1 - e0) / 1000.0 / (t1 - t0)
    # Each change is seen up to one poll (plus scheduling delay, seen in the intervals' spread) late.
    jitter_s = 2 * POLL_S + max(intervals) - min(intervals)
    return statistics.median(intervals), power_w, power_w * jitter_s / (t1 - t0)


@functools.lru_cache(maxsize=None)
def probe_gpu(gpus, index: int, timeout_s: float = 5.0) -> GpuProbe:
    """Measure the counter period and idle power of GPU `index` of Zeus's GPU list `gpus` (about
    1.2 s at a 100 ms period). Only for a GPU whose counter answers (`trainables.training.gpus.energy_note`)."""
    name = gpus.get_name(index)
    try:
        max_power_w = gpus.get_power_management_limit_constraints(index)[1] / 1000.0
    except Exception:  # noqa: BLE001 - not every GPU or driver reports it
        max_power_w = NAN
    period_s, idle_w, idle_err_w = measure_counter(lambda: gpus.get_total_energy_consumption(index), timeout_s)
    return GpuProbe(index, name, period_s, idle_w, idle_err_w, max_power_w)
