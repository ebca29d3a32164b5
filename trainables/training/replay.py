"""A trial's final energy figures: its own run's, or, where too short for the counter, replays'.

    report = settle_energy(run, last_report, budget_s=10.0)   # after the run's last epoch

Like timeit's repeat loop around the seed's own measurement (one window around
train-to-accuracy): where the run's error exceeds `MAX_REL_ERR` of its energy, its exact
work is replayed from its seed, back to back (same epochs, validation each epoch, the final
test; no reporting in between), in one window that starts on the counter update the run's
own window ended on and ends on the first update after the last replay. That window's
joules are exact; only the GPU's idle ends (about a counter period together) are
subtracted, so its error is about the run's own and a few replays bring it under
`MAX_REL_ERR` of a run (`replays_needed`, in up to ROUNDS rounds), within `budget_s`. The
replays reuse what the run built (its CUDA graph: `TrainingRun.restart` keeps the tensors).
The report's `time_s` and `energy_j` become the per-replay means; the run's own stay as
`first_run_*`. A replay that ends at another epoch or status than the run (nondeterministic
kernels) is not the same work: the replays are dropped, the direct figure stays, and
`energy_note` says so.

Then, one counter period of idle with the trial's context still open (`gpu_idle_after_w`):
against the probed idle power, the drift: where it exceeds what one period's mean can tell
(its own error, about two reads' worth of a period), it goes into the error bars over the
idle seconds, whole. And the caveats
(`EpochReport.energy_caveats`): `energy_uncertain`, with the reasons in `energy_note`.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from trainables.training.energy import MIN_TAIL_S, update_error_j
from trainables.training.gpu_counter import CounterUpdate, power_between
from trainables.training.report import MAX_REL_ERR, EpochReport

MARGIN = 0.7  # replays enough for MARGIN x MAX_REL_ERR: the run's energy that sizes them is itself off
ROUNDS = 3  # rounds of replays in one window at most


def needs_replay(report: EpochReport) -> bool:
    """Whether the run's own figure is too coarse to stand (GPU energy measured, run ended)."""
    if report.energy_method != "direct" or not math.isfinite(report.energy_j):
        return False
    return not report.energy_j > 0 or report.energy_err_j > MAX_REL_ERR * report.energy_j


def replays_needed(run_j: float, window_err_j: float) -> int:
    """Replays for a per-run error of MARGIN x MAX_REL_ERR of `run_j`, given the replay window's error."""
    return max(1, math.ceil(window_err_j / (MARGIN * MAX_REL_ERR * run_j))) if run_j > 0 else 1


def settle_energy(run, report: EpochReport, budget_s: float) -> EpochReport:
    """`report` (the run's last) with the trial's final energy figures (see the module docstring).

    `run` is the finished TrainingRun; replaying restarts it in place (a `state_dict` taken before stays the run's: it is a copy)."""
    meter, start = run.meter, run.end_update
    if start is None:  # no GPU measured
        return _with_caveats(report)
    settled, last = report, start
    if needs_replay(report) and budget_s > 0 and report.time_s <= budget_s:
        settled, last = _replayed(run, report, budget_s, start)
    after = meter.gpu_update()
    if after is None:
        return _with_caveats(replace(settled, measurement_time_s=meter.spent_s))
    idle_after_w, idle_after_err_w = power_between(last, after)
    # The idle floor moved, beyond what one period's mean can tell (its own error): so far off over the idle seconds.
    drift_w = abs(idle_after_w - run.idle_w)
    drift_w = drift_w if drift_w > idle_after_err_w else 0.0
    first_err_j = report.first_run_energy_err_j + drift_w * run.idle_s
    replay_idle_s = settled.replay_time_s - settled.replays * settled.time_s if settled.replays else 0.0
    err_j = first_err_j if settled.energy_method == "direct" else (
        settled.energy_err_j + drift_w * replay_idle_s / settled.replays)
    return _with_caveats(replace(settled, gpu_idle_after_w=idle_after_w, first_run_energy_err_j=first_err_j,
                                 energy_err_j=err_j, measurement_time_s=meter.spent_s))


def _replayed(run, report: EpochReport, budget_s: float, start: CounterUpdate) -> tuple[EpochReport, CounterUpdate]:
    """The report with the replays' per-run means, and the counter update their window ended on; or the
    report as it was (with a note where the replays did not end as the run did) and `start`.

    The replays run in rounds, each ending on a counter update: where a round leaves the per-run error
    above MARGIN x MAX_REL_ERR (the run's own energy sized it, and a replay may draw less), more
    replays follow from that update, in the same window (its inner updates cancel), within the budget."""
    meter, rule = run.meter, replace(run.rule, max_epochs=report.epoch)
    probe = meter.probe
    idle_w, idle_err_w = probe.idle_w, probe.idle_err_w if math.isfinite(probe.idle_err_w) else 0.0
    window_err_j = lambda end, idle_s: (update_error_j(idle_w, start.half_width_s, end.half_width_s)  # noqa: E731
                                        + idle_err_w * idle_s)
    # Sized for the drift measured after too: one period's mean, off by its two updates' widths at most.
    drift_w = 2 * idle_w * start.half_width_s / meter.update_period_s
    sized_err_j = lambda end, idle_s: window_err_j(end, idle_s) + drift_w * idle_s  # noqa: E731
    # Before the first round: its idle ends about a period and MIN_TAIL_S, its end as wide as its start.
    wanted = replays_needed(report.energy_j, sized_err_j(start, meter.update_period_s + MIN_TAIL_S))
    most = int(budget_s // max(report.time_s, 1e-9))
    replays, work_s, end = 0, 0.0, start
    for _ in range(ROUNDS):
        began = time.perf_counter()
        for _ in range(max(1, min(wanted, most) - replays)):
            replays += 1
            epochs, status = run.replay(rule)
            if (epochs, status.value) != (report.epoch, report.status):
                different = (f"replay {replays} ended at epoch {epochs} ({status.value}), the run at epoch "
                             f"{report.epoch} ({report.status}): replays not used")
                # The idle measured after starts on an update after this work too.
                resumed = meter.gpu_update(not_before_s=time.perf_counter() + MIN_TAIL_S) or start
                return replace(report, energy_note="; ".join(filter(None, [report.energy_note, different]))), resumed
        work_s += time.perf_counter() - began
        end = meter.gpu_update(not_before_s=time.perf_counter() + MIN_TAIL_S)
        if end is None:
            return report, start
        window_s, window_j = end.at_s - start.at_s, (end.mj - start.mj) / 1000.0
        idle_s = window_s - work_s
        per_run_j = (window_j - idle_w * idle_s) / replays
        wanted = replays_needed(per_run_j, sized_err_j(end, idle_s + meter.update_period_s))
        if wanted <= replays or replays >= most:
            break
    per_run_s = work_s / replays
    return replace(report, time_s=per_run_s, energy_j=per_run_j, energy_err_j=window_err_j(end, idle_s) / replays,
                   energy_method="replay", replays=replays, replay_time_s=window_s, replay_energy_j=window_j,
                   dynamic_energy_j=per_run_j - idle_w * per_run_s, gpu_idle_w=idle_w,
                   gpu_idle_err_w=probe.idle_err_w, gpu_max_power_w=probe.max_power_w), end


def _with_caveats(report: EpochReport) -> EpochReport:
    """The report flagged where its energy is not to be trusted, with the reasons in energy_note."""
    reasons = report.energy_caveats()
    return replace(report, energy_uncertain=bool(reasons),
                   energy_note="; ".join(filter(None, [report.energy_note, *reasons])))
