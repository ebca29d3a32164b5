"""Live progress of a sweep: in a terminal, a line when a trial starts, ends or fails and a
periodic heartbeat; in Jupyter, a progress bar of finished trials.

    instrument-sweep run                    # lines
    from tune_jobs import sweep; sweep("smoke")   # in a notebook: a bar (tqdm.auto, ipywidgets)
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from ray import tune

from trainables.training.report import EpochReport
from tune_jobs import ray_private

HEARTBEAT_S = 10.0


def fmt_energy(joules: float | None) -> str:
    if joules is None or not math.isfinite(joules):
        return "energy n/a"
    return f"{joules:.1f} J" if joules < 1e4 else f"{joules / 1e3:.1f} kJ"


def trial_label(config: dict) -> str:
    t = config.get("trial", {})
    return f"#{t.get('number', '?')} lr={t.get('lr', float('nan')):g} batch={t.get('batch_size', '?')} seed={t.get('seed', '?')}"


def result_line(report: EpochReport) -> str:
    """epoch, validation accuracy, hits, time and energy so far."""
    return (f"epoch {report.epoch:>3}  val_acc {report.val_acc:.4f}  hits {report.hits_in_a_row}  "
            f"{report.time_s:.1f} s  {fmt_energy(report.energy_j)}")


def retry_line(trial, counted: bool = True) -> str:
    """Where a failed trial continues (its last checkpoint's epoch, or the start), which retry
    this is, and where Tune wrote the error (the console gets no traceback). Not `counted`: Tune did
    not count this failure against resources.max_failures (Ray reported the trial's node preempted)."""
    epoch = ray_private.checkpoint_epoch(trial)
    start = ("from its last checkpoint" if epoch is None else f"from epoch {epoch}'s checkpoint" if epoch
             else "from the start (no checkpoint yet)")
    of = f" of {trial.max_failures}" if getattr(trial, "max_failures", -1) >= 0 else ""
    error = f"; error in {Path(trial.path).name}/error.txt" if trial.error_file else ""  # in the experiment
    if not counted:
        return f"{start}, its node preempted: not counted against max_failures{error}"
    return f"{start}, retry {max(trial.num_failures, 1)}{of}{error}"


class SweepProgress(tune.Callback):
    """Prints to stdout; picklable so that a resumed sweep keeps reporting."""

    def __init__(self, n_trials: int, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.n_trials = n_trials
        self.heartbeat_s = heartbeat_s
        self._last_beat = time.monotonic()
        self._last: dict[str, EpochReport] = {}
        self._last_at: dict[str, float] = {}  # when each running trial last reported
        self._failures: dict[str, int] = {}  # each trial's failures Tune had counted at its last (re)start

    def _print(self, trials: list, line: str, ending=None) -> None:
        """`ending`: the trial being completed now (Tune updates its status after the callback)."""
        done = sum(t.status in ("TERMINATED", "ERROR") or t is ending for t in trials)  # restored ones too
        print(f"[{done}/{self.n_trials} done] {line}", flush=True, file=sys.stdout)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._failures[trial.trial_id] = trial.num_failures
        self._print(trials, f"start  {trial_label(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        self._last[trial.trial_id], self._last_at[trial.trial_id] = EpochReport.from_dict(result), now
        if now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            for t in trials:
                if t.status == "RUNNING" and t.trial_id in self._last:
                    quiet_s = now - self._last_at[t.trial_id]  # its host cut off, or an epoch this long
                    stalled = f"  (no report for {quiet_s:.0f} s)" if quiet_s >= 2 * self.heartbeat_s else ""
                    line = f"run    {trial_label(t.config)}  {result_line(self._last[t.trial_id])}{stalled}"
                    self._print(trials, line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._last.pop(trial.trial_id, None)  # only running trials' lines are repeated
        report = EpochReport.from_dict(trial.last_result or {})
        test = f"  test_acc {report.test_acc:.4f}" if math.isfinite(report.test_acc) else ""
        self._print(trials, f"done   {trial_label(trial.config)}  {report.status}  {result_line(report)}{test}", trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._last.pop(trial.trial_id, None)
        self._print(trials, f"error  {trial_label(trial.config)}  (see {trial.local_path or trial.path})", trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        counted = trial.num_failures > self._failures.get(trial.trial_id, 0)
        self._failures[trial.trial_id] = trial.num_failures
        self._print(trials, f"retry  {trial_label(trial.config)}  {retry_line(trial, counted)}")

    def __getstate__(self) -> dict:
        return {"n_trials": self.n_trials, "heartbeat_s": self.heartbeat_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class NotebookProgress(tune.Callback):
    """A tqdm.auto bar of finished trials, the last result of a running trial beside it."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials
        self._bar = None

    def _progress(self, trials: list):
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.n_trials, unit="trial", desc="trials")
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)
        return self._bar

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._progress(trials).set_postfix_str(f"{trial_label(trial.config)}  {result_line(EpochReport.from_dict(result))}")

    def on_step_end(self, iteration, trials, **info):
        self._progress(trials)

    def on_experiment_end(self, trials, **info):
        self._progress(trials).close()

    def __getstate__(self) -> dict:
        return {"n_trials": self.n_trials}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto draws a widget)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def progress_callback(n_trials: int) -> tune.Callback:
    """A progress bar in Jupyter, progress lines elsewhere."""
    return NotebookProgress(n_trials) if in_notebook() else SweepProgress(n_trials)
