"""Per-window time and energy from Zeus, in contiguous windows.

`EnergyMeter` reads the counters of Zeus's device layer (the GPUs and CPUs a
`zeus.monitor.ZeusMonitor` set up): the one GPU a trial trains on, where
`trainables.training.gpus` finds its energy measurable (named by UUID; none on the
CPU or without a GPU), and CPU/DRAM energy through RAPL where readable.

Semantics (docs/energy.md, "The headline: the trial's own GPU joules"):
- `lap()` ends the current window and begins the next at one instant: one clock
  read and one read of each counter are the end of the one and the start of the
  other, so the windows of one trial leave no gap in time or energy and their
  joules add up to the trial's total. (Zeus's own begin/end windows each read the
  clock and then the counters: an end's reads fell in no window, one NVML read a
  lap, 4 ms on an H200 VM, where an epoch at batch 128 takes 5 ms.) A boundary
  costs about 5 us without a GPU (`benchmarks/bench_energy.py`); on a GPU add a
  CUDA sync and one counter read, which fall in the window that begins.
- GPU and CPU (package + DRAM, the whole node's) joules are kept apart; a trial's
  headline energy is its GPU's, as Zeus's `total_energy` (see `TrainingRun`).
- Missing energy is NaN with source "none", never 0, and `note` says why where a
  GPU was there to measure. Time is always measured.
- NVML's energy counter updates in steps (about every 100 ms): the meter carries
  its GPU's measured period and idle power (`probe`), from which a run derives
  the error of its sums (`energy_err_j`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from trainables.training.gpus import TrialGpus, error_text, one_line, trial_gpus, zeus_monitor

NAN = float("nan")
ERR_SIGMAS = 2.5  # counter_error_j spans this many standard deviations of the counter's step error


def counter_error_j(joules: float, seconds: float, idle_w: float, period_s: float, gap_variance: float) -> float:
    """Uncertainty (about ERR_SIGMAS sigma) of GPU joules summed over contiguous windows.

    Each boundary reads the counter's last step, so the span's two ends are each
    up to one step late, and each excluded window between the summed ones takes a
    whole step or none depending on whether the counter ticked inside it:
    `gap_variance` sums f(1 - f) over them, f = frac(its length / `period_s`).
    A step is (power x period); power is the windows' mean, at least `idle_w`.
    """
    mean_w = joules / seconds if seconds > 0 else 0.0
    power_w = max(mean_w, idle_w if math.isfinite(idle_w) else 0.0)
    return ERR_SIGMAS * power_w * period_s * math.sqrt(gap_variance + 1 / 6)


@dataclass(frozen=True)
class EnergyWindow:
    """One measured window: seconds and joules (NaN where not measured)."""

    time_s: float
    gpu_j: float
    cpu_j: float  # CPU packages plus DRAM, where RAPL is readable
    source: str  # what was measured: "gpu", "cpu", "gpu+cpu" or "none"

    @property
    def energy_j(self) -> float:
        """GPU plus CPU joules over what was measured; NaN when nothing was."""
        parts = [j for j in (self.gpu_j, self.cpu_j) if not math.isnan(j)]
        return sum(parts) if parts else NAN


def energy_source(has_gpu: bool, has_cpu: bool) -> str:
    if has_gpu and has_cpu:
        return "gpu+cpu"
    if has_gpu:
        return "gpu"
    if has_cpu:
        return "cpu"
    return "none"


class EnergyMeter:
    """Contiguous time/energy windows over Zeus's counters, for the GPU `gpus` says a trial trains on.

        meter = EnergyMeter(trial_gpus(ray_ids)); meter.start()
        for epoch in ...: train(); w = meter.lap()   # w.time_s, w.energy_j, ...
        meter.close()

    Where that GPU's energy is not measured (`TrialGpus.note`), or Zeus fails to set up or to
    read it (an NVML error mid-trial), windows go on with time (and RAPL CPU joules where Zeus
    still reads them) and GPU joules NaN, and `note` says why, in one line.
    """

    def __init__(self, gpus: TrialGpus | None = None, cpu: bool = True) -> None:
        gpus = gpus if gpus is not None else trial_gpus()
        self.note = gpus.note
        self.gpu_uuid = gpus.gpu.uuid if gpus.gpu else ""  # the GPU trained on, measured or not
        # Windows wait for queued CUDA work to finish, so a GPU epoch is charged to its own window.
        self._sync_device = gpus.device if gpus.device.type == "cuda" else None
        self.probe = None  # the measured GPU's counter: its update period and idle power, before any window
        logging.getLogger("zeus").setLevel(logging.WARNING)
        self._monitor = None
        try:
            self._monitor = zeus_monitor([gpus.gpu] if gpus.measured else [], cpu)
            if self._monitor.gpu_indices:
                from trainables.training.gpu_counter import probe_gpu

                self.probe = probe_gpu(self._monitor.gpus, self._monitor.gpu_indices[0])
        except Exception as exc:  # noqa: BLE001 - Zeus could not set up or read the GPU: time (and CPU) go on
            self.note = self.note or one_line(f"Zeus could not measure GPU {self.gpu_uuid or '?'}: {error_text(exc)}")
            self.probe = None
            try:
                self._monitor = zeus_monitor([], cpu)
            except Exception:  # noqa: BLE001 - nor anything else: time alone
                self._monitor = None
        self.gpu_indices = list(self._monitor.gpu_indices) if self._monitor else []  # Zeus's indices
        self.cpu_indices = list(self._monitor.cpu_indices) if self._monitor else []
        self.source = energy_source(bool(self.gpu_indices), bool(self.cpu_indices))
        self._mark: tuple[float, float, float] | None = None  # the open window's start: (s, GPU mJ, CPU mJ)

    @property
    def update_period_s(self) -> float:
        """The GPU counter's measured update period; NaN without a measured GPU."""
        return self.probe.update_period_s if self.probe else NAN

    def start(self) -> None:
        """Begin the first window."""
        self._mark = self._read()

    def lap(self) -> EnergyWindow:
        """End the current window and begin the next at the same instant; return the ended one."""
        now = self._read()
        window, self._mark = self._window_to(now), now
        return window

    def stop(self) -> EnergyWindow:
        """End the current window without beginning another."""
        window, self._mark = self._window_to(self._read()), None
        return window

    def close(self) -> None:
        """Forget a window left open."""
        self._mark = None

    def _sync(self) -> None:
        if self._sync_device is not None:
            import torch

            torch.cuda.synchronize(self._sync_device)

    def _read(self) -> tuple[float, float, float]:
        """(seconds, GPU mJ, CPU + DRAM mJ) now, after queued CUDA work has finished; NaN for what is
        not measured. An NVML error mid-trial ends GPU (and CPU) energy for the rest (`_lost`)."""
        self._sync()
        now_s, gpu_mj, cpu_mj = time.perf_counter(), NAN, NAN
        if self._monitor is not None:
            try:
                if self.gpu_indices:
                    gpu_mj = float(sum(self._monitor.gpus.get_total_energy_consumption(i) for i in self.gpu_indices))
                if self.cpu_indices:
                    parts = [self._monitor.cpus.get_total_energy_consumption(i) for i in self.cpu_indices]
                    cpu_mj = float(sum(p.cpu_mj + (p.dram_mj or 0.0) for p in parts))
            except Exception as exc:  # noqa: BLE001 - an NVML error mid-trial
                self._lost(exc)
                gpu_mj = cpu_mj = NAN
        return now_s, gpu_mj, cpu_mj

    def _window_to(self, now: tuple[float, float, float]) -> EnergyWindow:
        if self._mark is None:
            raise RuntimeError("EnergyMeter: no window is open; call start() first")
        (began_s, gpu0, cpu0), (now_s, gpu1, cpu1) = self._mark, now
        source = self.source if math.isfinite(gpu1 - gpu0) or math.isfinite(cpu1 - cpu0) else "none"
        return EnergyWindow(time_s=now_s - began_s, gpu_j=(gpu1 - gpu0) / 1000.0, cpu_j=(cpu1 - cpu0) / 1000.0,
                            source=source)

    def _lost(self, exc: Exception) -> None:
        """Zeus failed mid-trial: from here on, time alone, and the note says why."""
        self.note = one_line(f"Zeus failed while measuring GPU {self.gpu_uuid or '?'}: {error_text(exc)}")
        self._monitor, self.source, self.gpu_indices, self.cpu_indices = None, "none", [], []


class TimeOnlyMeter:
    """EnergyMeter's interface measuring time alone: for work whose energy an outer window measures."""

    source = "none"
    probe = None
    update_period_s = NAN
    note = gpu_uuid = ""

    def __init__(self) -> None:
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def lap(self) -> EnergyWindow:
        window = self.stop()
        self.start()
        return window

    def stop(self) -> EnergyWindow:
        if self._started is None:
            raise RuntimeError("TimeOnlyMeter: no window is open; call start() first")
        elapsed, self._started = time.perf_counter() - self._started, None
        return EnergyWindow(time_s=elapsed, gpu_j=NAN, cpu_j=NAN, source="none")

    def close(self) -> None:
        self._started = None
