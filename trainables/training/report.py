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
    epoch they are the time and energy to accuracy. `test_acc`/`test_loss` are
    NaN except where test was evaluated (the stopping epoch; every epoch in
    fixed-epochs mode). The labels after `test_loss` are filled by the Tune trial.
    """

    epoch: int = documented(0, "the epoch, from 1")
    train_acc: float = documented(NAN, "accuracy on the epoch's training batches")
    train_loss: float = documented(NAN, "mean cross-entropy loss on the epoch's training batches")
    val_acc: float = documented(NAN, "accuracy on the validation split after the epoch")
    val_loss: float = documented(NAN, "cross-entropy loss on the validation split after the epoch")
    hits_in_a_row: int = documented(0, "epochs in a row at the stop rule's target")
    epoch_time_s: float = documented(NAN, "this epoch's window: training, validation (and the test on the last)")
    time_s: float = documented(NAN, "seconds of the epoch windows so far: at the stop, the time to accuracy (a "
                                    "replayed trial: the mean per run)")
    epoch_energy_j: float = documented(NAN, "this epoch window's GPU joules")
    energy_j: float = documented(NAN, "the headline: GPU joules of the epoch windows so far: at the stop, the "
                                      "energy to accuracy (Zeus's total_energy; a replayed trial: the mean per run); "
                                      "NaN where not measured")
    energy_err_j: float = documented(NAN, "uncertainty of energy_j from the energy counter's steps (about 2.5 "
                                          "standard deviations)")
    energy_resolution_s: float = documented(NAN, "the GPU energy counter's measured update period")
    energy_method: str = documented("none", "how energy_j was measured: summed epoch windows, the mean of "
                                            "back-to-back replays, or not at all", allowed=("direct", "replay", "none"))
    replays: int = documented(0, "runs of the trial's exact work replayed in one window (energy_method replay)")
    first_run_time_s: float = documented(NAN, "the trial's own time_s, kept where a replay replaced the headline")
    first_run_energy_j: float = documented(NAN, "the trial's own energy_j: the sum of its epoch windows")
    gpu_energy_j: float = documented(NAN, "cumulative GPU joules of the trial's own run")
    cpu_energy_j: float = documented(NAN, "cumulative CPU package + DRAM joules (RAPL) of the whole node")
    gpu_idle_w: float = documented(NAN, "the GPU's idle power, measured before the process's first trial on it "
                                        "(after a retry on another GPU: the GPUs' mean weighted by time)")
    gpu_idle_err_w: float = documented(NAN, "uncertainty of gpu_idle_w (after a retry on another GPU: the GPUs' "
                                            "mean weighted by time)")
    dynamic_energy_j: float = documented(NAN, "energy_j - gpu_idle_w x time_s: what training added to idle power")
    gpu_max_power_w: float = documented(NAN, "the GPU's highest power limit (Zeus's MaxPower, for --eta; after a "
                                             "retry on another GPU: the GPUs' mean weighted by time)")
    overhead_time_s: float = documented(NAN, "cumulative time between epochs (reporting, checkpointing), not in "
                                             "time_s")
    overhead_energy_j: float = documented(NAN, "cumulative GPU joules between epochs, not in energy_j")
    energy_source: str = documented("none", "what energy_j holds (the analysis may attribute a node's CPU joules: "
                                            "cpu)", allowed=("gpu", "cpu", "none"))
    energy_note: str = documented("", "one line: why the trial's GPU energy is not measured, or a caveat; empty "
                                      "otherwise")
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
        """Read back a reported row; keys it lacks take their defaults, extra keys are ignored."""
        return cls(**{name: row[name] for name in FIELDS if name in row and row[name] is not None})


FIELDS = tuple(f.name for f in fields(EpochReport))


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
