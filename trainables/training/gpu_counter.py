"""A GPU's energy counter, measured: when it updates, its period, idle power, power cap.

    from trainables.training.gpu_counter import next_update, probe_gpu
    monitor = zeus_monitor([gpu])                            # trainables.training.gpus
    probe = probe_gpu(monitor.gpus, monitor.gpu_indices[0])  # GpuProbe(update_period_s=0.1, idle_w=124.0, ...)
    update = next_update(read_mj)                            # CounterUpdate: when the counter last changed, its value

Through Zeus's device layer, on the GPU list `zeus_monitor` sets up. NVML's cumulative
energy counter (mJ, Volta and newer) does not advance continuously: it jumps about every
100 ms to the energy up to that instant. A read between updates returns the last update's
value, so a window read at arbitrary instants is off by up to one step (power x period) at
each end; a window that starts and ends on updates (`next_update`: poll until the value
changes) holds exactly the energy between them, and only the updates' instants are
uncertain, by about one read (3.9 ms on an H200 VM). The period is measured, not assumed.

Probes are cached per GPU, process and kind: "bare" (taken before the process opened a CUDA
context: `EnergyMeter`), "context" (with the trial's model on the GPU: the idle power a trial
draws while it does not compute, subtracted for its dynamic energy). NVML's list of processes
holding a context on the GPU says whether the bare probe really was taken without one.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass

NAN = float("nan")
POLL_S = 0.0005  # between counter reads while waiting for an update
PROBE_PERIODS = {"bare": 3, "context": 5}  # idle power over this many counter periods (0.35 s and 0.55 s at 100 ms) ...
PROBE_MIN_S = 0.3  # ... and this many seconds at least (a faster counter: more periods, as cheap)


@dataclass(frozen=True)
class CounterUpdate:
    """An observed change of the counter. Seconds on `time.perf_counter`; the counter in mJ.

    The change happened between the two reads around it: after the first began and before the second
    returned (each samples the counter somewhere inside its call). `at_s` is halfway, off by at most
    `half_width_s` (about one read and the pause between reads)."""

    at_s: float
    half_width_s: float
    mj: float


@dataclass(frozen=True)
class GpuProbe:
    """One GPU's counter, measured. Seconds, watts; NaN where the GPU has no energy counter."""

    index: int  # Zeus's index of the GPU (see trainables.training.gpus.zeus_monitor)
    name: str
    update_period_s: float  # median time between counter updates
    idle_w: float  # mean power between the first and last of the probe's updates
    idle_err_w: float  # its uncertainty: the first and last updates' instants, each within about one read
    max_power_w: float  # the highest power limit NVML allows (Zeus's MaxPower), NaN where unknown
    contexts: int  # processes NVML listed with a CUDA context on the GPU during the probe (-1: NVML cannot say)


def next_update(read_mj, timeout_s: float = 1.0, not_before_s: float = -math.inf) -> CounterUpdate | None:
    """Poll `read_mj` (the counter, mJ) until it changes, with every read before the change taken at
    or after `not_before_s` (perf_counter seconds): the change happened after it. None on timeout."""
    deadline = time.perf_counter() + timeout_s
    if not_before_s > time.perf_counter():
        time.sleep(not_before_s - time.perf_counter())
    last_began = time.perf_counter()
    last = read_mj()
    while time.perf_counter() < deadline:
        time.sleep(POLL_S)
        began = time.perf_counter()
        value = read_mj()
        seen = time.perf_counter()
        if value != last:  # it changed after the last read began and before this one returned
            return CounterUpdate(at_s=(last_began + seen) / 2, half_width_s=(seen - last_began) / 2, mj=float(value))
        last_began = began
    return None


def updates(read_mj, count: int, timeout_s: float, min_span_s: float = 0.0) -> list[CounterUpdate]:
    """At least `count` consecutive counter updates, spanning `min_span_s`; [] where the counter stalls for
    `timeout_s`."""
    found: list[CounterUpdate] = []
    while len(found) < count or found[-1].at_s - found[0].at_s < min_span_s:
        update = next_update(read_mj, timeout_s)
        if update is None:
            return []
        found.append(update)
    return found


def power_between(first: CounterUpdate, last: CounterUpdate) -> tuple[float, float]:
    """(mean power W, its uncertainty W) between two counter updates: their joules are exact, their
    instants off by up to each's half width."""
    span_s = last.at_s - first.at_s
    if span_s <= 0:
        return NAN, NAN
    power_w = (last.mj - first.mj) / 1000.0 / span_s
    return power_w, abs(power_w) * (first.half_width_s + last.half_width_s) / span_s


def measure_counter(read_mj, periods: int = PROBE_PERIODS["context"], timeout_s: float = 5.0
                    ) -> tuple[float, float, float]:
    """(update period s, mean power W, its error W) of an energy counter read by `read_mj`, over `periods`
    periods and PROBE_MIN_S at least (about one period more); NaNs where it did not change."""
    found = updates(read_mj, periods + 1, timeout_s, PROBE_MIN_S)
    if not found:
        return NAN, NAN, NAN
    intervals = [b.at_s - a.at_s for a, b in zip(found, found[1:])]
    return (statistics.median(intervals), *power_between(found[0], found[-1]))


def running_contexts(handle) -> int:
    """How many processes NVML lists with a CUDA context on the GPU of `handle`; -1 where it cannot say."""
    try:
        import pynvml

        return len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except Exception:  # noqa: BLE001 - not every driver (or container) lists them
        return -1


@functools.lru_cache(maxsize=None)
def probe_gpu(gpus, index: int, kind: str = "context", timeout_s: float = 5.0) -> GpuProbe:
    """Measure the counter period and idle power of GPU `index` of Zeus's GPU list `gpus` (`measure_counter`
    over PROBE_PERIODS[kind] periods). Only for a GPU whose counter answers (`trainables.training.gpus.energy_note`)."""
    name = gpus.get_name(index)
    try:
        max_power_w = gpus.get_power_management_limit_constraints(index)[1] / 1000.0
    except Exception:  # noqa: BLE001 - not every GPU or driver reports it
        max_power_w = NAN
    handle = getattr(gpus.gpus[index], "handle", None) if hasattr(gpus, "gpus") else None
    before = running_contexts(handle)
    period_s, idle_w, idle_err_w = measure_counter(lambda: gpus.get_total_energy_consumption(index),
                                                   PROBE_PERIODS[kind], timeout_s)
    contexts = max(before, running_contexts(handle))
    return GpuProbe(index, name, period_s, idle_w, idle_err_w, max_power_w, contexts)
