"""Time and energy at window boundaries, from Zeus's counters: the GPU a trial trains on, the node's CPUs.

`EnergyMeter` reads the counters of Zeus's device layer (the GPUs and CPUs a
`zeus.monitor.ZeusMonitor` set up): the one GPU a trial trains on, where
`trainables.training.gpus` finds its energy measurable (named by UUID; none on the
CPU or without a GPU), and CPU/DRAM energy through RAPL where readable.

    meter = EnergyMeter(trial_gpus(ray_ids))   # before the model is on the GPU: probes it without a CUDA context
    meter.probe_context()                      # after: the idle power the trial's windows subtract
    start = meter.gpu_update()                 # wait for the GPU counter's next update: a window starts there
    ...; end = meter.gpu_update(not_before_s=t_end)   # ... and ends on the first update after the work
    joules = (end.mj - start.mj) / 1000 - meter.probe.idle_w * idle_s   # exact but for the idle waits' edges

Semantics (docs/energy.md):
- NVML's energy counter updates in steps (about every 100 ms), and a read costs up to 4 ms
  (an H200 VM), as long as an epoch of this model there. So the counter is read only at a
  window's boundaries, and a window that must be precise starts and ends on counter updates
  (`gpu_update`); the GPU idles (with the trial's CUDA context) between the work and those
  updates, and that idle time's joules (`probe.idle_w` x seconds) are subtracted. Its error:
  the updates' instants, each within about one read (`update_error_j`), and the idle power's
  own error and drift over those seconds. Any other read (`read_gpu`) is up to a step late:
  `step_error_j`.
- CPU counters (RAPL) count continuously: `read_cpu` reads them exactly at any boundary.
- GPU and CPU (package + DRAM, the whole node's) joules are kept apart; a trial's headline
  energy is its GPU's, as Zeus's `total_energy` (see `TrainingRun`).
- Missing energy is NaN with source "none", never 0, and `note` says why where a GPU was
  there to measure. Time is always measured; `spent_s` is what the measuring itself took.
"""

from __future__ import annotations

import logging
import math
import time

from trainables.training.gpu_counter import CounterUpdate, GpuProbe, next_update
from trainables.training.gpus import TrialGpus, error_text, one_line, trial_gpus, zeus_monitor

NAN = float("nan")
ERR_SIGMAS = 2.5  # error bars span this many standard deviations of what they cover
UPDATE_TIMEOUT_PERIODS = 5  # waiting for a counter update gives up after this many periods
MIN_TAIL_S = 0.01  # a window ends on an update at least this long after the work (a counter lagging what it counts)


def update_error_j(idle_w: float, *half_widths_s: float) -> float:
    """ERR_SIGMAS standard deviations of the joules a window loses or gains at its counter-update edges:
    each edge's instant lies uniformly within +-half width, and the GPU idles at `idle_w` around it."""
    return ERR_SIGMAS * max(idle_w, 0.0) * math.sqrt(sum(h * h for h in half_widths_s) / 3.0)


def step_error_j(joules: float, seconds: float, idle_w: float, period_s: float) -> float:
    """The joules a read between counter updates may miss: up to one step (the window's mean power,
    at least `idle_w`, over one period)."""
    mean_w = joules / seconds if seconds > 0 else 0.0
    return max(mean_w, idle_w if math.isfinite(idle_w) else 0.0) * period_s


def counter_error_j(joules: float, seconds: float, idle_w: float, period_s: float, gap_variance: float) -> float:
    """Uncertainty (ERR_SIGMAS sigma) of GPU joules summed over windows read at arbitrary instants, as
    checkpoints written before windows started on counter updates measured them: each end up to one
    step late, and each excluded window between them a whole step or none (`gap_variance` sums
    f(1 - f) over them, f = frac(its length / `period_s`))."""
    return ERR_SIGMAS * step_error_j(joules, seconds, idle_w, period_s) * math.sqrt(gap_variance + 1 / 6)


def energy_source(has_gpu: bool, has_cpu: bool) -> str:
    if has_gpu and has_cpu:
        return "gpu+cpu"
    if has_gpu:
        return "gpu"
    if has_cpu:
        return "cpu"
    return "none"


class EnergyMeter:
    """Zeus's counters for the GPU `gpus` says a trial trains on, and the node's CPUs.

    Where that GPU's energy is not measured (`TrialGpus.note`), or Zeus fails to set up or to read it
    (an NVML error mid-trial), reads go on with NaN GPU joules (and RAPL CPU joules where Zeus still
    reads them), and `note` says why, in one line.
    """

    def __init__(self, gpus: TrialGpus | None = None, cpu: bool = True) -> None:
        gpus = gpus if gpus is not None else trial_gpus()
        self.note = gpus.note
        self.gpu_uuid = gpus.gpu.uuid if gpus.gpu else ""  # the GPU trained on, measured or not
        # Reads wait for queued CUDA work to finish, so the work is in the window it was queued in.
        self._sync_device = gpus.device if gpus.device.type == "cuda" else None
        self.bare_probe: GpuProbe | None = None  # the GPU probed before this process opened a CUDA context
        self.probe: GpuProbe | None = None  # ... and with one (`probe_context`): the idle power windows subtract
        self.spent_s = 0.0  # seconds spent reading counters, waiting for updates and probing
        logging.getLogger("zeus").setLevel(logging.WARNING)
        self._monitor = None
        try:
            self._monitor = zeus_monitor([gpus.gpu] if gpus.measured else [], cpu)
            if self._monitor.gpu_indices:
                started = time.perf_counter()
                self.bare_probe = self._probe("bare")
                self.spent_s += time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - Zeus could not set up or read the GPU: time (and CPU) go on
            self.note = self.note or one_line(f"Zeus could not measure GPU {self.gpu_uuid or '?'}: {error_text(exc)}")
            self.bare_probe = None
            try:
                self._monitor = zeus_monitor([], cpu)
            except Exception:  # noqa: BLE001 - nor anything else: time alone
                self._monitor = None
        self.gpu_indices = list(self._monitor.gpu_indices) if self._monitor else []  # Zeus's indices
        self.cpu_indices = list(self._monitor.cpu_indices) if self._monitor else []
        self.source = energy_source(bool(self.gpu_indices), bool(self.cpu_indices))

    @property
    def gpu_measured(self) -> bool:
        return bool(self.gpu_indices)

    @property
    def update_period_s(self) -> float:
        """The GPU counter's measured update period; NaN without a measured GPU."""
        probe = self.probe or self.bare_probe
        return probe.update_period_s if probe else NAN

    def _probe(self, kind: str) -> GpuProbe:
        from trainables.training.gpu_counter import probe_gpu

        return probe_gpu(self._monitor.gpus, self._monitor.gpu_indices[0], kind)

    def probe_context(self) -> None:
        """Probe the GPU's idle power with this process's CUDA context open (once per process and GPU):
        after the trial's model is on the GPU, before it computes."""
        if not self.gpu_indices:
            return
        self._sync()
        started = time.perf_counter()
        try:
            self.probe = self._probe("context")
        except Exception as exc:  # noqa: BLE001 - an NVML error mid-trial
            self._lost(exc)
        self.spent_s += time.perf_counter() - started

    def _sync(self) -> None:
        if self._sync_device is not None:
            import torch

            torch.cuda.synchronize(self._sync_device)

    def _gpu_mj(self) -> float:
        return float(sum(self._monitor.gpus.get_total_energy_consumption(i) for i in self.gpu_indices))

    def read_gpu(self) -> float:
        """The GPU counter now, in mJ (its last update's value: up to a step behind), after queued CUDA work
        has finished; NaN where not measured."""
        if not self.gpu_indices:
            return NAN
        started = time.perf_counter()
        self._sync()
        try:
            return self._gpu_mj()
        except Exception as exc:  # noqa: BLE001 - an NVML error mid-trial
            self._lost(exc)
            return NAN
        finally:
            self.spent_s += time.perf_counter() - started

    def gpu_update(self, not_before_s: float = -math.inf) -> CounterUpdate | None:
        """Wait for the GPU counter's next update after queued CUDA work and `not_before_s` (perf_counter
        seconds); None where GPU energy is not measured (or no update came: the counter is lost)."""
        if not self.gpu_indices:
            return None
        started = time.perf_counter()
        self._sync()
        try:
            timeout_s = UPDATE_TIMEOUT_PERIODS * (self.update_period_s if math.isfinite(self.update_period_s) else 1)
            update = next_update(self._gpu_mj, timeout_s, not_before_s)
            if update is None:
                raise RuntimeError(f"the energy counter did not change for {timeout_s:.1f} s")
            return update
        except Exception as exc:  # noqa: BLE001 - an NVML error mid-trial
            self._lost(exc)
            return None
        finally:
            self.spent_s += time.perf_counter() - started

    def read_cpu(self) -> float:
        """CPU packages plus DRAM, in mJ (RAPL: continuous); NaN where not measured."""
        if not self.cpu_indices:
            return NAN
        started = time.perf_counter()
        try:
            parts = [self._monitor.cpus.get_total_energy_consumption(i) for i in self.cpu_indices]
            return float(sum(p.cpu_mj + (p.dram_mj or 0.0) for p in parts))
        except Exception as exc:  # noqa: BLE001 - RAPL failed mid-trial
            self._lost(exc)
            return NAN
        finally:
            self.spent_s += time.perf_counter() - started

    def _lost(self, exc: Exception) -> None:
        """Zeus failed mid-trial: from here on, time alone, and the note says why."""
        self.note = one_line(f"Zeus failed while measuring GPU {self.gpu_uuid or '?'}: {error_text(exc)}")
        self._monitor, self.source, self.gpu_indices, self.cpu_indices = None, "none", [], []


class TimeOnlyMeter:
    """EnergyMeter's interface measuring no energy (and starting no Zeus): time alone."""

    source = "none"
    probe = bare_probe = None
    update_period_s = NAN
    note = gpu_uuid = ""
    gpu_measured = False
    gpu_indices: list[int] = []
    spent_s = 0.0

    def probe_context(self) -> None:
        pass

    def read_gpu(self) -> float:
        return NAN

    def gpu_update(self, not_before_s: float = -math.inf) -> None:
        return None

    def read_cpu(self) -> float:
        return NAN
