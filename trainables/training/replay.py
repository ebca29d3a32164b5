"""Replay for precision: a trial too short for the GPU counter repeats its exact work in one window.

    report = settle_energy(run, last_report, budget_s=10.0)   # after the run's last epoch

Like timeit's repeat loop around the seed's own measurement (one window around
train-to-accuracy): where the direct figure's relative error exceeds
`MAX_REL_ERR` or the run lasted under `MIN_PERIODS` counter periods, the run is
restarted from its seed and replayed back to back (same epochs, validation each
epoch, the final test; no reporting in between) inside one energy window, until
that window spans `MIN_PERIODS` periods (its error then is under `MAX_REL_ERR`
of a run) or the replays would exceed `budget_s`. The report's `time_s` and
`energy_j` become the per-run means; the first run's stay as `first_run_*`. A
replay that ends at another epoch or status than the run (nondeterministic
kernels) is not the same work: the replays are dropped, the direct figure stays,
and `energy_note` says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from trainables.training.energy import TimeOnlyMeter, counter_error_j
from trainables.training.report import EpochReport

MAX_REL_ERR = 0.05  # replay where energy_err_j / energy_j would exceed this
MIN_PERIODS = 25  # replay where the run spanned fewer counter periods; replay windows span at least this many


def needs_replay(report: EpochReport) -> bool:
    """Whether the direct measurement is too coarse to trust (GPU energy measured, run ended)."""
    if report.energy_method != "direct" or not math.isfinite(report.energy_resolution_s):
        return False
    rel_err = report.energy_err_j / report.energy_j if report.energy_j > 0 else math.inf
    return rel_err > MAX_REL_ERR or report.time_s < MIN_PERIODS * report.energy_resolution_s


def settle_energy(run, report: EpochReport, budget_s: float) -> EpochReport:
    """`report` (the run's last) as it stands, or with replayed per-run means where it needs them.

    `run` is the finished TrainingRun; replaying restarts it (take its state_dict first).
    """
    if not needs_replay(report) or budget_s <= 0 or report.time_s > budget_s:
        return report
    meter, rule = run.meter, replace(run.rule, max_epochs=report.epoch)
    target_s = MIN_PERIODS * report.energy_resolution_s
    replays, started = 0, time.perf_counter()
    meter.start()
    while True:
        run.restart(rule, TimeOnlyMeter())
        while not run.done:
            run.run_epoch()
        replays += 1
        if (run.epoch, run.status.value) != (report.epoch, report.status):
            meter.stop()
            run.meter = meter
            different = (f"replay {replays} ended at epoch {run.epoch} ({run.status.value}), the run at epoch "
                         f"{report.epoch} ({report.status}): replays not used")
            return replace(report, energy_note="; ".join(filter(None, [report.energy_note, different])))
        elapsed = time.perf_counter() - started
        if elapsed >= target_s or elapsed + elapsed / replays > budget_s:
            break
    window = meter.stop()
    run.meter = meter
    per_run_s, per_run_j = window.time_s / replays, window.gpu_j / replays
    # The replays ran on this GPU alone (a run retried on another GPU weighs each GPU's figures by its time).
    probe = getattr(meter, "probe", None)
    gpu = {"gpu_idle_w": probe.idle_w, "gpu_idle_err_w": probe.idle_err_w,
           "gpu_max_power_w": probe.max_power_w} if probe else {}
    idle_w = gpu.get("gpu_idle_w", report.gpu_idle_w)
    # One window, no gaps: only its two ends are off, each by up to a step.
    err_j = counter_error_j(window.gpu_j, window.time_s, idle_w, report.energy_resolution_s, 0.0) / replays
    return replace(report, time_s=per_run_s, energy_j=per_run_j, energy_err_j=err_j, energy_method="replay",
                   replays=replays, dynamic_energy_j=per_run_j - idle_w * per_run_s, **gpu)
