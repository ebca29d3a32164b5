"""Per-window time and energy from Zeus, in contiguous windows.

`EnergyMeter` wraps `zeus.monitor.ZeusMonitor`. It measures the GPUs visible to
this process (indices as CUDA_VISIBLE_DEVICES shows them; none at all on a
machine without a GPU) and CPU/DRAM energy through RAPL where readable.

Semantics (README, "What a trial measures"):
- `lap()` ends the current window and begins the next one back to back, so the
  windows of one trial are contiguous and their joules add up to the trial's
  total. The gap between two windows is the cost of one end plus one begin:
  about 5 us per lap without a GPU (`benchmarks/bench_energy.py` measures it;
  on a GPU add a CUDA sync and the NVML counter reads).
- Zeus's `total_energy` is GPU only: GPU and CPU (+DRAM) joules are reported
  separately and `energy_j` is their sum over what was measured.
- Missing energy is NaN with source "none", never 0. Time is always measured.
- NVML's energy counter updates about every 100 ms: energy from a window under
  `RESOLUTION_S` is flagged `below_resolution`, not silently trusted.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

RESOLUTION_S = 1.0  # windows shorter than this give unreliable GPU energy
NAN = float("nan")


@dataclass(frozen=True)
class EnergyWindow:
    """One measured window: seconds and joules (NaN where not measured)."""

    time_s: float
    gpu_j: float
    cpu_j: float  # CPU packages plus DRAM, where RAPL is readable
    source: str  # "gpu", "cpu", "gpu+cpu" or "none"
    below_resolution: bool  # window shorter than RESOLUTION_S with energy measured

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


def rapl_readable(powercap: str = "/sys/class/powercap") -> bool:
    """Whether this machine's CPU energy counter (RAPL, as Zeus reads it) can be read by this user."""
    import glob

    for path in glob.glob(f"{powercap}/intel-rapl:*/energy_uj"):
        try:
            with open(path) as counter:
                int(counter.read())
            return True
        except (OSError, ValueError):
            continue
    return False


def _visible_gpu_indices() -> list[int]:
    """Indices of the CUDA devices this process sees; [] without a GPU."""
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


class EnergyMeter:
    """Contiguous time/energy windows over ZeusMonitor.

        meter = EnergyMeter(); meter.start()
        for epoch in ...: train(); w = meter.lap()   # w.time_s, w.energy_j, ...
        meter.close()
    """

    _WINDOW = "instrument-sweep-window"

    def __init__(self, gpu_indices: list[int] | None = None, cpu: bool = True) -> None:
        from trainables.training.zeus_import import zeus_monitor_class

        ZeusMonitor = zeus_monitor_class()
        gpus = _visible_gpu_indices() if gpu_indices is None else list(gpu_indices)
        logging.getLogger("zeus").setLevel(logging.WARNING)
        # Zeus raises for gpu_indices=[0] on a machine without a GPU: pass [] there.
        self._monitor = ZeusMonitor(gpu_indices=gpus, cpu_indices=None if cpu else [])
        self.gpu_indices = list(self._monitor.gpu_indices)
        self.cpu_indices = list(self._monitor.cpu_indices)
        self.source = energy_source(bool(self.gpu_indices), bool(self.cpu_indices))
        # Windows wait for queued CUDA work to finish, so a GPU epoch is charged to its own window.
        import torch

        self._sync = bool(self.gpu_indices) and torch.cuda.is_available()
        self._window: str | None = None
        self._count = 0

    def start(self) -> None:
        """Begin the first window."""
        self._begin()

    def lap(self) -> EnergyWindow:
        """End the current window and begin the next at once; return the ended one."""
        window = self._end()
        self._begin()
        return window

    def stop(self) -> EnergyWindow:
        """End the current window without beginning another."""
        return self._end()

    def close(self) -> None:
        """End a window left open, discarding it."""
        if self._window is not None:
            self._end()

    def _begin(self) -> None:
        self._count += 1
        self._window = f"{self._WINDOW}-{self._count}"
        self._monitor.begin_window(self._window, sync_execution=self._sync)

    def _end(self) -> EnergyWindow:
        if self._window is None:
            raise RuntimeError("EnergyMeter: no window is open; call start() first")
        with warnings.catch_warnings():  # Zeus warns of zero-joule short windows; we flag them instead
            warnings.simplefilter("ignore", UserWarning)
            m = self._monitor.end_window(self._window, sync_execution=self._sync)
        self._window = None
        gpu_j = sum(m.gpu_energy.values()) if m.gpu_energy else NAN
        cpu_parts = [*(m.cpu_energy or {}).values(), *(m.dram_energy or {}).values()]
        cpu_j = sum(cpu_parts) if cpu_parts else NAN
        measured = self.source != "none"
        return EnergyWindow(
            time_s=float(m.time),
            gpu_j=float(gpu_j),
            cpu_j=float(cpu_j),
            source=self.source,
            below_resolution=measured and m.time < RESOLUTION_S,
        )
