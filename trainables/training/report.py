"""`EpochReport`: the one definition of what a trial reports after each epoch.

    report = run.run_epoch()                        # training fills the metrics
    report = report.labelled(trial_number=3, ...)   # the Tune trial adds who and where
    tune.report(batched([earlier..., report.to_dict()]))  # one Tune report for the epochs since the last
    unbatched(result)                               # -> the epochs' rows: result.json, one line per epoch
    EpochReport.from_dict(row)                      # how progress lines and analysis read a row back

A Tune report is the latest epoch's row; where the trial reports less often than every
epoch, it carries the epochs since its last report under EARLIER_EPOCHS (`batched`), and
the loggers that write result.json and progress.csv write one row per epoch (`unbatched`).

Times are seconds, energies joules; NaN means "not measured" (never 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from trainables.documented import documented
from trainables.training.stop import Status

NAN = float("nan")


@dataclass(frozen=True)
class EpochReport:
    """One trial's report for one epoch.

    `time_s` and `energy_j` are cumulative since the trial began: on the last
    epoch they are the time and energy to accuracy. Every energy column has a time
    column over the same window, named for it: the headline (time_s, energy_j), the
    trial's own run (first_run_*), its replays (replay_*); overhead_time_s is outside
    them. `test_acc`/`test_loss` are NaN except where test was evaluated (the stopping
    epoch; every epoch in fixed-epochs mode). The labels after `test_loss` are filled
    by the Tune trial.
    """

    epoch: int = documented(0, "the epoch, from 1")
    train_acc: float = documented(NAN, "accuracy on the epoch's training batches")
    train_loss: float = documented(NAN, "mean cross-entropy loss on the epoch's training batches")
    val_acc: float = documented(NAN, "accuracy on the validation split after the epoch")
    val_loss: float = documented(NAN, "cross-entropy loss on the validation split after the epoch")
    hits_in_a_row: int = documented(0, "epochs in a row at the stop rule's target")
    epoch_time_s: float = documented(NAN, "this epoch's share of the first run's window: from the previous epoch's "
                                          "end (or the window's start) to its end: training, validation (and the "
                                          "test on the last)")
    time_s: float = documented(NAN, "the headline's seconds: the first run's so far; at the stop, the time to "
                                    "accuracy (energy_method replay: the mean per replay)")
    energy_j: float = documented(NAN, "the headline: GPU joules over time_s's window (Zeus's total_energy); at "
                                      "the stop, the energy to accuracy. Read at report points and the stop only: "
                                      "NaN on the epochs between, and where not measured")
    energy_err_j: float = documented(NAN, "uncertainty of energy_j (about 2.5 standard deviations): the counter "
                                          "updates' instants, idle power and its drift over the idle seconds in "
                                          "the window, and at a report point up to one counter step")
    energy_resolution_s: float = documented(NAN, "the GPU energy counter's measured update period")
    energy_method: str = documented("none", "where energy_j comes from: the first run's window, the mean of "
                                            "back-to-back replays (where the first run's error exceeds 5%), or "
                                            "nowhere", allowed=("direct", "replay", "none"))
    replays: int = documented(0, "runs of the trial's exact work replayed in one window (energy_method replay)")
    replay_time_s: float = documented(NAN, "the replays' window: seconds from the counter update before the first "
                                           "replay to the one after the last (the replays back to back, the GPU "
                                           "idling at either end); NaN without replays")
    replay_energy_j: float = documented(NAN, "GPU joules over replay_time_s's window: exact, as it starts and ends "
                                             "on counter updates; energy_j is this less the idle ends, per replay")
    first_run_time_s: float = documented(NAN, "seconds of the trial's own run: its epochs (with the bookkeeping "
                                              "between epochs that did not report), summed over its attempts")
    first_run_energy_j: float = documented(NAN, "GPU joules over first_run_time_s's window: the counter from the "
                                                "update before the first epoch to the one after the last, less the "
                                                "GPU's idle joules over the waits and overhead_time_s in between")
    first_run_energy_err_j: float = documented(NAN, "uncertainty of first_run_energy_j, as energy_err_j's")
    first_run_cpu_energy_j: float = documented(NAN, "CPU package + DRAM joules (RAPL) of the whole node over "
                                                    "first_run_time_s's window")
    gpu_idle_w: float = documented(NAN, "the GPU's idle power with the trial process's CUDA context open, probed "
                                        "before the process's first trial on it: the idle floor that "
                                        "dynamic_energy_j and the windows' idle waits subtract (after a retry on "
                                        "another GPU: the GPUs' mean weighted by time)")
    gpu_idle_err_w: float = documented(NAN, "uncertainty of gpu_idle_w")
    gpu_idle_no_context_w: float = documented(NAN, "the GPU's idle power before the process opened a CUDA "
                                                   "context (NaN where NVML listed one open)")
    gpu_idle_after_w: float = documented(NAN, "the GPU's idle power (context open) over one counter period after "
                                              "the trial's run and replays: against gpu_idle_w, the drift, counted "
                                              "in energy_err_j")
    dynamic_energy_j: float = documented(NAN, "energy_j - gpu_idle_w x time_s: what training added to the idle "
                                              "floor")
    gpu_max_power_w: float = documented(NAN, "the GPU's highest power limit (Zeus's MaxPower, for --eta)")
    overhead_time_s: float = documented(NAN, "seconds between epochs where the trial reported or checkpointed, not "
                                             "in time_s (the GPU idles then: its joules are gpu_idle_w x this)")
    measurement_time_s: float = documented(NAN, "seconds the trial spent measuring energy: counter reads, waits "
                                                "for counter updates, idle probes (the replays apart: "
                                                "replay_time_s)")
    energy_source: str = documented("none", "what energy_j holds (the analysis may attribute a node's CPU joules: "
                                            "cpu)", allowed=("gpu", "cpu", "none"))
    energy_note: str = documented("", "one line: why the trial's GPU energy is not measured, or a caveat (why "
                                      "energy_uncertain); empty otherwise")
    energy_uncertain: bool = documented(False, "the trial's energy is not to be trusted as it stands: an error "
                                               "above 5% of it, or a window below the GPU's idle power beyond the "
                                               "errors (energy_note says which)")
    status: str = documented(Status.RUNNING.value, "the stop rule's decision after this epoch",
                             allowed=tuple(s.value for s in Status if s is not Status.ERROR))
    test_acc: float = documented(NAN, "test accuracy: on the epoch the trial stops (every epoch in "
                                      "fixed-epochs mode), else NaN")
    test_loss: float = documented(NAN, "test loss, on the same epochs as test_acc")
    # -- labels: which trial, and where it ran
    trial_number: int = documented(0, "the trial's number in the sweep, from 1")
    lr: float = documented(NAN, "the trial's learning rate")
    batch_size: int = documented(0, "the trial's batch size")
    seed: int = documented(0, "the trial's random seed")
    views: str = documented("", "comma-separated names of the views the trial belongs to")
    device: str = documented("", "GPU model name, or cpu")
    node: str = documented("", "host name of the trial's node")
    node_id: str = documented("", "Ray's node id")
    gpu_ids: str = documented("", "Ray's GPU ids of the trial, comma-separated (empty on CPU)")
    gpu_uuids: str = documented("", "the GPU(s) it trained on, by NVML UUID: more than one after a retry on "
                                    "another GPU")
    cpu_ids: str = documented("", "the CPUs the trial's process may run on, as a list like 0-3,8 (under Slurm's "
                              "CPU binding: its job's CPUs on that node)")
    started_at_s: float = documented(NAN, "wall clock (Unix seconds) when this attempt of the trial began")
    ended_at_s: float = documented(NAN, "wall clock (Unix seconds) when this report was made")
    rss_mib: float = documented(NAN, "the trial process's resident memory")

    @property
    def done(self) -> bool:
        return Status(self.status) is not Status.RUNNING

    @property
    def energy_measured(self) -> bool:
        return math.isfinite(self.energy_j)

    def labelled(self, **labels) -> EpochReport:
        """This report with the trial's labels filled in."""
        return replace(self, **labels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> EpochReport:
        """Read back a reported row; keys it lacks take their defaults, extra keys are ignored (an older
        experiment's columns under their new names: RENAMED)."""
        row = {**{new: row[old] for old, new in RENAMED.items() if old in row}, **row}
        return cls(**{name: row[name] for name in FIELDS if name in row and row[name] is not None})

    def energy_caveats(self) -> list[str]:
        """Why this (final) report's energy is not to be trusted as it stands, one reason each: energy_err_j
        above MAX_REL_ERR of energy_j; the first run's or the replays' joules below the GPU's idle power x
        their time beyond both error bars. [] where neither (or where nothing was measured)."""
        if not math.isfinite(self.energy_j):
            return []
        reasons = []
        if self.energy_j > 0 and self.energy_err_j > MAX_REL_ERR * self.energy_j:
            reasons.append(f"energy error ±{self.energy_err_j:.3g} J is above {MAX_REL_ERR:.0%} of "
                           f"{self.energy_j:.4g} J (the counter's steps)")
        idle_err_w = math.hypot(_finite(self.gpu_idle_err_w), _finite(self.gpu_idle_after_w - self.gpu_idle_w))
        first_err_j = self.first_run_energy_err_j if math.isfinite(self.first_run_energy_err_j) else (
            self.energy_err_j if self.energy_method == "direct" else 0.0)
        windows = [("first run", self.first_run_energy_j, self.first_run_time_s, first_err_j)]
        if self.energy_method == "replay":
            windows.append(("replays", self.energy_j, self.time_s, self.energy_err_j))
        for name, joules, seconds, err_j in windows:
            floor_j = (self.gpu_idle_w - idle_err_w) * seconds - _finite(err_j)
            if seconds > 0 and joules < floor_j:
                reasons.append(f"{name}: {joules / seconds:.0f} W over {seconds:.3g} s, below the GPU's idle "
                               f"{self.gpu_idle_w:.0f} W beyond the error bars")
        return reasons


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


FIELDS = tuple(f.name for f in fields(EpochReport))
MAX_REL_ERR = 0.05  # energy_uncertain where energy_err_j exceeds this share of energy_j (and a replay is due)
RENAMED = {"cpu_energy_j": "first_run_cpu_energy_j"}  # an older experiment's column -> its name now


EARLIER_EPOCHS = "earlier_epochs"  # a report's key for the epochs it carries besides its own, oldest first


def batched(rows: list[dict]) -> dict:
    """One Tune report for the epochs' rows `rows` (oldest first): the last row, carrying the others."""
    *earlier, last = rows
    return {**last, EARLIER_EPOCHS: earlier} if earlier else last


def unbatched(line: dict) -> list[dict]:
    """The epochs' rows one report holds, oldest first (see `batched`). The earlier epochs' rows
    also take the report's keys that are not EpochReport's (Tune's: trial_id, timestamp, ...)."""
    own = {k: v for k, v in line.items() if k != EARLIER_EPOCHS}
    return [*({**own, **row} for row in line.get(EARLIER_EPOCHS) or ()), own]
